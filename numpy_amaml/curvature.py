"""Curvature of each task's loss: λ_max of its Hessian, from the same hand-written HVPs.

Power iteration on H v = ``model.hvp`` (H is never formed), every task of a batch at once:
    v_0 random,   v_{j+1} = (H − s I) v_j / ‖(H − s I) v_j‖,   μ_j = ⟨v_j, H v_j⟩   (‖v_j‖ = 1)
v_j turns towards the eigenvector whose eigenvalue lies farthest from the shift s, at the
rate |λ_2 − s| / |λ_1 − s| per iteration (μ_j converges twice as fast, H being symmetric).
Every Rayleigh quotient μ_j is ≤ λ_max, the largest (algebraic) eigenvalue.

Pass 1, s = 0, finds the eigenvalue largest in magnitude: μ → λ_dom and ρ = ‖H v‖ → |λ_dom|
(ρ converges even when +ρ and −ρ are both eigenvalues and μ does not). Where pass 1 settled
(μ moved by at most tol·|μ|) with μ ≥ ρ/2, the dominant eigenvalue is positive and μ is
λ_max. Elsewhere negative curvature dominates, or nearly ties with the positive one and
pass 1 did not settle: pass 2 runs on H + ρ I (s = −ρ), whose eigenvalues lie in
[λ_min + ρ, λ_max + ρ] ⊂ [≈0, 2ρ], so that λ_max + ρ is now the farthest from zero. Its μ is
again a Rayleigh quotient of H, and the result is the larger of the two passes' μ. This is
the eigenvalue of the inner step's stability bound α λ_max < 2 (docs/method.md §11).
"""
import numpy as np          # the host Generator of the random start, and the float64 result

from numpy_amaml.backend import asarray, to_numpy, xp
from numpy_amaml.params import broadcast_to_tasks
from numpy_amaml.validation import check_params


def _per_task_dot(a, b):
    """(B,): ⟨a_i, b_i⟩ over every tensor of task i, on the backend."""
    return sum(xp.reshape(a[k] * b[k], (a[k].shape[0], -1)).sum(axis=1) for k in a)


def _per_task(s, like):
    """(B,) -> (B, 1, ..., 1): one number per task, to broadcast against ``like`` (a view)."""
    return xp.reshape(s, (-1,) + (1,) * (like.ndim - 1))


def _power_iteration(hvp, v, shift, iterations, tol):
    """Power iteration on H − s I for every task: returns (μ, ρ, settled), each (B,) on the
    backend: μ = ⟨v, H v⟩ and ρ = ‖(H − s I) v‖ at the last unit vector v, and whether μ moved
    by at most tol·|μ| in the last iteration. The host reads one boolean per iteration (do all
    tasks stop?); every other number stays on the backend."""
    v = {k: v[k] / _per_task(xp.sqrt(_per_task_dot(v, v)), v[k]) for k in v}
    mu = xp.full(shift.shape, xp.nan, dtype=shift.dtype)
    for _ in range(iterations):
        hv = hvp(v)
        mu_new = _per_task_dot(v, hv)                                        # ⟨v, H v⟩, ‖v‖ = 1
        w = {k: hv[k] - _per_task(shift, v[k]) * v[k] for k in v}            # (H − s I) v
        rho = xp.sqrt(_per_task_dot(w, w))
        v = {k: w[k] / _per_task(xp.where(rho > 0, rho, xp.ones_like(rho)), w[k]) for k in w}
        settled = xp.abs(mu_new - mu) <= tol * xp.abs(mu_new)
        mu = mu_new
        if settled.all():
            break
    return mu, rho, settled


def largest_eigenvalue(model, params, x, y, iterations=20, seed=0, tol=1e-8):
    """λ_max of H_i = ∇²L_i(params_i) on (x_i, y_i) for every task i, by power iteration.

    params: {name: array}, shared θ (shapes ``model.param_shapes``) or per task (B, ...);
    x: (B, N, *sample_shape) with its task axis; y: (B, N, ...) targets or labels.
    iterations: at most this many HVPs per pass; a second pass runs where the first did not
    settle on a positive dominant eigenvalue (module docstring), so at most 2 × iterations.
    seed: the random start v_0 ~ N(0, I), the same for both passes. tol: a pass stops once
    every task's μ moved by at most tol·|μ| in one iteration.
    Returns a NumPy float64 array of shape (B,): the largest (algebraic) eigenvalue of each
    task's Hessian, computed in the params' dtype on the backend and copied to the host once.
    Each entry is a Rayleigh quotient, hence ≤ λ_max up to round-off: an unconverged estimate
    is too small.
    """
    if iterations < 1:
        raise ValueError(f"largest_eigenvalue: iterations must be ≥ 1, got {iterations}")
    rank = len(model.input_shape) + 2
    if x.ndim != rank:
        raise ValueError(f"largest_eigenvalue: x must have a task axis, shape (B, N) + "
                         f"{model.input_shape}; got {tuple(x.shape)} (for one task pass x[None])")
    B = x.shape[0]
    if check_params(params, model.param_shapes) is None:
        params = broadcast_to_tasks(params, B)                    # shared θ: one view per task

    def hvp(v):
        return model.hvp(params, x, y, v)

    rng = np.random.default_rng(seed)
    start = {k: asarray(rng.standard_normal((B,) + shape), params[k].dtype)
             for k, shape in model.param_shapes.items()}
    dtype = next(iter(start.values())).dtype
    mu, rho, settled = _power_iteration(hvp, start, xp.zeros(B, dtype=dtype), iterations, tol)
    unsure = ~settled | (mu < rho / 2)                   # λ_dom < 0, or a near ±ρ tie
    if unsure.any():
        mu_shifted, _, _ = _power_iteration(hvp, start, xp.where(unsure, -rho, xp.zeros_like(rho)), iterations, tol)
        mu = xp.where(unsure, xp.maximum(mu, mu_shifted), mu)
    return to_numpy(mu).astype(np.float64)
