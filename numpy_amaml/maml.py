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

α has one of four layouts (``alpha_layout``; docs/method.md §2, §4, §13):
    a float                          one rate (MAML, Alpha MAML)
    {name: float}                    one rate per tensor (--per-layer-alpha)
    {name: array shaped like θ}      one rate per parameter (Meta-SGD)
    a list of K of these             one rate (layout) per inner step k (LSLR: of {name: float})
The inner step is then φ_{k+1} = φ_k − α_k ⊙ ∇L^tr(φ_k) (α_k broadcast over the task
axis), the reverse pass λ_k = λ_{k+1} − H(α_k ⊙ λ_{k+1}), and ∂J/∂α has α's layout:
    ∂J/∂α_k = −(1/B) Σ_i λ_{i,k+1} ⊙ ∇L^tr_i(φ_{i,k}),
summed over the entries a rate covers (all, a tensor's, or one) and over the steps that
share it (all, unless α is per step). The normalized hyper-rate rule wants the same
inner product without its magnitudes (docs/method.md §10):
    cos_α = ⟨a, b⟩ / (‖a‖ ‖b‖),   a = (λ_{i,k+1})_{i,k},  b = (∇L^tr_i(φ_{i,k}))_{i,k},
per tensor for every layout but the scalar one, and there 0 for a tensor whose a or b is
zero up to rounding (``tensor_cosines``).

Memory. The reverse pass of one task needs its φ_{i,k} and inner gradients
(O(K·|θ|)), plus the activations of one support pass: the last inner step's forward and
backward sweep at φ_{K−1}, which the first HVP of the reverse pass (at that same point)
reuses (model.loss_grad_sweep / hvp_of_sweep; for K = 1 the only HVP then costs just its
R-sweeps); the other HVPs recompute their activations. The reverse pass lets each φ_k,
∇L^tr(φ_k) and λ_{k+1} go once it has used them, and ``meta_gradient`` runs a few tasks
at a time and keeps of each only what J, ∇_θ J, ∂J/∂α and cos_α need: λ_{i,0} and three
numbers per tensor and step (``alpha_terms``), and for a per-parameter α the sum over k of
λ_{i,k+1} ⊙ ∇L^tr_i(φ_{i,k}) (one more params-sized array per task, summed over the tasks
at the end, in one fixed order, so that threads give the same numbers). So its memory
hardly grows with K; the whole path
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


def alpha_layout(alpha, shapes, inner_steps=None):
    """(layout, per_step) of an inner rate α, checked against the parameter shapes {name: shape}
    (or θ itself).

    layout: "scalar" (a float), "per tensor" ({name: float}) or "per parameter" ({name: array
    of shape shapes[name]}); per_step: α is a list of rates of one such layout, one per inner
    step (exactly ``inner_steps`` of them when that is given). ValueError says what does not fit.
    """
    per_step = isinstance(alpha, (list, tuple))
    rates = list(alpha) if per_step else [alpha]
    shapes = {name: tuple(getattr(shape, "shape", shape)) for name, shape in shapes.items()}
    if per_step and (not rates or inner_steps is not None and len(rates) != inner_steps):
        raise ValueError(f"a per-step α needs one rate per inner step ({inner_steps or '≥ 1'}), got {len(rates)}")
    layouts = {_layout_of(rate, shapes) for rate in rates}
    if len(layouts) > 1:
        raise ValueError(f"the rates of a per-step α must share one layout, got {sorted(layouts)}")
    return layouts.pop(), per_step


def _layout_of(rate, shapes):
    """The layout of one step's rate (see ``alpha_layout``); shapes: {name: shape tuple}."""
    if not isinstance(rate, dict):
        if getattr(rate, "ndim", 0) != 0:
            raise ValueError(f"α must be a float, a dict {{name: rate}} or a list of these, got an array "
                             f"of shape {tuple(rate.shape)}")
        return "scalar"
    if set(rate) != set(shapes):
        raise ValueError(f"α has rates for {sorted(rate)}, the parameters are {sorted(shapes)}")
    arrays = {name for name, value in rate.items() if getattr(value, "ndim", 0) > 0}
    if not arrays:
        return "per tensor"
    for name in shapes:
        if name not in arrays or tuple(rate[name].shape) != shapes[name]:
            shape = tuple(rate[name].shape) if name in arrays else "a float"
            raise ValueError(f"a per-parameter α needs an array shaped like each tensor: α[{name!r}] is "
                             f"{shape}, the tensor {shapes[name]}")
    return "per parameter"


def rate_at_step(alpha, k):
    """α_k, the rate of inner step k: α itself, or for a per-step α (a list) its k-th rate. Steps
    beyond the list (evaluation with more steps than training) reuse its last rate."""
    if isinstance(alpha, (list, tuple)):
        return alpha[min(k, len(alpha) - 1)]
    return alpha


def _rate(rate, name):
    """Tensor ``name``'s part of one step's rate: a float, or an array shaped like the tensor
    (broadcast over the task axis when it multiplies a (B, ...) gradient)."""
    return rate[name] if isinstance(rate, dict) else rate


def inner_loop(model, theta, x_support, y_support, alpha, inner_steps):
    """Adapt θ to each task by K gradient steps on its support set.

    alpha: any layout of ``alpha_layout`` (a per-step α reuses its last rate beyond its length).
    Returns (phis, inner_grads, support_losses):
      phis[k]        = φ_k,           k = 0..K     dicts of (B, ...) arrays
      inner_grads[k] = ∇L^tr(φ_k),    k = 0..K−1
      support_losses[k] = L^tr(φ_k)   arrays of shape (B,)
    """
    alpha_layout(alpha, theta)
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
        rate = rate_at_step(alpha, k)
        phi = {name: phi[name] - _rate(rate, name) * grad[name] for name in phi}
        inner_grads.append(grad)
        support_losses.append(loss)
        phis.append(phi)
    return phis, inner_grads, support_losses, sweep


def adaptation_path(model, theta, x_support, y_support, alpha, steps):
    """The inner loop one step at a time, for evaluation and figures: yields φ_0 = θ, φ_1, ...,
    φ_steps of every task (each {name: (B, ...)}), storing nothing. A φ that is not finite
    stops it with NonFiniteError (from the model's input check) after every finite one
    before it was yielded, so an overflow at step k costs only the steps from k on. A per-step
    α (LSLR) takes its last rate for the steps beyond its length (``rate_at_step``)."""
    alpha_layout(alpha, theta)
    phi = broadcast_to_tasks(theta, x_support.shape[0])
    yield phi
    for k in range(steps):
        grad = model.loss_and_grad(phi, x_support, y_support)[1]
        rate = rate_at_step(alpha, k)
        phi = {name: phi[name] - _rate(rate, name) * grad[name] for name in phi}
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
    (query_losses (B,), support_losses (B,) = L^tr(φ_0), λ_0, step_terms, products, path):
    step_terms[:, k] = alpha_terms(λ_{k+1}, ∇L^tr(φ_k)), (B, K, T, 3); products, for a
    per-parameter α only (else None), λ_{k+1} ⊙ ∇L^tr(φ_k) summed over k (a per-step α: the
    list over k), each {name: (B, ...)}; path = (phis, inner_grads, adjoints), the lists of
    ``MetaGradient``, with ``keep_path``, else None: then each φ_k, ∇L^tr(φ_k) and λ_{k+1} is
    let go as soon as the reverse pass has used it, so that at most the φ and gradients still
    ahead of it are held.
    """
    x_support, y_support, x_query, y_query = batch
    names = list(theta)
    layout, per_step = alpha_layout(alpha, theta, inner_steps)
    phis, inner_grads, support_losses, sweep = _inner_loop(
        model, theta, x_support, y_support, alpha, inner_steps, keep_last_sweep=not first_order)
    query_losses, adjoint = model.loss_and_grad(phis[-1], x_query, y_query)   # λ_K
    adjoints, step_terms = [adjoint], [None] * inner_steps
    products = [None] * inner_steps if layout == "per parameter" and per_step else None
    if not keep_path:
        phis[-1] = None
    for k in reversed(range(inner_steps)):                                   # λ_k from λ_{k+1}
        step_terms[k] = alpha_terms(adjoint, inner_grads[k], names)
        if layout == "per parameter":                                        # λ_{k+1} ⊙ ∇L^tr(φ_k)
            product = {name: adjoint[name] * inner_grads[k][name] for name in names}
            if per_step:
                products[k] = product
            elif k == inner_steps - 1:
                products = product
            else:                                                            # Σ_k, k = K−1 .. 0
                products = {name: products[name] + product[name] for name in names}
        if not first_order:
            rate = rate_at_step(alpha, k)
            scaled = {name: _rate(rate, name) * adjoint[name] for name in adjoint}   # α_k ⊙ λ_{k+1}
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
    return query_losses, support_losses[0], adjoint, xp.stack(step_terms, axis=1), products, path


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
    alpha: any layout of ``alpha_layout`` (a per-step α: exactly K rates); inner_steps: K ≥ 1;
    keep_path: also return every task's φ_k, ∇L^tr(φ_k) and λ_k (MetaGradient.phis,
    inner_grads, adjoints), else None. The per-task part (``adapt_and_reverse``) runs over
    slices of the tasks on CPU threads (numpy_amaml.parallel; same numbers), each slice a
    chunk of ``tasks_per_chunk`` tasks at a time, keeping of each chunk λ_0, ``alpha_terms``
    and (per-parameter α) the products λ ⊙ ∇L^tr (unless ``keep_path``); the sums over tasks
    follow:

        ∇_θ J = (1/B) Σ_i λ_{i,0},     ∂J/∂α = −(1/B) ⟨a, b⟩,     cos_α = ⟨a, b⟩ / (‖a‖ ‖b‖),
        ⟨a, b⟩ = Σ_i Σ_k ⟨λ_{i,k+1}, ∇L^tr_i(φ_{i,k})⟩,  ‖a‖² = Σ_i Σ_k ‖λ_{i,k+1}‖²,  ‖b‖² likewise
    (restricted to each tensor for a dict α; to each entry for ∂J/∂α of a per-parameter α,
    −(1/B) Σ_i Σ_k λ_{i,k+1} ⊙ ∇L^tr_i(φ_{i,k}); to step k alone for a per-step α, whose
    ∂J/∂α and cos_α are lists over the steps).
    """
    if inner_steps < 1:
        raise ValueError(f"inner_steps must be ≥ 1, got {inner_steps}")
    layout, per_step = alpha_layout(alpha, theta, inner_steps)
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
    query_losses, support_losses, lambda_0, step_terms, products, *path = over_tasks(per_task, B, *batch)

    eps = float(xp.finfo(step_terms.dtype).eps)
    if per_step:                                   # step k alone: its own terms and products
        per_step_sums = [_alpha_sums(layout, step_terms[:, k].sum(axis=0), names, B, eps,
                                     products[k] if products else None) for k in range(inner_steps)]
        dJ_dalpha, cos_alpha = [sums[0] for sums in per_step_sums], [sums[1] for sums in per_step_sums]
    else:                                          # Σ_k per task, k = K−1 .. 0 as the reverse pass
        terms = 0
        for k in reversed(range(inner_steps)):
            terms = terms + step_terms[:, k]
        dJ_dalpha, cos_alpha = _alpha_sums(layout, terms.sum(axis=0), names, B, eps, products)
    result = MetaGradient(loss=float(query_losses.mean()),
                          grad={name: lambda_0[name].sum(axis=0) / B for name in theta},
                          dJ_dalpha=dJ_dalpha, cos_alpha=cos_alpha,
                          support_loss=float(support_losses.mean()))
    if keep_path:
        phis, result.inner_grads, result.adjoints = path
        result.phis = [broadcast_to_tasks(theta, B)] + phis
    return result


def _alpha_sums(layout, sums, names, B, eps, products):
    """(∂J/∂α, cos_α) of one rate layout from ``sums`` (T, 3), the sums over tasks (and the
    steps that share the rate) of ``alpha_terms``, and, for a per-parameter α, ``products``
    {name: (B, ...)}, λ ⊙ ∇L^tr per task:
        scalar          −(1/B) Σ_t ⟨a_t, b_t⟩,  and the cosine of the whole a and b;
        per tensor      {t: −(1/B) ⟨a_t, b_t⟩}, and ``tensor_cosines``;
        per parameter   {t: −(1/B) Σ_i products_i[t]} (an array shaped like the tensor),
                        and ``tensor_cosines`` (one cosine per tensor: a diagnostic).
    """
    dots, a_sq, b_sq = (dict(zip(names, column)) for column in sums.T.tolist())
    if layout == "scalar":
        return (-sum(dots.values()) / B,
                cosine(sum(dots.values()), math.sqrt(sum(a_sq.values())), math.sqrt(sum(b_sq.values()))))
    cos_alpha = tensor_cosines(dots, a_sq, b_sq, eps)
    if layout == "per tensor":
        return {name: -dots[name] / B for name in names}, cos_alpha
    return {name: -products[name].sum(axis=0) / B for name in names}, cos_alpha


def tensor_cosines(dots, a_sq, b_sq, eps):
    """{t: cos(a_t, b_t)} per tensor t from ⟨a_t, b_t⟩, ‖a_t‖², ‖b_t‖² (dicts of floats), where a
    tensor whose a_t or b_t is zero up to rounding gets 0:

        cos_t = 0   if ‖a_t‖ ≤ √ε ‖a‖  or  ‖b_t‖ ≤ √ε ‖b‖     (‖a‖² = Σ_t ‖a_t‖²; ε of the dtype)

    Such a tensor's exact vectors are 0 (a conv bias in front of batch norm: its gradient
    vanishes in exact arithmetic, and the computed one is rounding noise, ~4ε ‖a‖), and the
    cosine of two noise vectors is any number in [−1, 1]. √ε (1.5e-8 in float64, 3.5e-4 in
    float32) lies far above that noise and below every tensor that carries a gradient
    (the smallest in MAML's Omniglot CNN: 6e-3 of the whole); docs/hyper_rules.md §2.
    """
    whole_a, whole_b = sum(a_sq.values()), sum(b_sq.values())
    return {name: 0.0 if a_sq[name] <= eps * whole_a or b_sq[name] <= eps * whole_b
            else cosine(dots[name], math.sqrt(a_sq[name]), math.sqrt(b_sq[name])) for name in dots}


def meta_objective(model, theta, batch, alpha, inner_steps):
    """J(θ, α) = (1/B) Σ_i L^val_i(φ_{i,K}) alone (for finite-difference checks)."""
    phi_K = adapt(model, theta, batch[0], batch[1], alpha, inner_steps)
    return float(model.loss(phi_K, batch[2], batch[3]).mean())
