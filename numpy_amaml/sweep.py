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
    cells/NAME/       each cell's run folder (config.json, metrics.jsonl with the α and β
                      trajectories, checkpoint.npz written once, at the end)
    cells/NAME.json   each cell's result, written atomically the moment the cell finishes
and the table, summary and figures of numpy_amaml.sweep_results.

Re-running resumes: cells whose result file exists are skipped; a cell that was interrupted
(a run folder but no result) is run again from the start. A diverged run is a result, not a
crash: ``TrainingDiverged`` carries the iteration, and the cell records diverged = True and
``diverged_at``; it is never "converged".
"""
import json
import shutil
import time
import traceback
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

from threadpoolctl import threadpool_limits
from tqdm import tqdm

from numpy_amaml.allocator import keep_freed_memory
from numpy_amaml.alpha_maml import TrainingDiverged
from numpy_amaml.config import resolve_config
from numpy_amaml.files import write_text
from numpy_amaml.meta_test import evaluate_run
from numpy_amaml.run_folder import read_metrics
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
        name = f"{self.method}_a{self.alpha0:g}_b{self.beta0:g}_s{self.seed}"
        if self.sweep == "gamma_alpha":
            name += f"_ga{self.gamma_alpha:g}"
        elif self.sweep == "gamma_beta":
            name += f"_gb{self.gamma_beta:g}"
        return name


class SweepError(ValueError):
    """A bad sweep option, or an output folder that holds a different sweep."""


# ---- the cells ----------------------------------------------------------------------------------

def make_cells(methods, alphas, betas, seeds, alpha_hyper_lrs=None, beta_hyper_lrs=None, starts=None):
    """The list of Cells of a grid sweep (no hyper-lr lists) or of a 1-D sweep."""
    points = list(starts) if starts else list(product(alphas, betas))
    if not alpha_hyper_lrs and not beta_hyper_lrs:
        return [Cell(m, a, b, s) for m in methods for a, b in points for s in seeds]
    cells = [Cell("maml", a, b, s, "reference") for a, b in points for s in seeds] if "maml" in methods else []
    for g in alpha_hyper_lrs or ():
        cells += [Cell("alpha-maml", a, b, s, "gamma_alpha", gamma_alpha=g) for a, b in points for s in seeds]
    for g in beta_hyper_lrs or ():
        cells += [Cell("alpha-maml", a, b, s, "gamma_beta", gamma_beta=g) for a, b in points for s in seeds]
    return cells


def train_options(cell, settings):
    """The options dict of ``training.train`` for one cell: one checkpoint, at the end; Omniglot
    validation once, at the last iteration."""
    options = {k: v for k, v in settings["train"].items()}
    options.update(task=settings["task"], method=cell.method, alpha=cell.alpha0, beta=cell.beta0,
                   seed=cell.seed, iterations=settings["iterations"],
                   checkpoint_every=settings["iterations"])
    if settings["task"] == "omniglot":
        options["val_every"] = settings["iterations"]
    if cell.method == "maml":
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
    (numpy_amaml.allocator).
    """
    keep_freed_memory()
    cell, settings, out = Cell(**job["cell"]), job["settings"], Path(job["out"])
    run_dir = out / CELLS_DIR / cell.name
    started = time.perf_counter()
    try:
        if run_dir.exists():          # left over from an interrupted sweep: start the cell afresh
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
                result.update(final_alpha=learner.alpha, final_beta=learner.optimizer.beta,
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
    """The stored result of a cell, or None when it has not finished (or the file is unreadable)."""
    path = Path(out) / CELLS_DIR / f"{cell.name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---- running a sweep ----------------------------------------------------------------------------

def check_settings(out, settings):
    """Write sweep.json, or check that the stored one has the same settings (else SweepError)."""
    path = Path(out) / SETTINGS_FILE
    if path.is_file():
        stored = json.loads(path.read_text())
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
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(settings, indent=2) + "\n")


def run_cells(cells, settings, out, executor, progress=True, cell_figures=True, log=print):
    """Run every cell that has no result yet on ``executor`` (numpy_amaml.executors: local
    processes or a Dask cluster; the results are the same).

    Returns (results in the order of ``cells``, number skipped, errors {name: traceback}).
    """
    out = Path(out)
    (out / CELLS_DIR).mkdir(parents=True, exist_ok=True)
    results = {cell.name: read_result(out, cell) for cell in cells}
    pending = [cell for cell in cells if results[cell.name] is None]
    skipped = len(cells) - len(pending)
    log(f"sweep: {len(cells)} cells, {skipped} already finished (skipped), {len(pending)} to run"
        + (f" on {executor.describe(len(pending))}" if pending else ""))
    errors, diverged = {}, 0
    jobs = [{"cell": asdict(cell), "settings": settings, "out": str(out), "cell_figures": cell_figures}
            for cell in pending]
    with tqdm(total=len(cells), initial=skipped, desc="sweep cells", disable=not progress,
              dynamic_ncols=True) as bar:
        for result in executor.map_unordered(run_cell, jobs):
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
