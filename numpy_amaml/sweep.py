"""Sensitivity sweeps: many independent training runs over initial rates, one result each.

The Alpha MAML claim (Behl, Baydin, Torr 2019): adapting α and β online by hypergradient
descent makes meta-training converge over a much wider range of initial (α₀, β₀) than plain
MAML. A sweep tests it. Every cell — one (α₀, β₀, method, seed[, γ]) combination — is an
independent ``training.train`` run followed by ``meta_test.evaluate_run`` on fresh tasks
(``run_cell``); ``run_cells`` hands the cells that have no result yet to an executor
(numpy_amaml.executors: local worker processes, or a Dask cluster).

Two kinds of cells (``make_cells``):
    grid     every α₀ × every β₀ × methods × seeds;
    1-D      Alpha MAML with γ_α (or γ_β) set to each listed value, the other γ at its default,
             from each starting point and seed; MAML from the same starting points is the
             reference.

The output folder holds
    sweep.json        the settings shared by all cells (a re-run must use the same ones)
    .lock             held by the one process that writes the folder (numpy_amaml.folder_lock)
    cells/NAME/       each cell's run folder (config.json, metrics.jsonl with the α and β
                      trajectories, checkpoint.npz written once, at the end)
    cells/NAME.json   each cell's result, written atomically the moment the cell finishes
and the table, summary and figures of numpy_amaml.sweep_results. A sweep writes only into a
new or empty folder or a sweep's own (``open_sweep_folder``), and only after its settings
and its data have been checked (``check_task``). A cell's name holds its rates with 6
significant digits, or every digit when 6 do not give the value back, so distinct values
never share a name; a cell listed twice is run once.

Re-running resumes: cells whose result file holds a finished result (``is_result``) are
skipped; a cell that was interrupted (a run folder but no result) or whose result file is
damaged is run again from the start. A diverged run is a result, not a crash:
``TrainingDiverged`` carries the iteration, and the cell records diverged = True and
``diverged_at``; it is never "converged".
"""
import json
import shutil
import threading
import time
import traceback
from contextlib import closing
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

from threadpoolctl import threadpool_limits
from tqdm import tqdm

from numpy_amaml.allocator import keep_freed_memory
from numpy_amaml.alpha_maml import TrainingDiverged
from numpy_amaml.config import resolve_config
from numpy_amaml.files import write_text
from numpy_amaml.folder_lock import LOCK_FILE, held_by, lock_folder
from numpy_amaml.learned_rates import logged_alpha
from numpy_amaml.memory import bytes_per_task, check_memory
from numpy_amaml.meta_test import evaluate_run
from numpy_amaml.omniglot import OmniglotError
from numpy_amaml.run_folder import CONFIG_FILE, read_metrics
from numpy_amaml.tasks import make_task, seed_streams
from numpy_amaml.training import train

SETTINGS_FILE = "sweep.json"
CELLS_DIR = "cells"
SINUSOID_EXTRA_STEPS = 10           # the sinusoid is also evaluated after 10 inner steps (MAML's figure)


@dataclass(frozen=True)
class Cell:
    """One training run of the sweep. ``sweep`` is "grid", "gamma_alpha" or "gamma_beta" (which
    γ this cell varies), or "reference" (MAML from a starting point of the 1-D mode);
    gamma_* None means train's default for the method."""
    method: str
    alpha0: float
    beta0: float
    seed: int
    sweep: str = "grid"
    gamma_alpha: float = None
    gamma_beta: float = None

    @property
    def name(self):
        name = f"{self.method}_a{rate_text(self.alpha0)}_b{rate_text(self.beta0)}_s{self.seed}"
        if self.sweep == "gamma_alpha":
            name += f"_ga{rate_text(self.gamma_alpha)}"
        elif self.sweep == "gamma_beta":
            name += f"_gb{rate_text(self.gamma_beta)}"
        return name


def rate_text(value):
    """A rate as it appears in a cell name: 6 significant digits (0.01, 1e-05, 4) when they give
    the value back exactly, else every digit Python needs (0.0100000001), so that distinct
    values always name distinct cells."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


class SweepError(ValueError):
    """A bad sweep option, or an output folder that holds a different sweep."""


# ---- the cells ----------------------------------------------------------------------------------

def make_cells(methods, alphas, betas, seeds, alpha_hyper_lrs=None, beta_hyper_lrs=None, starts=None):
    """The list of Cells of a grid sweep (no hyper-lr lists) or of a 1-D sweep; a cell listed
    twice (``methods`` maml,maml) is kept once."""
    points = list(starts) if starts else list(product(alphas, betas))
    if not alpha_hyper_lrs and not beta_hyper_lrs:
        return list(dict.fromkeys(Cell(m, a, b, s) for m in methods for a, b in points for s in seeds))
    cells = [Cell("maml", a, b, s, "reference") for a, b in points for s in seeds] if "maml" in methods else []
    for g in alpha_hyper_lrs or ():
        cells += [Cell("alpha-maml", a, b, s, "gamma_alpha", gamma_alpha=g) for a, b in points for s in seeds]
    for g in beta_hyper_lrs or ():
        cells += [Cell("alpha-maml", a, b, s, "gamma_beta", gamma_beta=g) for a, b in points for s in seeds]
    return list(dict.fromkeys(cells))


def train_options(cell, settings):
    """The options dict of ``training.train`` for one cell: one checkpoint, at the end; Omniglot
    validation once, at the last iteration."""
    options = {k: v for k, v in settings["train"].items()}
    options.update(task=settings["task"], method=cell.method, alpha=cell.alpha0, beta=cell.beta0,
                   seed=cell.seed, iterations=settings["iterations"],
                   checkpoint_every=settings["iterations"])
    if settings["task"] == "omniglot":
        options["val_every"] = settings["iterations"]
    if cell.method != "alpha-maml":            # the γ's are Alpha MAML's alone
        options.pop("alpha_hyper_lr", None), options.pop("beta_hyper_lr", None)
    if cell.gamma_alpha is not None:
        options["alpha_hyper_lr"] = cell.gamma_alpha
    if cell.gamma_beta is not None:
        options["beta_hyper_lr"] = cell.gamma_beta
    return options


def eval_steps(config):
    """(inner-step counts evaluated, the one whose metric decides convergence)."""
    if config.task == "sinusoid":
        return sorted({1, config.inner_steps, SINUSOID_EXTRA_STEPS}), config.inner_steps
    return [config.test_inner_steps], config.test_inner_steps


def evaluate_cell(run_dir, config, tasks):
    """meta_test.evaluate_run on ``tasks`` fresh tasks; an adaptation that overflows at test time
    (10 steps with a large final α) costs only the step counts from the overflow on (None,
    with the reason in "failed"), not the others."""
    steps, metric_steps = eval_steps(config)
    evaluation = evaluate_run(run_dir, tasks=tasks, steps=steps, threads=1)
    return {"metric": evaluation["metric"], "tasks": tasks, "seed": config.seed, "metric_steps": metric_steps,
            "results": evaluation["results"], "failed": {str(k): v for k, v in sorted(evaluation["failed"].items())}}


def run_cell(job):
    """Train and evaluate one cell (in a worker: a local process or a Dask worker); write its
    result JSON atomically.

    ``job``: {"cell": Cell fields, "settings": the sweep settings, "out": the output folder,
    "cell_figures": bool}. Returns the result dict, or {"name", "error"} when something other
    than a divergence went wrong (then nothing is written, so a re-run tries the cell again).
    Each cell runs with one thread on the task axis and single-threaded BLAS: the workers
    already share the cores; the worker keeps freed memory for reuse, as the command line does
    (numpy_amaml.allocator). Its progress bars are off, and tqdm's lock is a thread lock: the
    default one holds a multiprocessing semaphore, which a worker killed with ``kill -9``
    would leak (and the resource tracker would then warn about at the sweep's exit).
    """
    keep_freed_memory()
    tqdm.set_lock(threading.RLock())
    cell, settings, out = Cell(**job["cell"]), job["settings"], Path(job["out"])
    run_dir = out / CELLS_DIR / cell.name
    started = time.perf_counter()
    try:
        if run_dir.exists():          # left over from an interrupted sweep: start the cell afresh
            holder = held_by(run_dir)       # unless a worker of an earlier, stopped sweep still runs it
            if holder:
                return {"name": cell.name, "error": f"{run_dir} is still being trained by another process "
                                                    f"({holder}); run the sweep again when it has ended"}
            shutil.rmtree(run_dir)
        options = train_options(cell, settings)
        config = resolve_config(options)
        result = {"name": cell.name, "cell": asdict(cell), "task": config.task,
                  "gamma_alpha": config.alpha_hyper_lr, "gamma_beta": config.beta_hyper_lr,
                  "iterations": config.iterations, "run_dir": str(Path(CELLS_DIR) / cell.name),
                  "diverged": False, "diverged_at": None, "message": None, "evaluation": None}
        with threadpool_limits(limits=1, user_api="blas"):
            try:
                trainer = train(options, out=run_dir, progress=False, threads=1,
                                figures=job.get("cell_figures", True))
                learner = trainer.learner
                result.update(final_alpha=logged_alpha(learner.alpha), final_beta=learner.optimizer.beta,
                              alpha_clamps=learner.alpha_clamps, beta_clamps=learner.optimizer.beta_clamps,
                              iterations_done=learner.iteration)
            except TrainingDiverged as err:
                records = read_metrics(run_dir)
                last = records[-1] if records else {}
                result.update(diverged=True, diverged_at=err.iteration, message=str(err).splitlines()[0],
                              final_alpha=last.get("alpha", cell.alpha0), final_beta=last.get("beta", cell.beta0),
                              alpha_clamps=last.get("alpha_clamps", 0), beta_clamps=last.get("beta_clamps", 0),
                              iterations_done=(err.iteration - 1) if err.iteration else None)
            if not result["diverged"]:
                result["evaluation"] = evaluate_cell(run_dir, config, settings["eval_tasks"])
        result["wall_s"] = round(time.perf_counter() - started, 3)
        write_text(out / CELLS_DIR / f"{cell.name}.json", json.dumps(result, indent=1) + "\n")
        return result
    except Exception:                 # a bug or bad data, not a divergence: report, write nothing
        return {"name": cell.name, "error": traceback.format_exc()}


def read_result(out, cell):
    """The stored result of a cell, or None when it has not finished: no file, an unreadable
    one, or one without the shape ``run_cell`` writes (``is_result``), which is not trusted
    (the cell is run again and its file replaced)."""
    path = Path(out) / CELLS_DIR / f"{cell.name}.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if is_result(result, cell) else None


def _is_number(value, none_allowed=False):
    return (value is None and none_allowed) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def is_result(result, cell):
    """Whether ``result`` (parsed JSON) is a finished result of ``cell``: every field that the
    table, the summary and the figures read (numpy_amaml.sweep_results), with its type; an
    evaluation unless the cell diverged."""
    if not (isinstance(result, dict) and result.get("name") == cell.name and isinstance(result.get("cell"), dict)
            and isinstance(result.get("diverged"), bool) and isinstance(result.get("alpha_clamps"), int)
            and isinstance(result.get("beta_clamps"), int) and "final_alpha" in result and "final_beta" in result
            and all(_is_number(result.get(k)) for k in ("gamma_alpha", "gamma_beta", "wall_s"))
            and _is_number(result.get("diverged_at"), none_allowed=True)):
        return False
    evaluation = result.get("evaluation")
    if evaluation is None:
        return result["diverged"]
    return (isinstance(evaluation, dict) and isinstance(evaluation.get("results"), list)
            and _is_number(evaluation.get("metric_steps")) and isinstance(evaluation.get("failed"), dict)
            and _is_number(evaluation.get("tasks")) and "metric" in evaluation
            and all(isinstance(row, dict) and {"steps", "mean", "ci95"} <= set(row) and _is_number(row["steps"])
                    and _is_number(row["mean"], True) and _is_number(row["ci95"], True)
                    for row in evaluation["results"]))


# ---- running a sweep ----------------------------------------------------------------------------

def check_out_folder(out):
    """Refuse (SweepError) an output folder that is neither new, nor empty, nor a sweep's (one
    with sweep.json): a file, a training run's folder or a folder of other files belongs to
    someone else, and nothing is written into it. A ``.lock`` alone (a sweep stopped before it
    wrote sweep.json) counts as empty."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise SweepError(f"--out {out} is a file, not a folder")
    if (out / SETTINGS_FILE).is_file():
        return
    if (out / CONFIG_FILE).is_file():
        raise SweepError(f"--out {out} is a training run's folder (it has {CONFIG_FILE}), not a sweep's; "
                         f"choose another --out")
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    if others:
        raise SweepError(f"--out {out} is not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) "
                         f"and holds no sweep (no {SETTINGS_FILE}); choose a new or empty folder")


def check_settings(out, settings):
    """Raise SweepError if ``out`` holds a sweep.json that is damaged or has other settings
    (naming each one that differs); writes nothing."""
    path = Path(out) / SETTINGS_FILE
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SweepError(f"{path} cannot be read ({err}); restore it, or use another --out") from None
    if not isinstance(stored, dict):
        raise SweepError(f"{path} does not hold a sweep's settings; restore it, or use another --out")
    if stored != settings:
        keys = sorted(set(stored) | set(settings))
        diff = []
        for key in keys:
            if isinstance(settings.get(key), dict) and isinstance(stored.get(key), dict):
                inner = sorted(set(stored[key]) | set(settings[key]))
                diff += [f"{k}: {settings[key].get(k)!r} (stored {stored[key].get(k)!r})"
                         for k in inner if stored[key].get(k) != settings[key].get(k)]
            elif stored.get(key) != settings.get(key):
                diff.append(f"{key}: {settings.get(key)!r} (stored {stored.get(key)!r})")
        raise SweepError(f"{out} holds a sweep with other settings ({'; '.join(diff)}); "
                         f"use the same options to resume it, or another --out")


def open_sweep_folder(out, settings):
    """Make ``out`` this process's sweep folder: check it (``check_out_folder``,
    ``check_settings``), create it, lock it (numpy_amaml.folder_lock: FolderLocked when another
    sweep writes it) and write sweep.json, or check the stored one again under the lock.
    Returns the lock; it is held until released or until the process ends. A refused folder
    is left as it was."""
    out = Path(out)
    check_out_folder(out)
    check_settings(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(out)
    try:
        check_settings(out, settings)
        if not (out / SETTINGS_FILE).is_file():
            write_text(out / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
    except BaseException:
        lock.release()
        raise
    return lock


def check_task(config, progress=True):
    """Build the task of ``config`` as each worker will (``tasks.make_task``), and the sampler
    of its test split, and check that a meta-batch fits in memory (numpy_amaml.memory): missing
    or damaged Omniglot data (OmniglotError), a split with fewer classes than --ways
    (SweepError) or a --meta-batch too large (ConfigError) is found here, before anything is
    written, not once per cell. For Omniglot this also builds the decoded cache once, before
    the workers read it."""
    try:
        task = make_task(config, seed_streams(config.seed), progress)
        if config.task == "omniglot":
            task.sampler("test", seed=0)
    except OmniglotError:
        raise
    except ValueError as err:
        raise SweepError(str(err)) from None
    check_memory(config.meta_batch, bytes_per_task(config, task.model), f"--meta-batch {config.meta_batch}")


def run_cells(cells, settings, out, executor, progress=True, cell_figures=True, log=print, run_pending=True):
    """Run every cell that has no result yet on ``executor`` (numpy_amaml.executors: local
    processes or a Dask cluster; the results are the same). An exception here (Ctrl-C)
    closes the executor's generator: no further cell starts and the running ones are ended.
    With ``run_pending=False`` nothing runs: only the finished cells are read (a partial report).

    Returns (results in the order of ``cells``, number skipped, errors {name: traceback}).
    """
    out = Path(out)
    (out / CELLS_DIR).mkdir(parents=True, exist_ok=True)
    results = {cell.name: read_result(out, cell) for cell in cells}
    pending = [cell for cell in cells if results[cell.name] is None]
    skipped = len(cells) - len(pending)
    untrusted = sum((out / CELLS_DIR / f"{cell.name}.json").is_file() for cell in pending)
    if run_pending:
        log(f"sweep: {len(cells)} cells, {skipped} already finished (skipped), {len(pending)} to run"
            + (f" on {executor.describe(len(pending))}" if pending else "")
            + (f" ({untrusted} of them with a damaged or incomplete result file, run again)" if untrusted else ""))
    else:
        log(f"sweep: {skipped} of {len(cells)} cells finished; the {len(pending)} others are not run (--report-only)")
        pending = []
    errors, diverged = {}, 0
    jobs = [{"cell": asdict(cell), "settings": settings, "out": str(out), "cell_figures": cell_figures}
            for cell in pending]
    with tqdm(total=len(cells), initial=skipped, desc="sweep cells", disable=not progress,
              dynamic_ncols=True) as bar, closing(executor.map_unordered(run_cell, jobs)) as finished:
        for result in finished:
            if "error" in result:
                errors[result["name"]] = result["error"]
            else:
                results[result["name"]] = result
                diverged += result["diverged"]
            bar.update(1)
            bar.set_postfix(last=result["name"], diverged=diverged, failed=len(errors), refresh=False)
    # A stored result may come from another mode's cell of the same name (a MAML cell is both a
    # grid cell and a 1-D reference): describe it as the cell of this sweep.
    return ([None if results[c.name] is None else {**results[c.name], "cell": asdict(c)} for c in cells],
            skipped, errors)
