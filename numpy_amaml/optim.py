"""Meta-optimizers with a learned meta learning rate β (hypergradient descent).

Both optimizers take steps θ_{t+1} = θ_t − β_t u_t along a direction u_t built from
the meta-gradient g_t = ∇_θ J_t:
    SGD:   u_t = g_t
    Adam:  m_t = b1 m_{t−1} + (1 − b1) g_t,  v_t = b2 v_{t−1} + (1 − b2) g_t²,
           u_t = m̂_t / (√v̂_t + ε),  m̂_t = m_t / (1 − b1^t),  v̂_t = v_t / (1 − b2^t)
Since θ_t = θ_{t−1} − β u_{t−1}, the derivative of J_t in β is
    h_β = ∂J_t/∂β = −⟨g_t, u_{t−1}⟩
(SGD-HD and Adam-HD, Baydin et al. 2018), and β ← β − γ_β h_β comes before the
step, which then uses the new β. With γ_β = 0 these are plain SGD and Adam.

``update_rate`` is the shared hypergradient step for α and β: one descent step,
then a clamp to a positive floor (the caller counts the clamps).
"""
from numpy_amaml.backend import xp


def update_rate(rate, hypergrad, hyper_lr, floor):
    """rate ← max(rate − hyper_lr · hypergrad, floor).  Returns (new_rate, clamped)."""
    new = rate - hyper_lr * hypergrad
    if new < floor:
        return floor, True
    return new, False


def dot(a, b):
    """⟨a, b⟩ over every entry of two params dicts."""
    return float(sum((a[k] * b[k]).sum() for k in a))


class SGD:
    """SGD with (optionally) hypergradient-adapted β (SGD-HD)."""

    def __init__(self, beta, hyper_lr=0.0, beta_floor=1e-8):
        self.beta, self.hyper_lr, self.beta_floor = float(beta), float(hyper_lr), float(beta_floor)
        self.prev_direction = None      # u_{t−1}; None before the first step
        self.beta_clamps = 0

    def direction(self, grad):
        """u_t = g_t."""
        return grad

    def beta_hypergradient(self, grad):
        """h_β = −⟨g_t, u_{t−1}⟩ (0 at the first step: no previous direction)."""
        return 0.0 if self.prev_direction is None else -dot(grad, self.prev_direction)

    def step(self, theta, grad, h_beta):
        """β ← β − γ_β h_β (clamped), then θ ← θ − β u_t, then remember u_t.

        h_β comes from ``beta_hypergradient(grad)``. Returns the new θ (``theta``
        itself is not modified).
        """
        self.beta, clamped = update_rate(self.beta, h_beta, self.hyper_lr, self.beta_floor)
        self.beta_clamps += clamped
        u = self.direction(grad)
        new_theta = {k: theta[k] - self.beta * u[k] for k in theta}
        self.prev_direction = u
        return new_theta

    def state_dict(self):
        return {"beta": self.beta, "beta_clamps": self.beta_clamps, "prev_direction": self.prev_direction}

    def load_state_dict(self, state):
        self.beta, self.beta_clamps = float(state["beta"]), int(state["beta_clamps"])
        self.prev_direction = state["prev_direction"]


class Adam(SGD):
    """Adam with (optionally) hypergradient-adapted β (Adam-HD)."""

    def __init__(self, beta, hyper_lr=0.0, beta_floor=1e-8, b1=0.9, b2=0.999, eps=1e-8):
        super().__init__(beta, hyper_lr, beta_floor)
        self.b1, self.b2, self.eps = b1, b2, eps
        self.m = self.v = None
        self.t = 0

    def direction(self, grad):
        """u_t = m̂_t / (√v̂_t + ε), after updating the moments with g_t."""
        if self.m is None:
            self.m = {k: xp.zeros_like(g) for k, g in grad.items()}
            self.v = {k: xp.zeros_like(g) for k, g in grad.items()}
        self.t += 1
        u = {}
        for k, g in grad.items():
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            m_hat = self.m[k] / (1 - self.b1 ** self.t)
            v_hat = self.v[k] / (1 - self.b2 ** self.t)
            u[k] = m_hat / (xp.sqrt(v_hat) + self.eps)
        return u

    def state_dict(self):
        return {**super().state_dict(), "m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.m, self.v, self.t = state["m"], state["v"], int(state["t"])


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
