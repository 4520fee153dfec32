"""Parameter dicts: θ, φ, gradients, adjoints and HVPs are all {name: array}.

The few operations the method needs on whole dicts live here, once:
    dot(a, b)            ⟨a, b⟩ = Σ_name Σ_entries a[name] ⊙ b[name]    (a float)
    dot_per_tensor(a, b) {name: Σ_entries a[name] ⊙ b[name]}           (per-tensor α)
    norm(a)              ‖a‖ = √⟨a, a⟩
    broadcast_to_tasks(θ, B)   φ_{i,0} = θ for B tasks: read-only (B, ...) views, no copies
    flatten(a), unflatten(vector, like)    a dict as one vector and back (the meta-optimizers'
                         element-wise steps: one array operation for all tensors, not one per tensor)

With a leading task axis (B, ...) the sums run over the tasks too: ⟨λ, ∇L^tr⟩ summed over
i is exactly the Σ_i of ∂J/∂α (docs/method.md §4).
"""
import math

from numpy_amaml.backend import xp
from numpy_amaml.parallel import one_blas_thread


def dot_per_tensor(a, b):
    """{name: Σ over every entry (and task) of a[name] ⊙ b[name]}, as floats (``vdot``: one
    BLAS call per tensor, no product array). The T results are stacked where they were computed
    and read as floats once: on a GPU every read waits for the device, so one read, not T.
    BLAS runs on one thread here, as in every per-task computation (numpy_amaml.parallel): a
    threaded BLAS splits a long dot product and changes the order of its sum, and its second
    thread, waiting for a busy core, can make a dot product of microseconds take milliseconds."""
    names = list(a)
    if not names:
        return {}
    with one_blas_thread():
        return dict(zip(names, xp.stack([xp.vdot(a[name], b[name]) for name in names]).tolist()))


def dot(a, b):
    """⟨a, b⟩ over every entry of two params dicts, as a float."""
    return sum(dot_per_tensor(a, b).values())


def norm(a):
    """The Euclidean norm of a params dict, √⟨a, a⟩."""
    return math.sqrt(dot(a, a))


def broadcast_to_tasks(theta, B):
    """φ_{i,0} = θ for every one of B tasks: (B, ...) read-only views of θ's arrays, no copies."""
    return {name: xp.broadcast_to(value, (B,) + value.shape) for name, value in theta.items()}


def flatten(a):
    """One vector of every entry of the params dict ``a`` (at least one tensor), tensor after
    tensor in its key order (a copy): (Σ_name size,)."""
    return xp.concatenate([xp.ravel(value) for value in a.values()])


def unflatten(vector, like):
    """The inverse of ``flatten``: {name: the entries of ``vector`` that belong to like[name], in
    its shape}, views of ``vector`` (no copies). Only the names and shapes of ``like`` are read."""
    size = sum(value.size for value in like.values())
    if vector.shape != (size,):
        raise ValueError(f"unflatten: a vector of shape {tuple(vector.shape)} for params of {size} entries")
    out, start = {}, 0
    for name, value in like.items():
        out[name] = vector[start:start + value.size].reshape(value.shape)
        start += value.size
    return out
