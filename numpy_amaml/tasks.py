"""The task protocol: what training, evaluation and the figures need from a kind of task.

A task object (``make_task(config, seeds)``) provides

    model                                   the Model it trains (numpy_amaml.architectures)
    sample(meta_batch) -> TaskBatch         the next meta-batch of training tasks
    get_state() / set_state(state)          the sampler's random state (saved in checkpoints)
    metrics_before_step(theta, alpha, batch) -> dict
                                            extra numbers for a logged iteration, at θ
    validate(theta, alpha) -> dict          validation numbers ({} where there are none)
    evaluate(theta, alpha, steps, tasks, seed, batch_size) -> {k: (mean, ci95) or None}
                                            the metric on fresh test tasks, before (k = 0)
                                            and after k inner steps (None: not finite)
    metric                                  what ``evaluate`` measures, in words
    figure, plot(path, theta, alpha, records, title) -> note or None
                                            the task's own figure; a note says what it
                                            could not draw (e.g. an adapted fit that overflows)

``SinusoidTask`` and ``OmniglotTask`` implement it. Every random number of a run comes from
``seed_streams(seed)``: independent streams for the initialisation, the training, validation
and evaluation tasks and the figures, so evaluation never sees a training task.
"""
import numpy as np

from numpy_amaml import architectures, plots
from numpy_amaml.config import OMNIGLOT_SPLIT
from numpy_amaml.evaluation import evaluate_omniglot, evaluate_sinusoid, query_accuracy, to_task_batch
from numpy_amaml.maml import adapt
from numpy_amaml.omniglot import load_omniglot
from numpy_amaml.omniglot_sampler import TaskSampler, split_characters
from numpy_amaml.sinusoid import SinusoidTasks

VAL_BATCH = 50                     # Omniglot validation tasks per array computation
EVAL_QUERY_POINTS = 100            # sinusoid evaluation: query points per task, over x ∈ [−5, 5]


def seed_streams(seed):
    """Independent integer seeds derived from one ``seed``: model initialisation, training
    tasks, validation tasks, evaluation tasks and the tasks drawn in the figures."""
    names = ("init", "train_tasks", "val_tasks", "eval_tasks", "plot_tasks")
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {name: int(child.generate_state(1)[0]) for name, child in zip(names, children)}


def build_model(config):
    """The model a config describes."""
    if config.task == "sinusoid":
        return architectures.sinusoid_mlp()
    return architectures.omniglot_cnn(ways=config.ways, channels=config.channels, downsample=config.downsample)


class SinusoidTask:
    """Sinusoid regression: the 1-40-40-1 MLP, MSE, seeded SinusoidTasks."""

    figure = "sinusoid_fits.png"
    metric = f"query MSE ({EVAL_QUERY_POINTS} points per task)"

    def __init__(self, config, seeds, progress=True):
        self.config, self.seeds = config, seeds
        self.model = build_model(config)
        self.tasks = SinusoidTasks(config.shots, config.queries, seed=seeds["train_tasks"])

    def sample(self, meta_batch):
        return self.tasks.sample(meta_batch)[0]

    def get_state(self):
        return self.tasks.get_state()

    def set_state(self, state):
        self.tasks.set_state(state)

    def metrics_before_step(self, theta, alpha, batch):
        """The query loss at θ, before any adaptation (one extra forward pass)."""
        return {"query_loss_pre": float(self.model.loss(theta, batch.x_query, batch.y_query).mean())}

    def validate(self, theta, alpha):
        return {}

    def evaluate(self, theta, alpha, steps, tasks, seed, batch_size):
        return evaluate_sinusoid(self.model, theta, alpha, steps, tasks, seed, self.config.shots,
                                 EVAL_QUERY_POINTS, batch_size)

    def plot(self, path, theta, alpha, records, title):
        """MAML's figure: fits to a few test tasks before and after 1 and 10 inner steps."""
        return plots.plot_sinusoid_fits(self.model, theta, alpha, path, shots=self.config.shots,
                                        seed=self.seeds["plot_tasks"],
                                        title=f"{title}, iteration {records[-1]['iteration']}")


class OmniglotTask:
    """N-way K-shot Omniglot: MAML's CNN, a TaskSampler on the meta-train characters and a
    fixed set of validation tasks (the validation sampler restarts from the same state)."""

    figure = "accuracy.png"

    def __init__(self, config, seeds, progress=True):
        self.config = config
        self.model = build_model(config)
        data = load_omniglot(config.data_dir, progress=progress)
        self.images = data.images
        self.split = split_characters(data.num_characters, **OMNIGLOT_SPLIT)
        self.tasks = self.sampler("train", seeds["train_tasks"])
        self.val_sampler = self.sampler("val", seeds["val_tasks"])
        self.val_start = self.val_sampler.get_state()
        self.metric = f"query accuracy ({config.ways}-way {config.shots}-shot, meta-test characters)"

    def sampler(self, split, seed):
        """A TaskSampler of the config's N-way K-shot tasks over one split ("train", "val", "test");
        raises ValueError when the split has too few classes or drawings for them."""
        config = self.config
        return TaskSampler(self.images, self.split[split], config.ways, config.shots, config.queries, seed=seed)

    def sample(self, meta_batch):
        return to_task_batch(self.tasks.sample(meta_batch))

    def get_state(self):
        return self.tasks.get_state()

    def set_state(self, state):
        self.tasks.set_state(state)

    def metrics_before_step(self, theta, alpha, batch):
        """Query loss and accuracy at θ, and the query accuracy after the training inner steps."""
        phi = adapt(self.model, theta, batch.x_support, batch.y_support, alpha, self.config.inner_steps)
        return {"query_loss_pre": float(self.model.loss(theta, batch.x_query, batch.y_query).mean()),
                "train_accuracy_pre": float(query_accuracy(self.model, theta, batch).mean()),
                "train_accuracy_post": float(query_accuracy(self.model, phi, batch).mean())}

    def validate(self, theta, alpha):
        """Mean query accuracy on the validation tasks after ``test_inner_steps`` steps."""
        self.val_sampler.set_state(self.val_start)
        accuracy = []
        for start in range(0, self.config.val_tasks, VAL_BATCH):
            batch = to_task_batch(self.val_sampler.sample(min(VAL_BATCH, self.config.val_tasks - start)))
            phi = adapt(self.model, theta, batch.x_support, batch.y_support, alpha,
                        self.config.test_inner_steps)
            accuracy.append(query_accuracy(self.model, phi, batch))
        return {"val_accuracy": float(np.concatenate(accuracy).mean())}

    def evaluate(self, theta, alpha, steps, tasks, seed, batch_size):
        return evaluate_omniglot(self.model, theta, alpha, steps, self.sampler("test", seed), tasks, batch_size)

    def plot(self, path, theta, alpha, records, title):
        """Train (pre/post-update) and validation accuracy over the iterations."""
        plots.plot_accuracy(records, path, title)


TASK_CLASSES = {"sinusoid": SinusoidTask, "omniglot": OmniglotTask}


def make_task(config, seeds, progress=True):
    """The task object of a config (loads Omniglot when it is the task)."""
    return TASK_CLASSES[config.task](config, seeds, progress)
