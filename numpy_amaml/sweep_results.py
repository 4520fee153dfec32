"""A sweep's results: the convergence rule, the CSV table, the summary and the figures.

"Converged" (``converged_flags``), per cell, relative to the best cell of the same sweep:
    sinusoid  not diverged and final query MSE (after the training number of inner steps K,
              on fresh tasks) ≤ mse_ratio (default 1.5) × the lowest MSE of any cell;
    omniglot  not diverged and final query accuracy (after the test-time inner steps, meta-test
              characters) ≥ the highest accuracy of any cell − accuracy_gap (default 0.05).
The sinusoid metric is the one meta-training minimises (J after K steps); the MSE after 10
steps is reported too.

``report`` writes into the sweep's folder
    results.csv       one row per cell; its '#' header lines define the metric and "converged"
    summary.txt       the fraction of cells that converged, per method (also printed)
    heatmap.png, trajectories.png, hyper_lr.png   (numpy_amaml.sweep_plots)
"""
import csv
import io
import json
import math
from pathlib import Path

from numpy_amaml import sweep_plots
from numpy_amaml.config import METHOD_LABELS, resolve_config
from numpy_amaml.files import write_text
from numpy_amaml.sweep import Cell, eval_steps, rate_text, train_options

CSV_FILE, SUMMARY_FILE = "results.csv", "summary.txt"
CELL_COLUMNS = ("alpha0", "beta0", "gamma_alpha", "gamma_beta")   # written with every digit they need
HEATMAP_FIGURE, TRAJECTORY_FIGURE, HYPER_FIGURE = "heatmap.png", "trajectories.png", "hyper_lr.png"


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


def _csv_value(value, exact=False):
    """A CSV field: floats with 6 significant digits, or (``exact``: a cell's rates) as in its
    name (numpy_amaml.sweep.rate_text), so that distinct cells never print alike."""
    if value is None:
        return ""
    if isinstance(value, float):
        return rate_text(value) if exact else f"{value:.6g}"
    return str(value)


def write_csv(path, rows, columns, header_lines):
    lines = "".join(f"# {line}\n" for line in header_lines)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(c), c in CELL_COLUMNS) for c in columns])
    write_text(path, lines + buffer.getvalue())


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
            key = f"Alpha MAML, {'γ_α' if row['sweep'] == 'gamma_alpha' else 'γ_β'} = {rate_text(gamma)}"
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


def report(results, settings, out, mse_ratio, accuracy_gap, wall_s=None, skipped=None, draw_figures=True):
    """Write results.csv, summary.txt and (``draw_figures``) the figures from the finished cells;
    returns (the summary lines, the figure files written)."""
    out = Path(out)
    task = settings["task"]
    config = resolve_config(train_options(Cell(**results[0]["cell"]), settings))
    metric_steps = eval_steps(config)[1]
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
    write_text(out / SUMMARY_FILE, "\n".join(lines) + "\n")
    seeds = sorted({r["cell"]["seed"] for r in results})
    title = (f"{task}, {settings['iterations']} iterations, seeds {','.join(map(str, seeds))}"
             + (f", {', '.join(f'{k} {v}' for k, v in settings['train'].items() if k != 'data_dir')}"
                if settings["train"] else ""))
    figures = []
    if draw_figures and any(r["sweep"] == "grid" for r in rows):
        sweep_plots.plot_heatmaps(rows, out / HEATMAP_FIGURE, task, metric_label, title)
        figures.append(HEATMAP_FIGURE)
    if draw_figures and sweep_plots.plot_trajectories(rows, out, out / TRAJECTORY_FIGURE, title):
        figures.append(TRAJECTORY_FIGURE)
    if draw_figures and sweep_plots.plot_hyper(rows, out / HYPER_FIGURE, metric_label, title):
        figures.append(HYPER_FIGURE)
    return lines, figures
