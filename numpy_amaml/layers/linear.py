"""Linear (fully connected) layer:  y = x W + b.

Shapes (``...`` is the optional task axis (B,)):
    x (..., N, D_in),  W (..., D_in, D_out),  b (..., D_out),  y (..., N, D_out).

Derivatives (T = transpose of the last two axes):
    dx = dy Wᵀ,   dW = xᵀ dy,   db = Σ_n dy
    Ry = Rx W + x RW + Rb
    R{dx} = R{dy} Wᵀ + dy RWᵀ,   R{dW} = Rxᵀ dy + xᵀ R{dy},   R{db} = Σ_n R{dy}
"""
from numpy_amaml.backend import xp


def _T(a):
    return xp.swapaxes(a, -1, -2)


def forward(params, x):
    W, b = params["W"], params["b"]
    y = x @ W + b[..., None, :]
    return y, (x, W)


def backward(dy, cache):
    x, W = cache
    dx = dy @ _T(W)
    dparams = {"W": _T(x) @ dy, "b": dy.sum(axis=-2)}
    return dx, dparams


def r_forward(params, x, Rparams, Rx, cache):
    RW, Rb = Rparams["W"], Rparams["b"]
    Ry = x @ RW + Rb[..., None, :]
    if Rx is not None:
        Ry = Ry + Rx @ params["W"]
    return Ry, (Rx, RW)


def r_backward(dy, Rdy, cache, rcache):
    x, W = cache
    Rx, RW = rcache
    Rdx = Rdy @ _T(W) + dy @ _T(RW)
    RdW = _T(x) @ Rdy
    if Rx is not None:
        RdW = RdW + _T(Rx) @ dy
    return Rdx, {"W": RdW, "b": Rdy.sum(axis=-2)}
