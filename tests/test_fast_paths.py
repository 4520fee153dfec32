"""The speed-ups beside the plain computations, each against the plain one:

* param_grads / r_param_grads (backward / r_backward without the input gradient, for
  a first layer) equal the dparams of backward / r_backward, and the naive convolution's;
* a kept sweep (Model.loss_grad_sweep + hvp_of_sweep) gives the same H v as hvp;
* meta_gradient on chunks of a few tasks gives the same numbers, bit for bit, as on
  the whole batch; the chunk size follows the model's largest activation.
(The float64 finite-difference checks of every layer, model and meta-gradient are in
test_layers_*.py, test_model.py and test_maml.py, unchanged.)"""
import platform
import sys

import numpy as np
import pytest

from numpy_amaml import allocator, architectures, backend, maml
from numpy_amaml.backend import to_numpy, xp
from numpy_amaml.gradcheck import rel_error
from numpy_amaml.layers import conv2d, conv2d_naive, linear
from numpy_amaml.maml import TaskBatch, meta_gradient

pytestmark = pytest.mark.usefixtures("float64")


def randn(rng, *shape):
    return xp.asarray(rng.standard_normal(shape))


def assert_equal(a, b):
    """Two arrays or dicts of arrays are equal, bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(to_numpy(a[k]), to_numpy(b[k]), err_msg=k)
    else:
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("B, N, H, C_in, C_out, stride", [(None, 2, 5, 1, 3, 1), (2, 3, 6, 1, 4, 2), (2, 2, 5, 3, 2, 2)])
def test_conv2d_param_grads_equal_backward_and_naive(B, N, H, C_in, C_out, stride):
    rng = np.random.default_rng(0)
    lead = () if B is None else (B,)
    x, Rx = randn(rng, *lead, N, H, H, C_in), randn(rng, *lead, N, H, H, C_in)
    params = {"W": randn(rng, *lead, 3, 3, C_in, C_out), "b": randn(rng, *lead, C_out)}
    Rparams = {"W": randn(rng, *lead, 3, 3, C_in, C_out), "b": randn(rng, *lead, C_out)}
    for tangent in (Rx, None):                     # None: the data's tangent, as for a first layer
        y, cache = conv2d.forward(params, x, stride=stride)
        dy, Rdy = randn(rng, *y.shape), randn(rng, *y.shape)
        _, rcache = conv2d.r_forward(params, x, Rparams, tangent, cache)
        assert_equal(conv2d.param_grads(dy, cache), conv2d.backward(dy, cache)[1])
        assert_equal(conv2d.r_param_grads(dy, Rdy, cache, rcache), conv2d.r_backward(dy, Rdy, cache, rcache)[1])
        # and the naive loops agree
        _, naive_cache = conv2d_naive.forward(params, x, stride=stride)
        _, naive_rcache = conv2d_naive.r_forward(params, x, Rparams, tangent, naive_cache)
        naive = conv2d_naive.r_backward(dy, Rdy, naive_cache, naive_rcache)[1]
        fast = conv2d.r_param_grads(dy, Rdy, cache, rcache)
        assert max(rel_error(fast[k], naive[k]) for k in fast) <= 1e-12
        assert rel_error(conv2d.param_grads(dy, cache)["W"], conv2d_naive.backward(dy, naive_cache)[1]["W"]) <= 1e-12


def test_linear_param_grads_equal_backward():
    rng = np.random.default_rng(1)
    x, Rx = randn(rng, 2, 4, 3), randn(rng, 2, 4, 3)
    params = {"W": randn(rng, 2, 3, 5), "b": randn(rng, 2, 5)}
    Rparams = {"W": randn(rng, 2, 3, 5), "b": randn(rng, 2, 5)}
    for tangent in (Rx, None):
        y, cache = linear.forward(params, x)
        dy, Rdy = randn(rng, *y.shape), randn(rng, *y.shape)
        _, rcache = linear.r_forward(params, x, Rparams, tangent, cache)
        assert_equal(linear.param_grads(dy, cache), linear.backward(dy, cache)[1])
        assert_equal(linear.r_param_grads(dy, Rdy, cache, rcache), linear.r_backward(dy, Rdy, cache, rcache)[1])


def cnn_problem(B, downsample="maxpool", seed=0):
    rng = np.random.default_rng(seed)
    model = architectures.omniglot_cnn(ways=3, channels=4, downsample=downsample, image_size=12, blocks=2)
    x = backend.asarray(rng.random((B, 3, 12, 12, 1)))
    labels = xp.asarray(np.tile(np.arange(3), (B, 1)))
    return model, model.init_params(seed), x, labels, rng


@pytest.mark.parametrize("shared", [True, False])
def test_hvp_of_a_kept_sweep_equals_hvp(shared):
    model, theta, x, y, rng = cnn_problem(B=3, downsample="stride")
    params = theta if shared else {k: backend.asarray(rng.standard_normal((3,) + v.shape)) * 0.1 + v
                                   for k, v in theta.items()}
    v = {k: backend.asarray(rng.standard_normal(a.shape)) for k, a in params.items()}
    loss, grads, sweep = model.loss_grad_sweep(params, x, y)
    plain_loss, plain_grads, plain_hv = model.loss_grad_hvp(params, x, y, v)
    assert_equal(loss, plain_loss)
    assert_equal(grads, plain_grads)
    assert_equal(model.hvp_of_sweep(sweep, v), plain_hv)
    u = {k: 2 * a for k, a in v.items()}               # a second HVP from the same sweep
    assert_equal(model.hvp_of_sweep(sweep, u), model.hvp(params, x, y, u))


def test_hvp_of_sweep_checks_the_task_axis_of_v():
    model, theta, x, y, rng = cnn_problem(B=3)
    phi = {k: xp.stack([v] * 3) for k, v in theta.items()}
    _, _, sweep = model.loss_grad_sweep(phi, x, y)
    with pytest.raises(ValueError, match="task axis"):
        model.hvp_of_sweep(sweep, theta)


def assert_same_numbers(a, b):
    """Bit for bit on NumPy; on CuPy to round-off (rel_error ≤ 1e-12, float64): cuBLAS and
    CuPy's reductions may choose other kernels for another number of tasks per call."""
    if backend.backend_name() == "numpy":
        assert_equal(a, b)
    else:
        assert rel_error(a, b) <= 1e-12


@pytest.mark.parametrize("K, first_order", [(1, False), (2, False), (2, True)])
def test_meta_gradient_in_chunks_of_tasks_is_unchanged(monkeypatch, K, first_order):
    """Chunks of 2 + 2 + 1 tasks give the numbers of the whole batch. On NumPy a smaller
    CHUNK_FLOATS makes the chunks; on CuPy tasks_per_chunk keeps the whole batch whatever
    CHUNK_FLOATS is (the GPU wants it whole), so the test sets the chunk size itself."""
    model, theta, x, y, _ = cnn_problem(B=5)
    batch = TaskBatch(x, y, x[:, ::-1], y)
    whole = meta_gradient(model, theta, batch, 0.1, K, first_order, keep_path=True)
    assert maml.tasks_per_chunk(model, 3, 5) == 5
    monkeypatch.setattr(maml, "CHUNK_FLOATS", 2 * 3 * model.largest_activation())   # 2 tasks per chunk: 2 + 2 + 1
    if backend.backend_name() == "numpy":
        assert maml.tasks_per_chunk(model, 3, 5) == 2
    else:
        assert maml.tasks_per_chunk(model, 3, 5) == 5
        monkeypatch.setattr(maml, "tasks_per_chunk", lambda model, samples_per_task, tasks: 2)
    chunked = meta_gradient(model, theta, batch, 0.1, K, first_order, keep_path=True)
    for name in ("loss", "support_loss", "dJ_dalpha", "cos_alpha", "grad"):
        assert_same_numbers(getattr(chunked, name), getattr(whole, name))
    for name in ("phis", "inner_grads", "adjoints"):
        for a, b in zip(getattr(chunked, name), getattr(whole, name), strict=True):
            assert_same_numbers(a, b)


def test_largest_activation_and_tasks_per_chunk():
    assert architectures.sinusoid_mlp().largest_activation() == 40
    maxpool = architectures.omniglot_cnn(downsample="maxpool")
    strided = architectures.omniglot_cnn(downsample="stride")
    assert maxpool.largest_activation() == 28 * 28 * 64          # conv1's output
    assert strided.largest_activation() == 14 * 14 * 64
    if backend.backend_name() == "numpy":
        assert maml.tasks_per_chunk(maxpool, 5, 32) == 1
        assert maml.tasks_per_chunk(strided, 5, 32) == maml.CHUNK_FLOATS // (5 * 14 * 14 * 64) == 4
        assert maml.tasks_per_chunk(architectures.sinusoid_mlp(), 10, 25) == 25    # the sinusoid: one chunk
    else:
        assert maml.tasks_per_chunk(maxpool, 5, 32) == 32


def test_keeping_freed_memory_changes_no_number():
    """numpy_amaml.allocator only tells glibc to reuse freed blocks: on Linux/glibc it reports
    success, and a meta-gradient afterwards is bit for bit the one before."""
    model, theta, x, y, _ = cnn_problem(B=3)
    batch = TaskBatch(x, y, x[:, ::-1], y)
    before = meta_gradient(model, theta, batch, 0.1, 2)
    applied = allocator.keep_freed_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied
    after = meta_gradient(model, theta, batch, 0.1, 2)
    assert (after.loss, after.dJ_dalpha, after.cos_alpha) == (before.loss, before.dJ_dalpha, before.cos_alpha)
    assert_equal(after.grad, before.grad)
