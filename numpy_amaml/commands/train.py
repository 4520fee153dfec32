"""``python -m numpy_amaml train``: meta-train MAML, Alpha MAML, Meta-SGD or LSLR on sinusoids or Omniglot.

The settings are numpy_amaml.config.TrainConfig's, the loop is numpy_amaml.training, the run
folder numpy_amaml.run_folder. ``--resume DIR`` continues a run exactly where its checkpoint
stopped, bit for bit.
"""
import signal
import sys
from dataclasses import fields

from numpy_amaml import parallel
from numpy_amaml.alpha_maml import TrainingDiverged
from numpy_amaml.config import (ADDITIVE_HYPER_LR_DEFAULTS, CHOICES, METHOD_HELP, NORMALIZED_HYPER_LR_DEFAULTS,
                                TASK_DEFAULTS, ConfigError, TrainConfig)
from numpy_amaml.interrupts import new_line
from numpy_amaml.learned_rates import describe_alpha
from numpy_amaml.omniglot import OmniglotError
from numpy_amaml.run_folder import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, quoted
from numpy_amaml.training import TrainingStopped, signal_of, train


def add_arguments(parser):
    """The options of ``python -m numpy_amaml train`` (every default: TrainConfig/TASK_DEFAULTS)."""
    s, o = TASK_DEFAULTS["sinusoid"], TASK_DEFAULTS["omniglot"]
    d = TrainConfig
    add = parser.add_argument
    add("--task", choices=CHOICES["task"], help=f"default {d.task}")
    add("--method", choices=CHOICES["method"],
        help="; ".join(f"{m}: {text}" for m, text in METHOD_HELP.items()) +
             f"; lslr's α at steps beyond --inner-steps (evaluation, --test-inner-steps) is its last "
             f"step's (docs/method.md §13; default {d.method})")
    add("--first-order", action="store_true", default=None, help="first-order MAML (no Hessian terms)")
    add("--inner-steps", type=int, metavar="K", help=f"inner steps in training (default {d.inner_steps})")
    add("--alpha", type=float, metavar="A", help=f"initial inner rate α (default {s['alpha']} sinusoid, "
                                                 f"{o['alpha']} omniglot)")
    add("--beta", type=float, metavar="B", help=f"initial meta rate β (default {d.beta})")
    add("--optimizer", choices=CHOICES["optimizer"], help=f"meta-optimizer (default {d.optimizer})")
    add("--hyper-rule", choices=CHOICES["hyper_rule"],
        help=f"how the hypergradients move α and β: additive α ← α − γ h (the paper), or normalized "
             f"α ← α·exp(γ cos), cos the cosine behind h, scale-free (docs/hyper_rules.md; "
             f"default {d.hyper_rule})")
    for i, (name, symbol) in enumerate((("alpha", "α"), ("beta", "β"))):
        add(f"--{name}-hyper-lr", type=float, metavar=f"γ{symbol}",
            help=f"hypergradient rate of {symbol} (alpha-maml; default: normalized rule "
                 f"{NORMALIZED_HYPER_LR_DEFAULTS[i]:g}; additive rule per task and optimizer: " +
                 ", ".join(f"{t}/{opt} {r[i]:g}" for (t, opt), r in ADDITIVE_HYPER_LR_DEFAULTS.items()) + ")")
    add("--per-layer-alpha", action="store_true", default=None, help="one α per parameter tensor")
    add("--meta-batch", type=int, metavar="B", help=f"tasks per iteration (default {s['meta_batch']} "
                                                    f"sinusoid, {o['meta_batch']} omniglot)")
    add("--iterations", type=int, metavar="N", help=f"meta-iterations (default {s['iterations']} "
                                                    f"sinusoid, {o['iterations']} omniglot)")
    add("--seed", type=int, metavar="S", help=f"random seed (default {d.seed})")
    add("--dtype", choices=CHOICES["dtype"], help="float dtype (default NUMPY_AMAML_DTYPE, else float32)")
    add("--log-every", type=int, metavar="n", help=f"metrics line every n iterations (default {d.log_every})")
    add("--curvature-every", type=int, metavar="n",
        help="log λ_max of the support loss (power iteration on the HVP, mean over 4 tasks) every n "
             "iterations; rates.png then shows α against 2/λ_max (default 0: never)")
    add("--checkpoint-every", type=int, metavar="n",
        help=f"checkpoint (and figures) every n iterations (default {d.checkpoint_every})")
    add("--shots", type=int, help=f"support examples per task/class (default {s['shots']} sinusoid, "
                                  f"{o['shots']} omniglot)")
    add("--queries", type=int, help=f"query examples per task/class (default {s['queries']} sinusoid, "
                                    f"{o['queries']} omniglot)")
    group = parser.add_argument_group("omniglot only")
    group.add_argument("--ways", type=int, help=f"classes per task (default {o['ways']})")
    group.add_argument("--test-inner-steps", type=int, metavar="K",
                       help=f"inner steps at validation/test (default {o['test_inner_steps']})")
    group.add_argument("--downsample", choices=CHOICES["downsample"], help=f"default {o['downsample']}")
    group.add_argument("--channels", type=int, help=f"channels per conv block (default {o['channels']})")
    group.add_argument("--data-dir", help="folder with images_background.zip and images_evaluation.zip")
    group.add_argument("--val-every", type=int, metavar="n",
                       help=f"validation every n iterations (default {o['val_every']})")
    group.add_argument("--val-tasks", type=int, metavar="n", help=f"validation tasks (default {o['val_tasks']})")
    run_group = parser.add_argument_group("run folder")
    run_group.add_argument("--out", metavar="DIR",
                           help="run folder: new, empty, or one whose run stopped before its first "
                                "checkpoint (default runs/<task>-<method>-<time>)")
    run_group.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")
    run_group.add_argument("--no-figures", action="store_true", help="draw no PNG figures")
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
                        threads=args.threads, figures=not args.no_figures)
    except (ConfigError, OmniglotError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: training diverged at {err}", file=sys.stderr)
        return 1
    except TrainingStopped as err:
        print(f"{new_line()}{err}" if err.interrupted else f"error: {err}", file=sys.stderr)
        return 128 + err.signum if err.interrupted else 1
    except KeyboardInterrupt as err:          # while loading data or building the model
        signum = signal_of(err)
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"{new_line()}{what} before training started; no checkpoint was written", file=sys.stderr)
        return 128 + signum
    print(summary(trainer))
    return 0


def summary(trainer):
    """What to print at the end: the final numbers and where everything is."""
    config, learner, run_dir = trainer.config, trainer.learner, trainer.folder.path
    last = trainer.records[-1]
    alpha_text = describe_alpha(learner.alpha)
    lines = [f"trained {config.task} {config.method} for {learner.iteration} iterations "
             f"({trainer.elapsed:.1f} s of training; this command took {trainer.wall_seconds:.1f} s, "
             f"{trainer.figure_seconds:.1f} s of it drawing figures)",
             f"  last logged iteration: query loss pre-update {last['query_loss_pre']:.4g}, "
             f"post-update {last['query_loss_post']:.4g}",
             f"  α = {alpha_text}   β = {learner.optimizer.beta:.4g}   "
             f"(clamps: α {learner.alpha_clamps}, β {learner.optimizer.beta_clamps})"]
    if last.get("val_accuracy") is not None:
        lines.append(f"  validation accuracy: {last['val_accuracy']:.4f}")
    lines += [f"run folder: {run_dir}",
              f"  {CONFIG_FILE}, {METRICS_FILE}, {CHECKPOINT_FILE}"
              + (f"; figures: {', '.join(trainer.figure_files())}" if trainer.figure_files() else ""),
              f"evaluate with: python -m numpy_amaml evaluate {quoted(run_dir)}"]
    return "\n".join(lines)
