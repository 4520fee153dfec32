"""Splitting the task axis over CPU threads (numpy_amaml/parallel.py) changes the
speed, not the numbers: every result must equal the one-thread result exactly."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from numpy_amaml import backend, architectures, parallel, params
from numpy_amaml.maml import TaskBatch, meta_gradient


@pytest.fixture
def restore_threads(monkeypatch):
    """Forget the thread setting (so NUMPY_AMAML_THREADS is read again) and restore it after."""
    monkeypatch.setitem(parallel._state, "threads", None)
    monkeypatch.delenv("NUMPY_AMAML_THREADS", raising=False)
    return monkeypatch


def with_threads(n, fn, *args):
    parallel.set_threads(n)
    return fn(*args)


def to_host(result):
    """A result (array, dict or tuple of these) as NumPy arrays, for exact comparison."""
    if isinstance(result, tuple):
        return tuple(to_host(r) for r in result)
    if isinstance(result, dict):
        return {k: backend.to_numpy(v) for k, v in result.items()}
    return backend.to_numpy(result)


def assert_same(a, b):
    a, b = to_host(a), to_host(b)
    if isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    else:
        np.testing.assert_array_equal(a, b)


def cnn_problem(B, seed=0):
    """A small max-pool CNN and a batch of B 3-way 1-shot tasks on random images."""
    rng = np.random.default_rng(seed)
    model = architectures.omniglot_cnn(ways=3, channels=4, downsample="maxpool", image_size=12, blocks=2)
    x = backend.asarray(rng.random((B, 3, 12, 12, 1)))
    labels = backend.array_module().asarray(np.tile(np.arange(3), (B, 1)))
    return model, model.init_params(seed), x, labels, rng


# ---- settings -------------------------------------------------------------------------

def test_default_is_one_thread(restore_threads):
    assert parallel.threads() == 1


def test_environment_variable(restore_threads):
    restore_threads.setenv("NUMPY_AMAML_THREADS", "3")
    assert parallel.threads() == 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_thread_counts_are_refused(restore_threads, bad):
    with pytest.raises(ValueError, match="threads must be an integer ≥ 1"):
        parallel.set_threads(bad)


def test_bad_environment_variable_is_named(restore_threads):
    restore_threads.setenv("NUMPY_AMAML_THREADS", "many")
    with pytest.raises(ValueError, match="NUMPY_AMAML_THREADS must be an integer ≥ 1, got 'many'"):
        parallel.threads()


@pytest.mark.parametrize("B, n", [(32, 2), (5, 3), (7, 7), (1, 1)])
def test_task_slices_cover_the_tasks_in_order(B, n):
    slices = parallel.task_slices(B, n)
    assert len(slices) == n
    assert [i for s in slices for i in range(B)[s]] == list(range(B))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.skipif(backend.backend_name() != "numpy", reason="CuPy never splits")
def test_a_slice_is_not_split_again(restore_threads):
    """meta_gradient splits the tasks, and the model calls inside each slice would split
    again; they must run whole (nested waits on a pool of T threads could deadlock)."""
    parallel.set_threads(2)
    sizes = []

    def inner(x):
        sizes.append(x.shape[0])
        return x

    def outer(x):
        return parallel.over_tasks(inner, x.shape[0], x)
    x = backend.asarray(np.arange(8.0))
    assert_same(parallel.over_tasks(outer, 8, x), x)
    assert sorted(sizes) == [4, 4]


# ---- the same numbers with any number of threads ---------------------------------------

@pytest.mark.parametrize("n", [2, 3, 8])
def test_model_sweeps_are_identical_with_threads(restore_threads, n):
    """Shared θ (gradient summed over tasks) and per-task φ; 5 tasks, so 3 threads get
    uneven slices and 8 threads are capped at 5."""
    model, theta, x, y, rng = cnn_problem(B=5)
    phi = {k: backend.asarray(rng.standard_normal((5,) + v.shape)) * 0.1 + v for k, v in theta.items()}
    v = {k: backend.asarray(rng.standard_normal(a.shape)) for k, a in theta.items()}
    calls = [(model.predict, theta, x), (model.loss, phi, x, y), (model.loss_and_grad, theta, x, y),
             (model.loss_and_grad, phi, x, y), (model.loss_grad_hvp, theta, x, y, v)]
    for fn, *args in calls:
        assert_same(with_threads(n, fn, *args), with_threads(1, fn, *args))


def test_meta_gradient_is_identical_with_threads(restore_threads):
    model, theta, x, y, _ = cnn_problem(B=4)
    batch = TaskBatch(x, y, x[:, ::-1], y)
    two = with_threads(2, meta_gradient, model, theta, batch, 0.1, 2, False, True)   # keep_path
    one = with_threads(1, meta_gradient, model, theta, batch, 0.1, 2, False, True)
    assert two.cos_alpha == one.cos_alpha
    assert two.loss == one.loss and two.dJ_dalpha == one.dJ_dalpha
    assert_same(two.grad, one.grad)
    for k in range(3):
        assert_same(two.adjoints[k], one.adjoints[k])


@pytest.mark.parametrize("layout", ["per parameter", "per tensor and step"])
def test_learned_rate_meta_gradient_is_identical_with_threads(restore_threads, layout):
    """Meta-SGD's per-parameter ∂J/∂α (summed over the tasks after the split) and LSLR's
    per-step one: the same numbers, bit for bit, with 1, 2 and 3 threads (uneven slices)."""
    model, theta, x, y, rng = cnn_problem(B=5)
    batch = TaskBatch(x, y, x[:, ::-1], y)
    if layout == "per parameter":
        alpha = {k: backend.asarray(rng.uniform(0.05, 0.2, v.shape)) for k, v in theta.items()}
    else:
        alpha = [{k: 0.05 * (i + 1) + 0.01 * step for i, k in enumerate(theta)} for step in range(2)]
    results = [with_threads(n, meta_gradient, model, theta, batch, alpha, 2) for n in (1, 2, 3)]
    for other in results[1:]:
        assert other.loss == results[0].loss and other.cos_alpha == results[0].cos_alpha
        assert_same(other.grad, results[0].grad)
        if layout == "per parameter":
            assert_same(other.dJ_dalpha, results[0].dJ_dalpha)
        else:
            assert other.dJ_dalpha == results[0].dJ_dalpha


@pytest.mark.skipif(backend.backend_name() != "numpy", reason="BLAS threads are a CPU matter")
@pytest.mark.usefixtures("float64")
def test_blas_runs_single_threaded_on_every_path_so_threads_give_the_same_numbers(restore_threads):
    """With BLAS allowed two threads, T = 1 runs its BLAS calls on one thread like every T ≥ 2
    (inside over_tasks), so the numbers agree bit for bit. The model is large enough for BLAS
    to thread: MAML's 64-channel CNN, whose conv weights (36,864 entries) make OpenBLAS split the
    long dot products of ∂J/∂α over its threads, which changes their sums in the last bit."""
    with threadpool_limits(limits=2, user_api="blas"):
        if min(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas") < 2:
            pytest.skip("BLAS cannot use two threads here")
        seen = []

        def probe(x):
            seen.append(max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"))
            return x
        for n in (1, 2):
            parallel.set_threads(n)
            parallel.over_tasks(probe, 4, backend.asarray(np.zeros(4)))
        assert seen == [1, 1, 1]                   # T = 1: one call; T = 2: two slices

        rng = np.random.default_rng(0)
        model = architectures.omniglot_cnn(ways=5, channels=64, downsample="stride", image_size=28)
        theta = model.init_params(0)
        x = backend.asarray(rng.random((4, 5, 28, 28, 1)))
        y = backend.array_module().asarray(np.tile(np.arange(5), (4, 1)))
        batch = TaskBatch(x, y, x[:, ::-1], y)
        alpha = {name: 0.1 for name in theta}
        results = [with_threads(n, meta_gradient, model, theta, batch, alpha, 1) for n in (1, 2, 4)]
    for other in results[1:]:
        assert other.dJ_dalpha == results[0].dJ_dalpha and other.cos_alpha == results[0].cos_alpha
        assert other.loss == results[0].loss
        assert_same(other.grad, results[0].grad)


def test_samples_without_a_task_axis_are_not_split(restore_threads):
    """Batch norm takes statistics over all N samples: one task's x must run whole.
    (Split over samples, the statistics and so the outputs would change.)"""
    model, theta, x, _, _ = cnn_problem(B=1)
    x = x[0]                                            # (N, H, W, C): no task axis
    assert_same(with_threads(3, model.predict, theta, x), with_threads(1, model.predict, theta, x))


@pytest.mark.skipif(backend.backend_name() != "numpy", reason="np.errstate governs NumPy's loops, not GPU kernels")
def test_callers_error_state_holds_in_the_threads(restore_threads):
    """Each slice runs in a copy of the caller's context, so np.errstate reaches it:
    an overflow inside a thread raises, as it does with one thread."""
    model = architectures.sinusoid_mlp()
    huge = {k: v * np.float32(1e20) for k, v in model.init_params(0).items()}
    x, y = backend.asarray(np.ones((4, 5, 1))), backend.asarray(np.zeros((4, 5, 1)))
    for n in (1, 2):
        parallel.set_threads(n)
        with np.errstate(over="raise"), pytest.raises(FloatingPointError, match="overflow"):
            model.loss_and_grad(huge, x, y)


def test_training_run_is_identical_with_threads_and_restores_the_setting(restore_threads, tmp_path):
    from numpy_amaml.training import train
    options = dict(task="sinusoid", iterations=3, meta_batch=4, log_every=1, checkpoint_every=3)
    parallel.set_threads(1)
    one = train(options, out=tmp_path / "one", progress=False, threads=1)
    two = train(options, out=tmp_path / "two", progress=False, threads=3)
    assert parallel.threads() == 1
    assert_same(two.learner.theta, one.learner.theta)
    assert two.learner.alpha == one.learner.alpha


@pytest.mark.skipif(backend.backend_name() != "numpy", reason="BLAS threads are a CPU matter")
def test_per_tensor_dot_products_run_on_one_blas_thread(float64, monkeypatch):
    """params.dot_per_tensor (β's hypergradient and cosine, the gradient's norm) limits BLAS to one
    thread, like the per-task computations: with BLAS allowed two threads each vdot runs on one, and
    the numbers are those of one thread bit for bit, on a vector long enough for OpenBLAS to split
    (a conv weight of MAML's CNN, 36,864 entries)."""
    rng = np.random.default_rng(0)
    a = {"conv.W": rng.standard_normal((3, 3, 64, 64)), "b": rng.standard_normal(64)}
    b = {name: rng.standard_normal(value.shape) for name, value in a.items()}
    with threadpool_limits(limits=2, user_api="blas"):
        if min(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas") < 2:
            pytest.skip("BLAS cannot use two threads here")
        seen, vdot = [], np.vdot

        def counting_vdot(u, v):
            seen.append(max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"))
            return vdot(u, v)
        monkeypatch.setattr(backend.xp, "vdot", counting_vdot)
        threaded = params.dot_per_tensor(a, b)
        assert seen == [1, 1]
    with threadpool_limits(limits=1, user_api="blas"):
        assert params.dot_per_tensor(a, b) == threaded
