"""Every user mistake and every accident gets one clear line, and no run folder is damaged.

Each test reproduces a fault a user met (issues 12 and 20) and asserts three things: the exit
status, a message of one line with no traceback, and the run folder byte-identical afterwards
(or still resumable). Concurrency (two writers of one folder), signals (Ctrl-C and SIGTERM
sent to the process group, as a terminal and a job manager send them; ``kill -9``) and
environment variables go through real subprocesses; the rest calls the command line's
``main`` in this process. A read-only folder, a full disk and unreadable files are simulated
(the tests may run as root, who can read and write anywhere): ``fail_writes`` makes the one
function that writes files, ``files.atomic_write``, fail as the OS would, and ``deny`` makes
the OS calls that open, list or create files refuse as they would for an ordinary user.
"""
import builtins
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from numpy_amaml import architectures, checkpoint, files, gradcheck, omniglot, set_dtype
from numpy_amaml.alpha_maml import AlphaMAML
from numpy_amaml.backend import float_dtype
from numpy_amaml.cli import main
from numpy_amaml.config import resolve_config
from numpy_amaml.folder_lock import held_by
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
    assert "per_layer_alpha False (checkpoint: True)" in one_line_error(capsys.readouterr().err)
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
    """What a start killed (kill -9) before the first checkpoint leaves: a complete config.json
    (written atomically), metrics, and the .lock of a process that is gone."""
    out = tmp_path / "early"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(asdict(resolve_config({"iterations": 3}))))
    (out / "metrics.jsonl").write_text('{"iteration": 1}\n')
    (out / ".lock").write_text("99999999 2024-01-01T00:00:00\n")
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


# ---- one writer per run folder (issue 20) ----------------------------------------------------------

LONG = ["--iterations", 10**6, "--checkpoint-every", 20, *QUIET]


def start(*args):
    """``python -m numpy_amaml ARGS`` running in the background, in a process group of its own
    (as a shell runs a job), its stdout and stderr captured."""
    return subprocess.Popen([sys.executable, "-m", "numpy_amaml", *map(str, args)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def stop(process, signum):
    """Send ``signum`` to the process's whole group, as a terminal sends Ctrl-C; its stderr lines."""
    os.killpg(process.pid, signum)
    _, err = process.communicate(timeout=60)
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()]


def cpu_seconds(pid):
    """CPU time a process has used (from /proc): past its imports once above a second."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_two_writers_of_one_run_folder(tmp_path):
    """Two `train --out D` at once: the second is refused, naming the first (pid, start time),
    and D keeps the first's config; evaluate reads D meanwhile. SIGTERM to the first's group
    ends it with one line (exit 143). Then two `--resume D` at once: the second is refused; the
    first is killed with kill -9, which leaves no stale lock: the next resume just works."""
    out = tmp_path / "run"
    first = start("train", "--out", out, *LONG)
    wait_for(lambda: (out / "config.json").is_file())
    config = (out / "config.json").read_bytes()
    second = run_cli("train", "--out", out, "--method", "maml", "--iterations", 5, *QUIET)
    assert second.returncode == 2
    assert f"{out} is being written by another process (pid {first.pid}, started " in one_line_error(second.stderr)
    wait_for(lambda: (out / "checkpoint.npz").is_file())
    assert run_cli("evaluate", out, "--tasks", 4).returncode == 0          # a reader takes no lock
    lines = stop(first, signal.SIGTERM)
    assert first.returncode == 143 and len(lines) == 1, lines
    assert lines[0].startswith("stopped by SIGTERM at iteration ") and f"--resume {out}" in lines[0]
    assert (out / "config.json").read_bytes() == config and not (out / ".lock").exists()

    resumed = start("train", "--resume", out, *QUIET)
    wait_for(lambda: held_by(out) is not None)
    again = run_cli("train", "--resume", out, *QUIET)
    assert again.returncode == 2
    assert f"(pid {resumed.pid}, started " in one_line_error(again.stderr)
    stop(resumed, signal.SIGKILL)
    assert held_by(out) is None
    saved = checkpoint.load_checkpoint(out / "checkpoint.npz")["iteration"]
    result = run_cli("train", "--resume", out, "--iterations", saved + 2, *QUIET)
    assert result.returncode == 0, result.stderr
    assert not (out / ".lock").exists()


def test_a_readers_look_at_the_lock_does_not_turn_a_writer_away(tmp_path):
    """held_by holds a shared lock for an instant; a writer trying at that moment waits for it
    (folder_lock._lock_exclusive tries again) instead of being refused with a holder that isn't."""
    import fcntl
    import threading
    from numpy_amaml.folder_lock import lock_folder
    (tmp_path / ".lock").write_text("")
    reader = open(tmp_path / ".lock")
    fcntl.flock(reader.fileno(), fcntl.LOCK_SH)               # a reader's look, held for 30 ms
    threading.Timer(0.03, reader.close).start()
    lock = lock_folder(tmp_path)
    assert held_by(tmp_path) is not None
    lock.release()
    assert held_by(tmp_path) is None and not (tmp_path / ".lock").exists()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process's CPU time from /proc")
@pytest.mark.parametrize("command", [["gradcheck"], ["bench", "--repeats", 1000],
                                     ["evaluate", None, "--tasks", 10**5]])
def test_ctrl_c_ends_every_command_in_one_line(finished_run, command):
    command = [finished_run if word is None else word for word in command]
    before = snapshot(finished_run)
    process = start(*command)
    wait_for(lambda: cpu_seconds(process.pid) > 0.8)
    lines = stop(process, signal.SIGINT)
    assert process.returncode == 130 and len(lines) == 1, lines
    assert lines[0].startswith(f"interrupted: {command[0]} did not finish")
    assert snapshot(finished_run) == before


def test_a_folder_that_is_not_a_run_is_never_written(tmp_path, capsys):
    """`train --out` a folder of the user's that happens to hold a config.json and losses.png."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    (out / "losses.png").write_bytes(b"my figure")
    before = snapshot(out)
    assert train(out, "--iterations", 2) == 2
    assert "is not empty and is not a run folder (it holds config.json, losses.png)" in \
        one_line_error(capsys.readouterr().err)
    assert snapshot(out) == before


@pytest.mark.parametrize("key, value", [("alpha", 0.5), ("method", "maml")])
def test_a_hand_edited_config_is_refused_naming_the_key(run_copy, capsys, key, value):
    config = json.loads((run_copy / "config.json").read_text())
    trained = config[key]
    config[key] = value
    (run_copy / "config.json").write_text(json.dumps(config))
    before = snapshot(run_copy)
    for command in (["train", "--resume", str(run_copy), "--iterations", "30", *QUIET],
                    ["evaluate", str(run_copy), "--tasks", "4"]):
        assert main(command) == 2
        assert f"{key} {value!r} (checkpoint: {trained!r})" in one_line_error(capsys.readouterr().err)
    assert snapshot(run_copy) == before


def test_a_setting_a_resume_may_change_is_taken_from_config_json(run_copy):
    config = json.loads((run_copy / "config.json").read_text())
    config["log_every"] = 2
    (run_copy / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(run_copy), "--iterations", "24", *QUIET]) == 0
    assert [r["iteration"] for r in read_metrics(run_copy)][-3:] == [20, 22, 24]


def test_a_deleted_checkpoint_is_not_a_run_that_never_started(run_copy, capsys):
    (run_copy / "checkpoint.npz").unlink()
    before = snapshot(run_copy)
    for command in (["train", "--resume", str(run_copy), *QUIET], ["evaluate", str(run_copy)]):
        assert main(command) == 2
        assert "checkpoint.npz is missing, though the run's metrics reach iteration 20" in \
            one_line_error(capsys.readouterr().err)
    assert train(run_copy, "--iterations", 2) == 2            # not started afresh over its metrics
    assert "whose checkpoint.npz is missing" in one_line_error(capsys.readouterr().err)
    assert snapshot(run_copy) == before


# ---- mistakes that were tracebacks (issue 20) -------------------------------------------------------

@pytest.mark.parametrize("option, value, rate", [("--alpha-hyper-lr", 2000, "alpha"),
                                                 ("--beta-hyper-lr", 1e308, "beta")])
def test_an_overflowing_rate_update_is_a_divergence(tmp_path, capsys, option, value, rate):
    assert train(tmp_path / "run", option, value, "--iterations", 5) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith(f"error: training diverged at iteration ")
    assert f"{rate} is not finite (inf)" in err.splitlines()[0]


@pytest.mark.parametrize("options", [["--meta-batch", 10**10],
                                     ["--task", "omniglot", "--meta-batch", 10**7, "--channels", 4, "--ways", 3]])
def test_a_meta_batch_larger_than_memory_is_refused_before_allocating(tmp_path, tiny_omniglot, capsys, options):
    if "omniglot" in options:
        options += ["--data-dir", tiny_omniglot]
    started = time.perf_counter()
    assert train(tmp_path / "run", *options, "--iterations", 2) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"--meta-batch {options[options.index('--meta-batch') + 1]} needs at least " in line
    assert "is available, enough for at most about " in line
    assert time.perf_counter() - started < 10 and not (tmp_path / "run").exists()


def test_running_out_of_memory_in_training_is_one_line(tmp_path, capsys, monkeypatch):
    def step(self, batch):
        raise MemoryError()
    monkeypatch.setattr(AlphaMAML, "step", step)
    assert train(tmp_path / "run", "--iterations", 5) == 1
    assert "out of memory at iteration 0: try a smaller --meta-batch than 25" in \
        one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("command, message", [
    (["evaluate", None, "--seed", "-1"], "--seed must be an integer ≥ 0, got -1"),
    (["gradcheck", "--seed=-1"], "--seed must be an integer ≥ 0, got -1"),
    (["gradcheck", "--tol", "-1"], "--tol must be a positive, finite number"),
    (["gradcheck", "--tol", "nan"], "--tol must be a positive, finite number"),
    (["evaluate", None, "--data-dir", "/somewhere"], "--data-dir only applies to Omniglot runs"),
    (["evaluate", None, "--tasks", "10000000000"], "--tasks 10000000000 needs at least "),
])
def test_bad_evaluate_and_gradcheck_options(finished_run, capsys, command, message):
    before = snapshot(finished_run)
    assert main([str(finished_run) if word is None else word for word in command]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert snapshot(finished_run) == before


def test_suggested_commands_are_shell_quoted(tmp_path, capsys):
    out = tmp_path / "my run's folder"
    as_shell_word = f"'{tmp_path}/my run'\"'\"'s folder'"
    assert train(out, "--iterations", 2) == 0
    assert f"evaluate with: python -m numpy_amaml evaluate {as_shell_word}" in capsys.readouterr().out
    assert train(out, "--iterations", 2) == 2
    assert f"--resume {as_shell_word}" in one_line_error(capsys.readouterr().err)


def test_a_stdout_that_cannot_encode_greek_letters_gets_ascii(tmp_path):
    result = run_cli("train", "--out", tmp_path / "run", "--iterations", 2, *QUIET, env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr
    assert "alpha = " in result.stdout and "beta = " in result.stdout
    result = run_cli("train", "--threads", 0, env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 2 and one_line_error(result.stderr) == "error: --threads must be >= 1, got 0"


# ---- Omniglot data that cannot be read, or moved ---------------------------------------------------

def deny(monkeypatch, unreadable=(), read_only=()):
    """Make the OS refuse as it would for an ordinary user: a file in ``unreadable`` cannot be
    opened; in a folder in ``unreadable`` nothing can be opened, stat-ed or listed; in a folder
    in ``read_only`` nothing can be created."""
    unreadable, read_only = [Path(p) for p in unreadable], [Path(p) for p in read_only]
    real_open, real_os_open, real_stat, real_scandir = io.open, os.open, os.stat, os.scandir

    def path_of(file):
        return Path(os.fsdecode(file)) if isinstance(file, (str, bytes, os.PathLike)) else None

    def inside(path):
        return path is not None and any(folder in path.parents for folder in unreadable)

    def refuse(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def guarded_open(file, mode="r", *args, **kwargs):
        path = path_of(file)
        if inside(path) or path in unreadable or (any(c in mode for c in "wax+") and path is not None
                                                  and path.parent in read_only):
            refuse(path)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(file, flags, *args, **kwargs):
        path = path_of(file)
        if inside(path) or path in unreadable or (flags & os.O_CREAT and path.parent in read_only):
            refuse(path)
        return real_os_open(file, flags, *args, **kwargs)

    def guarded_stat(file, *args, **kwargs):
        if inside(path_of(file)):
            refuse(file)
        return real_stat(file, *args, **kwargs)

    def guarded_scandir(file="."):
        if path_of(file) in unreadable:
            refuse(file)
        return real_scandir(file)
    for module, name, function in ((io, "open", guarded_open), (builtins, "open", guarded_open),
                                   (os, "open", guarded_os_open), (os, "stat", guarded_stat),
                                   (os, "scandir", guarded_scandir)):
        monkeypatch.setattr(module, name, function)


OMNIGLOT = ["--task", "omniglot", "--channels", 4, "--ways", 3, "--meta-batch", 2, "--queries", 1,
            "--val-tasks", 2, "--iterations", 2]


@pytest.mark.parametrize("what", ["the folder", "images_background.zip", "SHA256SUMS"])
def test_unreadable_omniglot_data_is_one_line(tmp_path, tiny_omniglot, capsys, monkeypatch, what):
    denied = tiny_omniglot if what == "the folder" else tiny_omniglot / what
    deny(monkeypatch, unreadable=[denied])
    assert train(tmp_path / "run", *OMNIGLOT, "--data-dir", tiny_omniglot) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"cannot read {denied if what != 'the folder' else tiny_omniglot}" in line and "permission denied" in line
    assert not (tmp_path / "run").exists()


def test_a_read_only_cache_folder_costs_only_the_cache(tmp_path, tiny_omniglot, caplog, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    deny(monkeypatch, read_only=[cache])
    assert train(tmp_path / "run", *OMNIGLOT, "--data-dir", tiny_omniglot) == 0
    assert f"Omniglot cache not written: cannot write in {cache} (Permission denied)" in caplog.text
    assert list(cache.iterdir()) == []


def test_a_download_folder_that_cannot_be_written(tmp_path, monkeypatch):
    """No zips anywhere and a read-only cache folder: the download cannot start (no network is
    touched: the temporary file is created before the connection is opened)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.delenv(omniglot.ENV_VAR, raising=False)
    monkeypatch.setattr(omniglot, "SHARED_DATA_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(omniglot.urllib.request, "urlopen", None)        # never called
    deny(monkeypatch, read_only=[cache])
    with pytest.raises(omniglot.OmniglotPermissionError, match=f"cannot download into {cache}: permission denied"):
        omniglot.load_omniglot(cache_dir=cache, progress=False)


def test_evaluate_finds_a_moved_omniglot_folder(tmp_path, tiny_omniglot, capsys, monkeypatch):
    """The run read its data from --data-dir; the folder moved. evaluate names the run's folder
    (not an argument the user never gave) and takes --data-dir or NUMPY_AMAML_OMNIGLOT_DIR; while
    the run's own folder exists, the variable does not replace it."""
    out = tmp_path / "run"
    assert train(out, *OMNIGLOT, "--data-dir", tiny_omniglot) == 0
    monkeypatch.setenv(omniglot.ENV_VAR, str(tmp_path / "elsewhere"))    # the run's folder still exists:
    assert main(["evaluate", str(out), "--tasks", "4"]) == 0            # it wins over the variable
    monkeypatch.delenv(omniglot.ENV_VAR)
    moved = Path(shutil.move(tiny_omniglot, tmp_path / "moved"))
    capsys.readouterr()
    before = snapshot(out)
    assert main(["evaluate", str(out), "--tasks", "4"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"the run's Omniglot folder {tiny_omniglot} (data_dir in {out}/config.json) no longer exists" in line
    assert "argument" not in line and snapshot(out) == before
    assert main(["evaluate", str(out), "--tasks", "4", "--data-dir", str(moved)]) == 0
    monkeypatch.setenv(omniglot.ENV_VAR, str(moved))
    assert main(["evaluate", str(out), "--tasks", "4"]) == 0
    assert main(["train", "--resume", str(out), "--iterations", "3", *QUIET]) == 0


# ---- assignments ------------------------------------------------------------------------------------

def test_assignments_mistakes_are_one_line_without_errno(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["assignments", "make", str(tmp_path / "file")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "is a file, not a folder" in line and "Errno" not in line
    source = tmp_path / "source"
    source.mkdir()
    (source / "broken.ipynb").write_text("{not json")
    assert main(["assignments", "make", str(tmp_path / "out"), "--source", str(source)]) == 2
    assert "broken.ipynb: not a notebook" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", ["numpy", "numpy_amaml.backend", "numpy_amaml.cli"])
def test_ctrl_c_while_the_package_loads_is_one_line(module):
    """A Ctrl-C that arrives while ``python -m numpy_amaml`` is still importing NumPy and the
    package (before any command's handler exists) ends in one line with status 130, not a
    traceback. The Ctrl-C is made to arrive exactly there: the first import of ``module`` raises it."""
    starter = ("import builtins, runpy, sys\n"
               "real_import = builtins.__import__\n"
               "def ctrl_c_on_import(name, *args, **kwargs):\n"
               f"    if name == {module!r}:\n"
               "        raise KeyboardInterrupt\n"
               "    return real_import(name, *args, **kwargs)\n"
               "builtins.__import__ = ctrl_c_on_import\n"
               "sys.argv = ['numpy_amaml', 'gradcheck']\n"
               "runpy.run_module('numpy_amaml', run_name='__main__', alter_sys=True)\n")
    done = subprocess.run([sys.executable, "-c", starter], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and done.stdout == ""
    assert done.stderr == "interrupted: python -m numpy_amaml was still starting; nothing ran\n", done.stderr
