"""Command line: ``python -m numpy_amaml COMMAND ...``.

Each command lives in its own module, which provides ``add_arguments(parser)``
and ``run(args) -> exit code``; modules are imported only when their command runs.
"""
import argparse
import importlib

COMMANDS = {
    "gradcheck": ("numpy_amaml.gradcheck_report", "print a gradient-check table for every layer and model"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numpy_amaml",
                                     description="MAML and Alpha MAML in pure NumPy.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(p)
    args = parser.parse_args(argv)
    return importlib.import_module(args._module).run(args) or 0
