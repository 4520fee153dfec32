"""2×2 max pooling, stride 2; no parameters.

Shapes: x (..., N, H, W, C) -> y (..., N, H//2, W//2, C)   (``...``: optional task axis).

Odd sizes are floored, like TensorFlow's 'VALID' pooling that MAML uses: the last row
(column) of an odd H (W) belongs to no window, is dropped, and gets zero gradient
(28 → 14 → 7 → 3 → 1). H and W must be at least 2.

Each 2×2 window has exactly one winner w — its largest entry; on a tie, the first in
the order top-left, top-right, bottom-left, bottom-right — recorded as a boolean mask:
    y = x[w],   dx = dy at w (0 elsewhere)
    Ry = Rx[w],   R{dx} = R{dy} at w
The max is piecewise linear, so the R-op of backward has no second-derivative term.
"""
from numpy_amaml.backend import xp


def _windows(x):
    """(..., N, H, W, C) -> (..., N, H//2, 2, W//2, 2, C): the 2×2 windows (a view when H, W even)."""
    H, W, C = x.shape[-3:]
    if H < 2 or W < 2:
        raise ValueError(f"maxpool: x has shape {tuple(x.shape)}; H and W (axes -3, -2) must be at least 2")
    x = x[..., :H - H % 2, :W - W % 2, :]
    return x.reshape(x.shape[:-3] + (H // 2, 2, W // 2, 2, C))


def _unpool(d, mask, x_shape):
    """Route d (..., N, H//2, W//2, C) to the winners: an array of shape x_shape."""
    dw = mask * d[..., :, None, :, None, :]
    dw = dw.reshape(dw.shape[:-5] + (2 * dw.shape[-5], 2 * dw.shape[-3], dw.shape[-1]))
    if tuple(dw.shape) == tuple(x_shape):
        return dw
    dx = xp.zeros(x_shape, dtype=dw.dtype)         # odd H or W: the dropped row / column
    dx[..., :dw.shape[-3], :dw.shape[-2], :] = dw
    return dx


def forward(params, x):
    if x.ndim < 4:
        raise ValueError(f"maxpool: x must have shape (..., N, H, W, C), got {tuple(x.shape)}")
    win = _windows(x)
    tl, tr = win[..., :, 0, :, 0, :], win[..., :, 0, :, 1, :]
    bl, br = win[..., :, 1, :, 0, :], win[..., :, 1, :, 1, :]
    right_top, right_bottom = tr > tl, br > bl        # strict: ties go to the left ...
    top, bottom = xp.maximum(tl, tr), xp.maximum(bl, br)
    lower = bottom > top                              # ... and to the top
    mask = xp.empty(win.shape, dtype=bool)
    mask[..., :, 0, :, 0, :] = ~right_top & ~lower
    mask[..., :, 0, :, 1, :] = right_top & ~lower
    mask[..., :, 1, :, 0, :] = ~right_bottom & lower
    mask[..., :, 1, :, 1, :] = right_bottom & lower
    y = xp.maximum(top, bottom)
    return y, (mask, tuple(x.shape))


def backward(dy, cache):
    mask, x_shape = cache
    return _unpool(dy, mask, x_shape), {}


def r_forward(params, x, Rparams, Rx, cache):
    mask, _ = cache
    Ry = None if Rx is None else (_windows(Rx) * mask).sum(axis=(-4, -2))
    return Ry, None


def r_backward(dy, Rdy, cache, rcache):
    mask, x_shape = cache
    return _unpool(Rdy, mask, x_shape), {}
