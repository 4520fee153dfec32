"""The command-line commands, one module each (``python -m numpy_amaml COMMAND``).

Each module provides ``add_arguments(parser)`` and ``run(args) -> exit code`` and does
the command's own work only: parsing, printing, exit codes. Everything it computes comes
from the library modules in the package root; no command imports another command.
"""
