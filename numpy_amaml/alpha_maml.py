"""One Alpha MAML iteration, in the order DESIGN §2 gives:

    sample tasks → inner loop (keep ∇L^tr and φ) → reverse pass (λ, g_t)
    → h_α = ∂J/∂α → h_β = −⟨g_t, u_{t−1}⟩ → α ← α − γ_α h_α → β ← β − γ_β h_β
    → θ ← θ − β u_t → remember u_t

Plain MAML is the same iteration with γ_α = γ_β = 0. The rates are kept positive:
a step that would take α or β below its floor is clamped there and counted. A
non-finite loss, gradient or rate raises ``TrainingDiverged`` naming the iteration.
"""
import math

from numpy_amaml.checks import NonFiniteError
from numpy_amaml.maml import meta_gradient
from numpy_amaml.optim import update_rate


class TrainingDiverged(RuntimeError):
    """Raised when a loss, gradient or learning rate stops being finite."""


class AlphaMAML:
    """Holds θ, α and the meta-optimizer (which holds β); ``step`` does one iteration.

    model: numpy_amaml.model.Model;  theta: {name: array};
    alpha: float, or {name: float} for one inner rate per tensor;
    optimizer: numpy_amaml.optim.SGD or Adam (its hyper_lr is γ_β);
    alpha_hyper_lr: γ_α;  alpha_floor: the smallest α allowed.
    """

    def __init__(self, model, theta, alpha, optimizer, inner_steps=1, first_order=False,
                 alpha_hyper_lr=0.0, alpha_floor=1e-8):
        self.model, self.theta, self.optimizer = model, theta, optimizer
        self.alpha = dict(alpha) if isinstance(alpha, dict) else float(alpha)
        self.inner_steps, self.first_order = int(inner_steps), bool(first_order)
        self.alpha_hyper_lr, self.alpha_floor = float(alpha_hyper_lr), float(alpha_floor)
        self.alpha_clamps = 0
        self.iteration = 0

    def _update_alpha(self, h_alpha):
        """α ← α − γ_α h_α, clamped to the floor (per tensor when α is a dict)."""
        if isinstance(self.alpha, dict):
            for name in self.alpha:
                self.alpha[name], clamped = update_rate(self.alpha[name], h_alpha[name],
                                                        self.alpha_hyper_lr, self.alpha_floor)
                self.alpha_clamps += clamped
        else:
            self.alpha, clamped = update_rate(self.alpha, h_alpha, self.alpha_hyper_lr, self.alpha_floor)
            self.alpha_clamps += clamped

    def _check_finite(self, **values):
        for name, value in values.items():
            numbers = value.values() if isinstance(value, dict) else [value]
            if not all(math.isfinite(v) for v in numbers):
                raise TrainingDiverged(f"iteration {self.iteration}: {name} is not finite ({value}); "
                                       f"try a smaller α, β or hypergradient rate")

    def step(self, batch):
        """One meta-iteration on a TaskBatch. Returns a dict for the metrics log."""
        self.iteration += 1
        try:
            mg = meta_gradient(self.model, self.theta, batch, self.alpha, self.inner_steps, self.first_order)
        except NonFiniteError as err:     # e.g. the inner loop blew φ up to Inf
            raise TrainingDiverged(f"iteration {self.iteration}: {err}; try a smaller α, β or "
                                   f"hypergradient rate") from err
        grad_norm = math.sqrt(sum(float((g * g).sum()) for g in mg.grad.values()))
        self._check_finite(query_loss=mg.loss, support_loss=mg.support_loss, grad_norm=grad_norm)

        h_alpha = mg.dJ_dalpha                                   # ∂J/∂α
        h_beta = self.optimizer.beta_hypergradient(mg.grad)      # −⟨g_t, u_{t−1}⟩
        self._update_alpha(h_alpha)                              # α ← α − γ_α h_α
        self.theta = self.optimizer.step(self.theta, mg.grad, h_beta)  # β ← β − γ_β h_β; θ ← θ − β u_t
        self._check_finite(alpha=self.alpha, beta=self.optimizer.beta, h_alpha=h_alpha, h_beta=h_beta)

        return {"iteration": self.iteration, "support_loss": mg.support_loss, "query_loss": mg.loss,
                "alpha": self.alpha if not isinstance(self.alpha, dict) else dict(self.alpha),
                "beta": self.optimizer.beta, "h_alpha": h_alpha, "h_beta": h_beta,
                "grad_norm": grad_norm, "alpha_clamps": self.alpha_clamps,
                "beta_clamps": self.optimizer.beta_clamps}
