"""MAML's inner loop and its exact reverse pass (docs/method.md §2–§4), batched over tasks.

Notation (names in the code):  θ ``theta`` meta-parameters, φ_{i,k} ``phis[k]``
per-task adapted parameters with a leading task axis (B, ...), α ``alpha`` the
inner learning rate, λ_{i,k} ``adjoints[k]``, K ``inner_steps``, B tasks.

Inner loop (every task at once):
    φ_{i,0} = θ,   φ_{i,k+1} = φ_{i,k} − α ∇L^tr_i(φ_{i,k}),   k = 0 .. K−1
Meta-objective:
    J(θ, α) = (1/B) Σ_i L^val_i(φ_{i,K})
Reverse pass (adjoints; H^tr_i v is an exact Hessian-vector product, R-operator):
    λ_{i,K} = ∇L^val_i(φ_{i,K})
    λ_{i,k} = λ_{i,k+1} − H^tr_i(φ_{i,k}) (α λ_{i,k+1})      k = K−1 .. 0
    ∇_θ J   = (1/B) Σ_i λ_{i,0}
First-order MAML drops the H terms: λ_{i,0} = λ_{i,K}.
α hypergradient (reuses the inner gradients and the adjoints):
    ∂J/∂α = −(1/B) Σ_i Σ_k ⟨λ_{i,k+1}, ∇L^tr_i(φ_{i,k})⟩
    (K = 1: one dot product of ∇L^val_i(φ_{i,1}) and ∇L^tr_i(θ), both already computed.)

α is a float (the paper) or a dict {param name: float} (one rate per tensor); the
inner update scales each tensor's gradient by its own rate, and ∂J/∂α is then a
dict restricted tensor by tensor. The normalized hyper-rate rule wants the same
inner product without its magnitudes (docs/method.md §10):
    cos_α = ⟨a, b⟩ / (‖a‖ ‖b‖),   a = (λ_{i,k+1})_{i,k},  b = (∇L^tr_i(φ_{i,k}))_{i,k}.

Memory. The reverse pass of one task needs its φ_{i,k} and inner gradients
(O(K·|θ|)), plus the activations of one support pass: the last inner step's forward and
backward sweep at φ_{K−1}, which the first HVP of the reverse pass (at that same point)
reuses (model.loss_grad_sweep / hvp_of_sweep; for K = 1 the only HVP then costs just its
R-sweeps); the other HVPs recompute their activations. The reverse pass lets each φ_k,
∇L^tr(φ_k) and λ_{k+1} go once it has used them, and ``meta_gradient`` runs a few tasks
at a time and keeps of each only what J, ∇_θ J, ∂J/∂α and cos_α need: λ_{i,0} and three
numbers per tensor (``alpha_terms``). So its memory hardly grows with K; the whole path
(every φ_{i,k}, ∇L^tr_i(φ_{i,k}), λ_{i,k}, O(K·B·|θ|)) is kept only on request
(``keep_path=True``, for the tutorials and tests that look inside).

Everything up to the sums over tasks is per task (``adapt_and_reverse``), so
``meta_gradient`` may run it on slices of the tasks at once (CPU threads,
numpy_amaml.parallel) before it sums; the numbers do not change.
"""
import math
from dataclasses import dataclass
from typing import NamedTuple

from numpy_amaml.backend import backend_name, xp
from numpy_amaml.optim import cosine
from numpy_amaml.parallel import join_tasks, over_tasks
from numpy_amaml.params import broadcast_to_tasks


class TaskBatch(NamedTuple):
    """B tasks: support (x_support, y_support) for the inner loop, query for J."""
    x_support: object    # (B, N_support, *sample_shape)
    y_support: object    # (B, N_support, ...) targets or integer labels
    x_query: object      # (B, N_query, *sample_shape)
    y_query: object


@dataclass
class MetaGradient:
    """Everything one meta-batch gives: J, ∇_θ J, ∂J/∂α, cos_α, and on request the path."""
    loss: float                 # J = mean_i L^val_i(φ_{i,K})   (post-update query loss)
    grad: dict                  # ∇_θ J, shaped like θ
    dJ_dalpha: object           # float, or dict {name: float} for per-tensor α
    cos_alpha: object           # cos_α = −B ∂J/∂α / (‖a‖ ‖b‖), float or dict like dJ_dalpha
    support_loss: float         # mean_i L^tr_i(θ)              (pre-update support loss)
    phis: list = None           # keep_path only: φ_0 .. φ_K, each {name: (B, ...)}
    inner_grads: list = None    # keep_path only: ∇L^tr(φ_0) .. ∇L^tr(φ_{K−1}), each {name: (B, ...)}
    adjoints: list = None       # keep_path only: λ_0 .. λ_K, each {name: (B, ...)}


def _rate(alpha, name):
    return alpha[name] if isinstance(alpha, dict) else alpha


def inner_loop(model, theta, x_support, y_support, alpha, inner_steps):
    """Adapt θ to each task by K gradient steps on its support set.

    Returns (phis, inner_grads, support_losses):
      phis[k]        = φ_k,           k = 0..K     dicts of (B, ...) arrays
      inner_grads[k] = ∇L^tr(φ_k),    k = 0..K−1
      support_losses[k] = L^tr(φ_k)   arrays of shape (B,)
    """
    return _inner_loop(model, theta, x_support, y_support, alpha, inner_steps)[:3]


def _inner_loop(model, theta, x_support, y_support, alpha, inner_steps, keep_last_sweep=False):
    """inner_loop, and with ``keep_last_sweep`` also the model's sweep of the last step
    (at φ_{K−1}; model.loss_grad_sweep), from which the reverse pass takes its first
    HVP without repeating that step's forward and backward sweeps; else None."""
    phi = broadcast_to_tasks(theta, x_support.shape[0])
    phis, inner_grads, support_losses, sweep = [phi], [], [], None
    for k in range(inner_steps):
        if keep_last_sweep and k == inner_steps - 1:
            loss, grad, sweep = model.loss_grad_sweep(phi, x_support, y_support)
        else:
            loss, grad = model.loss_and_grad(phi, x_support, y_support)
        phi = {name: phi[name] - _rate(alpha, name) * grad[name] for name in phi}
        inner_grads.append(grad)
        support_losses.append(loss)
        phis.append(phi)
    return phis, inner_grads, support_losses, sweep


def adaptation_path(model, theta, x_support, y_support, alpha, steps):
    """The inner loop one step at a time, for evaluation and figures: yields φ_0 = θ, φ_1, ...,
    φ_steps of every task (each {name: (B, ...)}), storing nothing. A φ that is not finite
    stops it with NonFiniteError (from the model's input check) after every finite one
    before it was yielded, so an overflow at step k costs only the steps from k on."""
    phi = broadcast_to_tasks(theta, x_support.shape[0])
    yield phi
    for _ in range(steps):
        grad = model.loss_and_grad(phi, x_support, y_support)[1]
        phi = {name: phi[name] - _rate(alpha, name) * grad[name] for name in phi}
        yield phi


def adapt(model, theta, x_support, y_support, alpha, inner_steps):
    """φ_K only (for evaluation): the adapted per-task parameters after K steps."""
    return inner_loop(model, theta, x_support, y_support, alpha, inner_steps)[0][-1]


def per_task_dot(u, v):
    """⟨u_i, v_i⟩ for every task i of two (n, ...) arrays: (n,), as one batched product
    (n, 1, P) @ (n, P, 1) (one call, where a product and a sum would be two passes)."""
    n = u.shape[0]
    return (u.reshape(n, 1, -1) @ v.reshape(n, -1, 1)).reshape(n)


def alpha_terms(adjoint, inner_grad, names):
    """What ∂J/∂α and cos_α need of one inner step k, for n tasks: an (n, T, 3) array holding,
    for task i and tensor t = names[t] (each restricted to that tensor),

        [i, t, 0] = ⟨λ_{i,k+1}, ∇L^tr_i(φ_{i,k})⟩,   [i, t, 1] = ‖λ_{i,k+1}‖²,   [i, t, 2] = ‖∇L^tr_i(φ_{i,k})‖²

    adjoint: λ_{k+1}, inner_grad: ∇L^tr(φ_k), each {name: (n, ...)}. Per task, so that chunks
    and threads join along the task axis like everything else.
    """
    columns = []
    for name in names:
        lam, g = adjoint[name], inner_grad[name]
        columns += [per_task_dot(lam, g), per_task_dot(lam, lam), per_task_dot(g, g)]
    return xp.stack(columns, axis=1).reshape(-1, len(names), 3)


def adapt_and_reverse(model, theta, batch, alpha, inner_steps, first_order=False, keep_path=False):
    """The per-task part of a meta-gradient: the inner loop, then the reverse pass.

    Nothing is summed over tasks here, so any slice of the tasks can run on its own
    (``meta_gradient`` runs slices on CPU threads). Returns
    (query_losses (B,), support_losses (B,) = L^tr(φ_0), λ_0, terms, path):
    terms = Σ_k alpha_terms(λ_{k+1}, ∇L^tr(φ_k)), (B, T, 3); path = (phis, inner_grads,
    adjoints), the lists of ``MetaGradient``, with ``keep_path``, else None: then each φ_k,
    ∇L^tr(φ_k) and λ_{k+1} is let go as soon as the reverse pass has used it, so that at
    most the φ and gradients still ahead of it are held.
    """
    x_support, y_support, x_query, y_query = batch
    names = list(theta)
    phis, inner_grads, support_losses, sweep = _inner_loop(
        model, theta, x_support, y_support, alpha, inner_steps, keep_last_sweep=not first_order)
    query_losses, adjoint = model.loss_and_grad(phis[-1], x_query, y_query)   # λ_K
    adjoints, terms = [adjoint], 0
    if not keep_path:
        phis[-1] = None
    for k in reversed(range(inner_steps)):                                   # λ_k from λ_{k+1}
        terms = terms + alpha_terms(adjoint, inner_grads[k], names)
        if not first_order:
            scaled = {name: _rate(alpha, name) * adjoint[name] for name in adjoint}
            if k == inner_steps - 1:      # at φ_{K−1}: the inner loop's last sweep, kept
                H_scaled = model.hvp_of_sweep(sweep, scaled)
                sweep = None              # frees its activations before the HVPs at φ_{K−2} ..
            else:
                H_scaled = model.hvp(phis[k], x_support, y_support, scaled)
            adjoint = {name: adjoint[name] - H_scaled[name] for name in adjoint}
        if keep_path:
            adjoints.insert(0, adjoint)
        else:
            phis[k] = inner_grads[k] = None
    path = (phis, inner_grads, adjoints) if keep_path else None
    return query_losses, support_losses[0], adjoint, terms, path


CHUNK_FLOATS = 2**18     # ≈ 1 MiB of float32: the largest activation of one chunk of tasks


def tasks_per_chunk(model, samples_per_task, tasks):
    """How many of ``tasks`` tasks ``meta_gradient`` runs through one batched computation:
    as many as keep the model's largest activation within CHUNK_FLOATS numbers (at least one).

    The results do not depend on it (the tasks never interact), only the speed: a few
    tasks' activations stay in the CPU's caches from one layer to the next, and their
    buffers are small enough for the allocator to reuse, where the whole batch's would
    be fresh memory every time (page faults). One core, 32 tasks of MAML's Omniglot
    CNN: 1.6× faster for the max-pool model (1 task per chunk), 1.35× for the strided
    one (4 tasks). On CuPy the GPU wants the whole batch: one chunk.
    """
    if backend_name() != "numpy":
        return tasks
    return min(tasks, max(1, CHUNK_FLOATS // (samples_per_task * model.largest_activation())))


def meta_gradient(model, theta, batch, alpha, inner_steps, first_order=False, keep_path=False):
    """J, ∇_θ J, ∂J/∂α and cos_α for one meta-batch (exact, or first-order with ``first_order``).

    theta: {name: array} shared meta-parameters; batch: a TaskBatch of B tasks;
    alpha: float or {name: float}; inner_steps: K ≥ 1; keep_path: also return every
    task's φ_k, ∇L^tr(φ_k) and λ_k (MetaGradient.phis, inner_grads, adjoints), else None.
    The per-task part (``adapt_and_reverse``) runs over slices of the tasks on CPU
    threads (numpy_amaml.parallel; same numbers), each slice a chunk of
    ``tasks_per_chunk`` tasks at a time, keeping of each chunk λ_0 and ``alpha_terms``
    (unless ``keep_path``); the sums over tasks follow:

        ∇_θ J = (1/B) Σ_i λ_{i,0},     ∂J/∂α = −(1/B) ⟨a, b⟩,     cos_α = ⟨a, b⟩ / (‖a‖ ‖b‖),
        ⟨a, b⟩ = Σ_i Σ_k ⟨λ_{i,k+1}, ∇L^tr_i(φ_{i,k})⟩,  ‖a‖² = Σ_i Σ_k ‖λ_{i,k+1}‖²,  ‖b‖² likewise
    (restricted to each tensor for a dict α).
    """
    if inner_steps < 1:
        raise ValueError(f"inner_steps must be ≥ 1, got {inner_steps}")
    B, names = batch[0].shape[0], list(theta)
    chunk = tasks_per_chunk(model, max(batch[0].shape[1], batch[2].shape[1]), B)

    def per_task(*task_slice):                     # one thread's slice, a chunk of tasks at a time
        parts = []
        for i in range(0, task_slice[0].shape[0], chunk):
            *part, path = adapt_and_reverse(model, theta, TaskBatch(*(a[i:i + chunk] for a in task_slice)),
                                            alpha, inner_steps, first_order, keep_path)
            if keep_path:                          # φ_0 = θ: a broadcast view, added back below
                phis, inner_grads, adjoints = path
                part += [phis[1:], inner_grads, adjoints]
            parts.append(tuple(part))
        return parts[0] if len(parts) == 1 else join_tasks(parts)
    query_losses, support_losses, lambda_0, terms, *path = over_tasks(per_task, B, *batch)

    dots, a_sq, b_sq = (dict(zip(names, column)) for column in terms.sum(axis=0).T.tolist())
    if isinstance(alpha, dict):                     # per tensor
        dJ_dalpha = {name: -dots[name] / B for name in names}
        cos_alpha = {name: cosine(dots[name], math.sqrt(a_sq[name]), math.sqrt(b_sq[name])) for name in names}
    else:
        dJ_dalpha = -sum(dots.values()) / B
        cos_alpha = cosine(sum(dots.values()), math.sqrt(sum(a_sq.values())), math.sqrt(sum(b_sq.values())))
    result = MetaGradient(loss=float(query_losses.mean()),
                          grad={name: lambda_0[name].sum(axis=0) / B for name in theta},
                          dJ_dalpha=dJ_dalpha, cos_alpha=cos_alpha,
                          support_loss=float(support_losses.mean()))
    if keep_path:
        phis, result.inner_grads, result.adjoints = path
        result.phis = [broadcast_to_tasks(theta, B)] + phis
    return result


def meta_objective(model, theta, batch, alpha, inner_steps):
    """J(θ, α) = (1/B) Σ_i L^val_i(φ_{i,K}) alone (for finite-difference checks)."""
    phi_K = adapt(model, theta, batch[0], batch[1], alpha, inner_steps)
    return float(model.loss(phi_K, batch[2], batch[3]).mean())
