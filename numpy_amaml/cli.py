"""Command line: ``python -m numpy_amaml COMMAND ...``.

Each command lives in its own module under ``numpy_amaml/commands/``, which provides
``add_arguments(parser)`` and ``run(args) -> exit code``; a module is imported only when its
command runs. The environment variables (NUMPY_AMAML_BACKEND, _DTYPE, _THREADS) are checked
first, so a wrong one is a one-line error before anything is created. Every command runs
with glibc told to keep freed array memory for reuse (numpy_amaml/allocator.py).

Signals: Ctrl-C (SIGINT) and SIGTERM both raise KeyboardInterrupt where the program is (a
SIGTERM as ``Interrupted``, which carries its number), so every command's clean-up runs; a
command that does not say itself what it saved ends here with one line. The exit status is
128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them.

Output: on a stream that cannot encode the symbols the messages use (a non-UTF-8 locale or
PYTHONIOENCODING=ascii), each is written in ASCII (α -> alpha, ± -> +/-, ...) instead of
raising UnicodeEncodeError.
"""
import argparse
import codecs
import importlib
import signal
import sys
import threading

from numpy_amaml import backend, parallel
from numpy_amaml.allocator import keep_freed_memory
from numpy_amaml.interrupts import Interrupted, new_line

COMMANDS = {
    "gradcheck": ("numpy_amaml.commands.gradcheck", "print a gradient-check table for every layer and model"),
    "assignments": ("numpy_amaml.commands.assignments", "make student versions of the tutorial notebooks"),
    "bench": ("numpy_amaml.commands.bench", "time and measure the memory of one meta-iteration (prints a table)"),
    "train": ("numpy_amaml.commands.train", "meta-train MAML or Alpha MAML on sinusoids or Omniglot"),
    "evaluate": ("numpy_amaml.commands.evaluate", "meta-test a trained run: post-update MSE / accuracy with 95% CI"),
    "sweep": ("numpy_amaml.commands.sweep", "sensitivity to the initial (α, β): a grid of runs in parallel, heatmaps"),
}


# What an interrupted command leaves behind, for the one line it ends with (train and sweep say
# it themselves, with the checkpoint or the cells that are kept).
AFTER_INTERRUPT = {
    "evaluate": "evaluation.json is written only at the end: nothing was written",
    "gradcheck": "it writes no file",
    "bench": "it writes no file",
    "assignments": "each notebook is written whole: those written so far are complete",
}
ASCII = {"α": "alpha", "β": "beta", "γ": "gamma", "θ": "theta", "φ": "phi", "λ": "lambda", "ε": "eps",
         "∂": "d", "∇": "grad", "±": "+/-", "≥": ">=", "≤": "<=", "≈": "~", "×": "x", "·": "*", "−": "-",
         "–": "-", "—": "-", "…": "...", "→": "->", "←": "<-", "‖": "||", "√": "sqrt", "²": "^2",
         "₀": "0", "₁": "1"}


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def _ascii_replace(error):
    """Codec error handler: the ASCII spelling of each character the stream cannot encode."""
    text = error.object[error.start:error.end]
    return "".join(ASCII.get(char, "?") for char in text), error.end


codecs.register_error("numpy_amaml_ascii", _ascii_replace)


def ascii_fallback(stream):
    """Let ``stream`` write what its encoding lacks in ASCII (``ASCII``), not raise."""
    try:
        "α±≥".encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError, AttributeError, TypeError):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="numpy_amaml_ascii")


def main(argv=None):
    """Run one command; SIGTERM is handled (as above) while it runs, then the previous handler is back."""
    for stream in (sys.stdout, sys.stderr):
        ascii_fallback(stream)
    argv = sys.argv[1:] if argv is None else list(argv)
    on_main_thread = threading.current_thread() is threading.main_thread()   # where signals arrive
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if on_main_thread else None
    try:
        return _main(argv)
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        command = argv[0] if argv else "python -m numpy_amaml"
        after = AFTER_INTERRUPT.get(command)
        print(f"{new_line()}{what}: {command} did not finish" + (f"; {after}" if after else ""), file=sys.stderr)
        return 128 + signum
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv):
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
