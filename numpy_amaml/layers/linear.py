"""Linear (fully connected) layer:  y = x W + b.

Shapes (``...`` is the optional task axis (B,)):
    x (..., N, D_in),  W (..., D_in, D_out),  b (..., D_out),  y (..., N, D_out).

Derivatives (T = transpose of the last two axes):
    dx = dy Wᵀ,   dW = xᵀ dy,   db = Σ_n dy
    Ry = Rx W + x RW + Rb
    R{dx} = R{dy} Wᵀ + dy RWᵀ,   R{dW} = Rxᵀ dy + xᵀ R{dy},   R{db} = Σ_n R{dy}
"""


def _T(a):
    return a.swapaxes(-1, -2)          # the array's own method: a view, without a function lookup


def forward(params, x):
    W, b = params["W"], params["b"]
    y = x @ W + b[..., None, :]
    return y, (x, W)


def param_grads(dy, cache):
    """backward's dparams alone (for a first layer, whose dx is unused)."""
    x, _ = cache
    return {"W": _T(x) @ dy, "b": dy.sum(axis=-2)}


def backward(dy, cache):
    _, W = cache
    return dy @ _T(W), param_grads(dy, cache)


def r_forward(params, x, Rparams, Rx, cache):
    RW, Rb = Rparams["W"], Rparams["b"]
    Ry = x @ RW + Rb[..., None, :]
    if Rx is not None:
        Ry = Ry + Rx @ params["W"]
    return Ry, (Rx, RW)


def r_param_grads(dy, Rdy, cache, rcache):
    """r_backward's Rdparams alone (for a first layer, whose R{dx} is unused)."""
    x, _ = cache
    Rx, _ = rcache
    RdW = _T(x) @ Rdy
    if Rx is not None:
        RdW = RdW + _T(Rx) @ dy
    return {"W": RdW, "b": Rdy.sum(axis=-2)}


def r_backward(dy, Rdy, cache, rcache):
    _, W = cache
    _, RW = rcache
    return Rdy @ _T(W) + dy @ _T(RW), r_param_grads(dy, Rdy, cache, rcache)
