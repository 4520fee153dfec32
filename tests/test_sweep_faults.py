"""Every mistake and accident around a sweep ends in one clear line, with nothing of the user's
overwritten and no finished cell lost (issue 20, the sweep's part).

Each test reproduces a case a user met and asserts the exit status, a message of one line with
no traceback, and the folder byte-identical afterwards (or resumable). Signals and two sweeps
at once go through real processes: the sweep is started in a session of its own and Ctrl-C is
sent to its whole process group, as a terminal does. The sweeps are tiny sinusoid ones (a few
iterations, 2 test tasks) or never finish (a million iterations) and are stopped; Omniglot uses
the 12-character dataset of tests/conftest.py, in this process.
"""
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from numpy_amaml import executors, sweep, sweep_results
from numpy_amaml.cli import main
from tests.test_faults import wait_for

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--no-progress", "--no-figures"]
TINY = ["--iterations", "5", "--eval-tasks", "2", "--workers", "1", *QUIET]
FOREVER = ["--iterations", "1000000", *QUIET]        # cells that are stopped, never finished


def sweep_main(out, *options):
    return main(["sweep", "--out", str(out), *map(str, options)])


def snapshot(folder):
    """{relative path: bytes} of every file below ``folder`` (or of ``folder`` itself): to prove
    it unchanged."""
    folder = Path(folder)
    if folder.is_file():
        return {".": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(err, start="error: "):
    """stderr of a failed command: exactly one non-empty line, starting ``start``, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(start) and "Traceback" not in err, err
    return lines[0]


def start_sweep(out, *options):
    """``python -m numpy_amaml sweep`` in a new session (its own process group, as a terminal's
    foreground job), with its output captured."""
    return subprocess.Popen([sys.executable, "-m", "numpy_amaml", "sweep", "--out", str(out), *map(str, options)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def group_is_gone(pgid):
    """Whether no live process is left in the process group ``pgid`` (read from /proc; a zombie
    that only waits to be reaped by init does not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return False
    return True


def training(out, name):
    """Whether the cell ``name`` of the sweep in ``out`` has logged its first iteration."""
    return (Path(out) / "cells" / name / "metrics.jsonl").is_file()


# ---- Ctrl-C and SIGTERM ----------------------------------------------------------------------------

@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
@pytest.mark.parametrize("signum, presses, status", [(signal.SIGINT, 1, 130), (signal.SIGINT, 2, 130),
                                                     (signal.SIGTERM, 1, 143)])
def test_an_interrupt_stops_the_sweep_at_once_and_keeps_the_finished_cells(tmp_path, signum, presses, status):
    """One worker, three cells: α₀ = 1000 diverges at its first iteration (a finished cell), α₀ =
    0.01 trains, α₀ = 0.02 waits. Before, the first Ctrl-C let the worker train the waiting cell
    to the end, and a second one hung the parent for good."""
    out = tmp_path / "sweep"
    process = start_sweep(out, "--alphas", "1000,0.01,0.02", "--methods", "maml", "--workers", 1, *FOREVER)
    wait_for(lambda: training(out, "maml_a0.01_b0.001_s0"))
    finished = (out / "cells" / "maml_a1000_b0.001_s0.json").read_bytes()
    sent = time.monotonic()
    for _ in range(presses):
        os.killpg(process.pid, signum)
        time.sleep(0.05)
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - sent < 10                       # not the million iterations
    assert process.returncode == status
    line = one_line_error(err, start="interrupted: " if signum == signal.SIGINT else "stopped by SIGTERM: ")
    assert f"finished cells are kept in {out / 'cells'}" in line and "run the same command again" in line
    wait_for(lambda: group_is_gone(process.pid), seconds=10)  # no worker left behind
    assert (out / "cells" / "maml_a1000_b0.001_s0.json").read_bytes() == finished
    assert not (out / "cells" / "maml_a0.01_b0.001_s0.json").exists()        # stopped, not finished
    assert not (out / "cells" / "maml_a0.02_b0.001_s0").exists()             # never started
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == ".lock"]
    if presses > 1 or signum != signal.SIGINT:
        return
    # the same command resumes: the finished cell is skipped, the stopped one starts afresh; a
    # Ctrl-C at once (while the worker starts) is one line too
    again = start_sweep(out, "--alphas", "1000,0.01,0.02", "--methods", "maml", "--workers", 1, *FOREVER)
    assert again.stdout.readline().startswith("sweep: 3 cells, 1 already finished (skipped), 2 to run")
    os.killpg(again.pid, signal.SIGINT)
    _, err = again.communicate(timeout=60)
    assert again.returncode == 130 and one_line_error(err, start="interrupted: ")
    assert (out / "cells" / "maml_a1000_b0.001_s0.json").read_bytes() == finished


def ignore_sigterm_and_sleep(job):
    """A job whose worker ignores SIGTERM (as a cell stuck in a long computation would not react)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(job["ready"]).touch()
    time.sleep(600)


def test_a_second_ctrl_c_skips_the_wait_for_running_cells(tmp_path, monkeypatch):
    """The first Ctrl-C asks the worker to end (SIGTERM) and waits up to STOP_SECONDS; a second
    one kills it at once."""
    monkeypatch.setattr(executors, "STOP_SECONDS", 600.0)
    ready = tmp_path / "ready"

    def press_ctrl_c_twice():
        wait_for(ready.is_file)
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
    threading.Thread(target=press_ctrl_c_twice, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        list(executors.LocalExecutor(1).map_unordered(ignore_sigterm_and_sleep, [{"ready": str(ready)}]))
    assert time.monotonic() - started < 60 and not multiprocessing.active_children()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker in /proc")
def test_a_worker_killed_mid_cell_is_one_line(tmp_path):
    out = tmp_path / "sweep"
    process = start_sweep(out, "--alphas", "0.01", "--methods", "maml", "--workers", 1, *FOREVER)
    wait_for(lambda: training(out, "maml_a0.01_b0.001_s0"))
    workers = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
               if _parent(p) == process.pid and b"spawn_main" in _read(p.parent / "cmdline")]
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "a worker process ended without finishing its cell (killed by signal 9" in one_line_error(err)
    assert not (out / ".lock").exists() and not (out / "cells" / "maml_a0.01_b0.001_s0.json").exists()


def test_a_cell_folder_still_being_trained_elsewhere_is_not_cleared(tmp_path):
    """A worker of an earlier, stopped sweep (a Dask cell cannot be stopped) may still train a
    cell: the re-run must not delete its folder under it, but report the cell as failed."""
    from dataclasses import asdict
    from numpy_amaml.folder_lock import lock_folder
    cell = sweep.Cell("maml", 0.01, 0.001, 0)
    run_dir = tmp_path / "cells" / cell.name
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"iteration": 1}\n')
    lock = lock_folder(run_dir)                          # "another process" trains it
    try:
        result = sweep.run_cell({"cell": asdict(cell), "settings": {}, "out": str(tmp_path)})
    finally:
        lock.release()
    assert "is still being trained by another process (pid " in result["error"]
    assert (run_dir / "metrics.jsonl").is_file() and not (tmp_path / "cells" / f"{cell.name}.json").exists()


def _parent(stat):
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return None


def _read(path):
    try:
        return path.read_bytes()
    except OSError:
        return b""


# ---- one writer per folder ---------------------------------------------------------------------------

def test_a_second_sweep_into_a_folder_being_written_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "sweep"
    first = start_sweep(out, "--alphas", "0.01", "--methods", "maml", "--workers", 1, *FOREVER)
    wait_for(lambda: training(out, "maml_a0.01_b0.001_s0"))
    settings = (out / "sweep.json").read_bytes()
    second = subprocess.run([sys.executable, "-m", "numpy_amaml", "sweep", "--out", str(out), "--alphas", "0.01",
                             "--methods", "maml", "--workers", "1", *FOREVER], cwd=REPO, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert second.returncode == 2 and second.stdout == ""
    line = one_line_error(second.stderr)
    assert str(out) in line and f"pid {first.pid}, started " in line
    assert (out / "sweep.json").read_bytes() == settings and first.poll() is None   # the first goes on
    os.killpg(first.pid, signal.SIGINT)
    assert first.wait(timeout=60) == 130


# ---- never overwrite what is not ours -------------------------------------------------------------------

def make_run_folder(path):
    assert main(["train", "--out", str(path), "--iterations", "2", *QUIET]) == 0


@pytest.mark.parametrize("kind, message", [
    ("file", "is a file, not a folder"),
    ("run folder", "is a training run's folder (it has config.json), not a sweep's"),
    ("other files", "is not empty (notes.txt, results.csv) and holds no sweep (no sweep.json)"),
])
def test_out_that_is_not_a_sweep_folder_is_refused_and_left_as_it_was(tmp_path, capsys, kind, message):
    out = tmp_path / "README.md" if kind == "file" else tmp_path / "folder"
    if kind == "file":
        out.write_text("# my notes\n")
    elif kind == "run folder":
        make_run_folder(out)
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine\n")
        (out / "results.csv").write_text("a,b\n1,2\n")
    before = snapshot(out)
    capsys.readouterr()
    assert sweep_main(out, "--methods", "maml", *TINY) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert snapshot(out) == before


def test_an_empty_folder_and_a_new_one_are_used(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".lock").write_text("1234 2020-01-01T00:00:00\n")    # a sweep killed with kill -9
    assert sweep_main(tmp_path / "empty", "--methods", "maml", *TINY) == 0
    assert sweep_main(tmp_path / "new" / "sweep", "--methods", "maml", *TINY) == 0
    for out in (tmp_path / "empty", tmp_path / "new" / "sweep"):
        assert sorted(p.name for p in out.iterdir()) == ["cells", "results.csv", "summary.txt", "sweep.json"]


def test_a_damaged_sweep_json_is_named_and_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text('{"task": "sinus')
    before = snapshot(out)
    assert sweep_main(out, "--methods", "maml", *TINY) == 2
    assert f"{out / 'sweep.json'} cannot be read" in one_line_error(capsys.readouterr().err)
    assert snapshot(out) == before


# ---- settings checked before anything is written -----------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (["--mse-ratio", "0"], "--mse-ratio must be a number ≥ 1"),
    (["--mse-ratio", "-1"], "--mse-ratio must be a number ≥ 1"),
    (["--mse-ratio", "nan"], "--mse-ratio must be a number ≥ 1"),
    (["--mse-ratio", "inf"], "--mse-ratio must be a number ≥ 1"),
    (["--accuracy-gap", "-0.1"], "--accuracy-gap must be a number from 0 to 1"),
    (["--accuracy-gap", "nan"], "--accuracy-gap must be a number from 0 to 1"),
    (["--seeds", "-1"], "--seed must be an integer ≥ 0"),
    (["--meta-batch", "10000000000"], "--meta-batch 10000000000 needs at least"),
    (["--methods", "maml,meta-sgd", "--alpha-hyper-lr", "0.1"], "--alpha-hyper-lr set Alpha MAML's hyper-rates"),
    (["--methods", "lslr", "--beta-hyper-lr", "0.1"], "has no alpha-maml: leave it out"),
])
def test_invalid_values_are_refused_and_create_nothing(tmp_path, capsys, options, message):
    assert sweep_main(tmp_path / "out", *TINY, *options) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


OMNIGLOT = ["--task", "omniglot", "--methods", "maml", "--channels", "4", "--meta-batch", "2", "--queries", "1",
            "--val-tasks", "2", "--test-inner-steps", "1", "--iterations", "2", "--eval-tasks", "2", *QUIET]


def run_cells_here(monkeypatch):
    """Run the cells in this process: the tiny Omniglot's cache (tests/conftest.py) is set here
    only, and a spawned worker would build its own in <repo>/data."""
    monkeypatch.setattr(executors.LocalExecutor, "map_unordered", lambda self, fn, jobs: (fn(job) for job in jobs))


def test_omniglot_data_and_ways_are_checked_before_anything_is_written(tmp_path, tiny_omniglot, capsys,
                                                                       monkeypatch):
    out = tmp_path / "sweep"
    assert sweep_main(out, *OMNIGLOT, "--data-dir", tmp_path / "nowhere", "--ways", 3) == 2
    assert f"Omniglot folder {tmp_path / 'nowhere'}" in one_line_error(capsys.readouterr().err)
    assert not out.exists()
    assert sweep_main(out, *OMNIGLOT, "--data-dir", tiny_omniglot, "--ways", 500) == 2
    assert "500-way tasks need 500 classes, but this split has only" in one_line_error(capsys.readouterr().err)
    assert not out.exists()

    run_cells_here(monkeypatch)                  # the corrected command works
    assert sweep_main(out, *OMNIGLOT, "--data-dir", tiny_omniglot, "--ways", 3) == 0
    assert [r["method"] for r in sweep_results.read_csv(out / "results.csv")] == ["maml"]


# ---- the cells: duplicates, distinct names, result files, divergence ----------------------------------

def test_duplicate_cells_are_merged_and_distinct_values_have_distinct_names(tmp_path, capsys):
    cells = sweep.make_cells(["maml", "maml"], [0.01, 0.0100000001], [0.001], [0])
    assert [c.name for c in cells] == ["maml_a0.01_b0.001_s0", "maml_a0.0100000001_b0.001_s0"]
    # the names of folders made before: 6 significant digits where they give the value back
    assert sweep.Cell("alpha-maml", 4.0, 1e-4, 1).name == "alpha-maml_a4_b0.0001_s1"
    assert sweep.Cell("alpha-maml", 0.01, 1e-3, 0, "gamma_alpha", gamma_alpha=1e-05).name == \
        "alpha-maml_a0.01_b0.001_s0_ga1e-05"

    out = tmp_path / "sweep"
    assert sweep_main(out, "--methods", "maml,maml", "--alphas", "0.01,0.0100000001,1e-2", *TINY) == 0
    printed = capsys.readouterr().out
    assert "sweep: 2 cells" in printed and "MAML: converged 2/2 runs" in printed
    rows = sweep_results.read_csv(out / "results.csv")
    assert sorted(float(r["alpha0"]) for r in rows) == [0.01, 0.0100000001]


OLD_SETTINGS = {"task": "sinusoid", "iterations": 5, "eval_tasks": 2, "train": {}}
OLD_RESULT = {   # a cell result as the sweep wrote it before this change (main 2e5dcb3)
    "name": "maml_a0.01_b0.001_s0",
    "cell": {"method": "maml", "alpha0": 0.01, "beta0": 0.001, "seed": 0, "sweep": "grid",
             "gamma_alpha": None, "gamma_beta": None},
    "task": "sinusoid", "gamma_alpha": 0.0, "gamma_beta": 0.0, "iterations": 5,
    "run_dir": "cells/maml_a0.01_b0.001_s0", "diverged": False, "diverged_at": None, "message": None,
    "evaluation": {"metric": "query MSE (100 points per task)", "tasks": 2, "seed": 0, "metric_steps": 1,
                   "results": [{"steps": 0, "mean": 6.1059242486953735, "ci95": 5.861033911705017},
                               {"steps": 1, "mean": 6.078887462615967, "ci95": 5.821093044281005},
                               {"steps": 10, "mean": 6.076877593994141, "ci95": 5.919767265319823}],
                   "failed": {}},
    "final_alpha": 0.01, "final_beta": 0.001, "alpha_clamps": 0, "beta_clamps": 0, "iterations_done": 5,
    "wall_s": 0.03}
OLD_DIVERGED = {**OLD_RESULT, "name": "maml_a1000_b0.001_s0", "cell": {**OLD_RESULT["cell"], "alpha0": 1000.0},
                "run_dir": "cells/maml_a1000_b0.001_s0", "diverged": True, "diverged_at": 1, "evaluation": None,
                "message": "iteration 1: grad_norm is not finite (inf); try a smaller α, β or hypergradient rate",
                "final_alpha": 1000.0, "iterations_done": 0, "wall_s": 0.066}


def write_old_sweep(out):
    (out / "cells").mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps(OLD_SETTINGS, indent=2) + "\n")
    for result in (OLD_RESULT, OLD_DIVERGED):
        (out / "cells" / f"{result['name']}.json").write_text(json.dumps(result, indent=1) + "\n")


def test_a_sweep_folder_written_before_is_resumed_with_its_cells_skipped(tmp_path, capsys):
    out = tmp_path / "sweep"
    write_old_sweep(out)
    cells = snapshot(out / "cells")
    assert sweep_main(out, "--alphas", "0.01,1000", "--methods", "maml", *TINY) == 0
    assert "sweep: 2 cells, 2 already finished (skipped), 0 to run" in capsys.readouterr().out
    assert snapshot(out / "cells") == cells
    rows = {r["alpha0"]: r for r in sweep_results.read_csv(out / "results.csv")}
    assert rows["1000"]["diverged"] == "True" and float(rows["0.01"]["metric"]) == pytest.approx(6.078887462615967)


@pytest.mark.parametrize("damage", [
    lambda r: [r], lambda r: "done", lambda r: None,
    lambda r: {k: v for k, v in r.items() if k != "wall_s"},
    lambda r: {**r, "name": "maml_a0.02_b0.001_s0"},
    lambda r: {**r, "diverged": "False"},
    lambda r: {**r, "evaluation": None},                         # not diverged, yet no evaluation
    lambda r: {**r, "evaluation": {**r["evaluation"], "results": [{"steps": 1}]}},
    lambda r: {**r, "evaluation": {**r["evaluation"], "results": "1"}},
    lambda r: {**r, "gamma_alpha": "0"},
])
def test_a_result_of_the_wrong_shape_is_not_trusted(damage):
    cell = sweep.Cell("maml", 0.01, 0.001, 0)
    assert sweep.is_result(OLD_RESULT, cell) and sweep.is_result(OLD_DIVERGED, sweep.Cell("maml", 1000.0, 0.001, 0))
    assert not sweep.is_result(damage(OLD_RESULT), cell)


def test_a_result_file_of_the_wrong_shape_is_run_again(tmp_path, capsys):
    out = tmp_path / "sweep"
    write_old_sweep(out)
    (out / "cells" / "maml_a0.01_b0.001_s0.json").write_text('{"name": "maml_a0.01_b0.001_s0", "diverged": 0}\n')
    assert sweep_main(out, "--alphas", "0.01,1000", "--methods", "maml", *TINY) == 0
    printed = capsys.readouterr().out
    assert "2 cells, 1 already finished (skipped), 1 to run on 1 local worker process (1 of them with a damaged" \
        in printed
    result = json.loads((out / "cells" / "maml_a0.01_b0.001_s0.json").read_text())
    assert sweep.is_result(result, sweep.Cell("maml", 0.01, 0.001, 0)) and result["iterations_done"] == 5


@pytest.mark.parametrize("options", [["--alpha-hyper-lr", "2000"], ["--beta-hyper-lr", "1e308"]])
def test_an_overflow_in_a_rate_update_is_a_diverged_cell(tmp_path, capsys, options):
    """With the normalized rule, α ← α·exp(γ_α cos_α) overflows for a huge γ: the cell diverged
    (before, an OverflowError made it a failed cell, retried on every run, missing from the CSV)."""
    out = tmp_path / "sweep"
    assert sweep_main(out, "--methods", "alpha-maml", "--hyper-rule", "normalized", *TINY, *options) == 0
    printed = capsys.readouterr().out
    assert "Alpha MAML: converged 0/1 runs (0%), 0/1 starting points with every seed converged, 1 diverged" in printed
    (row,) = sweep_results.read_csv(out / "results.csv")
    assert row["diverged"] == "True" and 1 <= int(row["diverged_at"]) <= 5 and row["converged"] == "False"
    assert math.isfinite(float(row["final_alpha"])) and math.isfinite(float(row["final_beta"]))


def test_ctrl_c_of_a_sweep_on_a_dask_cluster_is_one_line_and_cancels_the_waiting_cells(tmp_path, capsys):
    """Two cells that never finish, on a cluster with one worker: a Ctrl-C while the first trains
    ends the sweep in one line (status 130) that says the cell running on the cluster cannot be
    stopped there, cancels the other before it starts, and releases the sweep folder."""
    distributed = pytest.importorskip("distributed")
    from numpy_amaml.folder_lock import held_by
    out = tmp_path / "sweep"
    cells = ("maml_a0.01_b0.001_s0", "maml_a0.02_b0.001_s0")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        def press_ctrl_c():
            wait_for(lambda: any(training(out, name) for name in cells), seconds=120)
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=press_ctrl_c, daemon=True).start()
        status = sweep_main(out, "--alphas", "0.01,0.02", "--methods", "maml",
                            "--dask-scheduler", cluster.scheduler_address, *FOREVER)
        line = one_line_error(capsys.readouterr().err, start="interrupted: ")
        assert status == 130
        assert "the cells running on the Dask cluster cannot be stopped there" in line
        assert f"finished cells are kept in {out / 'cells'}" in line and "run the same command again" in line
        started = [name for name in cells if (out / "cells" / name).exists()]
        assert len(started) == 1, started                          # the other one was cancelled
        assert held_by(out) is None
