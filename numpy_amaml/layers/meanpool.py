"""Spatial mean (global average pooling); no parameters.

Shapes: x (..., N, H, W, C) -> y (..., N, C)   (``...``: optional task axis).

    y = (1/(H·W)) Σ_{h,w} x[..., h, w, :]
It is linear, so the R-ops repeat the forward and backward maps:
    dx = dy/(H·W) copied to every (h, w),   Ry = mean of Rx,   R{dx} = R{dy}/(H·W) copied
"""
from numpy_amaml.backend import xp


def _spread(d, x_shape):
    """d (..., N, C) -> d/(H·W) at every pixel, as an array of shape x_shape."""
    out = xp.empty(x_shape, dtype=d.dtype)
    out[...] = (d / (x_shape[-3] * x_shape[-2]))[..., None, None, :]
    return out


def forward(params, x):
    if x.ndim < 4:
        raise ValueError(f"meanpool: x must have shape (..., N, H, W, C), got {tuple(x.shape)}")
    return x.mean(axis=(-3, -2)), tuple(x.shape)


def backward(dy, cache):
    return _spread(dy, cache), {}


def r_forward(params, x, Rparams, Rx, cache):
    return (None if Rx is None else Rx.mean(axis=(-3, -2))), None


def r_backward(dy, Rdy, cache, rcache):
    return _spread(Rdy, cache), {}
