"""3×3 convolution, padding 1, stride 1 or 2: the fast version (im2col + one matmul).

Shapes (NHWC; ``...`` is the optional task axis (B,), on the params iff on x):
    x (..., N, H, W, C_in),  W (..., 3, 3, C_in, C_out),  b (..., C_out)
    y (..., N, H_out, W_out, C_out),  H_out = (H + 2 − 3)//stride + 1  (W_out alike)
    config: stride = 1 or 2 (keyword of forward; kept in the cache for the other three)

With x_pad = x zero-padded by one pixel on each side of H and W, and s = stride:
    y[n, i, j] = b + Σ_{p,q = 0..2} x_pad[n, s·i + p, s·j + q] W[p, q]

im2col: the 9 shifted, strided views of x_pad, laid side by side, form
    cols (..., M, 9·C_in),  M = N·H_out·W_out,  cols[(n,i,j), (p,q,c)] = x_pad[n, s·i+p, s·j+q, c]
(built from one strided view of x_pad, copied once), so the convolution is one batched
matmul with W seen as a matrix Wm = W.reshape(9·C_in, C_out):
    y = cols Wm + b
Every derivative is then the Linear layer's (linear.py), plus col2im, the adjoint of
im2col: it scatter-adds each of the 9 column blocks back onto its shifted view of a
padded buffer and drops the padding (a transposed convolution).
    dW = colsᵀ dy,   db = Σ dy,   dx = col2im(dy Wmᵀ)
    Ry = cols(Rx) Wm + cols RWm + Rb
    R{dx} = col2im(R{dy} Wmᵀ + dy RWmᵀ)
    R{dW} = cols(Rx)ᵀ dy + colsᵀ R{dy},   R{db} = Σ R{dy}
(Σ runs over the M rows; the cols of x are computed once, in forward, and reused.)
With stride 1, col2im(dy Wmᵀ) equals a 3×3 convolution of dy with the flipped kernel,
which input_grad computes instead (a gather, cheaper than 9 scatter-adds; see there).
conv2d_naive.py computes the same with explicit loops; the tests compare the two.
"""
from numpy_amaml.backend import xp

KERNEL, PAD, STRIDES = 3, 1, (1, 2)


def _T(a):
    return xp.swapaxes(a, -1, -2)


def output_size(n, stride):
    """Output length of one spatial axis of length n: (n + 2·PAD − KERNEL)//stride + 1."""
    return (n + 2 * PAD - KERNEL) // stride + 1


def _check(x, W, stride):
    if stride not in STRIDES:
        raise ValueError(f"conv2d: stride must be one of {STRIDES}, got {stride!r}")
    if x.ndim < 4:
        raise ValueError(f"conv2d: x must have shape (..., N, H, W, C_in), got {tuple(x.shape)}")
    if W.ndim < 4 or tuple(W.shape[-4:-2]) != (KERNEL, KERNEL) or W.shape[-2] != x.shape[-1]:
        raise ValueError(f"conv2d: W has shape {tuple(W.shape)}; expected (..., 3, 3, {x.shape[-1]}, C_out) "
                         f"for x of shape {tuple(x.shape)}")


def _matrix(W):
    """(..., 3, 3, C_in, C_out) -> (..., 9·C_in, C_out), a view."""
    return W.reshape(W.shape[:-4] + (-1, W.shape[-1]))


def _rows(dy):
    """(..., N, H_out, W_out, C) -> (..., M, C)."""
    return dy.reshape(dy.shape[:-4] + (-1, dy.shape[-1]))


def _sum_rows(a):
    """Σ over the M rows: (..., M, C) -> (..., C). (einsum adds the rows up in one pass,
    2–3× faster than a.sum(axis=-2) for the first layer's M = N·14·14 rows.)"""
    return xp.einsum("...mc->...c", a)


def _flip(W):
    """W_flip[p, q] = W[2 − p, 2 − q]ᵀ: (..., 3, 3, C_in, C_out) -> (..., 3, 3, C_out, C_in), a view."""
    return _T(W[..., ::-1, ::-1, :, :])


def im2col(x, stride):
    """x (..., N, H, W, C) -> cols (..., N·H_out·W_out, 9·C)  (one copy of a strided view)."""
    H, W, C = x.shape[-3:]
    x_pad = xp.zeros(x.shape[:-3] + (H + 2 * PAD, W + 2 * PAD, C), dtype=x.dtype)
    x_pad[..., PAD:PAD + H, PAD:PAD + W, :] = x
    # windows[..., i, j, p, q, c] = x_pad[..., s·i + p, s·j + q, c]: a view, by strides alone
    step_h, step_w, step_c = x_pad.strides[-3:]
    windows = xp.lib.stride_tricks.as_strided(
        x_pad, x_pad.shape[:-3] + (output_size(H, stride), output_size(W, stride), KERNEL, KERNEL, C),
        x_pad.strides[:-3] + (stride * step_h, stride * step_w, step_h, step_w, step_c))
    return windows.reshape(x.shape[:-4] + (-1, KERNEL * KERNEL * C))


def col2im(dcols, x_shape, stride):
    """The adjoint of im2col: dcols (..., M, 9·C) -> dx of shape x_shape (..., N, H, W, C)."""
    H, W, C = x_shape[-3:]
    Ho, Wo = output_size(H, stride), output_size(W, stride)
    blocks = dcols.reshape(tuple(x_shape[:-3]) + (Ho, Wo, KERNEL, KERNEL, C))
    dx_pad = xp.zeros(tuple(x_shape[:-3]) + (H + 2 * PAD, W + 2 * PAD, C), dtype=dcols.dtype)
    for p in range(KERNEL):
        for q in range(KERNEL):
            dx_pad[..., p:p + stride * (Ho - 1) + 1:stride, q:q + stride * (Wo - 1) + 1:stride, :] \
                += blocks[..., p, q, :]
    return dx_pad[..., PAD:PAD + H, PAD:PAD + W, :]


def _out_shape(x_shape, stride, C_out):
    H, W = x_shape[-3], x_shape[-2]
    return tuple(x_shape[:-3]) + (output_size(H, stride), output_size(W, stride), C_out)


def forward(params, x, stride=1):
    W, b = params["W"], params["b"]
    _check(x, W, stride)
    cols = im2col(x, stride)
    y = cols @ _matrix(W)
    y += b[..., None, :]
    return y.reshape(_out_shape(x.shape, stride, W.shape[-1])), (cols, W, tuple(x.shape), stride)


def input_grad(terms, x_shape, stride):
    """dx = col2im(Σ_k dy_k W_kmᵀ): the transposed convolution, summed over the pairs
    terms = [(dy_k, W_k)] (one in backward; two in r_backward, where col2im, being linear,
    is applied once to the sum).  dy_k (..., N, H_out, W_out, C_out) -> dx of shape x_shape.

    With stride 1 it is itself a 3×3 convolution with padding 1, of dy with the kernel
    flipped in space and transposed in its channels, W_flip[p, q] = W[2 − p, 2 − q]ᵀ:
        dx[n, r, c] = Σ_{p,q} dy_pad[n, r + p, c + q] W[2 − p, 2 − q]ᵀ,   i.e.  dx = im2col(dy) W_flip_m,
    which gathers (one copy of a strided view) instead of scatter-adding 9 blocks. The
    gather copies 9·C_out numbers per pixel where col2im adds up 9·C_in, so it is used
    when C_out ≤ C_in (not for a first layer reading a few input channels).
    """
    (dy, W), *more = terms
    if stride == 1 and W.shape[-1] <= W.shape[-2]:
        dx = im2col(dy, 1) @ _matrix(_flip(W))
        for dy, W in more:
            dx += im2col(dy, 1) @ _matrix(_flip(W))
        return dx.reshape(x_shape)
    dcols = _rows(dy) @ _T(_matrix(W))
    for dy, W in more:
        dcols += _rows(dy) @ _T(_matrix(W))
    return col2im(dcols, x_shape, stride)


def param_grads(dy, cache):
    """backward's dparams alone: dW = colsᵀ dy, db = Σ dy (for a first layer, whose dx is unused)."""
    cols, W, _, _ = cache
    dy_m = _rows(dy)
    return {"W": (_T(cols) @ dy_m).reshape(W.shape), "b": _sum_rows(dy_m)}


def backward(dy, cache):
    _, W, x_shape, stride = cache
    return input_grad([(dy, W)], x_shape, stride), param_grads(dy, cache)


def r_forward(params, x, Rparams, Rx, cache):
    cols, W, x_shape, stride = cache
    RW, Rb = Rparams["W"], Rparams["b"]
    Ry = cols @ _matrix(RW)
    Rcols = None
    if Rx is not None:
        Rcols = im2col(Rx, stride)
        Ry += Rcols @ _matrix(W)
    Ry += Rb[..., None, :]
    return Ry.reshape(_out_shape(x_shape, stride, W.shape[-1])), (Rcols, RW)


def r_param_grads(dy, Rdy, cache, rcache):
    """r_backward's Rdparams alone: R{dW} = cols(Rx)ᵀ dy + colsᵀ R{dy}, R{db} = Σ R{dy}."""
    cols, W, _, _ = cache
    Rcols, _ = rcache
    Rdy_m = _rows(Rdy)
    RdW = _T(cols) @ Rdy_m
    if Rcols is not None:
        RdW += _T(Rcols) @ _rows(dy)
    return {"W": RdW.reshape(W.shape), "b": _sum_rows(Rdy_m)}


def r_backward(dy, Rdy, cache, rcache):
    _, W, x_shape, stride = cache
    _, RW = rcache
    Rdx = input_grad([(Rdy, W), (dy, RW)], x_shape, stride)
    return Rdx, r_param_grads(dy, Rdy, cache, rcache)
