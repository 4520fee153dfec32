"""The sweep (numpy_amaml.sweep, sweep_results, executors and the sweep command): a grid of
independent training runs in worker processes or on a Dask cluster, resumable, with a
convergence rule, a results table and figures.

The sweeps here are tiny (a 2×2 grid, 30 iterations, 20 test tasks); most of their time is
spawning the worker processes. Cells run with --no-cell-figures (train's own figures are
tested in tests/test_train.py).
"""
import io
import json
import math
import os
import shutil
from dataclasses import asdict

import pytest

from contextlib import redirect_stdout

from numpy_amaml import sweep, sweep_results, training
from numpy_amaml.checkpoint import load_checkpoint, save_checkpoint
from numpy_amaml.cli import main
from numpy_amaml.run_folder import read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--iterations", "30", "--eval-tasks", "20", "--seeds", "0", "--no-progress", "--no-cell-figures"]
GRID = ["--alphas", "0.01,0.03", "--betas", "0.001,0.003", "--methods", "maml,alpha-maml", *TINY]


def sweep_main(out, *options):
    return main(["sweep", "--out", str(out), *map(str, options)])


def assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC, path


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """A finished 2×2 sinusoid sweep of both methods with 2 workers: (exit code, out, printed)."""
    out = tmp_path_factory.mktemp("sweeps") / "grid"
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = sweep_main(out, *GRID, "--workers", 2)
    return code, out, printed.getvalue()


def test_grid_sweep_writes_results_summary_and_figures(grid_sweep):
    code, out, printed = grid_sweep
    assert code == 0
    assert "8 cells, 0 already finished (skipped), 8 to run on 2 local worker processes" in printed
    rows = sweep_results.read_csv(out / "results.csv")
    assert len(rows) == 8
    assert {(r["method"], r["alpha0"], r["beta0"]) for r in rows} == {
        (m, a, b) for m in ("maml", "alpha-maml") for a in ("0.01", "0.03") for b in ("0.001", "0.003")}
    header = [line for line in (out / "results.csv").read_text().splitlines() if line.startswith("#")]
    assert any("converged = not diverged AND final query MSE after 1 inner step" in line for line in header)
    for row in rows:
        assert row["diverged"] == "False" and row["converged"] in ("True", "False")
        assert 0 < float(row["metric"]) == float(row["mse_k1"]) and float(row["metric_ci95"]) > 0
        assert float(row["mse_k10"]) > 0 and float(row["mse_k0"]) > 0 and float(row["wall_s"]) > 0
        if row["method"] == "maml":
            assert float(row["final_alpha"]) == float(row["alpha0"]) and float(row["gamma_alpha"]) == 0
        else:
            assert float(row["final_alpha"]) != float(row["alpha0"]) and float(row["gamma_alpha"]) > 0
    # the flags follow the rule: MSE ≤ 1.5 × the best
    best = min(float(r["metric"]) for r in rows)
    assert [r["converged"] == "True" for r in rows] == [float(r["metric"]) <= 1.5 * best for r in rows]

    summary = (out / "summary.txt").read_text()
    assert summary.splitlines()[0] in printed
    assert "  MAML: converged " in summary and "  Alpha MAML: converged " in summary
    for figure in ("heatmap.png", "trajectories.png"):
        assert_png(out / figure)
    assert not (out / "hyper_lr.png").exists()

    # each cell: a result JSON and a run folder with the α/β trajectory and one final checkpoint
    cell = out / "cells" / "alpha-maml_a0.01_b0.001_s0"
    result = json.loads((out / "cells" / "alpha-maml_a0.01_b0.001_s0.json").read_text())
    assert result["iterations_done"] == 30 and result["diverged"] is False
    records = read_metrics(cell)
    assert records[-1]["iteration"] == 30 and len({r["alpha"] for r in records}) > 1
    assert load_checkpoint(cell / "checkpoint.npz")["iteration"] == 30
    assert json.loads((cell / "config.json").read_text())["checkpoint_every"] == 30
    assert not list(cell.glob("*.png"))                               # --no-cell-figures
    assert not [p for p in (out / "cells").iterdir() if p.name.startswith(".")]   # no temp files


def test_rerun_recomputes_only_missing_cells(grid_sweep, tmp_path, capsys):
    _, finished, _ = grid_sweep
    out = shutil.copytree(finished, tmp_path / "copy")          # copy2 keeps the mtimes
    missing = out / "cells" / "maml_a0.03_b0.003_s0.json"
    missing.unlink()
    others = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert len(others) == 7
    assert sweep_main(out, *GRID, "--workers", 2) == 0
    assert "8 cells, 7 already finished (skipped), 1 to run on 1 local worker process" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in others} == others    # untouched
    assert missing.is_file()
    again = {r["method"] + r["alpha0"] + r["beta0"]: r for r in sweep_results.read_csv(out / "results.csv")}
    before = {r["method"] + r["alpha0"] + r["beta0"]: r for r in sweep_results.read_csv(finished / "results.csv")}
    assert again.keys() == before.keys()
    # the recomputed cell is the same run (same seed): same numbers
    assert again["maml0.030.003"]["metric"] == before["maml0.030.003"]["metric"]

    # a run folder without a result (an interrupted cell) is started afresh
    (out / "cells" / "maml_a0.01_b0.001_s0.json").unlink()
    (out / "cells" / "maml_a0.01_b0.001_s0" / "metrics.jsonl").write_text('{"iteration": 999}\n')
    assert sweep_main(out, *GRID, "--workers", 1) == 0
    assert "7 already finished (skipped), 1 to run" in capsys.readouterr().out
    assert read_metrics(out / "cells" / "maml_a0.01_b0.001_s0")[-1]["iteration"] == 30


def test_report_only_reports_the_finished_cells_and_runs_nothing(grid_sweep, tmp_path, capsys):
    from numpy_amaml.folder_lock import lock_folder
    _, finished, _ = grid_sweep
    out = shutil.copytree(finished, tmp_path / "partial")
    for name in ("maml_a0.03_b0.003_s0", "alpha-maml_a0.03_b0.003_s0"):
        (out / "cells" / f"{name}.json").unlink()
    lock = lock_folder(out)                              # the sweep is still running: reading is fine
    try:
        assert sweep_main(out, *GRID, "--report-only") == 0
    finally:
        lock.release()
    assert "6 of 8 cells finished; the 2 others are not run (--report-only)" in capsys.readouterr().out
    assert not (out / "cells" / "maml_a0.03_b0.003_s0.json").exists()
    partial = {r["method"] + r["alpha0"] + r["beta0"]: r for r in sweep_results.read_csv(out / "results.csv")}
    whole = {r["method"] + r["alpha0"] + r["beta0"]: r for r in sweep_results.read_csv(finished / "results.csv")}
    assert set(partial) == set(whole) - {"maml0.030.003", "alpha-maml0.030.003"}
    assert all(partial[k]["metric"] == whole[k]["metric"] for k in partial)
    assert sweep_main(tmp_path / "none", *GRID, "--report-only") == 2
    assert "holds no sweep.json" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_rerun_with_other_settings_is_refused(grid_sweep, capsys):
    _, out, _ = grid_sweep
    options = [o if o != "30" else "40" for o in GRID]
    assert sweep_main(out, *options) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "iterations: 40 (stored 30)" in err


def test_diverged_cells_are_results(tmp_path, capsys):
    # α₀ = 1000 blows the inner step up at once; β₀ = 5 with SGD blows θ up after a few iterations.
    out = tmp_path / "diverge"
    code = sweep_main(out, "--alphas", "0.01,1000", "--betas", "5", "--methods", "maml", "--optimizer", "sgd",
                      "--iterations", 200, "--log-every", 1, "--eval-tasks", 20, "--workers", 2,
                      "--no-progress", "--no-cell-figures")
    printed = capsys.readouterr().out
    assert code == 0
    rows = {r["alpha0"]: r for r in sweep_results.read_csv(out / "results.csv")}
    absurd, large_beta = rows["1000"], rows["0.01"]
    assert absurd["diverged"] == "True" and absurd["diverged_at"] == "1" and absurd["converged"] == "False"
    assert absurd["metric"] == "" and float(absurd["final_alpha"]) == 1000     # nothing logged: the start
    assert large_beta["diverged"] == "True" and int(large_beta["diverged_at"]) > 1
    assert large_beta["converged"] == "False"
    result = json.loads((out / "cells" / "maml_a0.01_b5_s0.json").read_text())
    assert result["message"].startswith(f"iteration {large_beta['diverged_at']}:")
    assert result["iterations_done"] == int(large_beta["diverged_at"]) - 1
    assert "MAML: converged 0/2 runs (0%), 0/2 starting points with every seed converged, 2 diverged" in printed
    assert "no cell finished" in printed
    assert_png(out / "heatmap.png")


def test_hypergradient_rate_mode(tmp_path, capsys):
    out = tmp_path / "hyper"
    code = sweep_main(out, "--starts", "0.01:0.001", "--hyper-rule", "additive", "--alpha-hyper-lrs", "1e-5,1e-4",
                      "--beta-hyper-lrs", "1e-7",
                      "--iterations", 10, "--eval-tasks", 20, "--workers", 2, "--no-progress", "--no-cell-figures")
    printed = capsys.readouterr().out
    assert code == 0
    rows = sweep_results.read_csv(out / "results.csv")
    assert sorted((r["sweep"], r["method"], r["gamma_alpha"], r["gamma_beta"]) for r in rows) == [
        ("gamma_alpha", "alpha-maml", "0.0001", "1e-07"), ("gamma_alpha", "alpha-maml", "1e-05", "1e-07"),
        ("gamma_beta", "alpha-maml", "1e-05", "1e-07"), ("reference", "maml", "0", "0")]
    assert "Alpha MAML, γ_α = 0.0001: converged" in printed and "MAML (reference" in printed
    assert_png(out / "hyper_lr.png")
    assert_png(out / "trajectories.png")
    assert not (out / "heatmap.png").exists()


# ---- the convergence rule and the options, without training ----------------------------------------

def test_convergence_rule_on_a_handcrafted_table():
    rows = [{"diverged": False, "metric": 0.20}, {"diverged": False, "metric": 0.30},
            {"diverged": False, "metric": 0.31}, {"diverged": True, "metric": None},
            {"diverged": False, "metric": None}, {"diverged": False, "metric": math.inf}]
    flags, threshold = sweep_results.converged_flags(rows, "sinusoid", mse_ratio=1.5)
    assert threshold == pytest.approx(0.30)
    assert flags == [True, True, False, False, False, False]
    assert sweep_results.converged_flags(rows, "sinusoid", mse_ratio=2.0)[0][:3] == [True, True, True]

    accuracy = [{"diverged": False, "metric": 0.95}, {"diverged": False, "metric": 0.90},
                {"diverged": False, "metric": 0.899}, {"diverged": True, "metric": 0.99}]
    flags, threshold = sweep_results.converged_flags(accuracy, "omniglot", accuracy_gap=0.05)
    assert threshold == pytest.approx(0.90)            # a diverged cell is never the best
    assert flags == [True, True, False, False]
    assert sweep_results.converged_flags([{"diverged": True, "metric": None}], "omniglot") == ([False], None)

    text = sweep_results.convergence_rule("sinusoid", 1.5, 0.05, 1)
    assert "not diverged" in text and "1.5 x the lowest" in text and "after 1 inner step" in text
    assert "highest such accuracy of any cell of this sweep - 0.05" in sweep_results.convergence_rule("omniglot", 1.5, 0.05, 3)


def test_summary_counts_runs_and_starting_points():
    rows = [{"sweep": "grid", "method": m, "alpha0": a, "beta0": 0.001, "seed": s, "converged": c, "diverged": d}
            for m, a, s, c, d in [("maml", 0.01, 0, True, False), ("maml", 0.01, 1, False, False),
                                  ("maml", 0.1, 0, False, True), ("maml", 0.1, 1, False, True),
                                  ("alpha-maml", 0.01, 0, True, False), ("alpha-maml", 0.01, 1, True, False),
                                  ("alpha-maml", 0.1, 0, True, False), ("alpha-maml", 0.1, 1, False, False)]]
    lines = sweep_results.summarize(rows, {"task": "sinusoid", "iterations": 5}, 0.3, "RULE")
    assert "seeds 0,1; RULE (threshold 0.3)" in lines[0]
    assert lines[1] == "  MAML: converged 1/4 runs (25%), 0/2 starting points with every seed converged, 2 diverged"
    assert lines[2] == ("  Alpha MAML: converged 3/4 runs (75%), 1/2 starting points with every seed converged, "
                        "0 diverged")


@pytest.mark.parametrize("options, message", [
    (["--methods", "maml,reptile"], "--methods must be"),
    (["--alphas", "0.1,x"], "--alphas must be"),
    (["--betas", "-1"], "--betas must be"),
    (["--seeds", ""], "--seeds must be"),
    (["--starts", "0.1:0.001"], "--starts is for the 1-D mode"),
    (["--alpha-hyper-lrs", "1e-5", "--starts", "0.1"], "ALPHA:BETA pairs"),
    (["--alpha-hyper-lrs", "1e-5", "--methods", "maml"], "must include alpha-maml"),
    (["--alpha-hyper-lrs", "1e-5", "--alpha-hyper-lr", "1e-4"], "not both"),
    (["--ways", "5"], "only apply to --task omniglot"),
    (["--workers", "0"], "--workers must be"),
    (["--workers", "2", "--dask-scheduler", "tcp://127.0.0.1:1"], "a Dask cluster has its own workers"),
])
def test_bad_options_are_named(tmp_path, capsys, options, message):
    assert sweep_main(tmp_path / "bad", "--iterations", 5, "--no-progress", *options) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cell_names_are_distinct():
    cells = sweep.make_cells(["maml", "alpha-maml"], [0.001, 0.01], [1e-4, 1e-3], [0, 1])
    assert len({c.name for c in cells}) == len(cells) == 16
    one_d = sweep.make_cells(["maml", "alpha-maml"], [0.01], [0.001], [0], [1e-6, 1e-5], [1e-7],
                             starts=[(0.01, 0.001), (0.1, 1e-4)])
    assert len({c.name for c in one_d}) == len(one_d) == 2 * (1 + 2 + 1)
    assert "alpha-maml_a0.1_b0.0001_s0_ga1e-06" in {c.name for c in one_d}


# ---- Omniglot: one cell, in this process (the tiny dataset's cache must stay out of <repo>/data) ------

def test_omniglot_cell(tmp_path, tiny_omniglot):
    data = tiny_omniglot
    settings = {"task": "omniglot", "iterations": 3, "eval_tasks": 4,
                "train": {"data_dir": str(data), "ways": 3, "channels": 4, "meta_batch": 2, "queries": 1,
                          "val_tasks": 3, "test_inner_steps": 2}}
    cells = sweep.make_cells(["maml", "alpha-maml"], [0.4], [0.001], [0])
    results = [sweep.run_cell({"cell": asdict(c), "settings": settings, "out": str(tmp_path / "out"),
                               "cell_figures": False}) for c in cells]
    assert all("error" not in r for r in results), results
    for result in results:
        assert result["evaluation"]["metric_steps"] == 2
        assert [row["steps"] for row in result["evaluation"]["results"]] == [0, 2]
        assert all(0 <= row["mean"] <= 1 for row in result["evaluation"]["results"])
        config = json.loads((tmp_path / "out" / result["run_dir"] / "config.json").read_text())
        assert config["val_every"] == 3 and config["checkpoint_every"] == 3 and config["queries"] == 1
    rows, columns, _ = sweep_results.table(results, "omniglot", 1.5, 0.05)
    assert "acc_k2" in columns and rows[0]["metric"] == rows[0]["acc_k2"]
    lines, figures = sweep_results.report(results, settings, tmp_path / "out", 1.5, 0.05)
    assert "accuracy after 2 inner steps" in lines[0] and figures == ["heatmap.png", "trajectories.png"]
    assert sorted(os.listdir(tmp_path / "cache"))                         # the cache went to tmp_path


def test_an_adaptation_that_blows_up_at_test_time_costs_only_its_step_count(tmp_path):
    # A finished run whose α is then made large: one inner step stays finite, ten do not.
    run_dir = tmp_path / "run"
    trainer = training.train({"task": "sinusoid", "method": "maml", "iterations": 2}, out=run_dir,
                             progress=False, figures=False)
    state = load_checkpoint(run_dir / "checkpoint.npz")
    state["alpha"] = 2.0
    save_checkpoint(run_dir / "checkpoint.npz", state)
    evaluation = sweep.evaluate_cell(run_dir, trainer.config, tasks=20)
    rows = {row["steps"]: row["mean"] for row in evaluation["results"]}
    assert set(rows) == {0, 1, 10} and evaluation["metric_steps"] == 1
    assert rows[0] > 0 and rows[1] > 0 and rows[10] is None
    assert list(evaluation["failed"]) == ["10"] and "NaN or Inf" in evaluation["failed"]["10"]


# ---- the same grid on a Dask cluster ---------------------------------------------------------------

def test_grid_on_a_dask_cluster_gives_the_same_results(grid_sweep, tmp_path, capsys):
    """A LocalCluster (2 worker processes) stands in for a real cluster: the cells, the CSV and
    the resume are the same as with local processes; only the wall times differ."""
    distributed = pytest.importorskip("distributed")
    _, local, _ = grid_sweep
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        out = tmp_path / "dask"
        assert sweep_main(out, *GRID, "--dask-scheduler", cluster.scheduler_address) == 0
        assert "8 to run on the Dask cluster at tcp://" in capsys.readouterr().out
        same = lambda path: [{k: v for k, v in row.items() if k != "wall_s"}
                             for row in sweep_results.read_csv(path / "results.csv")]
        assert same(out) == same(local)
        (out / "cells" / "maml_a0.01_b0.001_s0.json").unlink()          # resume through the cluster
        assert sweep_main(out, *GRID, "--dask-scheduler", cluster.scheduler_address) == 0
        assert "7 already finished (skipped), 1 to run" in capsys.readouterr().out
        assert same(out) == same(local)


def test_an_unreachable_dask_scheduler_is_one_line(tmp_path, capsys):
    pytest.importorskip("distributed")
    assert sweep_main(tmp_path / "x", *GRID, "--dask-scheduler", "tcp://127.0.0.1:9") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Dask scheduler at tcp://127.0.0.1:9") and "Traceback" not in err
    assert not (tmp_path / "x").exists()                         # nothing was created
