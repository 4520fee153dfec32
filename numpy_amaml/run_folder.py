"""A run folder: everything one training run writes, and the checks that make it safe to reuse.

    config.json      the resolved TrainConfig (numpy_amaml.config)
    metrics.jsonl    one JSON object per logged iteration (numpy_amaml.training.Trainer.record)
    checkpoint.npz   the learner's state_dict (θ, α, β and the optimizer's moments, the
                     iteration, the clamp counts), the task sampler's random state and the
                     training time so far (numpy_amaml.checkpoint)
    evaluation.json  the result of ``python -m numpy_amaml evaluate``
    *.png            the figures (numpy_amaml.plots)

Every file is written through ``numpy_amaml.files.atomic_write``: a crash, ``kill -9`` or a
full disk leaves the previous version. A resumed run is checked completely (config,
metrics, checkpoint against the config and the model) before anything is written, and a
new run's folder is created only once the run can start, so a failure never damages a
folder or blocks the same command from running again. A metrics line torn by a crash
(the last line, without its newline) is dropped with a note; the resumed run writes it again.
"""
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from numpy_amaml.checkpoint import load_checkpoint, save_checkpoint
from numpy_amaml.config import ConfigError, config_from_dict
from numpy_amaml.files import atomic_write, remove_stale_temporaries, write_text
from numpy_amaml.tasks import build_model

CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE = "config.json", "metrics.jsonl", "checkpoint.npz"
EVALUATION_FILE = "evaluation.json"


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
    if isinstance(state["alpha"], dict) != config.per_layer_alpha:
        fail("α is per tensor in one and a scalar in the other")
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
        raise ConfigError(f"{run_dir} has no {CHECKPOINT_FILE} yet: the run stopped before its first "
                          f"checkpoint (every {config.checkpoint_every} iterations)")
    try:
        state = load_checkpoint(path)
    except ValueError as err:       # a damaged file: say so, without a traceback
        raise ConfigError(str(err)) from None
    model = build_model(config)
    check_state(state, config, model, path)
    return config, model, state


class RunFolder:
    """The files of one run. Nothing is written until ``start``."""

    def __init__(self, path):
        self.path = Path(path)

    @classmethod
    def for_new_run(cls, out, config):
        """The folder of a new run: ``out`` (or a default) must be creatable and must not hold a
        run that saved a checkpoint; a run that never did (stopped before its first checkpoint)
        is started afresh in the same folder."""
        folder = cls(out if out else default_run_dir(config))
        if folder.path.exists() and not folder.path.is_dir():
            raise ConfigError(f"--out {folder.path} is a file, not a folder")
        if (folder.path / CHECKPOINT_FILE).exists():
            raise ConfigError(f"{folder.path} already holds a run; continue it with --resume "
                              f"{folder.path} or choose another --out")
        return folder

    def start(self, config, records=()):
        """Create the folder (if needed) and write config.json and metrics.jsonl (``records``:
        a resumed run's records up to its checkpoint). Raises ConfigError if it cannot, and then
        removes the folder again if it made it."""
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.path, CHECKPOINT_FILE)
            write_text(self.path / CONFIG_FILE, json.dumps(asdict(config), indent=2) + "\n")
            self.write_metrics(records)
        except OSError as err:
            if created:
                shutil.rmtree(self.path, ignore_errors=True)
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
