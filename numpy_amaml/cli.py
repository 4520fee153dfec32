"""Command line: ``python -m numpy_amaml COMMAND ...``.

Each command lives in its own module under ``numpy_amaml/commands/``, which provides
``add_arguments(parser)`` and ``run(args) -> exit code``; a module is imported only when its
command runs. The environment variables (NUMPY_AMAML_BACKEND, _DTYPE, _THREADS) are checked
first, so a wrong one is a one-line error before anything is created. Every command runs
with glibc told to keep freed array memory for reuse (numpy_amaml/allocator.py).
"""
import argparse
import importlib
import sys

from numpy_amaml import backend, parallel
from numpy_amaml.allocator import keep_freed_memory

COMMANDS = {
    "gradcheck": ("numpy_amaml.commands.gradcheck", "print a gradient-check table for every layer and model"),
    "assignments": ("numpy_amaml.commands.assignments", "make student versions of the tutorial notebooks"),
    "bench": ("numpy_amaml.commands.bench", "time and measure the memory of one meta-iteration (prints a table)"),
    "train": ("numpy_amaml.commands.train", "meta-train MAML or Alpha MAML on sinusoids or Omniglot"),
    "evaluate": ("numpy_amaml.commands.evaluate", "meta-test a trained run: post-update MSE / accuracy with 95% CI"),
    "sweep": ("numpy_amaml.commands.sweep", "sensitivity to the initial (α, β): a grid of runs in parallel, heatmaps"),
}


def main(argv=None):
    commands = "\n".join(f"  {name:10s} {help_text}" for name, (_, help_text) in COMMANDS.items())
    parser = argparse.ArgumentParser(prog="python -m numpy_amaml",
                                     description="MAML and Alpha MAML in pure NumPy.",
                                     epilog="commands:\n" + commands,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of the commands below")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the command's own options (COMMAND -h)")
    top = parser.parse_args(argv)

    try:        # the environment's settings, checked before any work: one line if one is wrong
        backend.backend_name(), backend.float_dtype(), parallel.threads()
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    keep_freed_memory()
    module_name, help_text = COMMANDS[top.command]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"python -m numpy_amaml {top.command}", description=help_text)
    module.add_arguments(sub)
    return module.run(sub.parse_args(top.arguments)) or 0
