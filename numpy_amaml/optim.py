"""Meta-optimizers with a learned meta learning rate β (hypergradient descent).

Both optimizers take steps θ_{t+1} = θ_t − β_t u_t along a direction u_t built from
the meta-gradient g_t = ∇_θ J_t:
    SGD:   u_t = g_t
    Adam:  m_t = b1 m_{t−1} + (1 − b1) g_t,  v_t = b2 v_{t−1} + (1 − b2) g_t²,
           u_t = m̂_t / (√v̂_t + ε),  m̂_t = m_t / (1 − b1^t),  v̂_t = v_t / (1 − b2^t)
Since θ_t = θ_{t−1} − β u_{t−1}, the derivative of J_t in β is
    h_β = ∂J_t/∂β = −⟨g_t, u_{t−1}⟩ = −‖g_t‖ ‖u_{t−1}‖ cos_β,   cos_β = cos(g_t, u_{t−1})
(SGD-HD and Adam-HD, Baydin et al. 2018). The rate moves before the step, which then
uses the new β, by one of two rules (``HYPER_RULES``, docs/hyper_rules.md):
    "additive":    β ← β − γ_β h_β                 (the paper's rule; γ_β has units)
    "normalized":  β ← β · exp(γ_β cos_β)          (scale-free; γ_β is a relative change)
With γ_β = 0 both are plain SGD and Adam, bit for bit.

``update_rate`` and ``update_rate_normalized`` are the two rate steps, shared by α
(numpy_amaml.alpha_maml) and β: one step, then a clamp to a positive floor (the caller
counts the clamps).

The steps are element-wise, so they run on θ as one vector (``params.flatten``: every tensor's
entries in a row): one array operation per term of the formulas for all tensors together, where
a loop over tensors would take one per tensor (on a GPU each is a kernel launch). The vectors
are cut back into tensors as views (``params.unflatten``); the numbers are those of the loop.
"""
import math

from numpy_amaml.backend import xp
from numpy_amaml.params import dot, flatten, norm, unflatten

HYPER_RULES = ("additive", "normalized")


def check_hyper_rule(rule):
    """``rule`` if it is one of ``HYPER_RULES``, else ValueError naming them."""
    if rule not in HYPER_RULES:
        raise ValueError(f"hyper_rule must be one of {HYPER_RULES}, got {rule!r}")
    return rule


def update_rate(rate, hypergrad, hyper_lr, floor):
    """rate ← max(rate − hyper_lr · hypergrad, floor).  Returns (new_rate, clamped)."""
    new = rate - hyper_lr * hypergrad
    if new < floor:
        return floor, True
    return new, False


def update_rate_normalized(rate, cosine, hyper_lr, floor):
    """rate ← max(rate · exp(hyper_lr · cosine), floor).  Returns (new_rate, clamped).

    ``cosine`` ∈ [−1, 1] is minus the normalized hypergradient (cos_α or cos_β), so the
    rate grows when the two vectors of its hypergradient agree. The factor lies in
    [e^{−hyper_lr}, e^{hyper_lr}]: the rate stays positive and hyper_lr is the largest
    change of log(rate) per iteration. The floor only bounds a long decline. A factor too
    large for a float (hyper_lr · cosine > ~709) gives an infinite rate, which the learner
    reports as a divergence, like any other rate that is not finite.
    """
    try:
        new = rate * math.exp(hyper_lr * cosine)
    except OverflowError:
        return math.inf, False
    if new < floor:
        return floor, True
    return new, False


def cosine(inner, norm_a, norm_b):
    """cos(a, b) = ⟨a, b⟩ / (‖a‖ ‖b‖) from its three parts; 0 when a or b is zero."""
    scale = norm_a * norm_b
    return inner / scale if scale > 0 else 0.0


class SGD:
    """SGD with (optionally) hypergradient-adapted β (SGD-HD).

    beta: β₀;  hyper_lr: γ_β;  beta_floor: the smallest β allowed;
    hyper_rule: "additive" or "normalized" (``HYPER_RULES``).
    """

    def __init__(self, beta, hyper_lr=0.0, beta_floor=1e-8, hyper_rule="additive"):
        self.beta, self.hyper_lr, self.beta_floor = float(beta), float(hyper_lr), float(beta_floor)
        self.hyper_rule = check_hyper_rule(hyper_rule)
        self.prev_direction = None      # u_{t−1}; None before the first step
        self.beta_clamps = 0

    def direction(self, g):
        """u_t = g_t (g: the meta-gradient as one vector, ``params.flatten``)."""
        return g

    def beta_hypergradient(self, grad):
        """h_β = −⟨g_t, u_{t−1}⟩ (0 at the first step: no previous direction)."""
        return 0.0 if self.prev_direction is None else -dot(grad, self.prev_direction)

    def beta_cosine(self, grad):
        """cos_β = ⟨g_t, u_{t−1}⟩ / (‖g_t‖ ‖u_{t−1}‖) = −h_β / (‖g_t‖ ‖u_{t−1}‖)
        (0 at the first step, or when either vector is zero)."""
        if self.prev_direction is None:
            return 0.0
        return cosine(dot(grad, self.prev_direction), norm(grad), norm(self.prev_direction))

    def step(self, theta, grad, h_beta, cos_beta=None):
        """Move β by the rule (clamped), then θ ← θ − β u_t, then remember u_t.

        "additive" uses h_β = ``beta_hypergradient(grad)``: β ← β − γ_β h_β;
        "normalized" uses cos_β = ``beta_cosine(grad)`` (computed here when None):
        β ← β · exp(γ_β cos_β). Returns the new θ (``theta`` itself is not modified), its
        arrays views of one vector, as are those of u_t (``prev_direction``). ``grad`` is matched
        to θ by name; θ, grad and the moments share one dtype (one vector holds them).
        """
        if self.hyper_rule == "additive":
            self.beta, clamped = update_rate(self.beta, h_beta, self.hyper_lr, self.beta_floor)
        else:
            cos_beta = self.beta_cosine(grad) if cos_beta is None else cos_beta
            self.beta, clamped = update_rate_normalized(self.beta, cos_beta, self.hyper_lr, self.beta_floor)
        self.beta_clamps += clamped
        u = self.direction(flatten({name: grad[name] for name in theta}))   # u_t: θ's entries, in θ's order
        new_theta = unflatten(flatten(theta) - self.beta * u, theta)
        self.prev_direction = unflatten(u, theta)
        return new_theta

    def state_dict(self):
        return {"beta": self.beta, "beta_clamps": self.beta_clamps, "prev_direction": self.prev_direction}

    def load_state_dict(self, state):
        self.beta, self.beta_clamps = float(state["beta"]), int(state["beta_clamps"])
        self.prev_direction = state["prev_direction"]


class Adam(SGD):
    """Adam with (optionally) hypergradient-adapted β (Adam-HD); arguments as SGD, plus
    the moment decays b1, b2 and ε."""

    def __init__(self, beta, hyper_lr=0.0, beta_floor=1e-8, b1=0.9, b2=0.999, eps=1e-8,
                 hyper_rule="additive"):
        super().__init__(beta, hyper_lr, beta_floor, hyper_rule)
        self.b1, self.b2, self.eps = b1, b2, eps
        self.m = self.v = None
        self.t = 0

    def direction(self, g):
        """u_t = m̂_t / (√v̂_t + ε), after updating the moments with g_t; g, the moments m and v
        and u_t are vectors over all of θ's entries (``params.flatten``)."""
        if self.m is None:
            self.m, self.v = xp.zeros_like(g), xp.zeros_like(g)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        return m_hat / (xp.sqrt(v_hat) + self.eps)

    def state_dict(self):
        """As SGD's, with the moments m and v as params dicts (views of the vectors) and t."""
        moments = {name: None if vector is None else unflatten(vector, self.prev_direction)
                   for name, vector in (("m", self.m), ("v", self.v))}
        return {**super().state_dict(), **moments, "t": self.t}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.m, self.v = (None if state[name] is None else flatten(state[name]) for name in ("m", "v"))
        self.t = int(state["t"])


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
