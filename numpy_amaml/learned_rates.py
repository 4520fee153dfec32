"""Learned inner rates: Meta-SGD and LSLR, whose α the meta-optimizer learns together with θ.

    Meta-SGD  (Li, Zhou, Chen, Li 2017)             one α per parameter: α shaped like θ
    LSLR      (Antoniou, Edwards, Storkey 2019,      one α per tensor and per inner step:
               MAML++'s "per-layer per-step          K dicts {name: float}
               learning rates")

Both need the same exact derivative as Alpha MAML, ∂J/∂α, only with α laid out per
parameter or per step (numpy_amaml.maml.meta_gradient; docs/method.md §13):

    ∂J/∂α_k = −(1/B) Σ_i λ_{i,k+1} ⊙ ∇L^tr_i(φ_{i,k})   (summed over k for Meta-SGD,
                                                        within each tensor for LSLR)

They differ from Alpha MAML in the step on α: no online hyper-rate rule, but the
meta-optimizer itself, at its fixed β, on the pair (θ, α) as one vector:

    (θ, α) ← (θ, α) − β u_t,   u_t built from (∇_θ J, ∂J/∂α) (SGD: the gradient; Adam:
                               m̂/(√v̂ + ε), with moments for every θ and α entry)

α is not clamped: as in both papers, a rate may go negative (that entry's inner step then
ascends). β is not learned (γ_β = 0): only Alpha MAML moves β, by its hypergradient
(numpy_amaml.alpha_maml). In the meta-optimizer's dicts α's entries are named
``"alpha." + name``, an array per tensor: α itself for Meta-SGD, its K rates as a (K,)
array for LSLR.

Also here, for every method: ``initial_alpha`` (α₀ in the layout of a run's method),
``logged_alpha``, ``alpha_statistics`` and ``describe_alpha`` (α for the metrics log, the
sweeps and the command line).
"""

from numpy_amaml.alpha_maml import TrainingDiverged, check_finite
from numpy_amaml.backend import float_dtype, xp
from numpy_amaml.maml import alpha_layout, meta_gradient
from numpy_amaml.params import norm
from numpy_amaml.validation import NonFiniteError

LEARNED_RATE_METHODS = ("meta-sgd", "lslr")
LEARNED_LAYOUTS = {"meta-sgd": ("per parameter", False), "lslr": ("per tensor", True)}
ALPHA_KEY = "alpha."        # prefix of α's entries in the meta-optimizer's dicts


def initial_alpha(config, shapes, dtype=None):
    """α₀ = config.alpha in the layout of config.method: Meta-SGD an array shaped like each
    tensor (``dtype``: the active float dtype when None), LSLR K = config.inner_steps dicts
    {name: α₀}, Alpha MAML and MAML {name: α₀} with ``per_layer_alpha``, else α₀ itself."""
    if config.method == "meta-sgd":
        return {name: xp.full(tuple(shape), config.alpha, dtype=dtype or float_dtype())
                for name, shape in shapes.items()}
    if config.method == "lslr":
        return [{name: config.alpha for name in shapes} for _ in range(config.inner_steps)]
    return {name: config.alpha for name in shapes} if config.per_layer_alpha else config.alpha


def check_alpha(alpha, config, shapes):
    """ValueError unless a stored α (a checkpoint's) has the layout of config.method, fits the
    parameter shapes and, per parameter, has the run's dtype."""
    expected = LEARNED_LAYOUTS.get(config.method, ("per tensor" if config.per_layer_alpha else "scalar", False))
    layout = alpha_layout(alpha, shapes, config.inner_steps if expected[1] else None)
    if layout != expected:
        words = lambda l: l[0] + (" and per step" if l[1] else "")
        raise ValueError(f"its α is {words(layout)}, {config.method} needs it {words(expected)}")
    if layout[0] == "per parameter" and any(str(a.dtype) != config.dtype for a in alpha.values()):
        raise ValueError(f"its α is not {config.dtype}")


def _per_step_rates(alpha):
    """{name: [α_0[name], .., α_{K−1}[name]]} of a per-step α."""
    return {name: [float(rate[name]) for rate in alpha] for name in alpha[0]}


def learned(alpha):
    """Is α one of the learned layouts (per parameter, or per step)?"""
    return isinstance(alpha, (list, tuple)) or (isinstance(alpha, dict) and
                                                any(getattr(v, "ndim", 0) > 0 for v in alpha.values()))


def logged_alpha(alpha):
    """α as the metrics log, the sweeps and evaluation.json record it: a scalar or per-tensor α
    itself; a learned α as one float, the mean over tensors of each tensor's mean rate (over its
    entries, or its steps), the number a sweep's final_alpha and trajectories.png use."""
    if not learned(alpha):
        return dict(alpha) if isinstance(alpha, dict) else alpha
    if isinstance(alpha, (list, tuple)):
        means = [sum(rates) / len(rates) for rates in _per_step_rates(alpha).values()]
    else:
        means = [float(rates.mean()) for rates in alpha.values()]
    return sum(means) / len(means)


def alpha_statistics(alpha):
    """Per-tensor statistics of a learned α for a metrics line ({} for a scalar or per-tensor α):
    alpha_mean, alpha_min, alpha_max {name: float} over the tensor's entries (Meta-SGD) or its
    steps (LSLR), and for LSLR alpha_steps {name: [α_0, .., α_{K−1}]}."""
    if not learned(alpha):
        return {}
    if isinstance(alpha, (list, tuple)):
        steps = _per_step_rates(alpha)
        return {"alpha_mean": {name: sum(r) / len(r) for name, r in steps.items()},
                "alpha_min": {name: min(r) for name, r in steps.items()},
                "alpha_max": {name: max(r) for name, r in steps.items()}, "alpha_steps": steps}
    return {"alpha_mean": {name: float(a.mean()) for name, a in alpha.items()},
            "alpha_min": {name: float(a.min()) for name, a in alpha.items()},
            "alpha_max": {name: float(a.max()) for name, a in alpha.items()}}


def describe_alpha(alpha):
    """α in words for the command line: a number, the per-tensor rates, or a learned α's
    per-tensor mean [min, max]."""
    if not learned(alpha):
        return (", ".join(f"{k} {v:.4g}" for k, v in alpha.items()) if isinstance(alpha, dict)
                else f"{alpha:.4g}")
    stats = alpha_statistics(alpha)
    kind = "per tensor and step" if isinstance(alpha, (list, tuple)) else "per parameter"
    return f"{kind}, mean [min, max]: " + ", ".join(
        f"{name} {stats['alpha_mean'][name]:.4g} [{stats['alpha_min'][name]:.3g}, {stats['alpha_max'][name]:.3g}]"
        for name in stats["alpha_mean"])


class LearnedRates:
    """Holds θ, a learned α and the meta-optimizer (which holds the fixed β); ``step`` does one
    iteration of Meta-SGD or LSLR.

    model: numpy_amaml.model.Model;  theta: {name: array};
    alpha: per parameter, {name: array shaped like θ[name]} (Meta-SGD), or per tensor and step,
    a list of ``inner_steps`` dicts {name: float} (LSLR), e.g. from ``initial_alpha``;
    optimizer: numpy_amaml.optim.SGD or Adam; it steps on (θ, α) together (its hyper_lr, γ_β,
    is 0 for both methods: β stays fixed).
    """

    def __init__(self, model, theta, alpha, optimizer, inner_steps=1, first_order=False):
        self.model, self.theta, self.optimizer = model, theta, optimizer
        self.inner_steps, self.first_order = int(inner_steps), bool(first_order)
        layout = alpha_layout(alpha, theta, self.inner_steps)
        if layout not in LEARNED_LAYOUTS.values():
            raise ValueError(f"a learned α is per parameter (Meta-SGD) or per tensor and step (LSLR), "
                             f"got {layout[0]}{' per step' if layout[1] else ''}")
        self.per_step = layout[1]
        self.names = list(theta)
        self.dtype = next(iter(theta.values())).dtype
        self.alpha = self._unpack(self._pack(alpha))
        self.alpha_clamps = 0          # never clamped; kept so that every learner logs the same keys
        self.iteration = 0

    def _pack(self, rates):
        """α, or ∂J/∂α laid out like α, as the meta-optimizer's entries {"alpha.<name>": array} in
        θ's dtype: Meta-SGD's arrays as they are; LSLR's K rates of a tensor as one (K,) array."""
        if self.per_step:
            return {ALPHA_KEY + name: xp.asarray([float(rate[name]) for rate in rates], dtype=self.dtype)
                    for name in self.names}
        return {ALPHA_KEY + name: xp.asarray(rates[name], dtype=self.dtype) for name in self.names}

    def _unpack(self, packed):
        """The inverse of ``_pack``: α in maml's layout (LSLR: K dicts of floats)."""
        if self.per_step:
            columns = {name: packed[ALPHA_KEY + name].tolist() for name in self.names}
            return [{name: columns[name][k] for name in self.names} for k in range(self.inner_steps)]
        return {name: packed[ALPHA_KEY + name] for name in self.names}

    def _check_finite(self, **values):
        check_finite(self.iteration, "a smaller α or β", **values)

    def state_dict(self):
        """θ, α, the iteration and the meta-optimizer's state (its moments cover α too):
        everything needed to continue exactly (saved by numpy_amaml.checkpoint)."""
        return {"iteration": self.iteration, "theta": self.theta, "alpha": self.alpha,
                "alpha_clamps": self.alpha_clamps, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        """Continue from a ``state_dict``."""
        self.iteration, self.theta = int(state["iteration"]), dict(state["theta"])
        self.alpha = self._unpack(self._pack(state["alpha"]))
        self.alpha_clamps = int(state["alpha_clamps"])
        self.optimizer.load_state_dict(state["optimizer"])

    def step(self, batch):
        """One meta-iteration on a TaskBatch: J, ∇_θ J and ∂J/∂α (maml.meta_gradient), then one
        meta-optimizer step on (θ, α). Returns a dict for the metrics log: "alpha" is
        ``logged_alpha``, "h_alpha" per tensor the sum of ∂J/∂α over its rates (the derivative
        of J when they all move together), "cos_alpha" maml's per-tensor cosines (LSLR: per step)."""
        self.iteration += 1
        try:
            mg = meta_gradient(self.model, self.theta, batch, self.alpha, self.inner_steps, self.first_order)
        except NonFiniteError as err:     # e.g. the inner loop blew φ up to Inf
            raise TrainingDiverged(f"iteration {self.iteration}: {err}; try a smaller α or β",
                                   iteration=self.iteration) from err
        grad_norm = norm(mg.grad)
        self._check_finite(query_loss=mg.loss, support_loss=mg.support_loss, grad_norm=grad_norm)

        grad = {**mg.grad, **self._pack(mg.dJ_dalpha)}            # (∇_θ J, ∂J/∂α): one vector
        h_beta = self.optimizer.beta_hypergradient(grad)          # logged; β moves only if γ_β > 0
        cos_beta = self.optimizer.beta_cosine(grad)
        params = self.optimizer.step({**self.theta, **self._pack(self.alpha)}, grad, h_beta, cos_beta)
        self.theta = {name: params[name] for name in self.names}
        self.alpha = self._unpack(params)

        h_alpha = _tensor_sums(mg.dJ_dalpha)
        alpha = logged_alpha(self.alpha)
        self._check_finite(alpha=alpha, beta=self.optimizer.beta, h_alpha=h_alpha, h_beta=h_beta)
        return {"iteration": self.iteration, "support_loss": mg.support_loss, "query_loss": mg.loss,
                "alpha": alpha, "beta": self.optimizer.beta, "h_alpha": h_alpha, "h_beta": h_beta,
                "cos_alpha": mg.cos_alpha, "cos_beta": cos_beta, "grad_norm": grad_norm,
                "alpha_clamps": self.alpha_clamps, "beta_clamps": self.optimizer.beta_clamps}


def _tensor_sums(dJ_dalpha):
    """{name: ∂J/∂α summed over the tensor's entries (Meta-SGD) or steps (LSLR)}, as floats."""
    if isinstance(dJ_dalpha, (list, tuple)):
        return {name: sum(step[name] for step in dJ_dalpha) for name in dJ_dalpha[0]}
    return {name: float(value.sum()) for name, value in dJ_dalpha.items()}
