"""Meta-testing: adapt θ to fresh tasks and measure the query metric, with a 95% CI.

Each task is adapted from θ with the rate α (a scalar or one rate per tensor) by inner
gradient steps on its support set; the metric is measured on its query set before
adaptation (k = 0) and after each requested number of steps k:
    sinusoid:  query MSE        (``evaluate_sinusoid``)
    omniglot:  query accuracy   (``evaluate_omniglot``, a TaskSampler on the meta-test characters)
Every number is the mean over tasks with a 95% confidence interval 1.96·s/√n (s: the sample
standard deviation over tasks). Tasks are processed in batches, one array computation per
batch; the tasks drawn do not depend on the batch size.

An adaptation that overflows (a large α, many steps) is a result, not a crash: the step
counts from the first non-finite one on are reported as ``None`` in the results, and
``failed`` says why.
"""
import math

import numpy as np

from numpy_amaml.backend import asarray, to_numpy
from numpy_amaml.maml import TaskBatch, adaptation_path
from numpy_amaml.sinusoid import SinusoidTasks
from numpy_amaml.validation import NonFiniteError


def mean_ci(values):
    """(mean, half-width of the 95% confidence interval 1.96·s/√n) of per-task values."""
    values = np.asarray(values, dtype=float)
    spread = values.std(ddof=1) if values.size > 1 else 0.0
    return float(values.mean()), float(1.96 * spread / math.sqrt(values.size))


def query_accuracy(model, params, batch):
    """Per-task query accuracy, numpy (B,), of a classifier with ``params`` (θ, or φ of shape (B, ...))."""
    predicted = to_numpy(model.predict(params, batch.x_query)).argmax(axis=-1)
    return (predicted == to_numpy(batch.y_query)).mean(axis=-1)


def to_task_batch(arrays):
    """Host arrays (x_support, y_support, x_query, y_query) -> a TaskBatch on the active backend
    (floats as the active dtype, integer labels kept as integers): one transfer per meta-batch."""
    return TaskBatch(*(asarray(a) if a.dtype.kind == "f" else asarray(a, dtype=a.dtype) for a in arrays))


def check_steps(steps):
    """Sorted distinct inner-step counts ≥ 0, with 0 (pre-update) included."""
    steps = sorted({0, *(int(k) for k in steps)})
    if steps[0] < 0:
        raise ValueError(f"steps must be non-negative integers, got {steps}")
    return steps


def measure_adaptation(model, theta, alpha, batches, steps, metric):
    """Per-task ``metric(params, batch)`` at each inner-step count of ``steps``, over ``batches``.

    Returns ({k: (mean, ci95) or None}, failed {k: reason}). φ is advanced one step at a
    time; from the first step whose φ or loss is not finite on, the counts are None.
    """
    per_task, failed = {k: [] for k in steps}, {}
    with np.errstate(over="ignore", invalid="ignore"):      # non-finite values are reported below
        for batch in batches:
            _adapt_and_measure(model, theta, alpha, batch, steps, metric, per_task, failed)
    results = {}
    for k, values in per_task.items():
        values = np.concatenate(values) if values and k not in failed else np.array([np.nan])
        results[k] = mean_ci(values) if np.isfinite(values).all() else None
        if results[k] is None and k not in failed:
            failed[k] = f"the metric after {k} steps is not finite"
    return results, failed


def _adapt_and_measure(model, theta, alpha, batch, steps, metric, per_task, failed):
    """One batch of ``measure_adaptation``: append each step count's per-task values to
    ``per_task``; on a non-finite φ, mark that count and the later ones in ``failed``."""
    k = 0
    try:
        for k, phi in enumerate(adaptation_path(model, theta, batch.x_support, batch.y_support, alpha, steps[-1])):
            if k in per_task:
                per_task[k].append(metric(phi, batch))
    except NonFiniteError as err:
        failed.update({s: f"adaptation not finite at step {k}: {err}" for s in steps if s >= k})


def evaluate_sinusoid(model, theta, alpha, steps=(1, 10), tasks=600, seed=0, shots=10, queries=100,
                      batch_size=100):
    """Query MSE of ``tasks`` fresh sinusoid tasks (seeded by ``seed``, ``queries`` points each),
    before adaptation and after each number of inner steps in ``steps``.

    Returns ({k: (mean, ci95) or None}, failed {k: reason}), k = 0 for the pre-update MSE.
    """
    everything = SinusoidTasks(shots=shots, queries=queries, seed=seed).sample(tasks)[0]
    batches = (TaskBatch(*(a[start:start + batch_size] for a in everything))
               for start in range(0, tasks, batch_size))
    metric = lambda params, batch: to_numpy(model.loss(params, batch.x_query, batch.y_query))
    return measure_adaptation(model, theta, alpha, batches, check_steps(steps), metric)


def evaluate_omniglot(model, theta, alpha, steps, sampler, tasks=600, batch_size=20):
    """Query accuracy of ``tasks`` tasks from ``sampler`` (an omniglot_sampler.TaskSampler on the
    meta-test characters), before adaptation and after each number of inner steps in ``steps``.
    Each task is drawn on its own, so the sequence of tasks does not depend on the batch size.

    Returns ({k: (mean, ci95) or None}, failed {k: reason}), k = 0 for the pre-update accuracy.
    """
    batches = (to_task_batch([np.concatenate(arrays) for arrays in
                              zip(*(sampler.sample(1) for _ in range(min(batch_size, tasks - start))))])
               for start in range(0, tasks, batch_size))
    metric = lambda params, batch: query_accuracy(model, params, batch)
    return measure_adaptation(model, theta, alpha, batches, check_steps(steps), metric)
