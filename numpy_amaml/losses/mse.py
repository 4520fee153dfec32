"""Mean squared error, averaged over the M = N·D elements of each task.

    pred, target (..., N, D);   L = (1/M) Σ (pred − target)²   (shape ...)
    dpred = 2 (pred − target) / M
    R{dpred} = 2 Rpred / M
"""
from numpy_amaml.validation import check_float_array


def forward(pred, target):
    check_float_array(target, "MSE target")
    if pred.shape != target.shape:
        raise ValueError(f"MSE: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    diff = pred - target
    M = diff.shape[-1] * diff.shape[-2]
    loss = (diff * diff).sum(axis=(-1, -2)) / M
    return loss, (diff, M)


def backward(cache):
    diff, M = cache
    return (2.0 / M) * diff


def r_backward(Rpred, cache):
    diff, M = cache
    return (2.0 / M) * Rpred
