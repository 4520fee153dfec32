"""λ_max of each task's Hessian by power iteration on the hand-written HVPs (numpy_amaml.curvature).

In float64, against ``numpy.linalg.eigvalsh`` of the explicit Hessian of a tiny MLP, built
column by column from HVPs with the unit vectors (tutorial 02 builds it the same way).
"""
import numpy as np
import pytest

from numpy_amaml import architectures, op_count
from numpy_amaml.backend import asarray, backend_name, to_numpy, xp
from numpy_amaml.curvature import largest_eigenvalue
from numpy_amaml.params import broadcast_to_tasks

pytestmark = pytest.mark.usefixtures("float64")   # every check in float64 (conftest.py)


def sinusoid_data(B=4, N=10, seed=0):
    rng = np.random.default_rng(seed)
    amplitude, phase = rng.uniform(0.1, 5, (B, 1, 1)), rng.uniform(0, np.pi, (B, 1, 1))
    x = rng.uniform(-5, 5, (B, N, 1))
    return asarray(x), asarray(amplitude * np.sin(x - phase))


def explicit_hessians(model, params, x, y):
    """(B, P, P): H_i e_j for every unit vector e_j of the P parameters, all tasks at once."""
    B, names = x.shape[0], list(model.param_shapes)
    sizes = [int(np.prod(model.param_shapes[n])) for n in names]
    P = sum(sizes)
    hessians = np.zeros((B, P, P))
    for j in range(P):
        e, v, start = np.eye(P)[j], {}, 0
        for name, size in zip(names, sizes):
            block = e[start:start + size].reshape(model.param_shapes[name])
            v[name] = asarray(np.broadcast_to(block, (B,) + block.shape).copy())
            start += size
        hv = model.hvp(params, x, y, v)
        hessians[:, :, j] = np.concatenate([to_numpy(hv[n]).reshape(B, -1) for n in names], axis=1)
    return hessians


def per_task(params, B):
    return {k: xp.ascontiguousarray(v) for k, v in broadcast_to_tasks(params, B).items()}


def test_largest_eigenvalue_matches_eigvalsh_of_the_explicit_hessian():
    model = architectures.sinusoid_mlp(hidden=(4,))            # 13 parameters
    theta, (x, y) = model.init_params(seed=0), sinusoid_data(seed=0)
    hessians = explicit_hessians(model, per_task(theta, 4), x, y)
    assert np.abs(hessians - hessians.transpose(0, 2, 1)).max() < 1e-12     # an HVP of a symmetric H
    exact = np.linalg.eigvalsh(hessians)[:, -1]
    ours = largest_eigenvalue(model, theta, x, y, iterations=500, tol=1e-14)
    assert ours.shape == (4,) and ours.dtype == np.float64
    assert np.all(np.abs(ours - exact) <= 1e-6 * np.abs(exact)), (ours, exact)


def test_negative_dominant_curvature_is_shifted_away():
    """Targets far from the network's outputs make the residual part of the Hessian dominate:
    here |λ_min| > λ_max for two of the four tasks, so plain power iteration would return
    λ_min for them. The second pass on H + ρI returns λ_max for every task."""
    model = architectures.sinusoid_mlp(hidden=(2, 2))
    theta, (x, y) = model.init_params(seed=15), sinusoid_data(seed=15)
    y = y * 0 + 30.0
    eigenvalues = np.linalg.eigvalsh(explicit_hessians(model, per_task(theta, 4), x, y))
    lam_min, lam_max = eigenvalues[:, 0], eigenvalues[:, -1]
    assert list(-lam_min > lam_max) == [True, True, False, False]           # the case this test is about
    ours = largest_eigenvalue(model, theta, x, y, iterations=1000, tol=1e-14)
    assert np.all(np.abs(ours - lam_max) <= 1e-6 * np.abs(lam_max)), (ours, lam_max, lam_min)


def test_every_estimate_is_a_rayleigh_quotient_below_lambda_max():
    """With few iterations the estimate is rough, but never above λ_max (to round-off)."""
    model = architectures.sinusoid_mlp(hidden=(4,))
    theta, (x, y) = model.init_params(seed=3), sinusoid_data(seed=3)
    lam_max = np.linalg.eigvalsh(explicit_hessians(model, per_task(theta, 4), x, y))[:, -1]
    for iterations in (1, 2, 5):
        assert np.all(largest_eigenvalue(model, theta, x, y, iterations=iterations) <= lam_max * (1 + 1e-12))


def test_batched_equals_one_task_at_a_time_and_shared_equals_per_task_params():
    """Per-task params (B, ...) in one call give each task's own λ_max (as B separate calls);
    shared θ with a batched x gives the same numbers as θ copied to every task."""
    model = architectures.sinusoid_mlp(hidden=(8, 8))
    theta, (x, y) = model.init_params(seed=1), sinusoid_data(B=5, seed=1)
    rng = np.random.default_rng(2)
    params = {k: v + 0.1 * asarray(rng.standard_normal(v.shape)) for k, v in per_task(theta, 5).items()}
    batched = largest_eigenvalue(model, params, x, y, iterations=300, tol=1e-13)
    singles = np.concatenate([largest_eigenvalue(model, {k: v[i:i + 1] for k, v in params.items()},
                                                 x[i:i + 1], y[i:i + 1], iterations=300, tol=1e-13)
                              for i in range(5)])
    np.testing.assert_allclose(batched, singles, rtol=1e-8)
    assert len(set(np.round(batched, 6))) == 5                               # five different tasks

    shared = largest_eigenvalue(model, theta, x, y, iterations=50)
    copied = largest_eigenvalue(model, per_task(theta, 5), x, y, iterations=50)
    np.testing.assert_allclose(shared, copied, rtol=1e-13)


def test_x_without_a_task_axis_is_refused():
    model = architectures.sinusoid_mlp(hidden=(4,))
    x, y = sinusoid_data(B=1)
    with pytest.raises(ValueError, match="task axis"):
        largest_eigenvalue(model, model.init_params(), x[0], y[0])


@pytest.mark.skipif(backend_name() != "numpy", reason="numpy_amaml.op_count counts NumPy arrays")
def test_the_host_reads_one_boolean_per_iteration():
    """Every number of the power iteration stays on the backend: per iteration the host reads
    only whether every task stopped, then once whether a second pass is needed, and once the
    result (counted along the CuPy backend's code path by numpy_amaml.op_count)."""
    iterations = 5
    with op_count.counting() as tally:
        model = architectures.sinusoid_mlp(hidden=(4,))
        theta, (x, y) = model.init_params(seed=0), sinusoid_data(seed=0)
        tally.reset()
        lam = largest_eigenvalue(model, theta, x, y, iterations=iterations, tol=0.0)   # never settles early
    reads = {where: n for where, n in tally.host_reads.items() if where.startswith("curvature.")}
    assert reads == {"curvature._power_iteration": 2 * iterations, "curvature.largest_eigenvalue": 2}
    assert isinstance(lam, np.ndarray) and not isinstance(lam, op_count.CountingArray) and lam.dtype == np.float64
