"""Softmax cross-entropy over C classes, averaged over the N samples of each task.

    logits z (..., N, C), integer labels (..., N);  p = softmax(z)
    L = −(1/N) Σ_n log p[n, label_n]     computed as logsumexp(z) − z[label], stably
    dz = (p − onehot(label)) / N
    R{dz} = (p ⊙ Rz − p ⟨p, Rz⟩) / N     (the softmax Jacobian applied to Rz)
"""
from numpy_amaml.backend import xp


def forward(logits, labels):
    if labels.dtype.kind not in "iu":
        raise TypeError(f"softmax cross-entropy: labels must be integers, got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"softmax cross-entropy: labels shape {tuple(labels.shape)} does not match "
                         f"logits shape {tuple(logits.shape)} without its class axis")
    C = logits.shape[-1]
    if labels.size and bool(((labels < 0) | (labels >= C)).any()):         # one check, one device sync
        raise ValueError(f"softmax cross-entropy: labels must lie in [0, {C}), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    N = logits.shape[-2]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))
    log_p = shifted - log_z
    picked = xp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    loss = -picked.sum(axis=-1) / N
    p = xp.exp(log_p)
    return loss, (p, labels, N)


def backward(cache):
    p, labels, N = cache
    onehot = labels[..., None] == xp.arange(p.shape[-1])     # (..., N, C) booleans
    return (p - onehot) / N


def r_backward(Rlogits, cache):
    p, labels, N = cache
    pRz = p * Rlogits
    return (pRz - p * pRz.sum(axis=-1, keepdims=True)) / N
