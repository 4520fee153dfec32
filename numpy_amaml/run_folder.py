"""A run folder: everything one training run writes, and the checks that make it safe to reuse.

    config.json      the resolved TrainConfig (numpy_amaml.config)
    metrics.jsonl    one JSON object per logged iteration (numpy_amaml.training.Trainer.record)
    checkpoint.npz   the learner's state_dict (θ, α, β and the optimizer's moments, the
                     iteration, the clamp counts), the task sampler's random state and the
                     training time so far (numpy_amaml.checkpoint)
    evaluation.json  the result of ``python -m numpy_amaml evaluate``
    *.png            the figures (numpy_amaml.plots)
    .lock            while a run writes the folder: its OS lock (numpy_amaml.folder_lock)

Every file is written through ``numpy_amaml.files.atomic_write``: a crash, ``kill -9`` or a
full disk leaves the previous version. One process writes a folder at a time: ``start`` (a
new run) and ``for_resume`` take the folder's lock, which a second writer cannot get. A
resumed run is checked completely (config, metrics, checkpoint against the config, the
model and the settings it was trained with) before anything is written, and a new run's
folder is created only once the run can start, so a failure never damages a folder or
blocks the same command from running again. A new run goes only into a new or empty folder,
or one where a run stopped before its first checkpoint: never into a folder of someone
else's files. A metrics line torn by a crash (the last line, without its newline) is
dropped with a note; the resumed run writes it again.

config.json is the record of a run, not an input: the checkpoint holds the settings it was
trained with, and a config.json that differs from them in anything but the settings a resume
may change (``config.RESUMABLE``) is refused, naming the keys.
"""
import json
import os
import shlex
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from numpy_amaml.checkpoint import load_checkpoint, save_checkpoint
from numpy_amaml.config import RESUMABLE, ConfigError, config_from_dict
from numpy_amaml.files import atomic_write, remove_stale_temporaries, write_text
from numpy_amaml.folder_lock import LOCK_FILE, FolderLocked, held_by, lock_folder, locked_message
from numpy_amaml.learned_rates import check_alpha
from numpy_amaml.omniglot import ENV_VAR
from numpy_amaml.tasks import build_model

CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE = "config.json", "metrics.jsonl", "checkpoint.npz"
EVALUATION_FILE = "evaluation.json"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, EVALUATION_FILE)   # and the *.png figures


def quoted(path):
    """``path`` as a shell word, for a command the user may copy (spaces, quotes, $)."""
    return shlex.quote(str(path))


def is_bookkeeping(name):
    """The lock, or a temporary file of an interrupted atomic write: never the user's."""
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(".tmp"))


def default_run_dir(config):
    return Path("runs") / f"{config.task}-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"


def read_config(run_dir):
    """The validated TrainConfig stored in a run folder (ConfigError if missing or damaged)."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir}: no such folder")
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}")
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{path} is not readable JSON ({err})") from None
    return config_from_dict(stored, str(path))


def read_metrics(run_dir, up_to=None, notes=None):
    """The records of a run's metrics.jsonl (those with iteration ≤ ``up_to``).

    A last line without its newline that does not parse (a write cut short) is dropped, and
    said in ``notes`` (a list) if given; any other unreadable line raises ConfigError.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("iteration"), int):
                raise ValueError("not a metrics record")
        except ValueError as err:
            if number == len(lines):            # the last line, with no newline after it: torn
                if notes is not None:
                    notes.append(f"{path}: dropped an incomplete last line (a write cut short)")
                break
            raise ConfigError(f"{path}, line {number}, is not a metrics record ({err})") from None
        records.append(record)
    return [r for r in records if up_to is None or r["iteration"] <= up_to]


def lost_checkpoint(run_dir, config):
    """The last logged iteration when the metrics prove a checkpoint was saved (an iteration
    logged after the first checkpoint, or an evaluation.json), else None."""
    try:
        records = read_metrics(run_dir)
    except (ConfigError, OSError):
        records = []
    last = max((r["iteration"] for r in records), default=0)
    if last > min(config.checkpoint_every, config.iterations) or (Path(run_dir) / EVALUATION_FILE).is_file():
        return last
    return None


def check_trained_config(state, config, run_dir):
    """Raise ConfigError when config.json differs from the settings the checkpoint was trained
    with (``state["config"]``), apart from those a resume may change. A checkpoint written
    before the settings were stored in it has nothing to compare with."""
    trained = state.get("config")
    if trained is None:
        return
    stored = asdict(config)
    differ = [name for name in stored
              if name not in RESUMABLE and (name not in trained or trained[name] != stored[name])]
    if differ:
        details = ", ".join(f"{name} {stored[name]!r} (checkpoint: {trained.get(name)!r})" for name in differ)
        raise ConfigError(f"{Path(run_dir) / CONFIG_FILE} does not match the settings {CHECKPOINT_FILE} was "
                          f"trained with: {details}; was config.json edited, or the checkpoint copied from "
                          f"another run? config.json records a run and cannot change it: restore it, or "
                          f"start a new run with the settings you want")


def check_state(state, config, model, path):
    """Raise ConfigError unless a checkpoint's state fits the config and the model."""
    def fail(what):
        raise ConfigError(f"{path} does not belong to this run's config ({what}); was it copied "
                          f"from another run?")
    needed = ("iteration", "theta", "alpha", "alpha_clamps", "optimizer", "sampler_state", "elapsed_s")
    if not isinstance(state, dict) or any(key not in state for key in needed):
        fail(f"it lacks some of {needed}")
    theta = state["theta"]
    if not isinstance(theta, dict) or set(theta) != set(model.param_shapes):
        fail("its parameter names differ from the model's")
    for name, shape in model.param_shapes.items():
        if tuple(theta[name].shape) != tuple(shape) or str(theta[name].dtype) != config.dtype:
            fail(f"θ[{name!r}] is {theta[name].dtype} {tuple(theta[name].shape)}, the model needs "
                 f"{config.dtype} {tuple(shape)}")
    try:
        check_alpha(state["alpha"], config, model.param_shapes)
    except ValueError as err:
        fail(str(err))
    optimizer = state["optimizer"]
    if not isinstance(optimizer, dict) or ("m" in optimizer) != (config.optimizer == "adam"):
        fail(f"its meta-optimizer state is not {config.optimizer}'s")
    if not isinstance(state["iteration"], int) or state["iteration"] < 1:
        fail(f"iteration {state['iteration']!r}")


def load_run(run_dir):
    """(config, model, checkpoint state) of a run folder, every part checked; the state holds
    the learner's state_dict (θ, α, the optimizer with β), the sampler state and the time."""
    config = read_config(run_dir)
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        last = lost_checkpoint(run_dir, config)
        if last is not None:
            raise ConfigError(f"{path} is missing, though the run's metrics reach iteration {last}: it was "
                              f"deleted or moved; put it back to continue or evaluate this run")
        raise ConfigError(f"{run_dir} has no {CHECKPOINT_FILE} yet: the run stopped before its first "
                          f"checkpoint (every {config.checkpoint_every} iterations)")
    try:
        state = load_checkpoint(path)
    except ValueError as err:       # a damaged file: say so, without a traceback
        raise ConfigError(str(err)) from None
    except OSError as err:          # an unreadable one
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None
    if isinstance(state, dict):
        check_trained_config(state, config, run_dir)
    model = build_model(config)
    check_state(state, config, model, path)
    return config, model, state


def with_data_dir(config, data_dir, run_dir):
    """``config`` with the Omniglot folder to read now: ``data_dir`` (--data-dir) if given, else
    the run's own data_dir while it exists, else None when NUMPY_AMAML_OMNIGLOT_DIR is set (the
    loader then reads that); a moved data folder with neither is named as the run's."""
    if data_dir is not None:
        if config.task != "omniglot":
            raise ConfigError(f"--data-dir only applies to Omniglot runs; {run_dir} is a {config.task} run")
        return replace(config, data_dir=str(data_dir))
    if config.task != "omniglot" or config.data_dir is None:
        return config
    if Path(config.data_dir).is_dir():
        return config
    if os.environ.get(ENV_VAR):
        return replace(config, data_dir=None)
    raise ConfigError(f"the run's Omniglot folder {config.data_dir} (data_dir in {Path(run_dir) / CONFIG_FILE}) "
                          f"no longer exists; pass --data-dir FOLDER, or set {ENV_VAR}, to where the zips are now")


class RunFolder:
    """The files of one run. Nothing is written until ``start``; the folder is locked from
    ``start`` (a new run) or ``for_resume`` until ``release``."""

    def __init__(self, path):
        self.path = Path(path)
        self.lock = None

    @classmethod
    def for_new_run(cls, out, config):
        """The folder of a new run, checked (``check_new``); nothing is written."""
        folder = cls(out if out else default_run_dir(config))
        folder.check_new()
        return folder

    @classmethod
    def for_resume(cls, run_dir):
        """The folder of a run to continue, locked before anything in it is read, so that two
        resumes never both continue the same checkpoint."""
        read_config(run_dir)                   # a run folder at all: else lock nothing in it
        folder = cls(run_dir)
        folder.take_lock()
        return folder

    def check_new(self):
        """Raise ConfigError unless a new run may write here: the folder does not exist, is
        empty, or holds a run that stopped before its first checkpoint (a valid config.json
        and nothing but a run's files), which then starts afresh."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} is a file, not a folder")
        if not path.exists():
            return
        try:
            names = sorted(p.name for p in path.iterdir() if not is_bookkeeping(p.name))
        except OSError as err:
            raise ConfigError(f"cannot read --out {path}: {err.strerror or err}") from None
        holder = held_by(path) if self.lock is None else None     # (a lock of ours is no obstacle)
        if holder is not None:
            raise ConfigError(locked_message(path, holder))
        if CHECKPOINT_FILE in names:
            raise ConfigError(f"{path} already holds a run; continue it with --resume {quoted(path)} "
                              f"or choose another --out")
        if not names:
            return
        foreign = [n for n in names if n not in RUN_FILES and not n.endswith(".png")]
        try:
            config = read_config(path) if not foreign else None
        except ConfigError:
            config = None
        if config is None:
            shown = ", ".join((foreign or names)[:3]) + (", ..." if len(foreign or names) > 3 else "")
            raise ConfigError(f"--out {path} is not empty and is not a run folder (it holds {shown}); "
                              f"train writes only into a new or empty folder: choose another --out")
        last = lost_checkpoint(path, config)
        if last is not None:
            raise ConfigError(f"{path} holds a run whose {CHECKPOINT_FILE} is missing (its metrics reach "
                              f"iteration {last}); put it back and --resume, or choose another --out")

    def take_lock(self):
        """Lock the folder for this process (ConfigError naming the holder if another has it)."""
        try:
            self.lock = lock_folder(self.path)
        except FolderLocked as err:
            raise ConfigError(str(err)) from None
        except OSError as err:
            raise ConfigError(f"cannot write the run folder {self.path}: {err.strerror or err}") from None

    def release(self):
        """Give the folder's lock up (if held)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def start(self, config, records=()):
        """Write config.json and metrics.jsonl (``records``: a resumed run's records up to its
        checkpoint). A new run first creates the folder (if needed), locks it and checks it
        again (``check_new``): another run may have started in it meanwhile. Raises
        ConfigError if it cannot, and then removes the folder again if it made it."""
        created = False
        try:
            if self.lock is None:
                try:
                    self.path.mkdir(parents=True)
                    created = True
                except FileExistsError:
                    pass
                self.take_lock()
                self.check_new()
            remove_stale_temporaries(self.path, CHECKPOINT_FILE)
            write_text(self.path / CONFIG_FILE, json.dumps(asdict(config), indent=2) + "\n")
            self.write_metrics(records)
        except OSError as err:
            if created:
                shutil.rmtree(self.path, ignore_errors=True)
            self.release()
            raise ConfigError(f"cannot write the run folder {self.path}: {err.strerror or err}") from None

    def write_metrics(self, records):
        write_text(self.path / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records))

    def open_metrics(self):
        """metrics.jsonl opened for appending one line per logged iteration."""
        return open(self.path / METRICS_FILE, "a", encoding="utf-8")

    def save_checkpoint(self, state):
        save_checkpoint(self.path / CHECKPOINT_FILE, state)

    def write_evaluation(self, evaluation):
        with atomic_write(self.path / EVALUATION_FILE, "w") as f:
            f.write(json.dumps(evaluation, indent=2) + "\n")
        return self.path / EVALUATION_FILE
