"""Meta-test a run folder: its final θ and α, adapted to fresh tasks (numpy_amaml.evaluation).

The tasks come from the "eval_tasks" stream of ``tasks.seed_streams(seed)``, which training
never draws from; ``seed`` defaults to the run's seed. For Omniglot they are tasks of the
meta-test characters, read from ``data_dir`` if given, else the run's own data folder while it
exists, else NUMPY_AMAML_OMNIGLOT_DIR if set (run_folder.with_data_dir). Evaluation only reads the run
folder: it takes no lock, and a training run may write the folder meanwhile (every file is
replaced atomically).
"""
from numpy_amaml import parallel
from numpy_amaml.backend import float_dtype, set_dtype
from numpy_amaml.config import ConfigError
from numpy_amaml.learned_rates import describe_alpha, logged_alpha
from numpy_amaml.memory import bytes_per_task, check_memory
from numpy_amaml.run_folder import load_run, with_data_dir
from numpy_amaml.tasks import EVAL_QUERY_POINTS, make_task, seed_streams

BATCH_SIZE = {"sinusoid": 100, "omniglot": 20}     # tasks per array computation (memory)


def default_steps(config):
    """The inner-step counts reported by default: 1 and 10 (sinusoid, MAML's figure), or the
    run's test-time steps (Omniglot)."""
    return (1, 10) if config.task == "sinusoid" else (config.test_inner_steps,)


def check_evaluation_memory(config, model, tasks, batch_size):
    """ConfigError when an evaluation cannot fit in memory (numpy_amaml.memory): a batch of
    tasks is adapted at a time, and the sinusoid draws every task's data at once (x and y of
    its shots and EVAL_QUERY_POINTS queries, float64: evaluation.evaluate_sinusoid)."""
    if config.task == "sinusoid":
        check_memory(tasks, 2 * 8 * (config.shots + EVAL_QUERY_POINTS), f"--tasks {tasks}", held="its data")
    check_memory(min(batch_size, tasks), bytes_per_task(config, model),
                 f"--batch-size {batch_size}" if batch_size < tasks else f"--tasks {tasks}")


def evaluate_run(run_dir, tasks=600, seed=None, steps=None, batch_size=None, threads=None, data_dir=None):
    """Evaluate the checkpoint of a run folder; returns the dict the evaluate command prints
    and writes to evaluation.json. None: the run's seed, the task's default steps, batch size,
    CPU threads and data folder. A step count whose adaptation is not finite has mean and ci95
    None, and the reason in "failed"."""
    if seed is not None and seed < 0:
        raise ConfigError(f"--seed must be an integer ≥ 0, got {seed}")
    config, model, state = load_run(run_dir)
    config = with_data_dir(config, data_dir, run_dir)
    seed = config.seed if seed is None else seed
    steps = default_steps(config) if steps is None else steps
    batch_size = batch_size or BATCH_SIZE[config.task]
    check_evaluation_memory(config, model, tasks, batch_size)
    previous_dtype, previous_threads = float_dtype(), parallel.threads()
    set_dtype(config.dtype)
    parallel.set_threads(threads or parallel.default_threads(config.task))
    try:
        task = make_task(config, seed_streams(config.seed))
        results, failed = task.evaluate(state["theta"], state["alpha"], steps, tasks,
                                        seed_streams(seed)["eval_tasks"], batch_size)
    finally:
        set_dtype(previous_dtype)
        parallel.set_threads(previous_threads)
    return {"run": str(run_dir), "task": config.task, "method": config.method,
            "iteration": state["iteration"], "alpha": logged_alpha(state["alpha"]),
            "alpha_in_words": describe_alpha(state["alpha"]), "beta": state["optimizer"]["beta"],
            "tasks": tasks, "seed": seed, "metric": task.metric,
            "results": [{"steps": k, "mean": None if r is None else r[0], "ci95": None if r is None else r[1]}
                        for k, r in results.items()],
            "failed": failed}
