"""Training figures, written as PNG files into a run folder.

    plot_losses(records, path)        pre- vs post-update query loss (and the support loss)
    plot_rates(records, path)         α and β over the iterations (log scale once they span 10×); a
                                      learned α (Meta-SGD, LSLR) per tensor: mean, min–max band
    plot_accuracy(records, path)      Omniglot: train accuracy pre/post update, validation accuracy
    plot_sinusoid_fits(...)           MAML's Figure 2: a few test tasks, the true curve, the K
                                      support points, the prediction before and after 1 and 10 steps

``records`` are the dicts of a run's metrics.jsonl (see numpy_amaml.training). Every
function draws one figure and saves it. They use matplotlib's ``Figure`` directly, not
pyplot: no display is needed, and a notebook's own plotting backend is left alone.
"""
import math

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from numpy_amaml.backend import asarray, to_numpy
from numpy_amaml.learned_rates import learned
from numpy_amaml.maml import adaptation_path
from numpy_amaml.sinusoid import X_RANGE, SinusoidTasks, sine
from numpy_amaml.validation import NonFiniteError


def smooth(values, window):
    """Moving average over ``window`` points (shorter at the start), same length as ``values``."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) == 0:
        return values
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(0, end - window)
    return (cumulative[end] - cumulative[start]) / (end - start)


def _series(records, key):
    """(iterations, values) of the records that have ``key``."""
    rows = [(r["iteration"], r[key]) for r in records if r.get(key) is not None]
    return [i for i, _ in rows], [v for _, v in rows]


def _window(n):
    """A smoothing window of about 2 % of the points."""
    return max(1, n // 50)


def _save(fig, path):
    fig.savefig(path, dpi=110)


def plot_losses(records, path, title=""):
    """Query loss at θ (pre-update) and at φ_K (post-update), plus the support loss at θ."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    curves = [("query_loss_pre", "query loss, pre-update (at θ)", "tab:red"),
              ("support_loss_pre", "support loss, pre-update (at θ)", "tab:orange"),
              ("query_loss_post", "query loss, post-update (at φ_K)", "tab:blue")]
    for key, label, color in curves:
        its, values = _series(records, key)
        if not values:
            continue
        ax.plot(its, values, color=color, alpha=0.2, linewidth=0.8)
        ax.plot(its, smooth(values, _window(len(values))), color=color, label=label, linewidth=1.6)
    ax.set_yscale("log")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("loss (log scale)")
    ax.set_title(title or "Meta-training loss (faint: raw, bold: moving average)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, path)


def _rate_scale(ax, values, name):
    """Log scale when the rate has spanned more than a factor of 10 (and never crossed zero: a
    learned α may), else a plain linear axis."""
    if values and min(values) > 0 and max(values) > 10 * min(values):
        ax.set_yscale("log")
        name += " (log scale)"
    else:
        ax.ticklabel_format(axis="y", useOffset=False, style="sci", scilimits=(-3, 4))
    ax.set_title(name)


def plot_rates(records, path, title=""):
    """α (one line per tensor when α is per tensor) and β over the iterations; log scale
    when a rate has moved by more than a factor of 10. A learned α (records with alpha_mean,
    alpha_min, alpha_max: Meta-SGD, LSLR) is drawn per tensor, its mean as a line and its
    range (over the tensor's entries, or its steps) as a band. Where the run logged the curvature
    (``lambda_max``), the α panel also shows 2/λ_max, the largest stable inner rate of a
    quadratic (docs/method.md §11); iterations where a rate was clamped to its floor are
    marked ×."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_alpha, ax_beta = fig.subplots(1, 2)
    its, alphas = _series(records, "alpha")
    alpha_title = "inner rate α"
    learned_its, means = _series(records, "alpha_mean")
    if means:
        lows, highs = _series(records, "alpha_min")[1], _series(records, "alpha_max")[1]
        colors = matplotlib.colormaps["tab20"]
        for n, name in enumerate(means[0]):
            color = colors(n % 20)
            ax_alpha.plot(learned_its, [m[name] for m in means], label=name, color=color, linewidth=1.2)
            ax_alpha.fill_between(learned_its, [low[name] for low in lows], [high[name] for high in highs],
                                  color=color, alpha=0.15, linewidth=0)
        alpha_values = [v for row in lows + highs for v in row.values()]
        alpha_title = "learned α per tensor: mean, band min–max"
    elif alphas and isinstance(alphas[0], dict):
        for name in alphas[0]:
            ax_alpha.plot(its, [a[name] for a in alphas], label=name, linewidth=1.4)
        alpha_values = [v for a in alphas for v in a.values()]
    else:
        ax_alpha.plot(its, alphas, color="tab:green", linewidth=1.6, label="α")
        alpha_values = list(alphas)
    curvature_its, lambdas = _series(records, "lambda_max")
    bounds = [(i, 2.0 / lam) for i, lam in zip(curvature_its, lambdas) if lam > 0]
    if bounds:
        ax_alpha.plot(*zip(*bounds), "--", color="black", linewidth=1.2, label="2/λ_max (stability bound)")
        alpha_values += [b for _, b in bounds]
    its, betas = _series(records, "beta")
    ax_beta.plot(its, betas, color="tab:purple", linewidth=1.6, label="β")
    for ax, key in ((ax_alpha, "alpha"), (ax_beta, "beta")):
        clamped = _clamp_points(records, key)
        if clamped:
            ax.plot(*zip(*clamped), "x", color="tab:red", markersize=8, label="clamped to the floor")
    for ax, values, name in ((ax_alpha, alpha_values, alpha_title), (ax_beta, betas, "meta rate β")):
        _rate_scale(ax, values, name)
        ax.set_xlabel("meta-iteration")
        ax.grid(True, which="both", alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize="small" if len(ax.get_lines()) <= 8 else "x-small",
                      ncol=1 if len(ax.get_lines()) <= 8 else 2)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def _clamp_points(records, key):
    """(iteration, rate) of the logged iterations whose clamp count of ``key`` went up."""
    points, before = [], 0
    for r in records:
        count = r.get(f"{key}_clamps", 0)
        if count > before and not isinstance(r[key], dict):
            points.append((r["iteration"], r[key]))
        before = count
    return points


def plot_accuracy(records, path, title=""):
    """Omniglot: query accuracy on the training tasks before and after adaptation, and on
    the validation tasks (after the test-time inner steps)."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    for key, label, color in (("train_accuracy_pre", "train, pre-update", "tab:red"),
                              ("train_accuracy_post", "train, post-update", "tab:blue")):
        its, values = _series(records, key)
        if values:
            ax.plot(its, smooth(values, _window(len(values))), color=color, label=label, linewidth=1.4)
    its, values = _series(records, "val_accuracy")
    if values:
        ax.plot(its, values, "o-", color="black", label="validation, post-update", markersize=3)
    ax.set_ylim(0, 1)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("query accuracy")
    ax.set_title(title or "Omniglot accuracy (train curves smoothed)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    _save(fig, path)


def plot_sinusoid_fits(model, theta, alpha, path, shots=10, steps=(1, 10), num_tasks=4, seed=0, title=""):
    """MAML's sinusoid figure: for ``num_tasks`` fresh tasks, the true curve, the K support
    points, and the model's prediction at θ (pre-update) and after each of ``steps``
    inner gradient steps on the support points, with the learned α (scalar or per tensor).

    An adaptation that overflows (α too large for that many steps) is left out of the
    figure; the return value then says so (a one-line note), else it is None."""
    tasks = SinusoidTasks(shots=shots, queries=1, seed=seed)
    batch, amplitude, phase = tasks.sample(num_tasks)
    grid = np.linspace(*X_RANGE, 200)
    x_grid = asarray(np.broadcast_to(grid[None, :, None], (num_tasks, grid.size, 1)))
    curves = [("pre-update", 0, "tab:red", ":")]
    curves += [(f"{k} grad step{'s' if k > 1 else ''}", k, color, "--")
               for k, color in zip(steps, ("tab:green", "tab:blue", "tab:purple", "tab:olive"))]
    predictions, note, phis = [], None, []
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            for phi in adaptation_path(model, theta, batch.x_support, batch.y_support, alpha, max(steps)):
                phis.append(phi)
        except NonFiniteError:
            pass                      # the steps from here on are not drawn (below)
        for label, k, color, style in curves:
            pred = to_numpy(model.predict(phis[k], x_grid))[..., 0] if k < len(phis) else None
            if pred is None or not np.isfinite(pred).all():
                note = (f"{path.name if hasattr(path, 'name') else path}: the fit after {k} inner steps is "
                        f"not finite (α too large for {k} steps) and is not drawn")
                break
            predictions.append((label, pred, color, style))

    cols = min(num_tasks, 2)
    rows = math.ceil(num_tasks / cols)
    fig = Figure(figsize=(5.5 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    x_support, y_support = to_numpy(batch.x_support), to_numpy(batch.y_support)
    for i, ax in enumerate(axes.flat):
        if i >= num_tasks:
            ax.axis("off")
            continue
        truth = sine(grid[None, :, None], amplitude[i:i + 1], phase[i:i + 1])[0, :, 0]
        ax.plot(grid, truth, color="black", linewidth=1.8, label="ground truth")
        for label, pred, color, style in predictions:
            ax.plot(grid, pred[i], style, color=color, linewidth=1.6, label=label)
        ax.plot(x_support[i, :, 0], y_support[i, :, 0], "^", color="tab:purple", markersize=7,
                label=f"{shots} support points")
        ax.set_title(f"A = {amplitude[i]:.2f}, phase = {phase[i]:.2f}")
        ax.set_xlim(*X_RANGE)
        ax.grid(True, alpha=0.3)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncol=5)
    alpha_text = (f"α = {alpha:.3g}" if not isinstance(alpha, (dict, list, tuple)) else
                  "per-tensor and per-step α" if isinstance(alpha, (list, tuple)) else
                  "per-parameter α" if learned(alpha) else "per-tensor α")
    fig.suptitle(f"{title + ': ' if title else ''}adaptation to new tasks ({alpha_text})")
    _save(fig, path)
    return note
