"""Meta-test a run folder: its final θ and α, adapted to fresh tasks (numpy_amaml.evaluation).

The tasks come from the "eval_tasks" stream of ``tasks.seed_streams(seed)``, which training
never draws from; ``seed`` defaults to the run's seed. For Omniglot they are tasks of the
meta-test characters.
"""
from numpy_amaml import parallel
from numpy_amaml.backend import float_dtype, set_dtype
from numpy_amaml.run_folder import load_run
from numpy_amaml.tasks import make_task, seed_streams

BATCH_SIZE = {"sinusoid": 100, "omniglot": 20}     # tasks per array computation (memory)


def default_steps(config):
    """The inner-step counts reported by default: 1 and 10 (sinusoid, MAML's figure), or the
    run's test-time steps (Omniglot)."""
    return (1, 10) if config.task == "sinusoid" else (config.test_inner_steps,)


def evaluate_run(run_dir, tasks=600, seed=None, steps=None, batch_size=None, threads=None):
    """Evaluate the checkpoint of a run folder; returns the dict the evaluate command prints
    and writes to evaluation.json. None: the run's seed, the task's default steps, batch size
    and CPU threads. A step count whose adaptation is not finite has mean and ci95 None, and
    the reason in "failed"."""
    config, _, state = load_run(run_dir)
    seed = config.seed if seed is None else seed
    steps = default_steps(config) if steps is None else steps
    previous_dtype, previous_threads = float_dtype(), parallel.threads()
    set_dtype(config.dtype)
    parallel.set_threads(threads or parallel.default_threads(config.task))
    try:
        task = make_task(config, seed_streams(config.seed))
        results, failed = task.evaluate(state["theta"], state["alpha"], steps, tasks,
                                        seed_streams(seed)["eval_tasks"], batch_size or BATCH_SIZE[config.task])
    finally:
        set_dtype(previous_dtype)
        parallel.set_threads(previous_threads)
    return {"run": str(run_dir), "task": config.task, "method": config.method,
            "iteration": state["iteration"], "alpha": state["alpha"], "beta": state["optimizer"]["beta"],
            "tasks": tasks, "seed": seed, "metric": task.metric,
            "results": [{"steps": k, "mean": None if r is None else r[0], "ci95": None if r is None else r[1]}
                        for k, r in results.items()],
            "failed": failed}
