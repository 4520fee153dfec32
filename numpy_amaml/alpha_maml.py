"""One Alpha MAML iteration, in the order of docs/method.md §6:

    sample tasks → inner loop (keep ∇L^tr and φ) → reverse pass (λ, g_t)
    → h_α = ∂J/∂α → h_β = −⟨g_t, u_{t−1}⟩ → move α → move β
    → θ ← θ − β u_t → remember u_t

Two rules move the rates (``hyper_rule``, docs/hyper_rules.md):
    "additive":    α ← α − γ_α h_α,            β ← β − γ_β h_β       (the paper)
    "normalized":  α ← α · exp(γ_α cos_α),     β ← β · exp(γ_β cos_β)
where the cosines are the hypergradients with their magnitudes divided out:
    h_α = −(1/B) ⟨a, b⟩ = −(1/B) ‖a‖ ‖b‖ cos_α,   a = (λ_{i,k+1}), b = (∇L^tr_i(φ_{i,k}))
stacked over every task i and inner step k (per tensor when α is a dict; both come with
the meta-gradient, maml.meta_gradient), and
    h_β = −‖g_t‖ ‖u_{t−1}‖ cos_β.

Plain MAML is the same iteration with γ_α = γ_β = 0, under either rule. The rates are kept
positive: a step that would take α or β below its floor is clamped there and counted. A
non-finite loss, gradient or rate raises ``TrainingDiverged`` naming the iteration.
"""
import math

from numpy_amaml.validation import NonFiniteError
from numpy_amaml.maml import meta_gradient
from numpy_amaml.optim import check_hyper_rule, update_rate, update_rate_normalized
from numpy_amaml.params import norm


class TrainingDiverged(RuntimeError):
    """Raised when a loss, gradient or learning rate stops being finite; ``iteration`` is the
    iteration at which it happened."""

    def __init__(self, message, iteration=None):
        super().__init__(message)
        self.iteration = iteration


def check_finite(iteration, advice, **values):
    """Raise TrainingDiverged naming the first of ``values`` (a number, or a dict of numbers) that
    is not finite, with ``advice`` on what to try instead."""
    for name, value in values.items():
        numbers = value.values() if isinstance(value, dict) else [value]
        if not all(math.isfinite(v) for v in numbers):
            raise TrainingDiverged(f"iteration {iteration}: {name} is not finite ({value}); try {advice}",
                                   iteration=iteration)


class AlphaMAML:
    """Holds θ, α and the meta-optimizer (which holds β); ``step`` does one iteration.

    model: numpy_amaml.model.Model;  theta: {name: array};
    alpha: float, or {name: float} for one inner rate per tensor;
    optimizer: numpy_amaml.optim.SGD or Adam (its hyper_lr is γ_β, its hyper_rule moves β);
    alpha_hyper_lr: γ_α;  alpha_floor: the smallest α allowed;
    hyper_rule: how α moves, "additive" or "normalized" (numpy_amaml.optim.HYPER_RULES).
    """

    def __init__(self, model, theta, alpha, optimizer, inner_steps=1, first_order=False,
                 alpha_hyper_lr=0.0, alpha_floor=1e-8, hyper_rule="additive"):
        self.model, self.theta, self.optimizer = model, theta, optimizer
        self.alpha = dict(alpha) if isinstance(alpha, dict) else float(alpha)
        self.inner_steps, self.first_order = int(inner_steps), bool(first_order)
        self.alpha_hyper_lr, self.alpha_floor = float(alpha_hyper_lr), float(alpha_floor)
        self.hyper_rule = check_hyper_rule(hyper_rule)
        self.alpha_clamps = 0
        self.iteration = 0

    def _move_rate(self, rate, h_alpha, cos_alpha):
        """One rate by the rule: α − γ_α h_α, or α · exp(γ_α cos_α); clamped to the floor."""
        if self.hyper_rule == "additive":
            return update_rate(rate, h_alpha, self.alpha_hyper_lr, self.alpha_floor)
        return update_rate_normalized(rate, cos_alpha, self.alpha_hyper_lr, self.alpha_floor)

    def _update_alpha(self, h_alpha, cos_alpha):
        """Move α by the rule (per tensor when α is a dict), counting the clamps."""
        if isinstance(self.alpha, dict):
            for name in self.alpha:
                self.alpha[name], clamped = self._move_rate(self.alpha[name], h_alpha[name], cos_alpha[name])
                self.alpha_clamps += clamped
        else:
            self.alpha, clamped = self._move_rate(self.alpha, h_alpha, cos_alpha)
            self.alpha_clamps += clamped

    def _check_finite(self, **values):
        check_finite(self.iteration, "a smaller α, β or hypergradient rate", **values)

    def state_dict(self):
        """θ, α, the iteration, the clamp count and the meta-optimizer's state (which holds β):
        everything needed to continue exactly (saved by numpy_amaml.checkpoint)."""
        return {"iteration": self.iteration, "theta": self.theta,
                "alpha": dict(self.alpha) if isinstance(self.alpha, dict) else self.alpha,
                "alpha_clamps": self.alpha_clamps, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        """Continue from a ``state_dict``."""
        self.iteration, self.theta = int(state["iteration"]), dict(state["theta"])
        self.alpha = dict(state["alpha"]) if isinstance(state["alpha"], dict) else float(state["alpha"])
        self.alpha_clamps = int(state["alpha_clamps"])
        self.optimizer.load_state_dict(state["optimizer"])

    def step(self, batch):
        """One meta-iteration on a TaskBatch. Returns a dict for the metrics log, with both
        hypergradients (h_alpha, h_beta) and their cosines (cos_alpha, cos_beta) under
        either rule."""
        self.iteration += 1
        try:
            mg = meta_gradient(self.model, self.theta, batch, self.alpha, self.inner_steps, self.first_order)
        except NonFiniteError as err:     # e.g. the inner loop blew φ up to Inf
            raise TrainingDiverged(f"iteration {self.iteration}: {err}; try a smaller α, β or "
                                   f"hypergradient rate",
                                   iteration=self.iteration) from err
        grad_norm = norm(mg.grad)
        self._check_finite(query_loss=mg.loss, support_loss=mg.support_loss, grad_norm=grad_norm)

        h_alpha = mg.dJ_dalpha                                   # ∂J/∂α
        cos_alpha = mg.cos_alpha                                 # −B h_α / (‖a‖‖b‖)
        h_beta = self.optimizer.beta_hypergradient(mg.grad)      # −⟨g_t, u_{t−1}⟩
        cos_beta = self.optimizer.beta_cosine(mg.grad)           # cos(g_t, u_{t−1})
        self._update_alpha(h_alpha, cos_alpha)                   # α − γ_α h_α  or  α · exp(γ_α cos_α)
        self.theta = self.optimizer.step(self.theta, mg.grad, h_beta, cos_beta)   # move β; θ ← θ − β u_t
        self._check_finite(alpha=self.alpha, beta=self.optimizer.beta, h_alpha=h_alpha, h_beta=h_beta,
                           cos_alpha=cos_alpha, cos_beta=cos_beta)

        return {"iteration": self.iteration, "support_loss": mg.support_loss, "query_loss": mg.loss,
                "alpha": self.alpha if not isinstance(self.alpha, dict) else dict(self.alpha),
                "beta": self.optimizer.beta, "h_alpha": h_alpha, "h_beta": h_beta,
                "cos_alpha": cos_alpha, "cos_beta": cos_beta,
                "grad_norm": grad_norm, "alpha_clamps": self.alpha_clamps,
                "beta_clamps": self.optimizer.beta_clamps}
