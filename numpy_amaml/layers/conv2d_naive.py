"""3×3 convolution, padding 1, stride 1 or 2: the slow, obvious reference.

Same four functions, shapes and config (``stride``) as conv2d.py, written as explicit
loops over the output positions (i, j) and the kernel offsets (p, q); each step is one
small matmul over the samples and channels. Read this one to see what a convolution
is; use conv2d.py to run one (the tests check that both agree).

    x (..., N, H, W, C_in),  W (..., 3, 3, C_in, C_out),  b (..., C_out)
    y (..., N, H_out, W_out, C_out),  H_out = (H + 2 − 3)//stride + 1

    y[n, i, j] = b + Σ_{p,q} x_pad[n, s·i + p, s·j + q] W[p, q]          (conv)
    dx_pad[n, s·i + p, s·j + q] += dy[n, i, j] W[p, q]ᵀ                  (transposed conv)
    dW[p, q] += x_pad[n, s·i + p, s·j + q]ᵀ dy[n, i, j],   db = Σ dy

conv is linear in x and in W separately (bilinear), and so is each output of its
backward — dx in (dy, W), dW in (x, dy) — so the R-ops are two calls each (product rule):
    Ry = conv(Rx, W) + conv(x, RW) + Rb
    (R{dx}, R{dW}) = backward(R{dy}; x, W) + backward(dy; Rx, RW),   R{db} = Σ R{dy}
"""
import itertools

from numpy_amaml.backend import xp


def _T(a):
    return xp.swapaxes(a, -1, -2)


def _pad(x):
    """Zero-pad H and W by one pixel on each side."""
    return xp.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)])


def _positions(H, W, stride):
    """All (i, j, p, q, r, c): output pixel (i, j), kernel offset (p, q), padded input pixel (r, c)."""
    H_out, W_out = (H - 1) // stride + 1, (W - 1) // stride + 1      # = (H + 2 − 3)//stride + 1
    for i, j, p, q in itertools.product(range(H_out), range(W_out), range(3), range(3)):
        yield i, j, p, q, stride * i + p, stride * j + q


def _conv(x, W, stride):
    """y = conv(x, W), no bias."""
    H, Wd = x.shape[-3], x.shape[-2]
    H_out, W_out = (H - 1) // stride + 1, (Wd - 1) // stride + 1
    x_pad = _pad(x)
    y = xp.zeros(x.shape[:-3] + (H_out, W_out, W.shape[-1]), dtype=x.dtype)
    for i, j, p, q, r, c in _positions(H, Wd, stride):
        y[..., i, j, :] += x_pad[..., r, c, :] @ W[..., p, q, :, :]
    return y


def _conv_backward(dy, x, W, stride):
    """(dx, dW): the gradients of ⟨conv(x, W), dy⟩ with respect to x and W."""
    x_pad = _pad(x)
    dx_pad = xp.zeros_like(x_pad)
    dW = xp.zeros(W.shape, dtype=dy.dtype)
    for i, j, p, q, r, c in _positions(x.shape[-3], x.shape[-2], stride):
        dx_pad[..., r, c, :] += dy[..., i, j, :] @ _T(W[..., p, q, :, :])
        dW[..., p, q, :, :] += _T(x_pad[..., r, c, :]) @ dy[..., i, j, :]
    return dx_pad[..., 1:-1, 1:-1, :], dW


def forward(params, x, stride=1):
    if stride not in (1, 2):
        raise ValueError(f"conv2d_naive: stride must be 1 or 2, got {stride!r}")
    y = _conv(x, params["W"], stride) + params["b"][..., None, None, None, :]
    return y, (x, params["W"], stride)


def backward(dy, cache):
    x, W, stride = cache
    dx, dW = _conv_backward(dy, x, W, stride)
    return dx, {"W": dW, "b": dy.sum(axis=(-4, -3, -2))}


def r_forward(params, x, Rparams, Rx, cache):
    _, W, stride = cache
    Ry = _conv(x, Rparams["W"], stride) + Rparams["b"][..., None, None, None, :]
    if Rx is not None:
        Ry = Ry + _conv(Rx, W, stride)
    return Ry, (Rx, Rparams["W"])


def r_backward(dy, Rdy, cache, rcache):
    x, W, stride = cache
    Rx, RW = rcache
    Rdx, RdW = _conv_backward(Rdy, x, W, stride)                  # R{dy} Wᵀ,  xᵀ R{dy}
    dx_RW, dW_Rx = _conv_backward(dy, xp.zeros_like(x) if Rx is None else Rx, RW, stride)  # dy RWᵀ, Rxᵀ dy
    return Rdx + dx_RW, {"W": RdW + dW_Rx, "b": Rdy.sum(axis=(-4, -3, -2))}
