"""Meta-training: the loop that turns a TrainConfig into a trained θ, α and β.

One iteration (docs/method.md §6), as ``Trainer.run`` does it:

    batch = task.sample(B)                     # B fresh training tasks
    step  = learner.step(batch)                # inner loop, reverse pass, h_α, h_β,
                                               # α ← α − γ_α h_α, β ← β − γ_β h_β, θ ← θ − β u_t
    log, validate, checkpoint every so often

Everything else here is bookkeeping: the metrics log, checkpoints, figures, the time.
Every random number comes from the task sampler's generator, whose state is in the
checkpoint, so a resumed run computes the same θ, α and β, bit for bit, as one that never
stopped. A figure never stops training: what it cannot draw (an adapted fit that
overflows) is left out and said once; and figures are redrawn at a checkpoint only while
that keeps them within ``FIGURE_SHARE`` of the training time (and always at the end).
"""
import json
import signal
import time
from dataclasses import asdict, replace

import numpy as np
from tqdm import tqdm

from numpy_amaml import parallel, plots
from numpy_amaml.alpha_maml import AlphaMAML, TrainingDiverged
from numpy_amaml.backend import float_dtype, set_dtype
from numpy_amaml.config import RESUMABLE, ConfigError, flag, resolve_config, validate_config
from numpy_amaml.curvature import largest_eigenvalue
from numpy_amaml.learned_rates import LEARNED_RATE_METHODS, LearnedRates, alpha_statistics, initial_alpha
from numpy_amaml.memory import bytes_per_task, check_memory
from numpy_amaml.optim import OPTIMIZERS
from numpy_amaml.run_folder import METRICS_FILE, RunFolder, load_run, quoted, read_metrics, with_data_dir
from numpy_amaml.tasks import make_task, seed_streams
from numpy_amaml.validation import NonFiniteError

LOSS_FIGURE, RATE_FIGURE = "losses.png", "rates.png"
FIGURE_SHARE = 0.03       # figures may take at most this share of the training time
FIRST_FIGURES_SECONDS = 1.0   # what drawing the figures costs, until it has been measured
CURVATURE_TASKS = 4       # λ_max is the mean over this many tasks of the meta-batch


class TrainingStopped(RuntimeError):
    """Training stopped before its last iteration for a reason other than divergence: a signal
    (``signum``: SIGINT for Ctrl-C, or SIGTERM), a file that could not be written, or memory
    that ran out. The message says what is saved."""

    def __init__(self, message, signum=None):
        super().__init__(message)
        self.signum = signum

    @property
    def interrupted(self):
        return self.signum is not None


def signal_of(interrupt):
    """The signal behind a KeyboardInterrupt: its ``signum`` when the command line raised it
    for SIGTERM (numpy_amaml.cli), else SIGINT (Ctrl-C)."""
    return getattr(interrupt, "signum", signal.SIGINT)


class Trainer:
    """One run: the task, the learner (θ, α and the meta-optimizer with β), the records."""

    def __init__(self, config, progress=True, figures=True):
        self.config, self.progress, self.figures = config, progress, figures
        self.seeds = seed_streams(config.seed)
        self.task = make_task(config, self.seeds, progress)
        theta = self.task.model.init_params(self.seeds["init"])
        alpha = initial_alpha(config, self.task.model.param_shapes)
        optimizer = OPTIMIZERS[config.optimizer](config.beta, hyper_lr=config.beta_hyper_lr,
                                                 hyper_rule=config.hyper_rule)
        if config.method in LEARNED_RATE_METHODS:      # Meta-SGD, LSLR: α learned with θ
            self.learner = LearnedRates(self.task.model, theta, alpha, optimizer, inner_steps=config.inner_steps,
                                        first_order=config.first_order)
        else:
            self.learner = AlphaMAML(self.task.model, theta, alpha, optimizer, inner_steps=config.inner_steps,
                                     first_order=config.first_order, alpha_hyper_lr=config.alpha_hyper_lr,
                                     hyper_rule=config.hyper_rule)
        self.records, self.notes = [], []
        self.elapsed = self.figure_seconds = 0.0       # time training / drawing figures
        self.last_figure_seconds = FIRST_FIGURES_SECONDS
        self.wall_seconds = 0.0                        # the whole call of ``train``, set at its end
        self.checkpoint_iteration = None               # the last checkpoint saved or loaded
        self.folder = None                             # the RunFolder of the last ``run``
        self.val_accuracy = None
        self.title = (f"{config.task}, {config.method}{' (first order)' if config.first_order else ''}, "
                      f"K={config.inner_steps}, seed {config.seed}")

    def state_dict(self):
        """Everything needed to continue exactly (saved in checkpoint.npz)."""
        return {**self.learner.state_dict(), "sampler_state": self.task.get_state(), "elapsed_s": self.elapsed,
                "config": asdict(self.config)}      # what it was trained with (run_folder.check_trained_config)

    def load_state_dict(self, state):
        self.learner.load_state_dict(state)
        self.task.set_state(state["sampler_state"])
        self.elapsed = float(state["elapsed_s"])
        self.checkpoint_iteration = self.learner.iteration

    def saved(self):
        """Where the run can be continued from, in words."""
        if self.checkpoint_iteration is None:
            return (f"no checkpoint was saved yet (every {self.config.checkpoint_every} iterations): "
                    f"the same command starts the run afresh")
        return (f"the checkpoint of iteration {self.checkpoint_iteration} is intact: continue with "
                f"python -m numpy_amaml train --resume {quoted(self.folder.path)}")

    def note(self, text):
        """Say something once, above the progress bar."""
        if text not in self.notes:
            self.notes.append(text)
            tqdm.write(f"note: {text}")

    def run(self, folder):
        """Train up to ``config.iterations``, logging into ``folder`` (a started RunFolder).
        Raises TrainingDiverged (records kept) when a loss, gradient or rate is not finite."""
        config, learner, task = self.config, self.learner, self.task
        self.folder = folder
        bar = tqdm(total=config.iterations, initial=learner.iteration, disable=not self.progress,
                   desc=f"{config.task} {config.method}", dynamic_ncols=True)
        with bar, folder.open_metrics() as metrics:
            while learner.iteration < config.iterations:
                started = time.perf_counter()
                t = learner.iteration + 1
                last = t == config.iterations
                logged = t == 1 or t % config.log_every == 0 or last
                validated = config.task == "omniglot" and (t % config.val_every == 0 or last)
                curvature = config.curvature_every and (t == 1 or t % config.curvature_every == 0)

                batch = task.sample(config.meta_batch)
                theta = learner.theta                                  # where this iteration starts
                alpha = dict(learner.alpha) if isinstance(learner.alpha, dict) else learner.alpha
                step = learner.step(batch)                             # θ, α, β updated
                extra = task.metrics_before_step(theta, alpha, batch) if logged else {}
                if curvature:
                    extra["lambda_max"] = self.curvature(theta, batch)
                if validated:
                    extra.update(self.validate())
                self.elapsed += time.perf_counter() - started

                if logged or validated or curvature:
                    self.records.append(self.record(step, extra))
                    metrics.write(json.dumps(self.records[-1]) + "\n")
                    metrics.flush()
                if t % config.checkpoint_every == 0 or last:
                    self.checkpoint(folder, final=last)
                bar.update(1)
                bar.set_postfix(self.postfix(step), refresh=False)

    def curvature(self, theta, batch):
        """λ_max of the support loss's Hessian at θ (power iteration on the HVP), the mean over
        the first CURVATURE_TASKS tasks of the batch: an inner step is stable for α·λ_max < 2."""
        n = min(CURVATURE_TASKS, batch.x_support.shape[0])
        return float(largest_eigenvalue(self.task.model, theta, batch.x_support[:n], batch.y_support[:n]).mean())

    def validate(self):
        """The task's validation numbers at the current θ, α (Omniglot: val_accuracy); an
        adaptation that overflows is recorded as null and said once, not raised."""
        try:
            result = self.task.validate(self.learner.theta, self.learner.alpha)
        except NonFiniteError:
            self.note(f"validation at iteration {self.learner.iteration}: the adaptation by "
                      f"{self.config.test_inner_steps} inner steps is not finite (α too large); "
                      f"val_accuracy recorded as null")
            result = {"val_accuracy": None}
        self.val_accuracy = result.get("val_accuracy")
        return result

    def record(self, step, extra):
        """One metrics.jsonl line. Losses and accuracies are measured at the θ the iteration
        started from (pre: at θ; post: at φ_K, adapted from θ); α, β are the values after it
        (a learned α: its mean, and per tensor mean, min, max; learned_rates.alpha_statistics)."""
        keys = ("alpha", "beta", "h_alpha", "h_beta", "grad_norm", "alpha_clamps", "beta_clamps")
        return {"iteration": step["iteration"], **extra, "support_loss_pre": step["support_loss"],
                "query_loss_post": step["query_loss"], **{k: step[k] for k in keys},
                **{k: step[k] for k in ("cos_alpha", "cos_beta") if k in step},
                **alpha_statistics(self.learner.alpha), "elapsed_s": round(self.elapsed, 3)}

    def checkpoint(self, folder, final=False):
        """Save the state atomically, then redraw the figures if they are within their budget."""
        folder.save_checkpoint(self.state_dict())
        self.checkpoint_iteration = self.learner.iteration
        if final or self.figure_seconds + self.last_figure_seconds <= FIGURE_SHARE * self.elapsed:
            self.plot(folder)

    def plot(self, folder, task_figure=True):
        """Loss and rate curves from the records, then the task's own figure (θ and α; skipped
        after a divergence, when they may not be finite)."""
        if not self.figures or not self.records:
            return
        started = time.perf_counter()
        plots.plot_losses(self.records, folder.path / LOSS_FIGURE, self.title)
        plots.plot_rates(self.records, folder.path / RATE_FIGURE, self.title)
        if task_figure:
            note = self.task.plot(folder.path / self.task.figure, self.learner.theta, self.learner.alpha,
                                  self.records, self.title)
            if note:
                self.note(note)
        self.last_figure_seconds = time.perf_counter() - started
        self.figure_seconds += self.last_figure_seconds

    def figure_files(self):
        return (LOSS_FIGURE, RATE_FIGURE, self.task.figure) if self.figures else ()

    def postfix(self, step):
        alpha = step["alpha"]
        postfix = {"loss": f"{step['query_loss']:.4g}",
                   "α": f"{sum(alpha.values()) / len(alpha):.4g} (mean)" if isinstance(alpha, dict)
                   else f"{alpha:.4g}",
                   "β": f"{step['beta']:.4g}"}
        if self.val_accuracy is not None:
            postfix["val acc"] = f"{self.val_accuracy:.3f}"
        return postfix


def prepare(options, out=None, resume=None):
    """(config, folder, records, state, notes) of a new run, or of the run in ``resume``, with
    every file checked and nothing written. ``options``: TrainConfig fields (None = default)."""
    overrides = {k: v for k, v in options.items() if v is not None}
    if resume is None:
        config = resolve_config(overrides)
        return config, RunFolder.for_new_run(out, config), [], None, []
    folder = RunFolder.for_resume(resume)          # locked: no other process writes it now
    try:
        stored, _, state = load_run(resume)
        changed = {name: value for name, value in overrides.items() if value != getattr(stored, name)}
        fixed = sorted(set(changed) - set(RESUMABLE))
        if fixed:
            details = ", ".join(f"{flag(n)} {changed[n]!r} (run has {getattr(stored, n)!r})" for n in fixed)
            raise ConfigError(f"--resume {resume}: cannot change {details}; only "
                              f"{', '.join(map(flag, RESUMABLE))} may differ from the stored run")
        config = replace(stored, **changed)
        if "data_dir" not in changed:
            config = with_data_dir(config, None, resume)
        validate_config(config)
        if state["iteration"] >= config.iterations:
            raise ConfigError(f"--resume {resume}: the run is already at iteration {state['iteration']} of "
                              f"{config.iterations}; pass a larger --iterations to continue it")
        notes = []
        records = read_metrics(resume, up_to=state["iteration"], notes=notes)
    except BaseException:
        folder.release()
        raise
    return config, folder, records, state, notes


def train(options, out=None, resume=None, progress=True, threads=None, figures=True):
    """Run (or resume) training; returns the Trainer. ``options``: TrainConfig fields as a dict
    (None = default); ``threads``: CPU threads for the task axis (None: ``parallel.default_threads``);
    ``figures``: draw the PNG figures. The run folder is written only once the run can start
    (data loaded, model built, memory checked, everything checked). The run folder is locked
    for the whole call. The active float dtype and thread count are set for the run and
    restored afterwards."""
    started = time.perf_counter()
    config, folder, records, state, notes = prepare(options, out, resume)
    previous_dtype, previous_threads = float_dtype(), parallel.threads()
    set_dtype(config.dtype)
    parallel.set_threads(threads or parallel.default_threads(config.task))
    try:
        try:
            trainer = Trainer(config, progress, figures)
        except ValueError as err:           # e.g. more ways than the split has classes
            raise ConfigError(str(err)) from None
        check_memory(config.meta_batch, bytes_per_task(config, trainer.task.model),
                     f"--meta-batch {config.meta_batch}")
        for text in notes:
            trainer.note(text)
        if state is not None:
            trainer.load_state_dict(state)
            trainer.records = records
        folder.start(config, trainer.records)
        try:
            # Overflow and NaN are caught by AlphaMAML's explicit checks, which name the
            # iteration; NumPy's own warnings about them would only repeat it, less clearly.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                trainer.run(folder)
        except TrainingDiverged as err:
            trainer.plot(folder, task_figure=False)
            raise TrainingDiverged(f"{err}\nmetrics so far: {folder.path / METRICS_FILE}; "
                                   f"{trainer.saved()}", iteration=err.iteration) from err
        except OSError as err:          # a full disk, a folder made read-only or removed
            raise TrainingStopped(f"cannot write to {folder.path} at iteration {trainer.learner.iteration}: "
                                  f"{err.strerror or err}; {trainer.saved()}") from None
        except MemoryError:
            raise TrainingStopped(f"out of memory at iteration {trainer.learner.iteration}: try a smaller "
                                  f"--meta-batch than {config.meta_batch}; {trainer.saved()}") from None
        except KeyboardInterrupt as err:
            signum = signal_of(err)
            what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
            raise TrainingStopped(f"{what} at iteration {trainer.learner.iteration} of {config.iterations}; "
                                  f"{trainer.saved()}", signum=signum) from None
        trainer.wall_seconds = time.perf_counter() - started
        return trainer
    finally:
        folder.release()
        set_dtype(previous_dtype)
        parallel.set_threads(previous_threads)
