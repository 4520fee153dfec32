"""The bench command runs and prints its table (its numbers are measured by running it,
never asserted here: timings on a shared machine are not test material)."""
import argparse

import pytest

from numpy_amaml import backend, bench, parallel

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
    threads, seconds, memory, unit = row.split()[-4:]
    assert threads == "1" and float(seconds) > 0 and float(memory) > 0 and unit == "MiB"
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
