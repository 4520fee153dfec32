"""Use every CPU core: split the task axis across threads.

The B tasks of a meta-batch never interact, so any computation over the task axis
(MAML's inner loop and reverse pass, maml.adapt_and_reverse; a model's sweeps:
loss, gradient, Hessian-vector product) can run as T calls on contiguous slices of
that axis, one per thread, with the per-task results joined back in order:

    f(tasks 0 .. B−1) = concatenate(f(tasks 0 .. b₁−1), f(tasks b₁ .. b₂−1), ...)

Threads suffice (no processes, no copies of the inputs): NumPy releases Python's
global interpreter lock inside its array loops and BLAS calls, and those are where
the time goes. NumPy's element-wise loops run on one core, so without this split
half of a two-core machine idles through every ReLU, batch norm and im2col copy.

BLAS must then run single-threaded inside the threads: T threads that each start T
BLAS threads oversubscribe the cores (max-pool Omniglot CNN, 2 cores: 1.55 s per
meta-iteration, against 0.70 s with one BLAS thread each, and 1.0 s with no split
and two BLAS threads). ``threadpoolctl`` sets that limit for the duration of each
computation over the task axis, on every path, T = 1 included: T is the number of
cores that computation uses, BLAS's threads included (``one_blas_thread``: where BLAS already
runs on one thread, as under OPENBLAS_NUM_THREADS=1, that costs one query, about a µs).

Each task's numbers do not depend on the split (every per-task matmul is the same
single-threaded BLAS call on the same data), so T changes the speed, not the results;
the tests check that, bit for bit, on a model large enough for BLAS to use threads.
(With several BLAS threads the numbers could change: OpenBLAS splits a long dot
product over its threads, which changes the order of its sum; in float64 ∂J/∂α of
MAML's 64-channel CNN moved by 4e-16 between one thread with two BLAS threads and
two threads with one each, before T = 1 was limited too.)

Settings, like the backend's: ``set_threads(T)``, or the environment variable
``NUMPY_AMAML_THREADS``; default 1 (the commands choose their own, ``default_threads``).
Small problems (the sinusoid MLP's arrays of a few hundred numbers) are faster with
T = 1, because there the Python overhead, which threads cannot share, dominates. On CuPy the GPU is already
parallel: the split is skipped whatever T is.
"""
import contextlib
import contextvars
import os
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController

from numpy_amaml.backend import backend_name, xp

_state = {"threads": None, "pool": None, "pool_size": 0, "blas": None}   # blas: threadpoolctl's controllers
_inside_slice = contextvars.ContextVar("numpy_amaml_inside_slice", default=False)


def set_threads(n):
    """Split each batched computation over ``n`` ≥ 1 threads (NumPy backend only)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be an integer ≥ 1, got {n!r}")
    _state["threads"] = n


def threads():
    """The number of threads the task axis is split over (default 1)."""
    if _state["threads"] is None:
        value = os.environ.get("NUMPY_AMAML_THREADS", "1")
        try:
            set_threads(int(value))
        except ValueError:
            raise ValueError(f"NUMPY_AMAML_THREADS must be an integer ≥ 1, got {value!r}") from None
    return _state["threads"]


def default_threads(task):
    """The ``train``, ``evaluate`` and ``bench`` default for a task: every core for the
    Omniglot CNN (2 cores: 0.70 s per meta-iteration with 2 threads, 1.0 s with 1 thread and
    two BLAS threads, measured before T = 1 was limited to one BLAS thread too),
    one thread for the sinusoid MLP, whose arrays are so small that one is faster.
    Threads change the speed, never the numbers, so a run's config does not record them."""
    return (os.cpu_count() or 1) if task == "omniglot" else 1


def task_slices(B, n):
    """n contiguous slices covering range(B), as equal as possible (n ≤ B)."""
    bounds = [B * i // n for i in range(n + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(n)]


def _take(a, s):
    """Slice s of the task axis of an array, or of every array in a dict (None stays None)."""
    if a is None:
        return None
    if isinstance(a, dict):
        return {k: v[s] for k, v in a.items()}
    return a[s]


def join_tasks(parts):
    """Concatenate per-slice results along the task axis (arrays, dicts of arrays, and
    tuples or lists of these; None stays None)."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, (tuple, list)):
        return type(first)(join_tasks([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: xp.concatenate([p[k] for p in parts]) for k in first}
    return xp.concatenate(parts)


def _run_slice(fn, *args):
    _inside_slice.set(True)           # in this slice's own context: an inner over_tasks runs fn whole
    return fn(*args)


@contextlib.contextmanager
def one_blas_thread():
    """Every BLAS library limited to one thread inside the block, and restored after it
    (threadpoolctl's controllers; only those not already at one thread are changed)."""
    if _state["blas"] is None:
        _state["blas"] = ThreadpoolController().select(user_api="blas").lib_controllers
    changed = [(library, library.num_threads) for library in _state["blas"] if library.num_threads != 1]
    for library, _ in changed:
        library.set_num_threads(1)
    try:
        yield
    finally:
        for library, before in changed:
            library.set_num_threads(before)


def over_tasks(fn, B, *args):
    """fn(*args), computed over the task axis in ``threads()`` slices at once, each with
    single-threaded BLAS.

    B: the number of tasks; args: arrays or dicts of arrays (or None), each with
    the task axis (B, ...) first. fn returns an array, a dict of arrays, or a tuple
    or list of these, each with the task axis first. With one thread or when B < 2 this
    is fn(*args) on the calling thread (BLAS still limited to one thread); on CuPy, or
    inside a slice (a split does not split or limit again), it is just fn(*args). Each
    slice runs in a copy of the caller's context, so ``numpy.errstate`` holds in the
    threads too.
    """
    if backend_name() != "numpy" or _inside_slice.get():
        return fn(*args)
    n = min(threads(), B)
    with one_blas_thread():
        if n == 1:
            return contextvars.copy_context().run(_run_slice, fn, *args)
        if _state["pool_size"] < n:                      # made once, replaced if T grows
            if _state["pool"] is not None:
                _state["pool"].shutdown(wait=False)
            _state["pool"] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="numpy_amaml")
            _state["pool_size"] = n
        futures = [_state["pool"].submit(contextvars.copy_context().run, _run_slice, fn,
                                         *(_take(a, s) for a in args))
                   for s in task_slices(B, n)]
        return join_tasks([f.result() for f in futures])
