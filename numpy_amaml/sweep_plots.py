"""The figures of a sweep (numpy_amaml.sweep, numpy_amaml.sweep_results).

    plot_heatmaps       grid cells: final metric over (α₀, β₀), one panel per method; boxed and
                        bold where every seed converged, × where runs diverged
    plot_trajectories   α(t) and β(t) of a few Alpha MAML cells, read from their metrics.jsonl
                        (and α(t) of Meta-SGD / LSLR cells: the mean over tensors of their learned α)
    plot_hyper          1-D cells: final metric and final α or β against γ_α and γ_β

``rows`` are the dicts of ``sweep_results.table``. Like numpy_amaml.plots, these use
matplotlib's ``Figure`` directly (no pyplot, no display needed).
"""
import math
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from numpy_amaml.config import METHOD_LABELS, METHODS
from numpy_amaml.learned_rates import LEARNED_RATE_METHODS
from numpy_amaml.run_folder import read_metrics
from numpy_amaml.sweep import CELLS_DIR, Cell


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
    the Alpha MAML runs (first seed) from the corners and the centre of the grid, and in the α panel
    also the Meta-SGD and LSLR runs from there (the mean over tensors of their learned α; their β
    is fixed); in the 1-D mode, the γ_α runs in the α panel and the γ_β runs in the β panel (first
    seed, every starting point)."""
    seed = min(r["seed"] for r in rows)
    moving = ("alpha-maml",) + LEARNED_RATE_METHODS          # the methods whose α moves
    grid = [r for r in rows if r["sweep"] == "grid" and r["method"] in moving and r["seed"] == seed]
    if grid:
        alphas, betas = sorted({r["alpha0"] for r in grid}), sorted({r["beta0"] for r in grid})
        picks = [(alphas[i], betas[j]) for i in (0, len(alphas) // 2, -1) for j in (0, len(betas) // 2, -1)
                 if (i == len(alphas) // 2) == (j == len(betas) // 2)]
        chosen = [r for m in moving for p in dict.fromkeys(picks) for r in grid
                  if r["method"] == m and (r["alpha0"], r["beta0"]) == p]
        shown = ", ".join(METHOD_LABELS[m] for m in moving if any(r["method"] == m for r in chosen))
        return (chosen, [r for r in chosen if r["method"] == "alpha-maml"],
                f"{shown} from the corners and the centre of the grid (a learned α: its mean over tensors)")
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
        positive = True                                      # a learned α's mean may cross zero
        for n, row in enumerate(panel_rows):
            its, alphas, betas = _trajectory(out, row)
            values = alphas if key == "alpha" else betas
            if not values:
                continue
            positive = positive and min(values) > 0
            label = f"α₀ {row['alpha0']:g}, β₀ {row['beta0']:g}"
            color, style = colors[n % len(colors)], "-"
            if row["method"] in LEARNED_RATE_METHODS:       # beside Alpha MAML's line from the same start
                label = f"{METHOD_LABELS[row['method']]}, mean α; " + label
                color = colors[starts.index((row["alpha0"], row["beta0"])) % len(colors)]
                style = "--" if row["method"] == "meta-sgd" else "-."
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
        ax.set_xlabel("meta-iteration")
        if not panel_rows:                 # a grid of learned-α methods only: no β moves
            ax.set_title("meta rate β")
            ax.text(0.5, 0.5, "β is fixed at β₀ in these runs\n(Meta-SGD and LSLR do not move it)",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([]), ax.set_yticks([])
            continue
        ax.set_yscale("log" if positive else "symlog", **({} if positive else {"linthresh": 1e-3}))
        ax.set_title(f"{'inner rate α' if key == 'alpha' else 'meta rate β'} "
                     f"({'log' if positive else 'symmetric log'} scale; dotted: the start)")
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
