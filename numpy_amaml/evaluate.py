"""``python -m numpy_amaml evaluate RUN_DIR``: meta-test a trained run on fresh tasks.

Each task is adapted from the run's final θ with its final α (a scalar or one rate per
tensor) by a number of inner gradient steps on its support set; the metric is measured on
its query set:
    sinusoid:  query MSE before adaptation and after each of --steps (default 1 and 10)
               steps, on ``EVAL_QUERY_POINTS`` query points per task;
    omniglot:  query accuracy before adaptation and after --steps (default the run's
               test_inner_steps) steps, on tasks of the meta-test characters.
Every number is the mean over --tasks tasks (default 600) with a 95% confidence interval
1.96·s/√n (s: the sample standard deviation over tasks). Tasks are processed in batches
(one array computation per batch); the tasks drawn do not depend on the batch size. The
table is printed and written to RUN_DIR/evaluation.json.

The tasks come from the "eval_tasks" stream of ``train.seed_streams(seed)``, which
training never draws from; --seed defaults to the run's seed.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np

from numpy_amaml import parallel
from numpy_amaml.backend import float_dtype, set_dtype, to_numpy
from numpy_amaml.maml import TaskBatch, inner_loop
from numpy_amaml.omniglot import OmniglotError
from numpy_amaml.sinusoid import SinusoidTasks
from numpy_amaml.train import (ConfigError, load_run, omniglot_sampler, omniglot_split, query_accuracy,
                               seed_streams, to_task_batch)

EVAL_QUERY_POINTS = 100     # sinusoid: query points per task, spread over x ∈ [−5, 5]
BATCH_SIZE = {"sinusoid": 100, "omniglot": 20}     # tasks per array computation (memory)
RESULT_FILE = "evaluation.json"


def mean_ci(values):
    """(mean, half-width of the 95% confidence interval 1.96·s/√n) of per-task values."""
    values = np.asarray(values, dtype=float)
    spread = values.std(ddof=1) if values.size > 1 else 0.0
    return float(values.mean()), float(1.96 * spread / math.sqrt(values.size))


def _sinusoid_batches(sampler, tasks, batch_size):
    """TaskBatches of ``batch_size`` tasks, cut from one draw of all ``tasks`` (they are small)."""
    everything = sampler.sample(tasks)[0]
    for start in range(0, tasks, batch_size):
        yield TaskBatch(*(a[start:start + batch_size] for a in everything))


def _omniglot_batches(sampler, tasks, batch_size):
    """TaskBatches of ``batch_size`` tasks, each task drawn on its own so that the sequence of
    tasks is the same whatever the batch size."""
    for start in range(0, tasks, batch_size):
        drawn = [sampler.sample(1) for _ in range(min(batch_size, tasks - start))]
        yield to_task_batch([np.concatenate(arrays) for arrays in zip(*drawn)])


def _check_steps(steps):
    steps = sorted(set(int(k) for k in steps))
    if not steps or steps[0] < 0:
        raise ValueError(f"steps must be non-negative integers, got {steps}")
    return steps


def evaluate_sinusoid(model, theta, alpha, steps=(1, 10), tasks=600, seed=0, shots=10,
                      queries=EVAL_QUERY_POINTS, batch_size=BATCH_SIZE["sinusoid"]):
    """Query MSE of ``tasks`` fresh sinusoid tasks (seeded by ``seed``), before adaptation
    and after each number of inner steps in ``steps``.

    Returns {steps: (mean, ci95)} with key 0 for the pre-update MSE.
    """
    steps = _check_steps([0, *steps])
    sampler = SinusoidTasks(shots=shots, queries=queries, seed=seed)
    per_task = {k: [] for k in steps}
    for batch in _sinusoid_batches(sampler, tasks, batch_size):
        phis = inner_loop(model, theta, batch.x_support, batch.y_support, alpha, steps[-1])[0]
        for k in steps:
            per_task[k].append(to_numpy(model.loss(phis[k], batch.x_query, batch.y_query)))
    return {k: mean_ci(np.concatenate(values)) for k, values in per_task.items()}


def evaluate_omniglot(model, theta, alpha, steps, sampler, tasks=600, batch_size=BATCH_SIZE["omniglot"]):
    """Query accuracy of ``tasks`` tasks from ``sampler`` (an omniglot.TaskSampler on the
    meta-test characters), before adaptation and after each number of inner steps in ``steps``.

    Returns {steps: (mean, ci95)} with key 0 for the pre-update accuracy.
    """
    steps = _check_steps([0, *steps])
    per_task = {k: [] for k in steps}
    for batch in _omniglot_batches(sampler, tasks, batch_size):
        phis = inner_loop(model, theta, batch.x_support, batch.y_support, alpha, steps[-1])[0]
        for k in steps:
            per_task[k].append(query_accuracy(model, phis[k], batch))
    return {k: mean_ci(np.concatenate(values)) for k, values in per_task.items()}


def evaluate_run(run_dir, tasks=600, seed=None, steps=None, batch_size=None, threads=None):
    """Evaluate the checkpoint of a run folder; returns the dict written to evaluation.json.
    None: the run's seed, the task's default steps, batch size and CPU threads."""
    config, model, state = load_run(run_dir)
    seed = config.seed if seed is None else seed
    batch_size = batch_size or BATCH_SIZE[config.task]
    if steps is None:
        steps = (1, 10) if config.task == "sinusoid" else (config.test_inner_steps,)
    eval_seed = seed_streams(seed)["eval_tasks"]
    previous_dtype, previous_threads = float_dtype(), parallel.threads()
    set_dtype(config.dtype)
    parallel.set_threads(threads or parallel.default_threads(config.task))
    try:
        theta, alpha = state["theta"], state["alpha"]
        if config.task == "sinusoid":
            results = evaluate_sinusoid(model, theta, alpha, steps, tasks, eval_seed, config.shots,
                                        batch_size=batch_size)
            metric = f"query MSE ({EVAL_QUERY_POINTS} points per task)"
        else:
            images, split = omniglot_split(config)
            sampler = omniglot_sampler(config, images, split["test"], eval_seed)
            results = evaluate_omniglot(model, theta, alpha, steps, sampler, tasks, batch_size)
            metric = f"query accuracy ({config.ways}-way {config.shots}-shot, meta-test characters)"
    finally:
        set_dtype(previous_dtype)
        parallel.set_threads(previous_threads)
    return {"run": str(run_dir), "task": config.task, "method": config.method,
            "iteration": state["iteration"], "alpha": alpha, "beta": state["optimizer"]["beta"],
            "tasks": tasks, "seed": seed, "metric": metric,
            "results": [{"steps": k, "mean": mean, "ci95": ci} for k, (mean, ci) in results.items()]}


def format_table(evaluation):
    """The evaluation as a small text table."""
    alpha = evaluation["alpha"]
    alpha_text = (f"per tensor {min(alpha.values()):.4g}..{max(alpha.values()):.4g}"
                  if isinstance(alpha, dict) else f"{alpha:.4g}")
    percent = evaluation["task"] == "omniglot"
    lines = [f"{evaluation['task']} {evaluation['method']} at iteration {evaluation['iteration']}: "
             f"α = {alpha_text}, β = {evaluation['beta']:.4g}",
             f"{evaluation['tasks']} tasks (seed {evaluation['seed']}), {evaluation['metric']}",
             f"  {'':<18}{'mean':>10}  {'± 95% CI':>10}"]
    for row in evaluation["results"]:
        k = row["steps"]
        label = "pre-update" if k == 0 else f"after {k} step{'s' if k > 1 else ''}"
        scale, unit = (100.0, "%") if percent else (1.0, "")
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


def run(args):
    """Entry point of the ``evaluate`` command; returns the exit code."""
    try:
        if args.tasks < 2 or (args.batch_size is not None and args.batch_size < 1):
            raise ConfigError("--tasks must be ≥ 2 (for a confidence interval) and --batch-size ≥ 1")
        if args.threads is not None and args.threads < 1:
            raise ConfigError(f"--threads must be ≥ 1, got {args.threads}")
        steps = None if args.steps is None else _parse_steps(args.steps)
        evaluation = evaluate_run(args.run_dir, args.tasks, args.seed, steps, args.batch_size, args.threads)
    except (ConfigError, OmniglotError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = Path(args.run_dir) / RESULT_FILE
    path.write_text(json.dumps(evaluation, indent=2) + "\n")
    print(format_table(evaluation))
    print(f"written: {path}")
    return 0
