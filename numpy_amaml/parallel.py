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
and two BLAS threads). ``threadpoolctl`` sets that limit for the duration of a split.

Each task's numbers do not depend on the split (every per-task matmul is the same
BLAS call on the same data), so T changes the speed, not the results; the tests
check that, bit for bit. Settings, like the backend's: ``set_threads(T)``, or the
environment variable ``NUMPY_AMAML_THREADS``; default 1 (the commands choose their
own, ``default_threads``). Small problems (the sinusoid MLP's
arrays of a few hundred numbers) are faster with T = 1, because there the Python
overhead, which threads cannot share, dominates. On CuPy the GPU is already
parallel: the split is skipped whatever T is.
"""
import contextvars
import os
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController

from numpy_amaml.backend import backend_name, xp

_state = {"threads": None, "pool": None, "pool_size": 0, "blas": None}
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
    Omniglot CNN (2 cores: 0.70 s per meta-iteration with 2 threads, 1.0 s with 1),
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
    tuples or lists of these)."""
    first = parts[0]
    if isinstance(first, (tuple, list)):
        return type(first)(join_tasks([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: xp.concatenate([p[k] for p in parts]) for k in first}
    return xp.concatenate(parts)


def _run_slice(fn, *args):
    _inside_slice.set(True)           # in this slice's own context: an inner over_tasks runs fn whole
    return fn(*args)


def over_tasks(fn, B, *args):
    """fn(*args), computed over the task axis in ``threads()`` slices at once.

    B: the number of tasks; args: arrays or dicts of arrays (or None), each with
    the task axis (B, ...) first. fn returns an array, a dict of arrays, or a tuple
    or list of these, each with the task axis first. With one thread, on CuPy, when B < 2, or inside a slice
    (a split does not split again), this is just fn(*args). Each slice runs in a
    copy of the caller's context, so ``numpy.errstate`` holds in the threads too.
    """
    n = min(threads(), B)
    if n == 1 or backend_name() != "numpy" or _inside_slice.get():
        return fn(*args)
    if _state["pool_size"] < n:                      # made once, replaced if T grows
        if _state["pool"] is not None:
            _state["pool"].shutdown(wait=False)
        _state["pool"] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="numpy_amaml")
        _state["pool_size"], _state["blas"] = n, ThreadpoolController()
    with _state["blas"].limit(limits=1, user_api="blas"):
        futures = [_state["pool"].submit(contextvars.copy_context().run, _run_slice, fn,
                                         *(_take(a, s) for a in args))
                   for s in task_slices(B, n)]
        return join_tasks([f.result() for f in futures])
