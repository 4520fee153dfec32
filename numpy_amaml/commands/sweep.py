"""``python -m numpy_amaml sweep``: how sensitive are MAML and Alpha MAML to their initial rates?

Trains every (α₀, β₀, method, seed[, γ]) cell as an independent run on local worker processes
(``--workers``) or on a Dask cluster (``--dask-scheduler``), evaluates it on fresh tasks, and
writes results.csv, summary.txt and figures (numpy_amaml.sweep, numpy_amaml.sweep_results).

Two modes:
    grid     (default)  every α₀ in --alphas × every β₀ in --betas × --methods × --seeds;
    1-D      (--alpha-hyper-lrs and/or --beta-hyper-lrs)  Alpha MAML with γ_α (or γ_β) set to
                        each listed value, the other γ at its default, from each starting point
                        (--starts "A:B,...", or --alphas × --betas) and each seed; when --methods
                        includes maml, MAML from the same starting points is run as the reference.

Re-running the same command into the same --out resumes: finished cells are skipped.
Everything is checked before anything is written (the options, the Omniglot data and its
splits); --out must be new, empty or a sweep's folder, and one sweep at a time writes it (a
second gets one line naming the first's pid). Ctrl-C (or SIGTERM) stops dispatching, ends the
running cells, keeps the finished ones and exits 130 (143); a second one exits at once.
"""
import math
import os
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path

from numpy_amaml.config import CHOICES, METHODS, TASK_DEFAULTS, TASKS, ConfigError, TrainConfig, flag, resolve_config
from numpy_amaml.interrupts import Interrupted
from numpy_amaml.executors import DaskExecutor, ExecutorError, LocalExecutor
from numpy_amaml.folder_lock import FolderLocked
from numpy_amaml.omniglot import OmniglotError
from numpy_amaml.sweep import (CELLS_DIR, SETTINGS_FILE, SweepError, check_settings, check_task, make_cells,
                               open_sweep_folder, run_cells, train_options)
from numpy_amaml.sweep_results import CSV_FILE, SUMMARY_FILE, report

# Training options handed through to every cell (their defaults are train's).
PASS_THROUGH = {
    "optimizer": "meta-optimizer",
    "hyper_rule": "hypergradient rule of the alpha-maml cells",
    "inner_steps": "inner steps K in training",
    "meta_batch": "tasks per meta-iteration",
    "shots": "support examples per task (per class for omniglot)",
    "queries": "query examples per task (per class for omniglot)",
    "alpha_hyper_lr": "γ_α of the alpha-maml cells (grid mode; default train's)",
    "beta_hyper_lr": "γ_β of the alpha-maml cells (grid mode; default train's)",
    "dtype": "float dtype",
    "log_every": "metrics line (α, β, losses) every n iterations",
    "ways": "omniglot: classes per task",
    "test_inner_steps": "omniglot: inner steps at validation/test",
    "downsample": "omniglot: CNN downsampling",
    "channels": "omniglot: channels per conv block",
    "data_dir": "omniglot: folder with the two zips",
    "val_tasks": "omniglot: validation tasks (validated once, at the last iteration)",
}
FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}      # int, float or str


def _float_list(text, option):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < v < math.inf for v in values):
        raise SweepError(f"{option} must be a comma-separated list of positive numbers, got {text!r}")
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
    add("--methods", default="maml,alpha-maml",
        help=f"comma-separated, from {', '.join(METHODS)} (default maml,alpha-maml); a learned α "
             f"(meta-sgd, lslr) is summarised by its mean over tensors in final_alpha and trajectories.png")
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
    add("--no-figures", action="store_true", help="draw no figures at all (neither the cells' nor the sweep's)")
    add("--dask-scheduler", metavar="ADDRESS",
        help="run the cells on an existing Dask distributed cluster (e.g. tcp://host:8786) instead of "
             "local processes; its workers must see --out (a shared file system)")
    add("--no-progress", action="store_true", help="no progress bar")
    add("--report-only", action="store_true",
        help="run nothing: write results.csv, summary.txt and the figures from the cells of an existing "
             "sweep folder that have finished so far, also while the sweep runs (a partial grid; the "
             "convergence threshold is then relative to those cells)")
    group = parser.add_argument_group("training options passed to every cell (defaults: train's)")
    for name, help_text in PASS_THROUGH.items():
        if name in CHOICES:
            group.add_argument(flag(name), choices=CHOICES[name], help=help_text)
        else:
            group.add_argument(flag(name), type=FIELD_TYPES[name], help=help_text)
    group.add_argument("--first-order", action="store_true", default=None, help="first-order MAML")


def settings_from_args(args):
    """(cells, settings, out) from the parsed options; raises SweepError / ConfigError."""
    methods = list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
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
    if not 1 <= args.mse_ratio < math.inf:
        raise SweepError(f"--mse-ratio must be a number ≥ 1 (converged: MSE ≤ this × the best cell's), "
                         f"got {args.mse_ratio:g}")
    if not 0 <= args.accuracy_gap <= 1:
        raise SweepError(f"--accuracy-gap must be a number from 0 to 1 (converged: accuracy ≥ the best "
                         f"cell's − this), got {args.accuracy_gap:g}")
    if args.workers is not None and args.dask_scheduler:
        raise SweepError("--workers is for local processes; a Dask cluster has its own workers")
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
    if one_d and set(methods) - {"maml", "alpha-maml"}:
        raise SweepError("--alpha-hyper-lrs / --beta-hyper-lrs sweep Alpha MAML's γ's: --methods may hold only "
                         "alpha-maml and maml (the reference)")
    hyper = [flag for flag, value in (("--alpha-hyper-lr", args.alpha_hyper_lr), ("--beta-hyper-lr", args.beta_hyper_lr))
             if value is not None]
    if hyper and "alpha-maml" not in methods:
        raise SweepError(f"{' and '.join(hyper)} set Alpha MAML's hyper-rates, and --methods {','.join(methods)} "
                         f"has no alpha-maml: leave {'it' if len(hyper) == 1 else 'them'} out")
    if gamma_alphas and args.alpha_hyper_lr is not None or gamma_betas and args.beta_hyper_lr is not None:
        raise SweepError("give either --alpha-hyper-lrs or --alpha-hyper-lr (and likewise for β), not both")
    train_settings = {name: getattr(args, name) for name in PASS_THROUGH if getattr(args, name) is not None}
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


def run(args):
    """Entry point of the ``sweep`` command; returns the exit code: 0; 1 if a cell failed, a
    worker died or a file could not be written; 2 for a mistake (then nothing is written);
    130 / 143 when stopped by SIGINT (Ctrl-C) / SIGTERM.

    The first such signal stops the sweep: no further cell starts, the running ones are ended
    (numpy_amaml.executors; on a Dask cluster they cannot be, and finish there), the finished ones
    are kept. A second one skips the wait for the running cells to end."""
    started, out, lock, signals = time.perf_counter(), None, None, []

    def stop(signum, frame):
        signals.append(signum)
        raise Interrupted(signum)
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        cells, settings, out = settings_from_args(args)
        executor = DaskExecutor(args.dask_scheduler) if args.dask_scheduler else LocalExecutor(args.workers)
        if args.report_only and not (out / SETTINGS_FILE).is_file():
            raise SweepError(f"--report-only reads an existing sweep folder, and {out} holds no {SETTINGS_FILE}")
        if args.report_only:           # reads the cells and writes three files atomically: no lock,
            check_settings(out, settings)  # so it also reports on a sweep that is still running
        else:
            check_task(resolve_config(train_options(cells[0], settings)), progress=not args.no_progress)
            lock = open_sweep_folder(out, settings)
        results, skipped, errors = run_cells(cells, settings, out, executor, not args.no_progress,
                                             not (args.no_cell_figures or args.no_figures),
                                             run_pending=not args.report_only)
        for name, error in errors.items():
            print(f"error: cell {name} failed (it will be retried on the next run):\n{error}", file=sys.stderr)
        finished = [r for r in results if r is not None]
        if not finished:
            return 1
        lines, figures = report(finished, settings, out, args.mse_ratio, args.accuracy_gap,
                                time.perf_counter() - started, skipped, draw_figures=not args.no_figures)
        print("\n".join(lines))
        print(f"written: {out / CSV_FILE}, {out / SUMMARY_FILE}, " + ", ".join(str(out / f) for f in figures))
        return 1 if errors else 0
    except (SweepError, ConfigError, OmniglotError, FolderLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:                         # the reader went away (`| head`): numpy_amaml/__main__.py
        raise
    except (ExecutorError, OSError) as err:         # 2 before the folder is ours: nothing was written
        text = f"{err.filename}: {err.strerror}" if isinstance(err, OSError) and err.filename else err
        print(f"error: {text}", file=sys.stderr)
        return 2 if lock is None else 1
    except KeyboardInterrupt as err:
        for signum in previous:                     # one line, whatever else arrives
            signal.signal(signum, signal.SIG_IGN)
        signum = signals[0] if signals else getattr(err, "signum", signal.SIGINT)
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        if lock is None:
            print(f"{what} before the sweep started: nothing was written", file=sys.stderr)
        else:
            running = ("the cells running on the Dask cluster cannot be stopped there and will still write their "
                       "results, the others were cancelled" if isinstance(executor, DaskExecutor)
                       else "the running ones were stopped")
            print(f"{what}: the finished cells are kept in {out / CELLS_DIR}, {running}; "
                  f"run the same command again to resume", file=sys.stderr)
        return 128 + signum
    finally:
        if lock is not None:
            lock.release()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
