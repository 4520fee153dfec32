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
dict restricted tensor by tensor. Only the φ_{i,k} and the inner gradients are
stored (O(K·|θ|) memory), plus the activations of one support pass: the last inner
step's forward and backward sweep at φ_{K−1}, which the first HVP of the reverse pass
(at that same point) reuses (model.loss_grad_sweep / hvp_of_sweep; for K = 1 the only
HVP then costs just its R-sweeps). The other HVPs recompute their activations.

Everything up to the means over tasks is per task (``adapt_and_reverse``), so
``meta_gradient`` may run it on slices of the tasks at once (CPU threads,
numpy_amaml.parallel) before it takes the means; the numbers do not change.
"""
from dataclasses import dataclass
from typing import NamedTuple

from numpy_amaml.backend import backend_name
from numpy_amaml.parallel import join_tasks, over_tasks
from numpy_amaml.params import broadcast_to_tasks, dot_per_tensor


class TaskBatch(NamedTuple):
    """B tasks: support (x_support, y_support) for the inner loop, query for J."""
    x_support: object    # (B, N_support, *sample_shape)
    y_support: object    # (B, N_support, ...) targets or integer labels
    x_query: object      # (B, N_query, *sample_shape)
    y_query: object


@dataclass
class MetaGradient:
    """Everything one meta-batch gives: J, ∇_θ J, ∂J/∂α and the quantities behind them."""
    loss: float                 # J = mean_i L^val_i(φ_{i,K})   (post-update query loss)
    grad: dict                  # ∇_θ J, shaped like θ
    dJ_dalpha: object           # float, or dict {name: float} for per-tensor α
    support_loss: float         # mean_i L^tr_i(θ)              (pre-update support loss)
    phis: list                  # φ_0 .. φ_K, each {name: (B, ...)}
    inner_grads: list           # ∇L^tr(φ_0) .. ∇L^tr(φ_{K−1}), each {name: (B, ...)}
    adjoints: list              # λ_0 .. λ_K, each {name: (B, ...)}


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


def adapt_and_reverse(model, theta, batch, alpha, inner_steps, first_order=False):
    """The per-task part of a meta-gradient: the inner loop, then the reverse pass.

    Nothing is summed over tasks here, so any slice of the tasks can run on its own
    (``meta_gradient`` runs slices on CPU threads). Returns
    (query_losses (B,), support_losses [K × (B,)], phis, inner_grads, adjoints),
    the lists as in ``inner_loop`` and ``MetaGradient``.
    """
    x_support, y_support, x_query, y_query = batch
    phis, inner_grads, support_losses, sweep = _inner_loop(
        model, theta, x_support, y_support, alpha, inner_steps, keep_last_sweep=not first_order)
    query_losses, adjoint = model.loss_and_grad(phis[-1], x_query, y_query)   # λ_K
    adjoints = [adjoint]
    for k in reversed(range(inner_steps)):                                   # λ_k from λ_{k+1}
        if not first_order:
            scaled = {name: _rate(alpha, name) * adjoint[name] for name in adjoint}
            if k == inner_steps - 1:      # at φ_{K−1}: the inner loop's last sweep, kept
                H_scaled = model.hvp_of_sweep(sweep, scaled)
                sweep = None              # frees its activations before the HVPs at φ_{K−2} ..
            else:
                H_scaled = model.hvp(phis[k], x_support, y_support, scaled)
            adjoint = {name: adjoint[name] - H_scaled[name] for name in adjoint}
        adjoints.insert(0, adjoint)
    return query_losses, support_losses, phis, inner_grads, adjoints


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


def meta_gradient(model, theta, batch, alpha, inner_steps, first_order=False):
    """J, ∇_θ J and ∂J/∂α for one meta-batch (exact, or first-order with ``first_order``).

    theta: {name: array} shared meta-parameters; batch: a TaskBatch of B tasks;
    alpha: float or {name: float}; inner_steps: K ≥ 1.
    The per-task part (``adapt_and_reverse``) runs over slices of the tasks on CPU
    threads (numpy_amaml.parallel; same numbers), each slice a chunk of
    ``tasks_per_chunk`` tasks at a time; the means over tasks follow.
    """
    if inner_steps < 1:
        raise ValueError(f"inner_steps must be ≥ 1, got {inner_steps}")
    B = batch[0].shape[0]
    chunk = tasks_per_chunk(model, max(batch[0].shape[1], batch[2].shape[1]), B)

    def per_task(*task_slice):                     # one thread's slice, a chunk of tasks at a time
        n = task_slice[0].shape[0]
        if n <= chunk:
            return adapt_and_reverse(model, theta, TaskBatch(*task_slice), alpha, inner_steps, first_order)
        parts = []
        for i in range(0, n, chunk):
            q, s, phis, g, adj = adapt_and_reverse(model, theta, TaskBatch(*(a[i:i + chunk] for a in task_slice)),
                                                   alpha, inner_steps, first_order)
            parts.append((q, s, phis[1:], g, adj))   # φ_0 = θ: a broadcast view, not n copies of θ
        query_losses, support_losses, phis, inner_grads, adjoints = join_tasks(parts)
        return query_losses, support_losses, [broadcast_to_tasks(theta, n)] + phis, inner_grads, adjoints
    query_losses, support_losses, phis, inner_grads, adjoints = over_tasks(per_task, B, *batch)

    # ∂J/∂α = −(1/B) Σ_i Σ_k ⟨λ_{i,k+1}, ∇L^tr_i(φ_{i,k})⟩, tensor by tensor
    per_tensor = {name: 0.0 for name in theta}
    for k in range(inner_steps):
        for name, value in dot_per_tensor(adjoints[k + 1], inner_grads[k]).items():
            per_tensor[name] -= value / B
    dJ_dalpha = per_tensor if isinstance(alpha, dict) else sum(per_tensor.values())

    return MetaGradient(
        loss=float(query_losses.mean()),
        grad={name: adjoints[0][name].mean(axis=0) for name in theta},
        dJ_dalpha=dJ_dalpha,
        support_loss=float(support_losses[0].mean()),
        phis=phis, inner_grads=inner_grads, adjoints=adjoints)


def meta_objective(model, theta, batch, alpha, inner_steps):
    """J(θ, α) = (1/B) Σ_i L^val_i(φ_{i,K}) alone (for finite-difference checks)."""
    phi_K = adapt(model, theta, batch[0], batch[1], alpha, inner_steps)
    return float(model.loss(phi_K, batch[2], batch[3]).mean())
