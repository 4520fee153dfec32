"""The bench command runs and prints its table (its numbers are measured by running it,
never asserted here: timings on a shared machine are not test material); its operation
counts (--count-ops) are exact and are checked."""
import argparse
from dataclasses import replace

import numpy as np
import pytest

from numpy_amaml import backend, layers, op_count, parallel, params
from numpy_amaml.commands import bench

pytestmark = pytest.mark.skipif(backend.backend_name() != "numpy",
                                reason="checks the NumPy rows (CPU threads, tracemalloc); bench/gpu_check.sh runs CuPy's")


@pytest.fixture
def restore_threads(monkeypatch):
    monkeypatch.setitem(parallel._state, "threads", parallel.threads())


def bench_args(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def test_sinusoid_row_prints_time_memory_and_phases(restore_threads, capsys):
    assert bench.run(bench_args("--only", "sinusoid", "--warmup", "0", "--repeats", "2")) == 0
    out = capsys.readouterr().out
    assert "backend numpy" in out
    row = next(line for line in out.splitlines() if line.startswith("sinusoid MLP"))
    threads, seconds, gflop, gflop_per_s, memory, unit = row.split()[-6:]
    assert threads == "1" and float(seconds) > 0 and float(memory) > 0 and unit == "MiB"
    assert float(gflop) == pytest.approx(bench.matmul_flops(bench.CASES[0], bench.make_problem(bench.CASES[0])[0]) / 1e9,
                                         abs=0.01)
    assert float(gflop_per_s) > 0
    assert "time share by phase" in out


def test_phase_shares_add_up_to_one():
    shares = bench.phase_shares(bench.CASES[0], iterations=1)
    assert set(shares) == {"forward", "backward", "r_forward", "r_backward", "im2col", "other"}
    assert abs(sum(shares.values()) - 1) < 1e-9 and shares["forward"] > 0


def test_thread_count_of_each_row():
    by_name = {c.name: c for c in bench.CASES}
    assert bench.case_threads(by_name["sinusoid MLP, B=25, K=10 shots"]) == 1
    assert bench.case_threads(by_name["CNN max-pool, 1 thread"], threads=4) == 1   # its own count wins
    assert bench.case_threads(by_name["CNN strided, 5-way 1-shot, B=32"], threads=3) == 3


def test_cnn_problem_has_the_papers_shapes():
    case = next(c for c in bench.CASES if c.name.startswith("CNN strided"))
    model, theta, batch, alpha = bench.make_problem(case)
    assert batch.x_support.shape == (32, 5, 28, 28, 1) and batch.y_query.shape == (32, 5)
    assert alpha == 0.4 and set(theta) == set(model.param_shapes)


def test_matmul_flops_counted_from_the_layer_shapes():
    """The sinusoid MLP 1-40-40-1 on 10 support and 10 query points per task: forward
    matmuls f = 2·10·(1·40, 40·40, 40·1) = (800, 32000, 800) FLOPs. A forward + backward
    sweep costs 3f per layer (2f for the first: no dx), the R-sweeps 6f (2f for the first)."""
    case = bench.CASES[0]
    model = bench.make_problem(case)[0]
    assert [f for _, f in bench.layer_matmul_flops(model, 10)] == [800, 32000, 800]
    sweep = 2 * 800 + 3 * 32000 + 3 * 800
    r_sweeps = 2 * 800 + 6 * 32000 + 6 * 800
    assert bench.matmul_flops(case, model) == 25 * (2 * sweep + r_sweeps)          # support, query, HVP
    first_order = bench.BenchCase("fo", "sinusoid", meta_batch=25, shots=10, queries=10, first_order=True)
    assert bench.matmul_flops(first_order, model) == 25 * 2 * sweep
    five = bench.BenchCase("K5", "sinusoid", meta_batch=25, shots=10, queries=10, inner_steps=5)
    assert bench.matmul_flops(five, model) == 25 * (5 * sweep + sweep + 5 * r_sweeps + 4 * sweep)


def test_cnn_flops_scale_with_the_layer_shapes():
    """Strided CNN, 5 samples: conv1 28→14 with C_in = 1, conv2 14→7, ... (2·M·9·C_in·C_out)."""
    case = next(c for c in bench.CASES if c.name.startswith("CNN strided"))
    model = bench.make_problem(case)[0]
    flops = [f for _, f in bench.layer_matmul_flops(model, 5)]
    assert flops == [2 * 5 * 14 * 14 * 9 * 1 * 64, 2 * 5 * 7 * 7 * 9 * 64 * 64, 2 * 5 * 4 * 4 * 9 * 64 * 64,
                     2 * 5 * 2 * 2 * 9 * 64 * 64, 2 * 5 * 64 * 5]


# ---- --count-ops: array operations per meta-iteration (numpy_amaml.op_count) -----------------

def test_counting_rules_on_small_examples():
    """One operation per ufunc call, reduction, copy, fill and host→device copy; views and
    xp.empty are free; einsum counts once whatever it calls inside; each host read counts apart;
    everything is charged to the layer function (or library function) it runs in."""
    with op_count.counting() as tally:
        x = backend.asarray(np.arange(6.0).reshape(2, 3) - 2)             # host→device: 1
        y, mask = layers.relu.forward({}, x)                               # maximum, greater: 2
        views = (x.reshape(3, 2), backend.xp.swapaxes(x, 0, 1), x[:, 1:], backend.xp.broadcast_to(x, (4, 2, 3)))
        scratch = backend.xp.empty((2, 3))                                 # an allocation: 0
        scratch[...] = x                                                   # a copy: 1
        scratch += y                                                       # in place: 1
        column_sums = backend.xp.einsum("ij->j", x)                        # one reduction: 1
        picked = x[:, [0, 2]]                                              # fancy indexing: 1
        total = float(x.sum())                                             # a reduction: 1, a read: 1
    assert all(isinstance(v, op_count.CountingArray) for v in views + (y, mask, column_sums, picked))
    assert total == 3.0 and picked.shape == (2, 2)
    assert tally.total() == 8
    assert tally.by_place()["relu.forward"] == 2
    assert dict(tally.by_kind()) == {"host→device": 1, "element-wise": 3, "copy/fill": 2, "reduction": 2}
    assert sum(tally.host_reads.values()) == 1
    assert backend.backend_name() == "numpy" and backend.array_module() is np    # restored afterwards


def test_count_is_positive_and_the_same_every_iteration():
    """Second order > first order > 0 for the sinusoid, with the same counts (per place and
    kind) in two iterations in a row; a small max-pool CNN's count covers its layer functions."""
    case = bench.CASES[0]
    second = bench.count_case(case, iterations=2)
    first = bench.count_case(replace(case, first_order=True))[0]
    assert second[0].operations == second[1].operations and second[0].host_reads == second[1].host_reads
    assert second[0].total() > first.total() > 0
    assert second[0].by_place()["linear.r_backward"] > 0 and first.by_place()["linear.r_backward"] == 0
    cnn = replace(bench.CASES[1], meta_batch=2)
    tallies = bench.count_case(cnn, iterations=2)
    assert tallies[0].operations == tallies[1].operations
    places = tallies[0].by_place()
    assert all(places[f"{m}.{f}"] > 0 for m in ("conv2d", "batchnorm", "relu", "maxpool")
               for f in ("forward", "backward", "r_forward", "r_backward"))
    assert places["optim.Adam.direction"] > 0 and tallies[0].total() == sum(places.values())
    three_tasks = bench.count_case(replace(cnn, meta_batch=3))[0]
    assert three_tasks.operations == tallies[0].operations     # on CuPy's path the batch is one chunk


def test_an_iteration_reads_each_set_of_per_tensor_dots_once():
    """The per-tensor inner products of a params dict (‖g_t‖, ⟨g_t, u_{t−1}⟩, ‖u_{t−1}‖ for β's
    hypergradient and cosine) are read by the host once per call, not once per tensor (on a GPU
    each read waits for the device): 5 reads for the CNN's 18 tensors, where it was 90, and the
    values are exactly the floats of the per-tensor ``vdot``."""
    cnn = replace(bench.CASES[1], meta_batch=2)
    reads = bench.count_case(cnn)[0].host_reads
    assert reads["params.dot_per_tensor"] == 5 and sum(reads.values()) <= 15, dict(reads)
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        a = {n: rng.standard_normal(s).astype(dtype) for n, s in (("W", (3, 4)), ("b", (4,)), ("g", (2, 5)))}
        b = {n: rng.standard_normal(v.shape).astype(dtype) for n, v in a.items()}
        dots = params.dot_per_tensor(a, b)
        assert list(dots) == list(a) and all(type(v) is float for v in dots.values())
        assert dots == {n: float(np.vdot(a[n], b[n])) for n in a}
    assert params.dot_per_tensor({}, {}) == {} and params.dot({}, {}) == 0.0
    vector = params.flatten(a)
    assert vector.shape == (12 + 4 + 10,) and all(np.array_equal(v, a[n]) for n, v in params.unflatten(vector, a).items())
    with pytest.raises(ValueError, match=r"shape \(25,\) for params of 26 entries"):
        params.unflatten(vector[:-1], a)


def test_count_ops_prints_the_table(capsys):
    assert bench.run(bench_args("--count-ops", "--only", "sinusoid")) == 0
    out = capsys.readouterr().out
    rows = {line[:28].strip(): line[28:].split() for line in out.splitlines()[4:]}
    second, first = (int(n) for n in rows["total"])
    assert second == bench.count_case(bench.CASES[0])[0].total() and 0 < first < second
    assert int(rows["linear.r_backward"][0]) > 0 and "host reads (host waits)" in rows


def test_count_ops_only_that_matches_no_counted_model():
    assert bench.run(bench_args("--count-ops", "--only", "1 thread")) == 2
