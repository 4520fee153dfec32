"""``python -m numpy_amaml train``: meta-train MAML or Alpha MAML on sinusoids or Omniglot.

Every setting lives in ``TrainConfig`` below; the defaults that depend on the task are in
``TASK_DEFAULTS`` and the default hypergradient rates in ``HYPER_LR_DEFAULTS``, right under it.

A run folder (``--out``, default ``runs/<task>-<method>-<timestamp>``) holds
    config.json      the resolved TrainConfig
    metrics.jsonl    one JSON object per logged iteration (see ``Trainer.record``)
    checkpoint.npz   θ, α, the meta-optimizer (β, Adam moments, previous direction), the
                     iteration, the task sampler's random state, the clamp counts;
                     written atomically every ``checkpoint_every`` iterations and at the end
    *.png            the figures of numpy_amaml.plots, redrawn at every checkpoint

``--resume DIR`` continues a run exactly where its checkpoint stopped: every random number
of training comes from the task sampler's generator, whose state is in the checkpoint, so a
resumed run computes the same θ, α and β, bit for bit, as one that never stopped.
"""
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from numpy_amaml import models, parallel, plots
from numpy_amaml.alpha_maml import AlphaMAML, TrainingDiverged
from numpy_amaml.backend import asarray, float_dtype, set_dtype, to_numpy
from numpy_amaml.checkpoint import load_checkpoint, save_checkpoint
from numpy_amaml.maml import TaskBatch, adapt
from numpy_amaml.omniglot import OmniglotError, TaskSampler, load_omniglot, split_characters
from numpy_amaml.optim import OPTIMIZERS
from numpy_amaml.sinusoid import SinusoidTasks

TASKS = ("sinusoid", "omniglot")
METHODS = ("maml", "alpha-maml")


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means "the task's default"
    (``TASK_DEFAULTS``), or "does not apply to this task" (the Omniglot-only fields)."""
    task: str = "sinusoid"             # "sinusoid" | "omniglot"
    method: str = "alpha-maml"         # "maml" (fixed α, β) | "alpha-maml" (hypergradient α, β)
    first_order: bool = False          # drop the Hessian terms of the reverse pass (FOMAML)
    inner_steps: int = 1               # K, inner gradient steps during meta-training
    alpha: float = None                # initial inner learning rate α
    beta: float = 0.001                # initial meta learning rate β
    optimizer: str = "adam"            # meta-optimizer: "adam" | "sgd"
    alpha_hyper_lr: float = None       # γ_α (0 for MAML)
    beta_hyper_lr: float = None        # γ_β (0 for MAML)
    per_layer_alpha: bool = False      # one α per parameter tensor instead of one scalar
    meta_batch: int = None             # B, tasks per meta-iteration
    iterations: int = None             # meta-iterations in total
    seed: int = 0                      # model initialisation and task sampling
    dtype: str = "float32"             # "float32" | "float64"
    log_every: int = 10                # metrics.jsonl line every n iterations (and the first/last)
    checkpoint_every: int = 1000       # checkpoint + figures every n iterations (and the last)
    shots: int = None                  # support examples per task (per class for Omniglot)
    queries: int = None                # query examples per task (per class for Omniglot)
    # Omniglot only
    ways: int = None                   # N classes per task
    test_inner_steps: int = None       # inner steps at validation / test time
    downsample: str = None             # "stride" (MAML) | "maxpool"
    channels: int = None               # channels of each conv block
    data_dir: str = None               # folder with the two Omniglot zips (None: loader's search)
    val_every: int = None              # validation accuracy every n iterations
    val_tasks: int = None              # validation tasks per evaluation


# MAML's settings (Finn et al. 2017): sinusoid §5.1; Omniglot 5-way 1-shot from the paper's
# code (60k iterations, meta-batch 32, α = 0.4, 1 step in training and 3 at test). Omniglot
# queries: MAML's code draws 1 query image per class; 5 per class gives a less noisy
# meta-gradient for little extra compute (the support pass dominates at 1 shot).
TASK_DEFAULTS = {
    "sinusoid": dict(alpha=0.01, meta_batch=25, iterations=70000, shots=10, queries=10),
    "omniglot": dict(alpha=0.4, meta_batch=32, iterations=60000, shots=1, queries=5,
                     ways=5, test_inner_steps=3, downsample="stride", channels=64,
                     val_every=500, val_tasks=100),
}
OMNIGLOT_ONLY = ("ways", "test_inner_steps", "downsample", "channels", "data_dir", "val_every", "val_tasks")

# (γ_α, γ_β) of --method alpha-maml. A hypergradient's scale depends on the task and on the
# meta-optimizer: with Adam, h_β = −⟨g_t, u_{t−1}⟩ and u has entries of order 1, so h_β is of
# the order of ‖g‖₁ and γ_β must be tiny; with SGD, h_β = −⟨g_t, g_{t−1}⟩ ~ ‖g‖².
# Sinusoid (measured, 5k-20k iterations): with Adam, γ_β = 1e-7 keeps β stable (≈ 0.0012 from
# 4k to 20k iterations) while γ_β ≥ 3e-7 makes it decay towards its floor, which freezes θ;
# γ_α = 1e-5 moves α smoothly, 1e-4 so noisily that it hits its floor now and then. From poor
# initial rates (α = 0.001 or 0.1, or β = 1e-4) these rates rescue runs that MAML loses.
# With SGD, γ_β = 3e-6 raises β steadily, 1e-5 sometimes drops it to the floor.
# Omniglot: scaled to give about the same relative change per iteration as on the sinusoid,
# from the hypergradients of its first iterations (Adam: h_α ≈ 0.05 for α = 0.4, against
# ≈ 15 for α = 0.01; h_β ≈ −17 against ≈ −2); not yet validated by full runs.
HYPER_LR_DEFAULTS = {
    ("sinusoid", "adam"): (1e-5, 1e-7),
    ("sinusoid", "sgd"): (1e-5, 3e-6),
    ("omniglot", "adam"): (1e-3, 1e-8),
    ("omniglot", "sgd"): (1e-3, 3e-6),
}

# Settings that may change when a run is resumed: they do not affect θ, α or β.
RESUMABLE = ("iterations", "log_every", "checkpoint_every", "data_dir", "val_every", "val_tasks")

# MAML's split proportions of Omniglot's 1623 characters (1100 meta-train, 100 validation,
# 423 meta-test), as fractions so a smaller dataset is split alike. The split's seed is
# fixed, so runs with different --seed are evaluated on the same meta-test characters.
OMNIGLOT_SPLIT = dict(n_train=1100 / 1623, n_val=100 / 1623, seed=0)

CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE = "config.json", "metrics.jsonl", "checkpoint.npz"
LOSS_FIGURE, RATE_FIGURE = "losses.png", "rates.png"
VAL_BATCH = 50                     # Omniglot validation tasks per array computation


class ConfigError(ValueError):
    """A bad option or option combination, or a run folder that cannot be used."""


def resolve_config(options):
    """A complete TrainConfig from the options given (a dict; absent or None = default).

    Fills in the task's defaults and the method's hypergradient rates, then validates.
    """
    options = {k: v for k, v in options.items() if v is not None}
    task = options.get("task", TrainConfig.task)
    method = options.get("method", TrainConfig.method)
    if task not in TASKS:
        raise ConfigError(f"--task must be one of {TASKS}, got {task!r}")
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {METHODS}, got {method!r}")
    if task == "sinusoid":
        given = [name for name in OMNIGLOT_ONLY if name in options]
        if given:
            raise ConfigError(f"{', '.join(_flag(n) for n in given)} only apply to --task omniglot")
    optimizer = options.get("optimizer", TrainConfig.optimizer)
    if method == "maml":
        for name in ("alpha_hyper_lr", "beta_hyper_lr"):
            if options.get(name, 0.0) != 0.0:
                raise ConfigError(f"{_flag(name)} needs --method alpha-maml (MAML keeps α and β fixed)")
        rates = (0.0, 0.0)
    else:
        rates = HYPER_LR_DEFAULTS.get((task, optimizer), (None, None))
    defaults = dict(TASK_DEFAULTS[task], alpha_hyper_lr=rates[0], beta_hyper_lr=rates[1])
    config = TrainConfig(**{**defaults, **options})
    validate_config(config)
    return config


def _flag(name):
    return "--" + name.replace("_", "-")


def validate_config(config):
    """Raise ConfigError naming the option when a value is out of range."""
    choices = {"optimizer": tuple(OPTIMIZERS), "dtype": ("float32", "float64")}
    if config.task == "omniglot":
        choices["downsample"] = models.DOWNSAMPLING
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ConfigError(f"{_flag(name)} must be one of {allowed}, got {getattr(config, name)!r}")
    positive_ints = ["inner_steps", "meta_batch", "iterations", "log_every", "checkpoint_every",
                     "shots", "queries"]
    if config.task == "omniglot":
        positive_ints += ["ways", "test_inner_steps", "channels", "val_every", "val_tasks"]
    for name in positive_ints:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{_flag(name)} must be a positive integer, got {value!r}")
    for name in ("alpha", "beta"):
        if not 0.0 < getattr(config, name) < float("inf"):
            raise ConfigError(f"{_flag(name)} must be a positive number, got {getattr(config, name)!r}")
    for name in ("alpha_hyper_lr", "beta_hyper_lr"):
        if not 0.0 <= getattr(config, name) < float("inf"):
            raise ConfigError(f"{_flag(name)} must be ≥ 0, got {getattr(config, name)!r}")


# ---- random streams, models, data ---------------------------------------------------------

def seed_streams(seed):
    """Independent integer seeds derived from one ``seed``: model initialisation, training
    tasks, validation tasks, evaluation tasks and the tasks drawn in the figures."""
    names = ("init", "train_tasks", "val_tasks", "eval_tasks", "plot_tasks")
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {name: int(child.generate_state(1)[0]) for name, child in zip(names, children)}


def build_model(config):
    """The model a config describes (numpy_amaml.models)."""
    if config.task == "sinusoid":
        return models.sinusoid_mlp()
    return models.omniglot_cnn(ways=config.ways, channels=config.channels, downsample=config.downsample)


def omniglot_split(config, progress=True):
    """Load Omniglot (cached after the first call) -> (images, {"train", "val", "test"} indices)."""
    data = load_omniglot(config.data_dir, progress=progress)
    return data.images, split_characters(data.num_characters, **OMNIGLOT_SPLIT)


def omniglot_sampler(config, images, characters, seed):
    """A TaskSampler of ``config.ways``-way ``config.shots``-shot tasks over ``characters``."""
    return TaskSampler(images, characters, config.ways, config.shots, config.queries, seed=seed)


def to_task_batch(arrays):
    """Host arrays (x_support, y_support, x_query, y_query) -> a TaskBatch on the active backend
    (floats as the active dtype, integer labels kept as integers): one transfer per meta-batch."""
    return TaskBatch(*(asarray(a) if a.dtype.kind == "f" else asarray(a, dtype=a.dtype) for a in arrays))


def query_accuracy(model, params, batch):
    """Per-task query accuracy, numpy (B,), of a classifier with ``params`` (θ, or φ of shape (B, ...))."""
    predicted = to_numpy(model.predict(params, batch.x_query)).argmax(axis=-1)
    return (predicted == to_numpy(batch.y_query)).mean(axis=-1)


# ---- the two tasks ------------------------------------------------------------------------

class SinusoidSetup:
    """Sinusoid regression: the 1-40-40-1 MLP and seeded SinusoidTasks."""

    figure = "sinusoid_fits.png"

    def __init__(self, config, seeds, progress=True):
        self.config, self.seeds = config, seeds
        self.model = build_model(config)
        self.tasks = SinusoidTasks(config.shots, config.queries, seed=seeds["train_tasks"])

    def sample(self, meta_batch):
        return self.tasks.sample(meta_batch)[0]

    def get_state(self):
        return self.tasks.get_state()

    def set_state(self, state):
        self.tasks.set_state(state)

    def metrics_before_step(self, theta, alpha, batch):
        """The query loss at θ, before any adaptation (one extra forward pass; logged iterations only)."""
        return {"query_loss_pre": float(self.model.loss(theta, batch.x_query, batch.y_query).mean())}

    def plot(self, path, theta, alpha, records, title):
        """MAML's figure: fits to a few test tasks before and after 1 and 10 inner steps."""
        plots.plot_sinusoid_fits(self.model, theta, alpha, path, shots=self.config.shots,
                                 seed=self.seeds["plot_tasks"],
                                 title=f"{title}, iteration {records[-1]['iteration']}")


class OmniglotSetup:
    """N-way K-shot Omniglot: MAML's CNN, a TaskSampler on the meta-train characters and a
    fixed set of validation tasks (the validation sampler restarts from the same state)."""

    figure = "accuracy.png"

    def __init__(self, config, seeds, progress=True):
        self.config = config
        self.model = build_model(config)
        images, split = omniglot_split(config, progress)
        self.tasks = omniglot_sampler(config, images, split["train"], seeds["train_tasks"])
        self.val_sampler = omniglot_sampler(config, images, split["val"], seeds["val_tasks"])
        self.val_start = self.val_sampler.get_state()

    def sample(self, meta_batch):
        return to_task_batch(self.tasks.sample(meta_batch))

    def get_state(self):
        return self.tasks.get_state()

    def set_state(self, state):
        self.tasks.set_state(state)

    def metrics_before_step(self, theta, alpha, batch):
        """Query loss and accuracy at θ, and the query accuracy after the training inner steps
        (logged iterations only)."""
        phi = adapt(self.model, theta, batch.x_support, batch.y_support, alpha, self.config.inner_steps)
        return {"query_loss_pre": float(self.model.loss(theta, batch.x_query, batch.y_query).mean()),
                "train_accuracy_pre": float(query_accuracy(self.model, theta, batch).mean()),
                "train_accuracy_post": float(query_accuracy(self.model, phi, batch).mean())}

    def validate(self, theta, alpha):
        """Mean query accuracy on the validation tasks after ``test_inner_steps`` steps."""
        self.val_sampler.set_state(self.val_start)
        accuracy = []
        for start in range(0, self.config.val_tasks, VAL_BATCH):
            batch = to_task_batch(self.val_sampler.sample(min(VAL_BATCH, self.config.val_tasks - start)))
            phi = adapt(self.model, theta, batch.x_support, batch.y_support, alpha,
                        self.config.test_inner_steps)
            accuracy.append(query_accuracy(self.model, phi, batch))
        return {"val_accuracy": float(np.concatenate(accuracy).mean())}

    def plot(self, path, theta, alpha, records, title):
        """Train (pre/post-update) and validation accuracy over the iterations."""
        plots.plot_accuracy(records, path, title)


SETUPS = {"sinusoid": SinusoidSetup, "omniglot": OmniglotSetup}


# ---- run folders ----------------------------------------------------------------------------

def read_config(run_dir):
    """The TrainConfig stored in a run folder."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}")
    stored = json.loads(path.read_text())
    unknown = sorted(set(stored) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"{path} has unknown settings {unknown}")
    return TrainConfig(**stored)


def read_metrics(run_dir, up_to=None):
    """The records of a run's metrics.jsonl (those with iteration ≤ ``up_to``)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if up_to is None or r["iteration"] <= up_to]


def load_run(run_dir):
    """(config, model, checkpoint state) of a run folder; the state holds θ, α, the optimizer..."""
    config = read_config(run_dir)
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no {CHECKPOINT_FILE} yet: the run stopped before its first "
                          f"checkpoint (every {config.checkpoint_every} iterations)")
    try:
        state = load_checkpoint(path)
    except ValueError as err:       # a damaged file: say so, without a traceback
        raise ConfigError(str(err)) from err
    return config, build_model(config), state


def default_run_dir(config):
    return Path("runs") / f"{config.task}-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---- the training loop ------------------------------------------------------------------------

class Trainer:
    """One run: builds (or restores) the learner, runs the loop, logs, checkpoints, plots."""

    def __init__(self, config, run_dir, progress=True):
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress
        self.seeds = seed_streams(config.seed)
        self.setup = SETUPS[config.task](config, self.seeds, progress)
        model = self.setup.model
        theta = model.init_params(self.seeds["init"])
        alpha = {name: config.alpha for name in theta} if config.per_layer_alpha else config.alpha
        optimizer = OPTIMIZERS[config.optimizer](config.beta, hyper_lr=config.beta_hyper_lr)
        self.learner = AlphaMAML(model, theta, alpha, optimizer, inner_steps=config.inner_steps,
                                 first_order=config.first_order, alpha_hyper_lr=config.alpha_hyper_lr)
        self.records, self.elapsed, self.val_accuracy = [], 0.0, None
        self.checkpoint_iteration = None     # the iteration of the last checkpoint saved or loaded
        self.title = (f"{config.task}, {config.method}{' (first order)' if config.first_order else ''}, "
                      f"K={config.inner_steps}, seed {config.seed}")

    # -- state --
    def state(self):
        """Everything needed to continue exactly: see numpy_amaml.checkpoint."""
        learner = self.learner
        return {"iteration": learner.iteration, "theta": learner.theta, "alpha": learner.alpha,
                "alpha_clamps": learner.alpha_clamps, "optimizer": learner.optimizer.state_dict(),
                "sampler_state": self.setup.get_state(), "elapsed_s": self.elapsed}

    def restore(self, state):
        learner = self.learner
        learner.iteration, learner.theta = int(state["iteration"]), state["theta"]
        self.checkpoint_iteration = learner.iteration
        learner.alpha, learner.alpha_clamps = state["alpha"], int(state["alpha_clamps"])
        learner.optimizer.load_state_dict(state["optimizer"])
        self.setup.set_state(state["sampler_state"])
        self.elapsed = float(state["elapsed_s"])
        self.records = read_metrics(self.run_dir, up_to=learner.iteration)
        # Lines logged after the checkpoint are dropped: the resumed run writes them again.
        self._write_metrics(self.records)

    def _write_metrics(self, records):
        path = self.run_dir / METRICS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, path)

    def checkpoint(self):
        """Save the state atomically, then redraw the figures."""
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, self.state())
        self.checkpoint_iteration = self.learner.iteration
        self.plot()

    def plot(self, task_figure=True):
        """Loss and rate curves from the records; then the task's own figure, which uses θ
        and α (skipped after a divergence, when they may not be finite)."""
        if not self.records:
            return
        plots.plot_losses(self.records, self.run_dir / LOSS_FIGURE, self.title)
        plots.plot_rates(self.records, self.run_dir / RATE_FIGURE, self.title)
        if task_figure:
            self.setup.plot(self.run_dir / self.setup.figure, self.learner.theta, self.learner.alpha,
                            self.records, self.title)

    def figures(self):
        return (LOSS_FIGURE, RATE_FIGURE, self.setup.figure)

    # -- the loop --
    def record(self, step, extra):
        """One metrics.jsonl line. Losses and accuracies are measured at the θ the iteration
        started from (pre: at θ; post: at φ_K, adapted from θ); α, β are the values after it."""
        return {"iteration": step["iteration"], **extra,
                "support_loss_pre": step["support_loss"], "query_loss_post": step["query_loss"],
                "alpha": step["alpha"], "beta": step["beta"], "h_alpha": step["h_alpha"],
                "h_beta": step["h_beta"], "grad_norm": step["grad_norm"],
                "alpha_clamps": step["alpha_clamps"], "beta_clamps": step["beta_clamps"],
                "elapsed_s": round(self.elapsed, 3)}

    def run(self):
        """Train up to ``config.iterations``; raises TrainingDiverged (metrics kept) on NaN/Inf."""
        config, learner, setup = self.config, self.learner, self.setup
        smoothed = None
        bar = tqdm(total=config.iterations, initial=learner.iteration, disable=not self.progress,
                   desc=f"{config.task} {config.method}", dynamic_ncols=True)
        with bar, open(self.run_dir / METRICS_FILE, "a") as metrics:
            while learner.iteration < config.iterations:
                started = time.perf_counter()
                t = learner.iteration + 1
                last = t == config.iterations
                logged = t == 1 or t % config.log_every == 0 or last
                validated = config.task == "omniglot" and (t % config.val_every == 0 or last)

                batch = setup.sample(config.meta_batch)
                extra = setup.metrics_before_step(learner.theta, learner.alpha, batch) if logged else {}
                step = learner.step(batch)
                if validated:
                    extra.update(setup.validate(learner.theta, learner.alpha))
                    self.val_accuracy = extra["val_accuracy"]
                self.elapsed += time.perf_counter() - started

                if logged or validated:
                    self.records.append(self.record(step, extra))
                    metrics.write(json.dumps(self.records[-1]) + "\n")
                    metrics.flush()
                if t % config.checkpoint_every == 0 or last:
                    self.checkpoint()
                bar.update(1)
                if self.progress:
                    smoothed = step["query_loss"] if smoothed is None else 0.98 * smoothed + 0.02 * step["query_loss"]
                    bar.set_postfix(self._postfix(step, smoothed), refresh=False)

    def _postfix(self, step, smoothed):
        alpha = step["alpha"]
        postfix = {"loss": f"{smoothed:.4g}",
                   "α": f"{sum(alpha.values()) / len(alpha):.4g} (mean)" if isinstance(alpha, dict)
                   else f"{alpha:.4g}",
                   "β": f"{step['beta']:.4g}"}
        if self.val_accuracy is not None:
            postfix["val acc"] = f"{self.val_accuracy:.3f}"
        return postfix


def prepare_run_dir(config, out, resume, overrides):
    """(config, run_dir, checkpoint state or None) for a new run in ``out`` or a resumed ``resume``."""
    if resume is None:
        run_dir = Path(out) if out else default_run_dir(config)
        if (run_dir / CONFIG_FILE).exists():
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                              f"or choose another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")
        (run_dir / METRICS_FILE).write_text("")
        return config, run_dir, None

    run_dir = Path(resume)
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {resume}: no such folder")
    stored, _, state = load_run(run_dir)
    changed = {name: value for name, value in overrides.items() if value != getattr(stored, name)}
    fixed = sorted(set(changed) - set(RESUMABLE))
    if fixed:
        details = ", ".join(f"{_flag(n)} {changed[n]!r} (run has {getattr(stored, n)!r})" for n in fixed)
        raise ConfigError(f"--resume {resume}: cannot change {details}; only "
                          f"{', '.join(map(_flag, RESUMABLE))} may differ from the stored run")
    config = replace(stored, **changed)
    validate_config(config)
    if state["iteration"] >= config.iterations:
        raise ConfigError(f"--resume {resume}: the run is already at iteration {state['iteration']} of "
                          f"{config.iterations}; pass a larger --iterations to continue it")
    (run_dir / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")
    return config, run_dir, state


def train(options, out=None, resume=None, progress=True, threads=None):
    """Run (or resume) training; returns the Trainer. ``options``: TrainConfig fields as a dict
    (None = default); ``threads``: CPU threads for the task axis (None: ``parallel.default_threads``).
    The active float dtype and thread count are set for the run and restored afterwards."""
    overrides = {k: v for k, v in options.items() if v is not None}
    config = resolve_config(overrides) if resume is None else None
    config, run_dir, state = prepare_run_dir(config, out, resume, overrides)
    previous_dtype, previous_threads = float_dtype(), parallel.threads()
    set_dtype(config.dtype)
    parallel.set_threads(threads or parallel.default_threads(config.task))
    try:
        trainer = Trainer(config, run_dir, progress)
        if state is not None:
            trainer.restore(state)
        try:
            # Overflow and NaN are caught by AlphaMAML's explicit checks, which name the
            # iteration; NumPy's own warnings about them would only repeat it, less clearly.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                trainer.run()
        except TrainingDiverged as err:
            trainer.plot(task_figure=False)
            saved = (f"last checkpoint: iteration {trainer.checkpoint_iteration}"
                     if trainer.checkpoint_iteration else "no checkpoint was saved")
            raise TrainingDiverged(f"{err}\nmetrics so far: {run_dir / METRICS_FILE}; {saved}") from err
        return trainer
    finally:
        set_dtype(previous_dtype)
        parallel.set_threads(previous_threads)


# ---- command line -----------------------------------------------------------------------------

def add_arguments(parser):
    """The options of ``python -m numpy_amaml train`` (every default: TrainConfig/TASK_DEFAULTS)."""
    s, o = TASK_DEFAULTS["sinusoid"], TASK_DEFAULTS["omniglot"]
    d = TrainConfig
    add = parser.add_argument
    add("--task", choices=TASKS, help=f"default {d.task}")
    add("--method", choices=METHODS, help=f"maml: fixed α, β; alpha-maml: α, β by hypergradient "
                                          f"descent (default {d.method})")
    add("--first-order", action="store_true", default=None, help="first-order MAML (no Hessian terms)")
    add("--inner-steps", type=int, metavar="K", help=f"inner steps in training (default {d.inner_steps})")
    add("--alpha", type=float, metavar="A", help=f"initial inner rate α (default {s['alpha']} sinusoid, "
                                                 f"{o['alpha']} omniglot)")
    add("--beta", type=float, metavar="B", help=f"initial meta rate β (default {d.beta})")
    add("--optimizer", choices=tuple(OPTIMIZERS), help=f"meta-optimizer (default {d.optimizer})")
    add("--alpha-hyper-lr", type=float, metavar="γα",
        help="hypergradient rate of α (alpha-maml; default per task and optimizer: " +
             ", ".join(f"{t}/{opt} {r[0]:g}" for (t, opt), r in HYPER_LR_DEFAULTS.items()) + ")")
    add("--beta-hyper-lr", type=float, metavar="γβ",
        help="hypergradient rate of β (alpha-maml; default per task and optimizer: " +
             ", ".join(f"{t}/{opt} {r[1]:g}" for (t, opt), r in HYPER_LR_DEFAULTS.items()) + ")")
    add("--per-layer-alpha", action="store_true", default=None, help="one α per parameter tensor")
    add("--meta-batch", type=int, metavar="B", help=f"tasks per iteration (default {s['meta_batch']} "
                                                    f"sinusoid, {o['meta_batch']} omniglot)")
    add("--iterations", type=int, metavar="N", help=f"meta-iterations (default {s['iterations']} "
                                                    f"sinusoid, {o['iterations']} omniglot)")
    add("--seed", type=int, metavar="S", help=f"random seed (default {d.seed})")
    add("--dtype", choices=("float32", "float64"), help=f"float dtype (default {d.dtype})")
    add("--log-every", type=int, metavar="n", help=f"metrics line every n iterations (default {d.log_every})")
    add("--checkpoint-every", type=int, metavar="n",
        help=f"checkpoint and figures every n iterations (default {d.checkpoint_every})")
    add("--shots", type=int, help=f"support examples per task/class (default {s['shots']} sinusoid, "
                                  f"{o['shots']} omniglot)")
    add("--queries", type=int, help=f"query examples per task/class (default {s['queries']} sinusoid, "
                                    f"{o['queries']} omniglot)")
    group = parser.add_argument_group("omniglot only")
    group.add_argument("--ways", type=int, help=f"classes per task (default {o['ways']})")
    group.add_argument("--test-inner-steps", type=int, metavar="K",
                       help=f"inner steps at validation/test (default {o['test_inner_steps']})")
    group.add_argument("--downsample", choices=models.DOWNSAMPLING, help=f"default {o['downsample']}")
    group.add_argument("--channels", type=int, help=f"channels per conv block (default {o['channels']})")
    group.add_argument("--data-dir", help="folder with images_background.zip and images_evaluation.zip")
    group.add_argument("--val-every", type=int, metavar="n",
                       help=f"validation every n iterations (default {o['val_every']})")
    group.add_argument("--val-tasks", type=int, metavar="n", help=f"validation tasks (default {o['val_tasks']})")
    run_group = parser.add_argument_group("run folder")
    run_group.add_argument("--out", metavar="DIR", help="run folder (default runs/<task>-<method>-<time>)")
    run_group.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")
    run_group.add_argument("--threads", type=int, metavar="T",
                           help=f"CPU threads sharing the tasks of a meta-batch; speed only, the results "
                                f"do not depend on it (default: 1 sinusoid, all cores omniglot: "
                                f"{parallel.default_threads('omniglot')})")


def run(args):
    """Entry point of the ``train`` command; returns the exit code."""
    options = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    if args.resume and args.out:
        print("error: --resume continues in the run's own folder; do not pass --out", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads must be ≥ 1, got {args.threads}", file=sys.stderr)
        return 2
    try:
        trainer = train(options, out=args.out, resume=args.resume, progress=not args.no_progress,
                        threads=args.threads)
    except (ConfigError, OmniglotError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: training diverged at {err}", file=sys.stderr)
        return 1
    print(summary(trainer))
    return 0


def summary(trainer):
    """What to print at the end: the final numbers and where everything is."""
    config, learner, run_dir = trainer.config, trainer.learner, trainer.run_dir
    last = trainer.records[-1]
    alpha = learner.alpha
    alpha_text = (", ".join(f"{k} {v:.4g}" for k, v in alpha.items()) if isinstance(alpha, dict)
                  else f"{alpha:.4g}")
    lines = [f"trained {config.task} {config.method} for {learner.iteration} iterations "
             f"({trainer.elapsed:.1f} s of training)",
             f"  last logged iteration: query loss pre-update {last['query_loss_pre']:.4g}, "
             f"post-update {last['query_loss_post']:.4g}",
             f"  α = {alpha_text}   β = {learner.optimizer.beta:.4g}   "
             f"(clamps: α {learner.alpha_clamps}, β {learner.optimizer.beta_clamps})"]
    if "val_accuracy" in last:
        lines.append(f"  validation accuracy: {last['val_accuracy']:.4f}")
    lines += [f"run folder: {run_dir}",
              f"  {CONFIG_FILE}, {METRICS_FILE}, {CHECKPOINT_FILE}",
              f"  figures: {', '.join(trainer.figures())}",
              f"evaluate with: python -m numpy_amaml evaluate {run_dir}"]
    return "\n".join(lines)
