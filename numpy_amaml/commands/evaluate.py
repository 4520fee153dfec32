"""``python -m numpy_amaml evaluate RUN_DIR``: meta-test a trained run on fresh tasks.

Each task is adapted from the run's final θ with its final α (a scalar or one rate per
tensor) by a number of inner gradient steps on its support set; the metric is measured on
its query set (numpy_amaml.evaluation, numpy_amaml.meta_test):
    sinusoid:  query MSE before adaptation and after each of --steps (default 1 and 10)
               steps, on 100 query points per task;
    omniglot:  query accuracy before adaptation and after --steps (default the run's
               test_inner_steps) steps, on tasks of the meta-test characters.
Every number is the mean over --tasks tasks (default 600) with a 95% confidence interval.
A step count whose adaptation overflows is reported as not finite; the others still are.
The table is printed and written to RUN_DIR/evaluation.json. An Omniglot run whose data
folder moved since training is evaluated with ``--data-dir`` (or NUMPY_AMAML_OMNIGLOT_DIR).
Evaluation only reads the run folder: it works while ``train`` writes it.
"""
import sys

from numpy_amaml import parallel
from numpy_amaml.config import ConfigError
from numpy_amaml.meta_test import BATCH_SIZE, evaluate_run
from numpy_amaml.omniglot import ENV_VAR, OmniglotError
from numpy_amaml.run_folder import EVALUATION_FILE, RunFolder


def format_table(evaluation):
    """The evaluation as a small text table."""
    alpha = evaluation["alpha"]
    alpha_text = evaluation.get("alpha_in_words") or (      # older evaluation.json files have no words
        f"per tensor {min(alpha.values()):.4g}..{max(alpha.values()):.4g}" if isinstance(alpha, dict) else f"{alpha:.4g}")
    percent = evaluation["task"] == "omniglot"
    lines = [f"{evaluation['task']} {evaluation['method']} at iteration {evaluation['iteration']}: "
             f"α = {alpha_text}, β = {evaluation['beta']:.4g}",
             f"{evaluation['tasks']} tasks (seed {evaluation['seed']}), {evaluation['metric']}",
             f"  {'':<18}{'mean':>10}  {'± 95% CI':>10}"]
    for row in evaluation["results"]:
        k = row["steps"]
        label = "pre-update" if k == 0 else f"after {k} step{'s' if k > 1 else ''}"
        scale, unit = (100.0, "%") if percent else (1.0, "")
        if row["mean"] is None:
            lines.append(f"  {label:<18}{'not finite':>10}  (the adaptation overflows: α is too large "
                         f"for this many steps)")
            continue
        lines.append(f"  {label:<18}{row['mean'] * scale:>9.4g}{unit or ' '}  "
                     f"{'± ' + format(row['ci95'] * scale, '.2g') + unit:>10}")
    return "\n".join(lines)


# ---- command line -----------------------------------------------------------------------------

def _parse_steps(text):
    try:
        steps = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        steps = []
    if not steps or min(steps) < 0:
        raise ConfigError(f"--steps must be a comma-separated list of integers ≥ 0, got {text!r}")
    return steps


def add_arguments(parser):
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `train`")
    parser.add_argument("--tasks", type=int, default=600, help="number of test tasks (default 600)")
    parser.add_argument("--seed", type=int, help="seed of the test tasks (default: the run's seed; "
                                                 "the stream is disjoint from training's)")
    parser.add_argument("--steps", help="comma-separated inner-step counts (default 1,10 for "
                                        "sinusoid, the run's test_inner_steps for omniglot)")
    parser.add_argument("--batch-size", type=int,
                        help="tasks per array computation, for memory; the results do not depend on it "
                             f"(default {BATCH_SIZE['sinusoid']} sinusoid, {BATCH_SIZE['omniglot']} omniglot)")
    parser.add_argument("--threads", type=int, metavar="T",
                        help="CPU threads sharing the tasks of a batch; speed only (default: 1 sinusoid, "
                             f"all cores omniglot: {parallel.default_threads('omniglot')})")
    parser.add_argument("--data-dir", metavar="DIR",
                        help=f"Omniglot runs: the folder with the two zips, if it is no longer where the run "
                             f"read them (default: {ENV_VAR} if set, else the run's own data folder)")


def run(args):
    """Entry point of the ``evaluate`` command; returns the exit code."""
    try:
        if args.tasks < 2 or (args.batch_size is not None and args.batch_size < 1):
            raise ConfigError("--tasks must be ≥ 2 (for a confidence interval) and --batch-size ≥ 1")
        if args.threads is not None and args.threads < 1:
            raise ConfigError(f"--threads must be ≥ 1, got {args.threads}")
        steps = None if args.steps is None else _parse_steps(args.steps)
        evaluation = evaluate_run(args.run_dir, args.tasks, args.seed, steps, args.batch_size, args.threads,
                                  args.data_dir)
    except (ConfigError, OmniglotError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        path = RunFolder(args.run_dir).write_evaluation(evaluation)
    except OSError as err:
        print(format_table(evaluation))
        print(f"error: cannot write {args.run_dir}/{EVALUATION_FILE}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(format_table(evaluation))
    print(f"written: {path}")
    return 0
