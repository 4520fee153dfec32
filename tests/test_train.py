"""Training and evaluation (numpy_amaml.training, run_folder, evaluation, meta_test and the
train and evaluate commands), the checkpoint format (numpy_amaml.checkpoint) and the figures,
mostly through the command line's ``main``.

Runs are short sinusoid runs (about 1 ms per iteration). Drawing the figures costs about a
second, so the tests that do not look at them pass --no-figures (``train(..., figures=False)``).
An Omniglot smoke test uses a tiny Omniglot-layout zip pair (from tests/test_omniglot_data.py)
and a 4-channel CNN.
"""
import json

import numpy as np
import pytest

from numpy_amaml import backend
from numpy_amaml.architectures import sinusoid_mlp
from numpy_amaml.checkpoint import load_checkpoint, save_checkpoint
from numpy_amaml.cli import main
from numpy_amaml.config import default_hyper_lrs, resolve_config
from numpy_amaml.evaluation import evaluate_sinusoid, mean_ci
from numpy_amaml.run_folder import load_run, read_metrics

FAST = ["--no-progress", "--checkpoint-every", "1000"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train(tmp_path, name, *options, figures=False):
    """Run ``train`` into tmp_path/name (with figures only if asked); returns (exit code, run folder)."""
    out = tmp_path / name
    return main(["train", "--out", str(out), *FAST, *([] if figures else ["--no-figures"]),
                 *map(str, options)]), out


def assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC, path


@pytest.fixture(autouse=True)
def restore_dtype():
    """Training sets the active dtype for a run and restores it; make sure of it."""
    before = backend.float_dtype()
    yield
    assert backend.float_dtype() is before


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A 30-iteration Alpha MAML run with a checkpoint at 20 and 30, logged every 5."""
    out = tmp_path_factory.mktemp("runs") / "short"
    code = main(["train", "--out", str(out), "--iterations", "30", "--log-every", "5",
                 "--checkpoint-every", "20", "--no-progress"])
    assert code == 0
    return out


# ---- the run folder ---------------------------------------------------------------------------

def test_run_folder_holds_config_metrics_checkpoint_and_figures(short_run, capsys):
    config = json.loads((short_run / "config.json").read_text())
    assert config["task"] == "sinusoid" and config["method"] == "alpha-maml"
    assert (config["alpha"], config["beta"], config["meta_batch"], config["shots"]) == (0.01, 0.001, 25, 10)
    assert (config["alpha_hyper_lr"], config["beta_hyper_lr"]) == default_hyper_lrs(config["hyper_rule"],
                                                                                     "sinusoid", "adam")
    assert config["ways"] is None                     # Omniglot-only settings do not apply

    records = read_metrics(short_run)
    assert [r["iteration"] for r in records] == [1, 5, 10, 15, 20, 25, 30]
    for key in ("query_loss_pre", "support_loss_pre", "query_loss_post", "alpha", "beta", "h_alpha",
                "h_beta", "alpha_clamps", "beta_clamps", "elapsed_s"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert records[-1]["elapsed_s"] >= records[0]["elapsed_s"] > 0

    state = load_checkpoint(short_run / "checkpoint.npz")
    assert state["iteration"] == 30
    assert state["alpha"] == records[-1]["alpha"] and state["optimizer"]["beta"] == records[-1]["beta"]
    assert state["optimizer"]["t"] == 30 and set(state["optimizer"]["m"]) == set(state["theta"])
    assert state["theta"]["fc1.W"].dtype == np.float32
    for figure in ("losses.png", "rates.png", "sinusoid_fits.png"):
        assert_png(short_run / figure)
    assert not [p.name for p in short_run.iterdir() if p.name.startswith(".")]   # no temp files


def test_summary_names_the_run_folder(tmp_path, capsys):
    code, out = train(tmp_path, "run", "--iterations", 3, "--method", "maml")
    printed = capsys.readouterr().out
    assert code == 0
    assert str(out) in printed and "config.json" in printed and "evaluate" in printed
    assert "figures:" not in printed                         # --no-figures


def test_maml_keeps_alpha_and_beta_fixed(tmp_path):
    code, out = train(tmp_path, "maml", "--iterations", 5, "--method", "maml", "--alpha", 0.02)
    assert code == 0
    config, _, state = load_run(out)
    assert (config.alpha_hyper_lr, config.beta_hyper_lr) == (0.0, 0.0)
    assert state["alpha"] == 0.02 and state["optimizer"]["beta"] == 0.001


# ---- resuming -----------------------------------------------------------------------------

def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    common = ["--method", "alpha-maml", "--optimizer", "adam", "--seed", 3, "--log-every", 5]
    assert train(tmp_path, "whole", "--iterations", 40, *common)[0] == 0
    code, half = train(tmp_path, "half", "--iterations", 20, *common)
    assert code == 0
    assert main(["train", "--resume", str(half), "--iterations", "40", *FAST]) == 0

    whole_state = load_checkpoint(tmp_path / "whole" / "checkpoint.npz")
    half_state = load_checkpoint(half / "checkpoint.npz")
    assert half_state["iteration"] == whole_state["iteration"] == 40
    for name, value in whole_state["theta"].items():
        assert np.array_equal(half_state["theta"][name], value), name
        assert np.array_equal(half_state["optimizer"]["m"][name], whole_state["optimizer"]["m"][name])
    assert half_state["alpha"] == whole_state["alpha"] != 0.01
    assert half_state["optimizer"]["beta"] == whole_state["optimizer"]["beta"] != 0.001
    assert half_state["sampler_state"] == whole_state["sampler_state"]

    def without_time(records):
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]
    assert without_time(read_metrics(half)) == without_time(read_metrics(tmp_path / "whole"))


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    code, out = train(tmp_path, "run", "--iterations", 10, "--log-every", 2)
    assert code == 0
    with open(out / "metrics.jsonl", "a") as f:          # as if it had run on past its checkpoint
        f.write(json.dumps({"iteration": 12, "query_loss_post": 1.0}) + "\n")
    assert main(["train", "--resume", str(out), "--iterations", "14", *FAST]) == 0
    assert [r["iteration"] for r in read_metrics(out)] == [1, 2, 4, 6, 8, 10, 12, 14]
    assert "query_loss_pre" in read_metrics(out)[-2]


def test_resume_errors_are_clear(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "missing"), *FAST]) == 2
    assert "no such folder" in capsys.readouterr().err

    code, out = train(tmp_path, "run", "--iterations", 4)
    assert code == 0
    assert main(["train", "--resume", str(out), "--iterations", "8", "--alpha", "0.5", *FAST]) == 2
    assert "cannot change --alpha 0.5 (run has 0.01)" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), *FAST]) == 2
    assert "already at iteration 4 of 4" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--out", str(tmp_path / "x"), *FAST]) == 2
    assert "do not pass --out" in capsys.readouterr().err
    assert train(tmp_path, "run", "--iterations", 4)[0] == 2          # folder already used
    assert "--resume" in capsys.readouterr().err


def test_bad_options_are_named(tmp_path, capsys):
    assert train(tmp_path, "a", "--ways", 5)[0] == 2
    assert "--ways only apply to --task omniglot" in capsys.readouterr().err
    assert train(tmp_path, "b", "--method", "maml", "--alpha-hyper-lr", 1e-3)[0] == 2
    assert "--alpha-hyper-lr needs --method alpha-maml" in capsys.readouterr().err
    assert train(tmp_path, "c", "--alpha", -1)[0] == 2
    assert "--alpha must be a positive number" in capsys.readouterr().err
    assert train(tmp_path, "d", "--inner-steps", 0)[0] == 2
    assert "--inner-steps must be a positive integer" in capsys.readouterr().err


# ---- learning, divergence, per-tensor α -------------------------------------------------------

def test_alpha_maml_learns_to_adapt_and_moves_the_rates(tmp_path):
    code, out = train(tmp_path, "learn", "--iterations", 600, "--log-every", 50)
    assert code == 0
    config, model, state = load_run(out)
    result, failed = evaluate_sinusoid(model, state["theta"], state["alpha"], steps=(1, 10), tasks=100, seed=7)
    assert failed == {}
    pre, after_10 = result[0][0], result[10][0]
    assert after_10 < 0.5 * pre, result
    assert result[1][0] < pre
    assert state["alpha"] != config.alpha and state["optimizer"]["beta"] != config.beta


def test_divergence_stops_cleanly_and_names_the_iteration(tmp_path, capsys):
    code, out = train(tmp_path, "diverge", "--iterations", 20, "--alpha", 1e3)
    err = capsys.readouterr().err
    assert code == 1
    assert "training diverged at iteration 1:" in err and "metrics.jsonl" in err
    assert "Warning" not in err                      # only the one clear message
    assert (out / "metrics.jsonl").is_file()


def test_divergence_after_some_iterations_keeps_the_metrics(tmp_path, capsys):
    # A large meta rate with SGD blows θ up within a few iterations, not at the first.
    code, out = train(tmp_path, "diverge", "--iterations", 200, "--optimizer", "sgd", "--beta", 5,
                      "--method", "maml", "--log-every", 1, figures=True)
    err = capsys.readouterr().err
    assert code == 1
    iteration = int(err.split("training diverged at iteration ")[1].split(":")[0])
    assert iteration > 1
    assert [r["iteration"] for r in read_metrics(out)] == list(range(1, iteration))
    assert_png(out / "losses.png")


def test_per_tensor_alpha(tmp_path):
    code, out = train(tmp_path, "per-tensor", "--iterations", 30, "--per-layer-alpha", figures=True)
    assert code == 0
    _, model, state = load_run(out)
    alpha = state["alpha"]
    assert set(alpha) == set(model.param_shapes)
    assert len(set(alpha.values())) == len(alpha)              # each tensor's rate moved on its own
    assert isinstance(read_metrics(out)[-1]["alpha"], dict)
    assert_png(out / "rates.png")
    assert main(["evaluate", str(out), "--tasks", "20"]) == 0


def test_float64_run(tmp_path):
    code, out = train(tmp_path, "f64", "--iterations", 3, "--dtype", "float64")
    assert code == 0
    assert load_checkpoint(out / "checkpoint.npz")["theta"]["fc1.W"].dtype == np.float64


def test_threads_option(tmp_path, capsys):
    """--threads changes the speed only: the same run with 3 threads ends at the same θ, and
    evaluates to the same table."""
    code, one = train(tmp_path, "one", "--iterations", 4, "--threads", 1)
    assert code == 0
    code, three = train(tmp_path, "three", "--iterations", 4, "--threads", 3)
    assert code == 0
    theta_one = load_checkpoint(one / "checkpoint.npz")["theta"]
    theta_three = load_checkpoint(three / "checkpoint.npz")["theta"]
    for k in theta_one:
        np.testing.assert_array_equal(theta_three[k], theta_one[k])
    capsys.readouterr()
    assert main(["evaluate", str(one), "--tasks", "8", "--threads", "1"]) == 0
    table_one = capsys.readouterr().out.splitlines()[:-1]    # without the "written: <path>" line
    assert main(["evaluate", str(three), "--tasks", "8", "--threads", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[:-1] == table_one
    assert main(["train", "--out", str(tmp_path / "x"), "--threads", "0", *FAST]) == 2
    assert "--threads must be ≥ 1, got 0" in capsys.readouterr().err
    assert main(["evaluate", str(one), "--threads", "0"]) == 2
    assert "--threads must be ≥ 1, got 0" in capsys.readouterr().err


# ---- evaluation ---------------------------------------------------------------------------------

def test_evaluate_writes_a_table_with_confidence_intervals(short_run, capsys):
    assert main(["evaluate", str(short_run), "--tasks", "50", "--steps", "1,5"]) == 0
    printed = capsys.readouterr().out
    assert "pre-update" in printed and "after 5 steps" in printed and "95% CI" in printed
    evaluation = json.loads((short_run / "evaluation.json").read_text())
    assert evaluation["tasks"] == 50 and evaluation["iteration"] == 30
    rows = {row["steps"]: row for row in evaluation["results"]}
    assert set(rows) == {0, 1, 5}
    assert all(row["ci95"] > 0 and np.isfinite(row["mean"]) for row in rows.values())


def test_evaluate_is_seeded_and_batching_does_not_matter():
    model = sinusoid_mlp()
    theta = model.init_params(0, dtype=np.float64)
    one = evaluate_sinusoid(model, theta, 0.01, steps=(2,), tasks=30, seed=5, batch_size=30)[0]
    split = evaluate_sinusoid(model, theta, 0.01, steps=(2,), tasks=30, seed=5, batch_size=7)[0]
    other = evaluate_sinusoid(model, theta, 0.01, steps=(2,), tasks=30, seed=6)[0]
    assert one.keys() == {0, 2}
    np.testing.assert_allclose(one[2], split[2], rtol=1e-12)
    assert one[2] != other[2]


def test_mean_ci():
    mean, ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and ci == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)


def test_evaluate_errors(short_run, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["evaluate", str(short_run), "--steps", "1,x"]) == 2
    assert "--steps must be a comma-separated list" in capsys.readouterr().err
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_bytes((short_run / "config.json").read_bytes())
    (damaged / "checkpoint.npz").write_bytes((short_run / "checkpoint.npz").read_bytes()[:5000])
    assert main(["evaluate", str(damaged)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


# ---- checkpoint format ----------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path):
    state = {"iteration": 7, "alpha": {"fc1.W": 0.1 / 3, "fc1.b": 1e-8},
             "theta": {"fc1.W": np.arange(6, dtype=np.float32).reshape(2, 3)},
             "optimizer": {"beta": 0.001 * 1.1, "prev_direction": None, "m": None, "t": 0},
             "sampler_state": {"state": {"state": 2 ** 100 + 1}}, "history": [1.5, None]}
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["theta"]["fc1.W"].dtype == np.float32
    np.testing.assert_array_equal(backend.to_numpy(loaded["theta"]["fc1.W"]), state["theta"]["fc1.W"])
    assert {k: v for k, v in loaded.items() if k != "theta"} == {k: v for k, v in state.items() if k != "theta"}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.npz")
    with pytest.raises(TypeError, match="cannot store"):
        save_checkpoint(tmp_path / "x.npz", {"f": object()})


def test_resolve_config_fills_task_defaults():
    config = resolve_config({"task": "omniglot", "method": "maml"})
    assert (config.ways, config.shots, config.alpha, config.meta_batch, config.test_inner_steps) == (5, 1, 0.4, 32, 3)
    assert (config.alpha_hyper_lr, config.beta_hyper_lr) == (0.0, 0.0)


# ---- Omniglot ------------------------------------------------------------------------------------

def test_omniglot_train_and_evaluate_smoke(tmp_path, tiny_omniglot, capsys):
    data = tiny_omniglot   # keep <repo>/data clean

    code, out = train(tmp_path, "omniglot-run", "--task", "omniglot", "--data-dir", data, "--ways", 3,
                      "--channels", 4, "--meta-batch", 2, "--iterations", 4, "--log-every", 2,
                      "--val-every", 2, "--val-tasks", 3, "--test-inner-steps", 2, figures=True)
    assert code == 0, capsys.readouterr().err
    records = read_metrics(out)
    assert [r["iteration"] for r in records] == [1, 2, 4]
    assert all(0 <= r["val_accuracy"] <= 1 for r in records[1:])
    assert all(0 <= r["train_accuracy_post"] <= 1 for r in records)
    assert_png(out / "accuracy.png")

    assert main(["evaluate", str(out), "--tasks", "6", "--batch-size", "4"]) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert main(["evaluate", str(out), "--tasks", "6", "--batch-size", "6"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["results"] == evaluation["results"]
    assert [row["steps"] for row in evaluation["results"]] == [0, 2]
    assert all(0 <= row["mean"] <= 1 for row in evaluation["results"])
    assert "%" in capsys.readouterr().out
