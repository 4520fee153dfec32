"""Command line: ``python -m numpy_amaml COMMAND ...``.

Each command lives in its own module, which provides ``add_arguments(parser)``
and ``run(args) -> exit code``; a module is imported only when its command runs.
"""
import argparse
import importlib

COMMANDS = {
    "gradcheck": ("numpy_amaml.gradcheck_report", "print a gradient-check table for every layer and model"),
    "assignments": ("numpy_amaml.assignments", "make student versions of the tutorial notebooks"),
    "bench": ("numpy_amaml.bench", "time and measure the memory of one meta-iteration (prints a table)"),
    "train": ("numpy_amaml.train", "meta-train MAML or Alpha MAML on sinusoids or Omniglot"),
    "evaluate": ("numpy_amaml.evaluate", "meta-test a trained run: post-update MSE / accuracy with 95% CI"),
    "sweep": ("numpy_amaml.sweep", "sensitivity to the initial (α, β): a grid of runs in parallel, heatmaps"),
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

    module_name, help_text = COMMANDS[top.command]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"python -m numpy_amaml {top.command}", description=help_text)
    module.add_arguments(sub)
    return module.run(sub.parse_args(top.arguments)) or 0
