"""``python -m numpy_amaml sweep``: how sensitive are MAML and Alpha MAML to their initial rates?

The Alpha MAML claim (Behl, Baydin, Torr 2019): adapting α and β online by hypergradient
descent makes meta-training converge over a much wider range of initial (α₀, β₀) than plain
MAML. This command tests it. Every cell — one (α₀, β₀, method, seed[, γ]) combination — is an
independent ``train.train`` run followed by ``evaluate.evaluate_run`` on fresh tasks; the cells
run in parallel worker processes.

Two modes:
    grid     (default)  every α₀ in --alphas × every β₀ in --betas × --methods × --seeds;
    1-D      (--alpha-hyper-lrs and/or --beta-hyper-lrs)  Alpha MAML with γ_α (or γ_β) set to
                        each listed value, the other γ at its default, from each starting point
                        (--starts "A:B,...", or --alphas × --betas) and each seed; when --methods
                        includes maml, MAML from the same starting points is run as the reference.

The output folder (--out) holds
    sweep.json        the settings shared by all cells (a re-run must use the same ones)
    cells/NAME/       each cell's run folder (config.json, metrics.jsonl with the α and β
                      trajectories, checkpoint.npz written once, at the end)
    cells/NAME.json   each cell's result, written atomically the moment the cell finishes
    results.csv       one row per cell; its '#' header lines define the metric and "converged"
    summary.txt       the fraction of cells that converged, per method (also printed)
    heatmap.png       grid mode: final metric over (α₀, β₀), MAML | Alpha MAML side by side
    trajectories.png  α and β over the iterations for a few starting points / hypergradient rates
    hyper_lr.png      1-D mode: final metric (and final α or β) against γ_α and γ_β

Re-running the same command resumes: cells whose result file exists are skipped (and counted);
a cell that was interrupted (a run folder but no result) is run again from the start.

A diverged run is a result, not a crash: train raises ``TrainingDiverged`` (with the iteration in
its message) when a loss or rate stops being finite; the cell records diverged = True and that
iteration, and is never "converged".

"Converged" (``converged_flags``), per cell, relative to the best cell of the same sweep:
    sinusoid  not diverged and final query MSE (after the training number of inner steps K,
              on fresh tasks) ≤ --mse-ratio (default 1.5) × the lowest MSE of any cell;
    omniglot  not diverged and final query accuracy (after --test-inner-steps, meta-test
              characters) ≥ the highest accuracy of any cell − --accuracy-gap (default 0.05).
The sinusoid metric is the one meta-training minimises (J after K steps); the MSE after 10
steps is reported too. Each step count is evaluated on its own (``evaluate_cell``): an adaptation
that overflows at test time (10 steps with a large α) leaves that count's number empty and
listed in eval_failed_steps; if it is the metric's count, the cell has no metric.

Threads: each worker is a separate process running small matrix products, so the pool sets
OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = MKL_NUM_THREADS = 1 before it starts. The BLAS
library reads them when NumPy is imported in the worker; without them, every worker would
start one BLAS thread per core, and W workers × (cores) threads on a small machine (2 workers
× 2 threads on 2 cores) spend their time contending for the cores instead of computing.
For the same reason each cell trains and evaluates with one thread on the task axis
(``threads=1``, numpy_amaml.parallel): the workers already use the cores.
"""
import csv
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from tqdm import tqdm

from numpy_amaml import train as train_module
from numpy_amaml.alpha_maml import TrainingDiverged
from numpy_amaml.checks import NonFiniteError
from numpy_amaml.evaluate import evaluate_run
from numpy_amaml.omniglot import OmniglotError
from numpy_amaml.train import METHODS, TASK_DEFAULTS, TASKS, TrainConfig, ConfigError, read_metrics, resolve_config

SETTINGS_FILE, CSV_FILE, SUMMARY_FILE = "sweep.json", "results.csv", "summary.txt"
HEATMAP_FIGURE, TRAJECTORY_FIGURE, HYPER_FIGURE = "heatmap.png", "trajectories.png", "hyper_lr.png"
CELLS_DIR = "cells"
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
SINUSOID_EXTRA_STEPS = 10           # the sinusoid is also evaluated after 10 inner steps (MAML's figure)
METHOD_LABELS = {"maml": "MAML", "alpha-maml": "Alpha MAML"}

# Training options handed through to every cell: (name, type or choices, help). Their defaults are
# train's (TrainConfig / TASK_DEFAULTS / HYPER_LR_DEFAULTS).
PASS_THROUGH = (
    ("optimizer", ("adam", "sgd"), "meta-optimizer"),
    ("inner_steps", int, "inner steps K in training"),
    ("meta_batch", int, "tasks per meta-iteration"),
    ("shots", int, "support examples per task (per class for omniglot)"),
    ("queries", int, "query examples per task (per class for omniglot)"),
    ("alpha_hyper_lr", float, "γ_α of the alpha-maml cells (grid mode; default train's)"),
    ("beta_hyper_lr", float, "γ_β of the alpha-maml cells (grid mode; default train's)"),
    ("dtype", ("float32", "float64"), "float dtype"),
    ("log_every", int, "metrics line (α, β, losses) every n iterations"),
    ("ways", int, "omniglot: classes per task"),
    ("test_inner_steps", int, "omniglot: inner steps at validation/test"),
    ("downsample", ("stride", "maxpool"), "omniglot: CNN downsampling"),
    ("channels", int, "omniglot: channels per conv block"),
    ("data_dir", str, "omniglot: folder with the two zips"),
    ("val_tasks", int, "omniglot: validation tasks (validated once, at the last iteration)"),
)


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
    """The options dict of ``train.train`` for one cell: one checkpoint, at the end; Omniglot
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


def _atomic_write(path, text):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _diverged_at(err):
    """The iteration named in a TrainingDiverged message ("iteration N: ...")."""
    found = re.search(r"iteration (\d+)", str(err))
    return int(found.group(1)) if found else None


def _finite_or_none(value):
    return float(value) if value is not None and math.isfinite(value) else None


def evaluate_cell(run_dir, config, tasks):
    """evaluate.evaluate_run on ``tasks`` fresh tasks, one inner-step count at a time, so that an
    adaptation that blows up (e.g. 10 steps with a large final α: NonFiniteError) costs only that
    count's number (None, with the reason in "failed") and not the others."""
    steps, metric_steps = eval_steps(config)
    rows, failed, evaluation = {}, {}, None
    for k in steps:
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                evaluation = evaluate_run(run_dir, tasks=tasks, steps=[k], threads=1)
        except NonFiniteError as err:
            rows[k] = {"steps": k, "mean": None, "ci95": None}
            failed[str(k)] = str(err)
            continue
        for r in evaluation["results"]:
            rows[r["steps"]] = {"steps": r["steps"], "mean": _finite_or_none(r["mean"]),
                                "ci95": _finite_or_none(r["ci95"])}
    metric = evaluation["metric"] if evaluation else None
    return {"metric": metric, "tasks": tasks, "seed": config.seed, "metric_steps": metric_steps,
            "results": [rows[k] for k in sorted(rows)], "failed": failed}


def run_cell(job):
    """Train and evaluate one cell (in a worker process); write its result JSON atomically.

    ``job``: {"cell": Cell fields, "settings": the sweep settings, "out": the output folder,
    "cell_figures": bool}. Returns the result dict, or {"name", "error"} when something other
    than a divergence went wrong (then nothing is written, so a re-run tries the cell again).
    """
    cell, settings, out = Cell(**job["cell"]), job["settings"], Path(job["out"])
    run_dir = out / CELLS_DIR / cell.name
    started = time.perf_counter()
    try:
        if run_dir.exists():          # left over from an interrupted sweep: start the cell afresh
            shutil.rmtree(run_dir)
        if not job.get("cell_figures", True):
            # This process only runs cells: skip the per-cell PNGs (about a second each).
            train_module.Trainer.plot = lambda self, task_figure=True: None
        options = train_options(cell, settings)
        config = resolve_config(options)
        result = {"name": cell.name, "cell": asdict(cell), "task": config.task,
                  "gamma_alpha": config.alpha_hyper_lr, "gamma_beta": config.beta_hyper_lr,
                  "iterations": config.iterations, "run_dir": str(Path(CELLS_DIR) / cell.name),
                  "diverged": False, "diverged_at": None, "message": None, "evaluation": None}
        try:
            trainer = train_module.train(options, out=run_dir, progress=False, threads=1)
            learner = trainer.learner
            result.update(final_alpha=learner.alpha, final_beta=learner.optimizer.beta,
                          alpha_clamps=learner.alpha_clamps, beta_clamps=learner.optimizer.beta_clamps,
                          iterations_done=learner.iteration)
        except TrainingDiverged as err:
            records = read_metrics(run_dir)
            last = records[-1] if records else {}
            at = _diverged_at(err)
            result.update(diverged=True, diverged_at=at, message=str(err).splitlines()[0],
                          final_alpha=last.get("alpha", cell.alpha0), final_beta=last.get("beta", cell.beta0),
                          alpha_clamps=last.get("alpha_clamps", 0), beta_clamps=last.get("beta_clamps", 0),
                          iterations_done=(at - 1) if at else None)
        if not result["diverged"]:
            result["evaluation"] = evaluate_cell(run_dir, config, settings["eval_tasks"])
        result["wall_s"] = round(time.perf_counter() - started, 3)
        _atomic_write(out / CELLS_DIR / f"{cell.name}.json", json.dumps(result, indent=1) + "\n")
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
    _atomic_write(path, json.dumps(settings, indent=2) + "\n")


def run_cells(cells, settings, out, workers=None, progress=True, cell_figures=True, log=print):
    """Run every cell that has no result yet, ``workers`` at a time (spawned processes).

    Returns (results in the order of ``cells``, number skipped, errors {name: traceback}).
    """
    out = Path(out)
    (out / CELLS_DIR).mkdir(parents=True, exist_ok=True)
    results = {cell.name: read_result(out, cell) for cell in cells}
    pending = [cell for cell in cells if results[cell.name] is None]
    skipped = len(cells) - len(pending)
    workers = max(1, min(workers or os.cpu_count() or 1, len(pending) or 1))
    log(f"sweep: {len(cells)} cells, {skipped} already finished (skipped), {len(pending)} to run"
        + (f" on {workers} worker{'s' if workers > 1 else ''}" if pending else ""))
    errors = {}
    if pending:
        jobs = [{"cell": asdict(cell), "settings": settings, "out": str(out), "cell_figures": cell_figures}
                for cell in pending]
        saved = {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES}
        os.environ.update({name: "1" for name in BLAS_THREAD_VARIABLES})   # read by each worker's BLAS
        diverged = 0
        try:
            context = multiprocessing.get_context("spawn")
            with context.Pool(workers) as pool, tqdm(total=len(cells), initial=skipped, desc="sweep cells",
                                                     disable=not progress, dynamic_ncols=True) as bar:
                for result in pool.imap_unordered(run_cell, jobs):
                    if "error" in result:
                        errors[result["name"]] = result["error"]
                    else:
                        results[result["name"]] = result
                        diverged += result["diverged"]
                    bar.update(1)
                    bar.set_postfix(last=result["name"], diverged=diverged, failed=len(errors), refresh=False)
                pool.close()          # let the workers exit on their own (not terminate()d)
                pool.join()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    # A stored result may come from another mode's cell of the same name (a MAML cell is both a
    # grid cell and a 1-D reference): describe it as the cell of this sweep.
    return ([None if results[c.name] is None else {**results[c.name], "cell": asdict(c)} for c in cells],
            skipped, errors)


# ---- convergence and the table --------------------------------------------------------------------

def final_metric(result):
    """(mean, ci95) of the metric that decides convergence, or (None, None) (diverged / not finite)."""
    evaluation = result.get("evaluation")
    if not evaluation:
        return None, None
    for row in evaluation["results"]:
        if row["steps"] == evaluation["metric_steps"]:
            return row["mean"], row["ci95"]
    return None, None


def converged_flags(rows, task, mse_ratio=1.5, accuracy_gap=0.05):
    """Per row ({"diverged": bool, "metric": float or None}): did the run converge?

    sinusoid: not diverged and metric (MSE) ≤ mse_ratio × the lowest MSE among the rows;
    omniglot: not diverged and metric (accuracy) ≥ the highest accuracy among the rows − accuracy_gap.
    Returns (flags, threshold); threshold is None when no row has a finite metric.
    """
    usable = [r["metric"] for r in rows
              if not r["diverged"] and r["metric"] is not None and math.isfinite(r["metric"])]
    if not usable:
        return [False] * len(rows), None
    if task == "sinusoid":
        threshold = mse_ratio * min(usable)
        ok = lambda m: m <= threshold
    else:
        threshold = max(usable) - accuracy_gap
        ok = lambda m: m >= threshold
    flags = [bool(not r["diverged"] and r["metric"] is not None and math.isfinite(r["metric"]) and ok(r["metric"]))
             for r in rows]
    return flags, threshold


def convergence_rule(task, mse_ratio, accuracy_gap, metric_steps):
    """The definition of "converged", in words (for the CSV header, summary.txt and the docs)."""
    if task == "sinusoid":
        return (f"converged = not diverged AND final query MSE after {metric_steps} inner step"
                f"{'s' if metric_steps != 1 else ''} (fresh test tasks, the run's final α) "
                f"<= {mse_ratio:g} x the lowest such MSE of any cell of this sweep")
    return (f"converged = not diverged AND final query accuracy after {metric_steps} inner steps "
            f"(meta-test characters, the run's final α) >= the highest such accuracy of any cell "
            f"of this sweep - {accuracy_gap:g}")


def table(results, task, mse_ratio, accuracy_gap):
    """(CSV rows as dicts, column names, threshold): every cell with its convergence flag."""
    metrics = [final_metric(r) for r in results]
    flags, threshold = converged_flags([{"diverged": r["diverged"], "metric": m} for r, (m, _) in
                                        zip(results, metrics)], task, mse_ratio, accuracy_gap)
    short = "mse" if task == "sinusoid" else "acc"
    step_columns = sorted({row["steps"] for r in results if r.get("evaluation")
                           for row in r["evaluation"]["results"]})
    columns = ["task", "sweep", "method", "alpha0", "beta0", "seed", "gamma_alpha", "gamma_beta",
               "final_alpha", "final_beta", "alpha_clamps", "beta_clamps", "diverged", "diverged_at",
               "metric", "metric_ci95"]
    columns += [c for k in step_columns for c in (f"{short}_k{k}", f"{short}_k{k}_ci95")]
    columns += ["eval_failed_steps", "converged", "wall_s"]
    rows = []
    for result, (metric, ci), flag in zip(results, metrics, flags):
        cell = result["cell"]
        row = {"task": task, "sweep": cell["sweep"], "method": cell["method"], "alpha0": cell["alpha0"],
               "beta0": cell["beta0"], "seed": cell["seed"], "gamma_alpha": result["gamma_alpha"],
               "gamma_beta": result["gamma_beta"], "final_alpha": result["final_alpha"],
               "final_beta": result["final_beta"], "alpha_clamps": result["alpha_clamps"],
               "beta_clamps": result["beta_clamps"], "diverged": result["diverged"],
               "diverged_at": result["diverged_at"], "metric": metric, "metric_ci95": ci,
               "converged": flag, "wall_s": result["wall_s"]}
        row["eval_failed_steps"] = " ".join(sorted((result.get("evaluation") or {}).get("failed", {}), key=int))
        for entry in (result.get("evaluation") or {}).get("results", []):
            row[f"{short}_k{entry['steps']}"] = entry["mean"]
            row[f"{short}_k{entry['steps']}_ci95"] = entry["ci95"]
        rows.append(row)
    return rows, columns, threshold


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv(path, rows, columns, header_lines):
    lines = "".join(f"# {line}\n" for line in header_lines)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(c)) for c in columns])
    _atomic_write(path, lines + buffer.getvalue())


def read_csv(path):
    """The rows of a results.csv (strings), skipping its '#' header lines."""
    with open(path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def summarize(rows, settings, threshold, rule):
    """The summary lines: converged fraction per method (and per γ in the 1-D mode)."""
    task, lines = settings["task"], []
    seeds = sorted({r["seed"] for r in rows})
    lines.append(f"{task} sweep, {settings['iterations']} iterations per cell, seeds "
                 f"{','.join(map(str, seeds))}; {rule}"
                 + (f" (threshold {threshold:.4g})" if threshold is not None else " (no cell finished)"))
    groups = {}
    for row in rows:
        if row["sweep"] == "grid":
            key = METHOD_LABELS[row["method"]]
        elif row["sweep"] == "reference":
            key = "MAML (reference, same starting points)"
        else:
            gamma = row["gamma_alpha"] if row["sweep"] == "gamma_alpha" else row["gamma_beta"]
            key = f"Alpha MAML, {'γ_α' if row['sweep'] == 'gamma_alpha' else 'γ_β'} = {gamma:g}"
        groups.setdefault(key, []).append(row)
    for key, group in groups.items():
        done = sum(r["converged"] for r in group)
        diverged = sum(r["diverged"] for r in group)
        points = {}
        for r in group:
            points.setdefault((r["alpha0"], r["beta0"]), []).append(r["converged"])
        all_seeds = sum(all(v) for v in points.values())
        lines.append(f"  {key}: converged {done}/{len(group)} runs ({100.0 * done / len(group):.0f}%), "
                     f"{all_seeds}/{len(points)} starting points with every seed converged, "
                     f"{diverged} diverged")
    return lines


# ---- figures -----------------------------------------------------------------------------------

def _tick(value):
    """A log-spaced value as mathtext: 10^{-3}, 3×10^{-3}."""
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10 ** exponent
    text = f"10^{{{exponent}}}" if abs(mantissa - 1) < 1e-6 else f"{mantissa:.2g}{{\\times}}10^{{{exponent}}}"
    return f"${text}$"


def _grid_values(rows, method, alphas, betas):
    """mean metric over the non-diverged seeds, (diverged, runs), all-seeds-converged, per (α₀, β₀)."""
    mean = np.full((len(alphas), len(betas)), np.nan)
    counts, converged = {}, np.zeros_like(mean, dtype=bool)
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            cell = [r for r in rows if r["method"] == method and r["alpha0"] == a and r["beta0"] == b]
            values = [r["metric"] for r in cell if not r["diverged"] and r["metric"] is not None]
            if values:
                mean[i, j] = np.mean(values)
            counts[i, j] = (sum(r["diverged"] for r in cell), len(cell))
            converged[i, j] = bool(cell) and all(r["converged"] for r in cell)
    return mean, counts, converged


def plot_heatmaps(rows, path, task, metric_label, title):
    """Side-by-side heatmaps (one per method) of the final metric over the (α₀, β₀) grid."""
    rows = [r for r in rows if r["sweep"] == "grid"]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    alphas = sorted({r["alpha0"] for r in rows})
    betas = sorted({r["beta0"] for r in rows})
    grids = {m: _grid_values(rows, m, alphas, betas) for m in methods}
    if task != "sinusoid":              # accuracy in percent, on the cells and on the colour bar
        grids = {m: (100.0 * mean, counts, converged) for m, (mean, counts, converged) in grids.items()}
    finite = np.concatenate([g[0][np.isfinite(g[0])] for g in grids.values()] + [np.array([])])
    if task == "sinusoid":
        cmap = "RdYlGn_r"
        low, high = (finite.min(), finite.max()) if finite.size else (1e-2, 1.0)
        norm = LogNorm(low, high if high > low else low * 10)
        fmt = lambda v: f"{v:.3g}"
    else:
        cmap = "RdYlGn"
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 100.0)
        norm = Normalize(low, high if high > low else low + 1.0)
        fmt = lambda v: f"{v:.1f}"
    fig = Figure(figsize=(0.9 + 4.3 * len(methods) + 0.9 * max(0, len(betas) - 3) * len(methods), 4.6),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(methods), sharey=True))
    image = None
    for ax, method in zip(axes, methods):
        mean, counts, converged = grids[method]
        image = ax.imshow(np.ma.masked_invalid(mean), cmap=cmap, norm=norm, origin="lower", aspect="auto")
        ax.set_facecolor("#d9d9d9")
        for i in range(len(alphas)):
            for j in range(len(betas)):
                diverged, runs = counts[i, j]
                if np.isfinite(mean[i, j]):
                    text = fmt(mean[i, j]) + (f"\n×{diverged}/{runs}" if diverged else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize=9,
                            fontweight="bold" if converged[i, j] else "normal")
                else:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                                           edgecolor="#808080", linewidth=0))
                    ax.text(j, i, "×" if diverged else "n/a", ha="center", va="center", fontsize=16,
                            color="black")
                if converged[i, j]:
                    ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False,
                                           edgecolor="black", linewidth=1.8))
        ax.set_xticks(range(len(betas)), [_tick(b) for b in betas])
        ax.set_yticks(range(len(alphas)), [_tick(a) for a in alphas])
        ax.set_xlabel("initial meta rate β₀ (log-spaced)")
        ax.set_title(METHOD_LABELS[method])
    axes[0].set_ylabel("initial inner rate α₀ (log-spaced)")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label=metric_label, shrink=0.9)
    fig.suptitle(f"{title}\n{metric_label}, mean over seeds\nboxed, bold: every seed converged; "
                 f"×: diverged (×k/n: k of n seeds); n/a: test-time adaptation not finite", fontsize=9)
    fig.savefig(path, dpi=100)


def _trajectory(out, row):
    records = read_metrics(Path(out) / CELLS_DIR / _cell_name(row))
    return [r["iteration"] for r in records], [r["alpha"] for r in records], [r["beta"] for r in records]


def _cell_name(row):
    return Cell(row["method"], row["alpha0"], row["beta0"], row["seed"], row["sweep"],
                row["gamma_alpha"] if row["sweep"] == "gamma_alpha" else None,
                row["gamma_beta"] if row["sweep"] == "gamma_beta" else None).name


def trajectory_lines(rows):
    """(α-panel rows, β-panel rows, how they were chosen) for the trajectory figure: in grid mode,
    the Alpha MAML runs (first seed) from the corners and the centre of the grid; in the 1-D mode,
    the γ_α runs in the α panel and the γ_β runs in the β panel (first seed, every starting point)."""
    seed = min(r["seed"] for r in rows)
    grid = [r for r in rows if r["sweep"] == "grid" and r["method"] == "alpha-maml" and r["seed"] == seed]
    if grid:
        alphas, betas = sorted({r["alpha0"] for r in grid}), sorted({r["beta0"] for r in grid})
        picks = [(alphas[i], betas[j]) for i in (0, len(alphas) // 2, -1) for j in (0, len(betas) // 2, -1)
                 if (i == len(alphas) // 2) == (j == len(betas) // 2)]
        chosen = [r for p in dict.fromkeys(picks) for r in grid if (r["alpha0"], r["beta0"]) == p]
        return chosen, chosen, "Alpha MAML from the corners and the centre of the grid"
    pick = lambda kind: [r for r in rows if r["sweep"] == kind and r["seed"] == seed]
    return pick("gamma_alpha"), pick("gamma_beta"), f"Alpha MAML, seed {seed}, one line style per starting point"


def plot_trajectories(rows, out, path, title):
    """α(t) and β(t) of a few Alpha MAML cells (their metrics.jsonl)."""
    alpha_rows, beta_rows, chosen = trajectory_lines(rows)
    if not alpha_rows and not beta_rows:
        return False
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax_alpha, ax_beta = fig.subplots(1, 2)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
              "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
    styles = ["-", "--", ":", "-."]
    for ax, panel_rows, key in ((ax_alpha, alpha_rows, "alpha"), (ax_beta, beta_rows, "beta")):
        starts = list(dict.fromkeys((r["alpha0"], r["beta0"]) for r in panel_rows))
        gammas = sorted({r["gamma_" + key] for r in panel_rows if r["sweep"] != "grid"})
        for n, row in enumerate(panel_rows):
            its, alphas, betas = _trajectory(out, row)
            values = alphas if key == "alpha" else betas
            if not values:
                continue
            label = f"α₀ {row['alpha0']:g}, β₀ {row['beta0']:g}"
            color, style = colors[n % len(colors)], "-"
            if row["sweep"] != "grid":
                gamma = row["gamma_" + key]
                label = f"γ_{'α' if key == 'alpha' else 'β'} = {gamma:g}; " + label
                color = colors[gammas.index(gamma) % len(colors)]
                style = styles[starts.index((row["alpha0"], row["beta0"])) % len(styles)]
            if row["diverged"]:
                label += f" (diverged at {row['diverged_at']})"
            ax.plot(its, values, color=color, linestyle=style, linewidth=1.4, label=label)
            ax.axhline(row[key + "0"], color="gray", linestyle=":", linewidth=0.8)
            if row["diverged"] and its:
                ax.plot(its[-1], values[-1], "x", color=color, markersize=9, markeredgewidth=2)
        ax.set_yscale("log")
        ax.set_xlabel("meta-iteration")
        ax.set_title(f"{'inner rate α' if key == 'alpha' else 'meta rate β'} (log scale; dotted: the start)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(f"{title}\n{chosen}", fontsize=9)
    fig.savefig(path, dpi=100)
    return True


def plot_hyper(rows, path, metric_label, title):
    """1-D mode: final metric (top) and final α or β (bottom) against γ_α and γ_β, one line per
    starting point; MAML from the same start as a dashed line."""
    kinds = [k for k in ("gamma_alpha", "gamma_beta") if any(r["sweep"] == k for r in rows)]
    if not kinds:
        return False
    fig = Figure(figsize=(5.2 * len(kinds) + 0.6, 7.2), layout="constrained")
    axes = np.array(fig.subplots(2, len(kinds), squeeze=False))
    starts = sorted({(r["alpha0"], r["beta0"]) for r in rows if r["sweep"] in kinds})
    colors = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    for col, kind in enumerate(kinds):
        ax_metric, ax_rate = axes[0, col], axes[1, col]
        key = "gamma_alpha" if kind == "gamma_alpha" else "gamma_beta"
        rate = "alpha" if kind == "gamma_alpha" else "beta"
        for n, start in enumerate(starts):
            color = colors[n % len(colors)]
            group = [r for r in rows if r["sweep"] == kind and (r["alpha0"], r["beta0"]) == start]
            gammas = sorted({r[key] for r in group})
            means, finals = [], []
            for g in gammas:
                runs = [r for r in group if r[key] == g]
                ok = [r for r in runs if not r["diverged"] and r["metric"] is not None]
                means.append(np.mean([r["metric"] for r in ok]) if ok else np.nan)
                finals.append(np.mean([r["final_" + rate] for r in runs if r["final_" + rate] is not None]
                                      or [np.nan]))
                ax_metric.plot([g] * len(ok), [r["metric"] for r in ok], ".", color=color, alpha=0.5)
                ax_rate.plot([g] * len(runs), [r["final_" + rate] for r in runs], ".", color=color, alpha=0.5)
                if len(ok) < len(runs):
                    ax_metric.annotate(f"×{len(runs) - len(ok)}", (g, 0.97), xycoords=("data", "axes fraction"),
                                       ha="center", va="top", color=color, fontsize=9, fontweight="bold")
            label = f"α₀ {start[0]:g}, β₀ {start[1]:g}"
            ax_metric.plot(gammas, means, "o-", color=color, label=label)
            ax_rate.plot(gammas, finals, "o-", color=color, label=label)
            ax_rate.axhline(start[0] if rate == "alpha" else start[1], color=color, linestyle=":", linewidth=1)
            reference = [r["metric"] for r in rows if r["method"] == "maml" and (r["alpha0"], r["beta0"]) == start
                         and not r["diverged"] and r["metric"] is not None]
            if reference:
                ax_metric.axhline(np.mean(reference), color=color, linestyle="--", linewidth=1,
                                  label="MAML from the same start")
        symbol = "γ_α" if kind == "gamma_alpha" else "γ_β"
        for ax in (ax_metric, ax_rate):
            ax.set_xscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xlabel(f"hypergradient rate {symbol} (log scale)")
        ax_rate.set_yscale("log")
        if "MSE" in metric_label:
            ax_metric.set_yscale("log")
        ax_metric.set_ylabel(metric_label)
        ax_metric.set_title(f"sensitivity to {symbol} (×n: diverged seeds)")
        ax_rate.set_ylabel(f"final {'α' if rate == 'alpha' else 'β'} (dotted: the start)")
        ax_metric.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    return True


# ---- command line -------------------------------------------------------------------------------

def _float_list(text, flag):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < v < math.inf for v in values):
        raise SweepError(f"{flag} must be a comma-separated list of positive numbers, got {text!r}")
    return list(dict.fromkeys(values))


def _starts(text):
    try:
        pairs = [tuple(float(x) for x in item.split(":")) for item in text.split(",") if item.strip()]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or not all(0 < x < math.inf for x in p) for p in pairs):
        raise SweepError(f"--starts must be a comma-separated list of ALPHA:BETA pairs, got {text!r}")
    return list(dict.fromkeys(pairs))


def add_arguments(parser):
    add = parser.add_argument
    add("--task", choices=TASKS, default="sinusoid", help="default sinusoid")
    add("--alphas", help="comma-separated initial inner rates α₀ (default: the task's α: "
                         f"{TASK_DEFAULTS['sinusoid']['alpha']} sinusoid, {TASK_DEFAULTS['omniglot']['alpha']} omniglot)")
    add("--betas", help=f"comma-separated initial meta rates β₀ (default {TrainConfig.beta})")
    add("--methods", default="maml,alpha-maml", help="comma-separated, from maml, alpha-maml (default both)")
    add("--iterations", type=int, required=True, metavar="N", help="meta-iterations per cell")
    add("--seeds", default="0", help="comma-separated seeds (default 0)")
    add("--workers", type=int, metavar="W", help=f"parallel worker processes (default: all cores, {os.cpu_count()})")
    add("--out", metavar="DIR", help="output folder (default sweeps/<task>-grid or sweeps/<task>-hyper); "
                                     "re-running into the same folder resumes")
    add("--eval-tasks", type=int, default=600, metavar="n", help="fresh test tasks per cell (default 600)")
    add("--alpha-hyper-lrs", metavar="LIST", help="1-D mode: comma-separated γ_α values (alpha-maml)")
    add("--beta-hyper-lrs", metavar="LIST", help="1-D mode: comma-separated γ_β values (alpha-maml)")
    add("--starts", metavar="A:B,...", help="1-D mode: starting points α₀:β₀ (default: --alphas × --betas)")
    add("--mse-ratio", type=float, default=1.5,
        help="sinusoid: converged if MSE ≤ this × the best cell's (default 1.5)")
    add("--accuracy-gap", type=float, default=0.05,
        help="omniglot: converged if accuracy ≥ the best cell's − this (default 0.05, i.e. 5 points)")
    add("--no-cell-figures", action="store_true", help="skip each cell's own training figures")
    add("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("training options passed to every cell (defaults: train's)")
    for name, kind, help_text in PASS_THROUGH:
        flag = "--" + name.replace("_", "-")
        if isinstance(kind, tuple):
            group.add_argument(flag, choices=kind, help=help_text)
        else:
            group.add_argument(flag, type=kind, help=help_text)
    group.add_argument("--first-order", action="store_true", default=None, help="first-order MAML")


def settings_from_args(args):
    """(cells, settings, out) from the parsed options; raises SweepError / ConfigError."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods):
        raise SweepError(f"--methods must be a comma-separated list from {METHODS}, got {args.methods!r}")
    try:
        seeds = list(dict.fromkeys(int(s) for s in args.seeds.split(",") if s.strip()))
    except ValueError:
        seeds = []
    if not seeds:
        raise SweepError(f"--seeds must be a comma-separated list of integers, got {args.seeds!r}")
    if args.iterations < 1 or args.eval_tasks < 2:
        raise SweepError("--iterations must be ≥ 1 and --eval-tasks ≥ 2 (for a confidence interval)")
    if args.workers is not None and args.workers < 1:
        raise SweepError("--workers must be ≥ 1")
    alphas = _float_list(args.alphas, "--alphas") if args.alphas else [TASK_DEFAULTS[args.task]["alpha"]]
    betas = _float_list(args.betas, "--betas") if args.betas else [TrainConfig.beta]
    gamma_alphas = _float_list(args.alpha_hyper_lrs, "--alpha-hyper-lrs") if args.alpha_hyper_lrs else None
    gamma_betas = _float_list(args.beta_hyper_lrs, "--beta-hyper-lrs") if args.beta_hyper_lrs else None
    one_d = bool(gamma_alphas or gamma_betas)
    if args.starts and not one_d:
        raise SweepError("--starts is for the 1-D mode (--alpha-hyper-lrs / --beta-hyper-lrs); "
                         "the grid is --alphas × --betas")
    if one_d and "alpha-maml" not in methods:
        raise SweepError("--alpha-hyper-lrs / --beta-hyper-lrs sweep Alpha MAML: --methods must include alpha-maml")
    if gamma_alphas and args.alpha_hyper_lr is not None or gamma_betas and args.beta_hyper_lr is not None:
        raise SweepError("give either --alpha-hyper-lrs or --alpha-hyper-lr (and likewise for β), not both")
    train_settings = {name: getattr(args, name) for name, _, _ in PASS_THROUGH if getattr(args, name) is not None}
    if args.first_order:
        train_settings["first_order"] = True
    settings = {"task": args.task, "iterations": args.iterations, "eval_tasks": args.eval_tasks,
                "train": train_settings}
    cells = make_cells(methods, alphas, betas, seeds, gamma_alphas, gamma_betas,
                       _starts(args.starts) if args.starts else None)
    for cell in cells:        # every option error now, before any worker starts
        resolve_config(train_options(cell, settings))
    out = Path(args.out) if args.out else Path("sweeps") / f"{args.task}-{'hyper' if one_d else 'grid'}"
    return cells, settings, out


def report(results, settings, out, mse_ratio, accuracy_gap, wall_s=None, skipped=None):
    """Write results.csv, summary.txt and the figures from the finished cells; returns the summary lines."""
    out = Path(out)
    task = settings["task"]
    config = resolve_config(train_options(Cell(**results[0]["cell"]), settings))
    steps, metric_steps = eval_steps(config)
    rule = convergence_rule(task, mse_ratio, accuracy_gap, metric_steps)
    rows, columns, threshold = table(results, task, mse_ratio, accuracy_gap)
    metric_label = (f"query MSE after {metric_steps} step{'s' if metric_steps != 1 else ''}" if task == "sinusoid"
                    else f"query accuracy (%) after {metric_steps} steps")
    evaluation = next((r["evaluation"] for r in results if r.get("evaluation") and r["evaluation"]["metric"]), None)
    header = [f"numpy_amaml sweep: {task}, {settings['iterations']} iterations per cell, "
              f"training options {json.dumps(settings['train'])}",
              f"metric = {metric_label}"
              + (f" [{evaluation['metric']}], mean and 95% CI over {evaluation['tasks']} fresh tasks "
                 f"per cell" if evaluation else ""),
              f"{'mse' if task == 'sinusoid' else 'acc'}_kN = the same after N inner steps (k0: pre-update)",
              rule + (f"; threshold here: {threshold:.6g}" if threshold is not None else ""),
              "diverged = training stopped on a non-finite loss or rate (TrainingDiverged) at iteration "
              "diverged_at; final_alpha/final_beta are then the last logged values (the start values if none)",
              "gamma_alpha/gamma_beta = the hypergradient rates γ_α, γ_β (0 for MAML)",
              "eval_failed_steps = inner-step counts whose test-time adaptation was not finite (their "
              "columns are empty); if it is the metric's count, the cell has no metric and is not converged"]
    write_csv(out / CSV_FILE, rows, columns, header)
    lines = summarize(rows, settings, threshold, rule)
    total = sum(r["wall_s"] for r in results)
    lines.append(f"  compute: {total:.0f} s summed over the {len(results)} cells"
                 + (f"; this invocation's wall time {wall_s:.0f} s" if wall_s is not None else "")
                 + (f" ({len(results) - skipped} cells run, {skipped} skipped)" if skipped is not None else ""))
    _atomic_write(out / SUMMARY_FILE, "\n".join(lines) + "\n")
    seeds = sorted({r["cell"]["seed"] for r in results})
    title = (f"{task}, {settings['iterations']} iterations, seeds {','.join(map(str, seeds))}"
             + (f", {', '.join(f'{k} {v}' for k, v in settings['train'].items() if k != 'data_dir')}"
                if settings["train"] else ""))
    figures = []
    if any(r["sweep"] == "grid" for r in rows):
        plot_heatmaps(rows, out / HEATMAP_FIGURE, task, metric_label, title)
        figures.append(HEATMAP_FIGURE)
    if plot_trajectories(rows, out, out / TRAJECTORY_FIGURE, title):
        figures.append(TRAJECTORY_FIGURE)
    if plot_hyper(rows, out / HYPER_FIGURE, metric_label, title):
        figures.append(HYPER_FIGURE)
    return lines, figures


def run(args):
    """Entry point of the ``sweep`` command; returns the exit code (1 if a cell failed)."""
    started, out = time.perf_counter(), None
    try:
        cells, settings, out = settings_from_args(args)
        check_settings(out, settings)
        results, skipped, errors = run_cells(cells, settings, out, args.workers, not args.no_progress,
                                             not args.no_cell_figures)
    except (SweepError, ConfigError, OmniglotError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if out is not None:
            print(f"\ninterrupted: the finished cells are kept in {out / CELLS_DIR}; run the same command "
                  f"again to resume", file=sys.stderr)
        return 130
    for name, error in errors.items():
        print(f"error: cell {name} failed (it will be retried on the next run):\n{error}", file=sys.stderr)
    finished = [r for r in results if r is not None]
    if not finished:
        return 1
    lines, figures = report(finished, settings, out, args.mse_ratio, args.accuracy_gap,
                            time.perf_counter() - started, skipped)
    print("\n".join(lines))
    print(f"written: {out / CSV_FILE}, {out / SUMMARY_FILE}, " + ", ".join(str(out / f) for f in figures))
    return 1 if errors else 0
