"""Signals as exceptions, for every command and the library modules that stop on them.

SIGINT (Ctrl-C) is Python's KeyboardInterrupt. SIGTERM is raised as ``Interrupted``, a
KeyboardInterrupt that carries the signal's number, so the same clean-up runs for both and the
exit status can be 128 + the number (130, 143), as a shell reports them. numpy_amaml/cli.py
installs the SIGTERM handler while a command runs.
"""
import signal
import sys


class Interrupted(KeyboardInterrupt):
    """A signal other than SIGINT (SIGTERM) raised as KeyboardInterrupt; ``signum`` says which."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def new_line():
    """"\n" before a last message on a terminal, where ^C or a progress bar left the cursor
    mid-line; nothing on a pipe or file, so that the message stays one line there."""
    return "\n" if sys.stderr.isatty() else ""
