"""ReLU:  y = max(x, 0), elementwise; any shape, no parameters.

    dx = dy ⊙ 1[x > 0]
    Ry = Rx ⊙ 1[x > 0]
    R{dx} = R{dy} ⊙ 1[x > 0]      (the second derivative is zero almost everywhere)
"""
from numpy_amaml.backend import xp


def forward(params, x):
    return xp.maximum(x, 0), x > 0


def backward(dy, cache):
    mask = cache
    return dy * mask, {}


def r_forward(params, x, Rparams, Rx, cache):
    mask = cache
    Ry = None if Rx is None else Rx * mask
    return Ry, None


def r_backward(dy, Rdy, cache, rcache):
    mask = cache
    return Rdy * mask, {}
