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

GFLOP/s: the floating-point operations of the matrix products (convolutions as
im2col matmuls, linear layers) that one meta-iteration does, counted from the
model's layer shapes (``matmul_flops``), divided by the time: how far the row is
from what the machine's matmul reaches (100+ GFLOP/s per AVX-512 core in float32).
Element-wise work (batch norm, ReLU, pooling, copies) is not counted.

``--count-ops`` prints instead the array operations of one meta-iteration (≈ the kernel
launches of a GPU, numpy_amaml.op_count) for the sinusoid MLP and the two CNNs, second and
first order, per layer function and in total, with the host's reads of array values.
"""
import cProfile
import math
import os
import platform
import pstats
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass, replace

import numpy as np

from numpy_amaml import backend, architectures, layers, op_count, parallel
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
        model = architectures.sinusoid_mlp()
        x_s, x_q = rng.uniform(-5, 5, (B, case.shots, 1)), rng.uniform(-5, 5, (B, case.queries, 1))
        batch = TaskBatch(backend.asarray(x_s), backend.asarray(np.sin(x_s)),
                          backend.asarray(x_q), backend.asarray(np.sin(x_q)))
        return model, model.init_params(seed), batch, 0.01
    model = architectures.omniglot_cnn(ways=case.ways, downsample=case.downsample)
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


def layer_matmul_flops(model, samples):
    """[(layer index, FLOPs of its forward matmul)] for one task of ``samples`` samples,
    for every conv2d and linear layer: 2·M·K·N for y = (M × K)(K × N), with M the output
    rows (samples × output pixels), K = 9·C_in (conv) or D_in, N the output channels.
    The shapes come from one forward pass of a zero input through the layers."""
    xp = backend.array_module()
    h = xp.zeros((samples,) + model.input_shape, dtype=backend.float_dtype())
    flops = []
    for i, layer in enumerate(model.layers):
        shapes = {k.split(".", 1)[1]: s for k, s in model.param_shapes.items() if k.startswith(layer.name + ".")}
        params = {k: xp.zeros(s, dtype=h.dtype) for k, s in shapes.items()}
        h, _ = layer.module.forward(params, h, **layer.config)
        if layer.module in (layers.conv2d, layers.linear):
            K, N = math.prod(shapes["W"][:-1]), shapes["W"][-1]
            flops.append((i, 2 * (h.size // N) * K * N))
    return flops


def matmul_flops(case, model):
    """FLOPs of the matrix products of one meta-iteration of a case, as numpy_amaml does it.

    Per layer with forward matmul cost f (on one task's samples), in units of f:
      forward + backward sweep: 1 + 2 (dW = colsᵀ dy, dx = dy Wᵀ) = 3; the first layer 2 (no dx);
      r_forward + r_backward:   2 (cols RW, cols(Rx) W) + 4 (R{dx}: two products, R{dW}: two)
                                = 6; the first layer 2 (Rx = 0, no R{dx}).
    One iteration, K inner steps, B tasks: K support sweeps, one query sweep, and, second
    order, K HVPs: the last one reuses the inner loop's last sweep (R-sweeps only), the
    other K − 1 redo the forward and backward sweep too.
    """
    def cost(samples, units, first_layer_units):
        return sum(f * (first_layer_units if i == 0 else units) for i, f in layer_matmul_flops(model, samples))
    if case.task == "sinusoid":
        support, query = case.shots, case.queries
    else:
        support, query = case.ways * case.shots, case.ways * case.queries
    sweep, r_sweeps = cost(support, 3, 2), cost(support, 6, 2)
    total = case.inner_steps * sweep + cost(query, 3, 2)
    if not case.first_order:
        total += case.inner_steps * r_sweeps + (case.inner_steps - 1) * sweep
    return case.meta_batch * total


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
    if "numpy_amaml/layers" in filename.replace("\\", "/") and name in ("param_grads", "r_param_grads"):
        memo[func] = {"backward" if name == "param_grads" else "r_backward": 1.0}   # the first layer's
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


COUNTED_MODELS = ("sinusoid MLP", "CNN max-pool", "CNN strided")   # the first row whose name starts so


def count_case(case, iterations=1):
    """[op_count.Tally] of ``iterations`` meta-iterations, one each, after a first one (which
    also makes the optimizer's state). The problem is made inside the count, so that its
    arrays count (numpy_amaml.op_count)."""
    with op_count.counting() as tally:
        model, theta, batch, alpha = make_problem(case)
        learner = _learner(case, model, theta, alpha)
        learner.step(batch)
        tallies = []
        for _ in range(iterations):
            tally.reset()
            learner.step(batch)
            tallies.append(tally.copy())
    return tallies


def print_operation_counts(models):
    """The table of ``--count-ops``: operations per meta-iteration of each model, second and
    first order, per layer function (rows by their total), then by kind, and host reads."""
    columns = []
    for model in models:
        case = next(c for c in CASES if c.name.startswith(model))
        for first_order in (False, True):
            columns.append(count_case(replace(case, first_order=first_order))[0])
    print("array operations per meta-iteration (≈ GPU kernel launches; counted on NumPy along the CuPy "
          "backend's code path,")
    print("numpy_amaml/op_count.py): Alpha MAML with Adam, 1 inner step, the shapes of the bench rows")
    width = 11
    print(f"{'':28s}" + "".join(f"{m:>{2 * width}s}" for m in models))
    print(f"{'where':28s}" + f"{'2nd order':>{width}s}{'1st order':>{width}s}" * len(models))
    places = [t.by_place() for t in columns]
    rows = sorted(set().union(*places), key=lambda w: (-sum(p[w] for p in places), w))
    for where in rows:
        print(f"{where:28s}" + "".join(f"{p[where]:{width}d}" for p in places))
    print(f"{'total':28s}" + "".join(f"{t.total():{width}d}" for t in columns))
    for kind in op_count.KINDS:
        print(f"{'  ' + kind:28s}" + "".join(f"{t.by_kind()[kind]:{width}d}" for t in columns))
    print(f"{'host reads (host waits)':28s}" + "".join(f"{sum(t.host_reads.values()):{width}d}" for t in columns))


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
    parser.add_argument("--count-ops", action="store_true",
                        help="print the array operations (≈ GPU kernel launches) per meta-iteration instead")
    parser.add_argument("--threads", type=int, metavar="T",
                        help="CPU threads for rows without their own count (default: 1 sinusoid, all "
                             f"cores CNN: {parallel.default_threads('omniglot')})")


def run(args):
    cases = [c for c in CASES if args.only is None or args.only.lower() in c.name.lower()]
    problems = [("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0), ("--threads", 1 if args.threads is None else args.threads, 1)]
    for flag, value, smallest in problems:
        if value < smallest:
            print(f"error: {flag} must be ≥ {smallest}, got {value}", file=sys.stderr)
            return 2
    if not cases:
        print(f"error: --only {args.only!r} matches no configuration; the names are: "
              f"{'; '.join(c.name for c in CASES)}", file=sys.stderr)
        return 2
    if args.count_ops:
        models = [m for m in COUNTED_MODELS if args.only is None or args.only.lower() in m.lower()]
        if not models:
            print(f"error: --only {args.only!r} matches none of the counted models: {'; '.join(COUNTED_MODELS)}",
                  file=sys.stderr)
            return 2
        print_operation_counts(models)
        return 0
    print(f"machine: {machine_description()}")
    print(f"{'configuration':40s} {'threads':>7s} {'s / meta-iter':>14s} {'GFLOP':>7s} {'GFLOP/s':>8s} "
          f"{'peak memory':>12s}")
    memory = {}
    for case in cases:
        parallel.set_threads(case_threads(case, args.threads))
        seconds = time_case(case, args.warmup, args.repeats)
        gflop = matmul_flops(case, make_problem(case)[0]) / 1e9
        memory[case.name] = peak_memory_case(case)
        print(f"{case.name:40s} {parallel.threads():7d} {seconds:14.4g} {gflop:7.2f} {gflop / seconds:8.1f} "
              f"{memory[case.name] / 2**20:9.1f} MiB", flush=True)
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
