"""``python -m numpy_amaml bench``: seconds per meta-iteration and peak memory.

Each row runs full Alpha MAML iterations (inner loop, exact reverse pass, α/β
hypergradients, Adam step) on fixed synthetic task batches of the paper's shapes
(the data pipeline is not timed). Time: median over ``--repeats`` iterations after
``--warmup``, with the task axis split over CPU threads (numpy_amaml.parallel; by
default 1 for the sinusoid and every core for the CNNs, as ``train`` does, plus one
single-thread CNN row for comparison). Memory: the peak of traced allocations
(tracemalloc; NumPy reports its buffers to it) during one iteration, above what was
allocated before it; on CuPy the memory pool's peak instead. A separate profiled run splits the time into
the layer phases (forward, backward, r_forward, r_backward, im2col/col2im).
"""
import cProfile
import os
import platform
import pstats
import statistics
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from numpy_amaml import backend, models, parallel
from numpy_amaml.alpha_maml import AlphaMAML
from numpy_amaml.maml import TaskBatch
from numpy_amaml.optim import Adam


@dataclass(frozen=True)
class BenchCase:
    name: str
    task: str                 # "sinusoid" or "omniglot"
    inner_steps: int = 1
    first_order: bool = False
    downsample: str = "maxpool"
    meta_batch: int = 32
    ways: int = 5
    shots: int = 1
    queries: int = 1
    threads: int = None       # CPU threads for the task axis (None: parallel.default_threads)


CASES = (
    BenchCase("sinusoid MLP, B=25, K=10 shots", "sinusoid", meta_batch=25, shots=10, queries=10),
    BenchCase("CNN max-pool, 5-way 1-shot, B=32", "omniglot", downsample="maxpool"),
    BenchCase("CNN max-pool, 1 thread", "omniglot", downsample="maxpool", threads=1),
    BenchCase("CNN strided, 5-way 1-shot, B=32", "omniglot", downsample="stride"),
    BenchCase("CNN max-pool, first order", "omniglot", downsample="maxpool", first_order=True),
    BenchCase("CNN max-pool, 5 inner steps", "omniglot", downsample="maxpool", inner_steps=5),
)

# phase of each profiled function name (functions of numpy_amaml.layers modules)
PHASES = ("forward", "backward", "r_forward", "r_backward")


def make_problem(case, seed=0):
    """(model, θ, a fixed TaskBatch) for a case, in the active dtype and backend."""
    rng = np.random.default_rng(seed)
    B = case.meta_batch
    if case.task == "sinusoid":
        model = models.sinusoid_mlp()
        x_s, x_q = rng.uniform(-5, 5, (B, case.shots, 1)), rng.uniform(-5, 5, (B, case.queries, 1))
        batch = TaskBatch(backend.asarray(x_s), backend.asarray(np.sin(x_s)),
                          backend.asarray(x_q), backend.asarray(np.sin(x_q)))
        return model, model.init_params(seed), batch, 0.01
    model = models.omniglot_cnn(ways=case.ways, downsample=case.downsample)
    labels_s = np.tile(np.repeat(np.arange(case.ways), case.shots), (B, 1))
    labels_q = np.tile(np.repeat(np.arange(case.ways), case.queries), (B, 1))
    x_s = (rng.random((B, case.ways * case.shots, 28, 28, 1)) < 0.1)
    x_q = (rng.random((B, case.ways * case.queries, 28, 28, 1)) < 0.1)
    xp = backend.array_module()
    batch = TaskBatch(backend.asarray(x_s), xp.asarray(labels_s), backend.asarray(x_q), xp.asarray(labels_q))
    return model, model.init_params(seed), batch, 0.4


def _learner(case, model, theta, alpha):
    return AlphaMAML(model, theta, alpha, Adam(0.001, hyper_lr=1e-7), inner_steps=case.inner_steps,
                     first_order=case.first_order, alpha_hyper_lr=1e-5)


def _synchronize():
    if backend.backend_name() == "cupy":
        backend.array_module().cuda.Device().synchronize()


def case_threads(case, threads=None):
    """The thread count of a row: the case's own, else ``threads`` (--threads), else
    the commands' default (parallel.default_threads). On CuPy the split is skipped: 1."""
    if backend.backend_name() != "numpy":
        return 1
    return case.threads or threads or parallel.default_threads(case.task)


def time_case(case, warmup=2, repeats=10):
    """Median seconds per meta-iteration (with the active thread setting)."""
    model, theta, batch, alpha = make_problem(case)
    learner = _learner(case, model, theta, alpha)
    for _ in range(warmup):
        learner.step(batch)
    times = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        learner.step(batch)
        _synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_case(case):
    """Peak bytes allocated during one meta-iteration, above the level before it."""
    model, theta, batch, alpha = make_problem(case)
    learner = _learner(case, model, theta, alpha)
    learner.step(batch)                                # allocate the optimizer state first
    if backend.backend_name() == "cupy":
        pool = backend.array_module().get_default_memory_pool()
        pool.free_all_blocks()
        before = pool.used_bytes()
        learner.step(batch)
        return pool.total_bytes() - before
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    learner.step(batch)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - before


def _phase(func, stats, memo):
    """{phase: weight} of one profiled function: a layer's forward/backward/r_forward/
    r_backward or conv2d's im2col/col2im is its own phase; any other function belongs to
    the phases of its callers, in proportion to the time spent under each caller; a
    function outside the layers with no layer caller is "other"."""
    if func in memo:
        return memo[func]
    filename, _, name = func
    memo[func] = {"other": 1.0}                     # provisional, breaks recursion cycles
    if "numpy_amaml/layers" in filename.replace("\\", "/") and name in PHASES + ("im2col", "col2im"):
        memo[func] = {"im2col" if name == "col2im" else name: 1.0}
        return memo[func]
    callers = stats[func][4]
    total = sum(ct for (_, _, _, ct) in callers.values())
    if not callers or total == 0:
        return memo[func]
    mix = {}
    for caller, (_, _, _, ct) in callers.items():
        for phase, weight in _phase(caller, stats, memo).items():
            mix[phase] = mix.get(phase, 0.0) + weight * ct / total
    memo[func] = mix
    return mix


def phase_shares(case, iterations=3):
    """{phase: share of the iteration's time} from a cProfile run.

    Each function's own time goes to a phase: the layer functions forward, backward,
    r_forward, r_backward (with the NumPy calls and helpers they make), im2col (conv2d's
    im2col/col2im copies, wherever called), or other (losses, model and MAML glue, optimizer).
    """
    model, theta, batch, alpha = make_problem(case)
    learner = _learner(case, model, theta, alpha)
    learner.step(batch)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(iterations):
        learner.step(batch)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    shares, memo = dict.fromkeys(PHASES + ("im2col", "other"), 0.0), {}
    for func, (_, _, tottime, _, _) in stats.items():
        for phase, weight in _phase(func, stats, memo).items():
            shares[phase] += weight * tottime
    total = sum(shares.values())
    return {k: v / total for k, v in shares.items()}


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_description():
    cpu = cpu_model()
    device = backend.backend_name()
    if device == "cupy":
        cp = backend.array_module()
        device += " on " + cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"NumPy {np.__version__}, backend {device}, {np.dtype(backend.float_dtype()).name}")


def add_arguments(parser):
    parser.add_argument("--repeats", type=int, default=10, help="timed iterations per row (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--only", default=None, help="run only rows whose name contains this text")
    parser.add_argument("--no-phases", action="store_true", help="skip the profiled phase breakdown")
    parser.add_argument("--threads", type=int, metavar="T",
                        help="CPU threads for rows without their own count (default: 1 sinusoid, all "
                             f"cores CNN: {parallel.default_threads('omniglot')})")


def run(args):
    cases = [c for c in CASES if args.only is None or args.only.lower() in c.name.lower()]
    print(f"machine: {machine_description()}")
    print(f"{'configuration':40s} {'threads':>7s} {'s / meta-iter':>14s} {'peak memory':>12s}")
    memory = {}
    for case in cases:
        parallel.set_threads(case_threads(case, args.threads))
        seconds = time_case(case, args.warmup, args.repeats)
        memory[case.name] = peak_memory_case(case)
        print(f"{case.name:40s} {parallel.threads():7d} {seconds:14.4f} {memory[case.name] / 2**20:9.1f} MiB",
              flush=True)
    one, five = "CNN max-pool, 5-way 1-shot, B=32", "CNN max-pool, 5 inner steps"
    if one in memory and five in memory:
        print(f"peak memory, 5 inner steps / 1 inner step: {memory[five] / memory[one]:.2f}×")
    if not args.no_phases:
        print(f"\n{'time share by phase':40s} "
              + " ".join(f"{p:>10s}" for p in PHASES + ("im2col", "other")))
        for case in cases:
            parallel.set_threads(1)           # cProfile sees the calling thread only
            shares = phase_shares(case)
            print(f"{case.name:40s} " + " ".join(f"{100 * shares[p]:9.1f}%" for p in PHASES + ("im2col", "other")))
    return 0
