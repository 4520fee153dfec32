"""Flatten each sample; no parameters.

Shapes: x (..., N, *rest) -> y (..., N, prod(rest))   (``...``: optional task axis).
    config: sample_ndim = len(rest), the number of per-sample axes (default 3: H, W, C);
    the axes before them (task and sample axes) are kept as they are.

A reshape is linear, so every derivative is a reshape too:
    dx = dy reshaped to x's shape,   Ry = Rx flattened,   R{dx} = R{dy} reshaped to x's shape
"""


def forward(params, x, sample_ndim=3):
    if not isinstance(sample_ndim, int) or sample_ndim < 1 or x.ndim < sample_ndim + 1:
        raise ValueError(f"flatten: need sample_ndim >= 1 per-sample axes after the sample axis N; "
                         f"got sample_ndim={sample_ndim!r} for x of shape {tuple(x.shape)}")
    keep = x.shape[:x.ndim - sample_ndim]
    return x.reshape(keep + (-1,)), (tuple(x.shape), sample_ndim)


def backward(dy, cache):
    x_shape, _ = cache
    return dy.reshape(x_shape), {}


def r_forward(params, x, Rparams, Rx, cache):
    x_shape, sample_ndim = cache
    Ry = None if Rx is None else Rx.reshape(x_shape[:len(x_shape) - sample_ndim] + (-1,))
    return Ry, None


def r_backward(dy, Rdy, cache, rcache):
    x_shape, _ = cache
    return Rdy.reshape(x_shape), {}
