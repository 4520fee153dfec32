"""The memory a batch of tasks needs, estimated before anything is allocated.

Every meta-iteration holds, for each of its B tasks at once, the task's support and query
data and one params-sized array: the task's adjoint λ_{i,0} that the meta-gradient averages
(numpy_amaml.maml.meta_gradient; an evaluation batch holds the adapted φ instead). At least

    bytes per task = itemsize · (samples · input size + parameters),
    samples = (shots + queries) · ways     (ways = 1 for the sinusoid).

A lower bound: Meta-SGD keeps one more params-sized sum per task, and the activations and the
inner loop's φ_k come on top, but those are computed over slices of the task axis (a few tasks
at a time), so they do not grow with B. ``check_memory`` refuses a batch whose lower bound
already exceeds the memory the OS says is available, naming the estimate and how many
tasks fit: a mistyped ``--meta-batch 10000000000`` is one line at once, not minutes of
swapping and then a MemoryError.
"""
import math
import os

import numpy as np

from numpy_amaml.config import ConfigError

MEMINFO = "/proc/meminfo"


def bytes_per_task(config, model):
    """The lower bound above for one task of a run with ``config`` and ``model``."""
    samples = (config.shots + config.queries) * (config.ways or 1)
    return np.dtype(config.dtype).itemsize * (samples * math.prod(model.input_shape) + model.num_params())


def available_memory():
    """Bytes the OS can still give this process (Linux: MemAvailable), else the machine's
    physical memory, else None (then nothing is checked)."""
    try:
        with open(MEMINFO, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def size_text(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024


def check_memory(tasks, per_task, what, held="its data and adapted parameters"):
    """Raise ConfigError when ``tasks`` tasks of ``per_task`` bytes cannot fit in the available
    memory; ``what`` names the option that set ``tasks`` (e.g. "--meta-batch 100000"), ``held``
    what a task holds."""
    available = available_memory()
    if available is None or tasks * per_task <= available:
        return
    raise ConfigError(f"{what} needs at least {size_text(tasks * per_task)} of memory "
                      f"({size_text(per_task)} per task: {held}); "
                      f"{size_text(available)} is available, enough for at most about "
                      f"{available // per_task:,} tasks")
