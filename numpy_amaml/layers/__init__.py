"""Stateless layers. Each module has four functions (docs/method.md §7):

    forward(params, x, **config)            -> (y, cache)
    backward(dy, cache)                     -> (dx, dparams)        vector-Jacobian product
    r_forward(params, x, Rparams, Rx, cache) -> (Ry, rcache)        Jacobian-vector product
    r_backward(dy, Rdy, cache, rcache)      -> (Rdx, Rdparams)      R-op of the backward pass

A layer with parameters may also offer the parameter half of the two backward maps,
for a first layer, whose input is data and needs no gradient (conv2d, linear):

    param_grads(dy, cache)                  -> dparams      = backward(dy, cache)[1]
    r_param_grads(dy, Rdy, cache, rcache)   -> Rdparams     = r_backward(...)[1]

Shapes carry an optional leading task axis ``...`` = () or (B,): when the params
have it, x has it too and every task is computed independently in one batched op.
``Rx=None`` means the input does not depend on the parameters (tangent zero).
Images are NHWC: (..., N, H, W, C).
"""
from numpy_amaml.layers import linear, relu, conv2d, conv2d_naive, batchnorm, maxpool, meanpool, flatten  # noqa: F401
