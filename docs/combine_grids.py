"""Several sweeps' results.csv as one grid, held to one convergence threshold.

A sweep's own `converged` column is relative to the best cell *of that sweep*, so two sweeps
(another seed, another method, run at another time) cannot be compared by their own columns.
This script reads the rows of several results.csv files, drops repeated cells (the same method,
α₀, β₀, seed and γ's: the first file wins), recomputes `converged` with one threshold over all
of them (numpy_amaml.sweep_results.converged_flags: the sweep's own rule, or --threshold), and prints

* the threshold and, per method, the converged share with its Wilson 95% interval,
* per method, the cells better / worse than MAML's (or --against's) at the same (α₀, β₀, seed)
  beyond the two 95% CIs,
* the per-cell table (metric per seed, one column per method), converged marked with `*`,

and, with --out, writes the combined rows (with the recomputed column) as one CSV; with --figure,
draws the sweeps' heatmaps of the combined rows.

    python docs/combine_grids.py --task omniglot docs/sensitivity_omniglot_normalized_grid.csv \\
        sweeps/omniglot-normalized-seed1/results.csv sweeps/omniglot-meta-sgd/results.csv
"""
import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))    # run from anywhere in the repository

from numpy_amaml.sweep_plots import plot_heatmaps                 # noqa: E402
from numpy_amaml.sweep_results import converged_flags, read_csv     # noqa: E402

KEY = ("method", "alpha0", "beta0", "seed", "gamma_alpha", "gamma_beta")


def number(text):
    return float(text) if text not in ("", None) else None


def load(paths):
    """The rows of every CSV in ``paths``, the first of repeated cells only, in file order."""
    rows, seen = [], set()
    for path in paths:
        for row in read_csv(path):
            key = tuple(number(row[k]) if k != "method" else row[k] for k in KEY)
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def wilson(k, n, z=1.96):
    """Wilson score 95% interval of a share k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="results.csv files of sweeps of one task")
    parser.add_argument("--task", choices=("sinusoid", "omniglot"), required=True)
    parser.add_argument("--mse-ratio", type=float, default=1.5)
    parser.add_argument("--accuracy-gap", type=float, default=0.05)
    parser.add_argument("--threshold", type=float,
                        help="use this threshold (MSE at most / accuracy at least) instead of the rule's")
    parser.add_argument("--against", default="maml", help="the method each cell is compared with (default maml)")
    parser.add_argument("--out", help="write the combined rows, converged recomputed, to this CSV")
    parser.add_argument("--figure", help="draw the sweep's heatmaps (numpy_amaml.sweep_plots) of the combined "
                                         "rows, converged recomputed, to this PNG")
    args = parser.parse_args(argv)

    rows = load(args.csv)
    parsed = [{"diverged": row["diverged"] == "True", "metric": number(row["metric"])} for row in rows]
    flags, threshold = converged_flags(parsed, args.task, args.mse_ratio, args.accuracy_gap)
    if args.threshold is not None:
        threshold = args.threshold
        flags = [not r["diverged"] and r["metric"] is not None and math.isfinite(r["metric"])
                 and (r["metric"] <= threshold if args.task == "sinusoid" else r["metric"] >= threshold)
                 for r in parsed]
    for row, flag in zip(rows, flags):
        row["converged"] = flag
    scale = 100 if args.task == "omniglot" else 1
    print(f"{len(rows)} cells from {len(args.csv)} files; one threshold: "
          f"{threshold * scale:.4g}{' %' if scale == 100 else ''}")

    methods = list(dict.fromkeys(row["method"] for row in rows))
    by_cell = {(row["method"], row["alpha0"], row["beta0"], row["seed"]): row for row in rows}
    print(f"\n| method | converged | share (Wilson 95%) | diverged | better than {args.against} beyond the CIs | worse |")
    print("|---|---|---|---|---|---|")
    for method in methods:
        mine = [row for row in rows if row["method"] == method]
        k, n = sum(row["converged"] for row in mine), len(mine)
        low, high = wilson(k, n)
        better = worse = compared = 0
        for row in mine:
            maml = by_cell.get((args.against, row["alpha0"], row["beta0"], row["seed"]))
            values = (row["metric"], row["metric_ci95"], maml and maml["metric"], maml and maml["metric_ci95"])
            if method == args.against or any(number(v) is None for v in values):
                continue
            compared += 1
            gap = number(row["metric"]) - number(maml["metric"])
            margin = number(row["metric_ci95"]) + number(maml["metric_ci95"])
            sign = 1 if args.task == "omniglot" else -1           # accuracy: higher is better
            better += sign * gap > margin
            worse += sign * gap < -margin
        comparison = (f"{better}/{compared}", f"{worse}/{compared}") if compared else ("", "")
        print(f"| {method} | {k}/{n} | {k / n:.0%} ({low:.0%}–{high:.0%}) | "
              f"{sum(row['diverged'] == 'True' for row in mine)} | {comparison[0]} | {comparison[1]} |")

    seeds = sorted({row["seed"] for row in rows}, key=int)
    cells = defaultdict(dict)
    for row in rows:
        metric = number(row["metric"])
        text = "div." if row["diverged"] == "True" else ("–" if metric is None else f"{metric * scale:.1f}")
        cells[(number(row["alpha0"]), number(row["beta0"]))][(row["method"], row["seed"])] = \
            text + ("*" if row["converged"] else "")
    print(f"\n| α₀, β₀ | " + " | ".join(f"{m} (seeds {', '.join(seeds)})" for m in methods) + " |")
    print("|---|" + "---|" * len(methods))
    for (alpha0, beta0), values in sorted(cells.items()):
        print(f"| {alpha0:g}, {beta0:g} | "
              + " | ".join(" / ".join(values.get((m, s), "") for s in seeds) for m in methods) + " |")

    if args.figure:
        plot_rows = [{**row, "alpha0": number(row["alpha0"]), "beta0": number(row["beta0"]),
                      "diverged": row["diverged"] == "True", "metric": number(row["metric"])} for row in rows]
        label = "query accuracy (%) after the test steps" if args.task == "omniglot" else "query MSE after the training steps"
        plot_heatmaps(plot_rows, args.figure, args.task, label,
                      f"{args.task}: {len(args.csv)} sweeps combined, seeds {', '.join(seeds)}, one threshold")
        print(f"\ndrew {args.figure}")

    if args.out:
        columns = list(rows[0])
        with open(args.out, "w", newline="") as f:
            f.write(f"# combined by docs/combine_grids.py from {', '.join(args.csv)}; converged recomputed "
                    f"with one threshold: {threshold:.6g}\n")
            writer = csv.DictWriter(f, columns, lineterminator="\n", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
