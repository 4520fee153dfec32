"""Every user mistake and every accident gets one clear line, and no run folder is damaged.

Each test reproduces a fault a user met (issue 12) and asserts three things: the exit status,
a message of one line with no traceback, and the run folder byte-identical afterwards (or
still resumable). Signals (Ctrl-C, ``kill -9``) and environment variables go through real
subprocesses; the rest calls the command line's ``main`` in this process. A read-only folder
and a full disk are simulated (the tests may run as root, who can write anywhere), by making
the one function that writes files, ``files.atomic_write``, fail as the OS would.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from numpy_amaml import architectures, checkpoint, files, gradcheck, omniglot, set_dtype
from numpy_amaml.backend import float_dtype
from numpy_amaml.cli import main
from numpy_amaml.run_folder import read_metrics

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--no-progress", "--no-figures"]


def snapshot(folder):
    """{relative path: bytes} of every file below ``folder``: to prove it unchanged."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def one_line_error(err):
    """The stderr of a failed command: exactly one non-empty line, starting 'error:', no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def train(out, *options):
    return main(["train", "--out", str(out), *QUIET, *map(str, options)])


def run_cli(*args, env=None, **kwargs):
    """``python -m numpy_amaml ARGS`` in a subprocess (environment: this one plus ``env``)."""
    return subprocess.run([sys.executable, "-m", "numpy_amaml", *map(str, args)], cwd=kwargs.pop("cwd", REPO),
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                          capture_output=True, text=True, timeout=kwargs.pop("timeout", 120), **kwargs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 20-iteration sinusoid run, checkpointed at 10 and 20, logged every 5."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--out", str(out), *QUIET, "--iterations", "20", "--checkpoint-every", "10",
                 "--log-every", "5"]) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return Path(shutil.copytree(finished_run, tmp_path / "copy"))


# ---- runs that died or were damaged ----------------------------------------------------------------

def test_a_figure_that_overflows_never_stops_training(tmp_path, capsys):
    """α = 0.3 makes 10 inner steps of the sinusoid fits figure overflow; training finishes, the
    figure leaves that curve out and says so once, and evaluate reports what it can."""
    out = tmp_path / "big-alpha"
    assert main(["train", "--out", str(out), "--no-progress", "--method", "maml", "--alpha", "0.3",
                 "--iterations", "400", "--checkpoint-every", "100"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("the fit after 10 inner steps is not finite") == 1
    assert (out / "sinusoid_fits.png").is_file()
    assert main(["evaluate", str(out), "--tasks", "20"]) == 0
    printed = capsys.readouterr().out
    assert "after 10 steps    not finite" in printed
    rows = {r["steps"]: r for r in json.loads((out / "evaluation.json").read_text())["results"]}
    assert rows[1]["mean"] > 0 and rows[10]["mean"] is None


def test_a_run_that_diverges_after_checkpoints_ends_in_one_clear_line(tmp_path, capsys):
    code = train(tmp_path / "sgd", "--optimizer", "sgd", "--beta", 0.3, "--checkpoint-every", 3,
                 "--iterations", 300)
    err = capsys.readouterr().err
    assert code in (0, 1) and "Traceback" not in err
    if code == 1:
        assert err.startswith("error: training diverged at iteration ")


def test_resume_with_another_models_checkpoint_leaves_the_folder_untouched(run_copy, tmp_path, capsys):
    assert train(tmp_path / "other", "--iterations", 3, "--per-layer-alpha") == 0
    shutil.copy(tmp_path / "other" / "checkpoint.npz", run_copy / "checkpoint.npz")
    before = snapshot(run_copy)
    assert main(["train", "--resume", str(run_copy), "--iterations", "30", *QUIET]) == 2
    assert "does not belong to this run's config" in one_line_error(capsys.readouterr().err)
    assert snapshot(run_copy) == before


def test_a_torn_last_metrics_line_is_dropped_with_a_note(run_copy, capsys):
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 25, "query_lo')                     # a write cut short
    assert main(["train", "--resume", str(run_copy), "--iterations", "30", *QUIET]) == 0
    assert "dropped an incomplete last line" in capsys.readouterr().out
    assert [r["iteration"] for r in read_metrics(run_copy)] == [1, 5, 10, 15, 20, 25, 30]


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "metrics.jsonl").write_text('{"iteration": 1}\nnot json\n{"iteration": 5}\n'),
     "line 2, is not a metrics record"),
    (lambda d: (d / "config.json").write_text("{not json"), "is not readable JSON"),
    (lambda d: (d / "config.json").write_text(json.dumps({"task": "sinusoid"})), "missing ["),
    (lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"meta_batch": 25', '"meta_batch": "twenty"')),
     "--meta-batch must be a positive integer, got 'twenty'"),
    (lambda d: (d / "checkpoint.npz").write_bytes(os.urandom(4096)), "not an .npz archive"),
    (lambda d: (d / "checkpoint.npz").write_bytes((d / "checkpoint.npz").read_bytes()[:3000]),
     "not a readable checkpoint"),
])
def test_a_damaged_run_folder_is_named_and_left_as_it_is(run_copy, capsys, damage, message):
    damage(run_copy)
    before = snapshot(run_copy)
    assert main(["train", "--resume", str(run_copy), "--iterations", "30", *QUIET]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    if "metrics" not in message:                                   # evaluate reads no metrics
        assert main(["evaluate", str(run_copy), "--tasks", "5"]) == 2
        assert message in one_line_error(capsys.readouterr().err)
    assert snapshot(run_copy) == before


# ---- a failed start leaves nothing behind, and its re-run works --------------------------------------

@pytest.mark.parametrize("options, message", [
    (["--task", "omniglot", "--shots", 15, "--queries", 6], "exceeds the 20 drawings"),
    (["--task", "omniglot", "--ways", 1], "--ways must be ≥ 2"),
    (["--task", "omniglot", "--ways", 40], "classes"),
    (["--task", "omniglot", "--data-dir", "/nonexistent/omniglot"], "does not exist"),
])
def test_a_run_that_cannot_start_creates_nothing(tmp_path, tiny_omniglot, capsys, options, message):
    options = [*options, "--channels", 4, "--meta-batch", 2, "--iterations", 2]
    if "--queries" not in options:
        options += ["--queries", 1]
    if "--data-dir" not in options:
        options += ["--data-dir", tiny_omniglot]
    out = tmp_path / "never"
    assert train(out, *options) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not out.exists()


def test_a_run_stopped_before_its_first_checkpoint_is_started_again(tmp_path, capsys):
    out = tmp_path / "early"
    out.mkdir()
    (out / "config.json").write_text("{}")                     # what a killed start would leave
    (out / "metrics.jsonl").write_text("")
    assert train(out, "--iterations", 3) == 0
    assert read_metrics(out)[-1]["iteration"] == 3


@pytest.mark.parametrize("variable, value, message", [
    ("NUMPY_AMAML_BACKEND", "jax", "NUMPY_AMAML_BACKEND must be one of"),
    ("NUMPY_AMAML_DTYPE", "float16", "NUMPY_AMAML_DTYPE must be one of"),
    ("NUMPY_AMAML_THREADS", "two", "NUMPY_AMAML_THREADS must be an integer"),
])
def test_a_bad_environment_variable_is_one_line_and_creates_nothing(tmp_path, variable, value, message):
    result = run_cli("train", "--out", tmp_path / "run", "--iterations", 2, *QUIET, env={variable: value})
    assert result.returncode == 2
    assert message in one_line_error(result.stderr)
    assert not (tmp_path / "run").exists()


def test_numpy_amaml_dtype_sets_the_training_dtype(tmp_path):
    result = run_cli("train", "--out", tmp_path / "run", "--iterations", 2, *QUIET,
                     env={"NUMPY_AMAML_DTYPE": "float64"})
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dtype"] == "float64"
    assert checkpoint.load_checkpoint(tmp_path / "run" / "checkpoint.npz")["theta"]["fc1.W"].dtype == np.float64


# ---- folders that cannot be written ---------------------------------------------------------------

def test_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert train(tmp_path / "file", "--iterations", 2) == 2
    assert "is a file, not a folder" in one_line_error(capsys.readouterr().err)


def fail_writes(monkeypatch, code, after=0):
    """Make every atomic write after the first ``after`` ones fail with OSError ``code``."""
    real, count = files.atomic_write, {"n": 0}

    def failing(path, mode="wb"):
        count["n"] += 1
        if count["n"] > after:
            raise OSError(code, os.strerror(code), str(path))
        return real(path, mode)
    monkeypatch.setattr(files, "atomic_write", failing)
    monkeypatch.setattr(checkpoint, "atomic_write", failing)


def test_a_read_only_out_folder(tmp_path, capsys, monkeypatch):
    fail_writes(monkeypatch, errno.EACCES)
    assert train(tmp_path / "ro", "--iterations", 2) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "cannot write the run folder" in line and "Permission denied" in line
    assert not (tmp_path / "ro").exists()                       # the folder it made is gone again


def test_a_full_disk_keeps_the_last_checkpoint(run_copy, capsys, monkeypatch):
    """The resumed run writes config.json and metrics.jsonl (2 writes), then its first checkpoint
    fails with ENOSPC: one line, exit 1, and the checkpoint of iteration 20 is intact."""
    before = (run_copy / "checkpoint.npz").read_bytes()
    fail_writes(monkeypatch, errno.ENOSPC, after=2)
    assert main(["train", "--resume", str(run_copy), "--iterations", "40", "--checkpoint-every", "10",
                 *QUIET]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "No space left on device" in line and "checkpoint of iteration 20 is intact" in line
    assert (run_copy / "checkpoint.npz").read_bytes() == before
    assert not [p.name for p in run_copy.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_copy), "--iterations", "30", *QUIET]) == 0   # still resumable


# ---- signals -------------------------------------------------------------------------------------

def wait_for(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_ctrl_c_says_where_it_stopped_and_how_to_resume(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "numpy_amaml", "train", "--out", str(out), *QUIET,
                                "--iterations", "1000000", "--checkpoint-every", "50"],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "checkpoint.npz").is_file())
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("interrupted at iteration ") and f"--resume {out}" in lines[0]
    saved = checkpoint.load_checkpoint(out / "checkpoint.npz")["iteration"]
    assert run_cli("train", "--resume", out, "--iterations", saved + 10, *QUIET).returncode == 0


def _children(pid):
    """The pids of the live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_sweep_workers_end_with_their_parent(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "numpy_amaml", "sweep", "--out", str(tmp_path / "s"),
                                "--alphas", "0.01,0.02", "--iterations", "1000000", "--workers", "2",
                                "--no-progress", "--no-figures", "--methods", "maml"],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []

    def two_workers_training():
        workers[:] = [p for p in _children(process.pid) if b"spawn_main" in _cmdline(p)]
        return len(workers) == 2 and len(list((tmp_path / "s" / "cells").glob("*/metrics.jsonl"))) == 2
    wait_for(two_workers_training)
    process.kill()
    process.wait()
    wait_for(lambda: not any(_alive(p) for p in workers), seconds=15)


def test_an_interrupted_cache_write_leaves_nothing_behind(tiny_omniglot, tmp_path):
    """An old temporary file (what kill -9 during the write leaves) is removed at the next load;
    a fresh one may be another process's write in progress and stays (deleting it made two runs
    started at once with no cache fail: FileNotFoundError in the other run's rename)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    name = omniglot.cache_file_name(28, omniglot.expected_checksums(tiny_omniglot)[0])
    stale, live = cache / f".{name}.abc123.tmp", cache / f".{name}.def456.tmp"
    stale.write_bytes(b"")
    old = time.time() - files.STALE_AFTER_S - 60
    os.utime(stale, (old, old))
    live.write_bytes(b"partial")
    omniglot.load_omniglot(tiny_omniglot, cache_dir=cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == sorted([name, live.name])


def test_a_replaced_zip_is_noticed_even_with_a_cache(tiny_omniglot, tmp_path):
    omniglot.load_omniglot(tiny_omniglot, cache_dir=tmp_path / "cache", progress=False)
    zip_path = tiny_omniglot / "images_background.zip"
    zip_path.write_bytes(zip_path.read_bytes()[:-100])
    with pytest.raises(omniglot.OmniglotChecksumError, match="checksum mismatch"):
        omniglot.load_omniglot(tiny_omniglot, cache_dir=tmp_path / "cache", progress=False)


# ---- the Python API ---------------------------------------------------------------------------------

def test_zero_samples_are_refused_by_name():
    model = architectures.sinusoid_mlp()
    theta = model.init_params(0)
    empty = np.zeros((2, 0, 1), dtype=float_dtype())
    with pytest.raises(ValueError, match="no samples"):
        model.loss_and_grad(theta, empty, empty)


def test_gradient_checks_refuse_integers_and_float32():
    model = architectures.sinusoid_mlp(hidden=(3,))
    previous = float_dtype()
    set_dtype("float64")
    try:
        theta = model.init_params(0)
        x = np.linspace(-1, 1, 4).reshape(4, 1)
        with pytest.raises(TypeError, match="need float64 arrays, got int64 for x"):
            gradcheck.check_model_gradient(model, theta, x.astype(np.int64), x)
        with pytest.raises(TypeError, match=r"float32 for params\['fc1.W'\].*1e-2 wrong"):
            gradcheck.check_model_gradient(model, {k: v.astype(np.float32) for k, v in theta.items()}, x, x)
        with pytest.raises(TypeError, match="got int64 for x"):
            gradcheck.numerical_gradient(lambda: 0.0, np.arange(3))
    finally:
        set_dtype(previous)


@pytest.mark.parametrize("options, message", [
    (["--repeats", "0"], "--repeats must be ≥ 1, got 0"),
    (["--warmup", "-1"], "--warmup must be ≥ 0"),
    (["--threads", "0"], "--threads must be ≥ 1"),
    (["--only", "nothing"], "matches no configuration"),
])
def test_bench_options_are_checked(capsys, options, message):
    assert main(["bench", *options]) == 2
    assert message in one_line_error(capsys.readouterr().err)
