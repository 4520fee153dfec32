"""One writer per folder: an operating-system lock on ``<folder>/.lock``.

``lock_folder(folder)`` takes an exclusive ``fcntl.flock`` on the file ``.lock`` inside the
folder and writes "pid start-time" into it. The lock belongs to the open file, so it lasts
until ``release()`` or until the process ends in any way: ``kill -9`` leaves the file but no
lock, and the next writer takes it over at once. A second writer (another process, or another
``lock_folder`` call in this one) gets FolderLocked, whose message names the folder and the
holder. Readers (``evaluate``) never lock: every file they read is replaced atomically
(numpy_amaml/files.py).

``release()`` deletes ``.lock`` before it lets go, so a folder whose writer finished holds no
trace of the lock. A writer that opened the file just before it was deleted would lock a file
that is no longer the folder's: after taking the lock, ``lock_folder`` checks that the file
it holds is still the one at ``<folder>/.lock`` (same inode), and tries again if not.
POSIX only: where ``fcntl`` is missing (Windows) locking fails with a clear message.
"""
import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:        # Windows
    fcntl = None

LOCK_FILE = ".lock"


class FolderLocked(Exception):
    """Another writer holds this folder; str() is one line naming the folder and the holder."""


class FolderLock:
    """A held lock on one folder; ``release()`` gives it up."""

    def __init__(self, folder, file):
        self.folder, self._file = Path(folder), file

    def release(self):
        """Delete ``.lock`` and drop the lock (closing the file drops the flock); idempotent."""
        if self._file is None:
            return
        try:
            (self.folder / LOCK_FILE).unlink(missing_ok=True)
        except OSError:            # the folder was removed or made read-only: the lock still goes
            pass
        self._file.close()
        self._file = None


def lock_folder(folder):
    """Lock ``folder`` (which must exist) for this process; return the FolderLock.

    Raises FolderLocked if another writer holds it, OSError if ``.lock`` cannot be created
    (a read-only or missing folder), and RuntimeError where the OS has no ``fcntl`` (Windows).
    """
    if fcntl is None:
        raise RuntimeError("locking a folder needs fcntl (POSIX: Linux, macOS); this system has none")
    path = Path(folder) / LOCK_FILE
    while True:
        file = open(path, "a+", encoding="utf-8")       # "a+": never truncates the holder's record
        try:
            _lock_exclusive(file)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip()
            file.close()
            raise FolderLocked(locked_message(folder, describe(holder))) from None
        except BaseException:
            file.close()
            raise
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(file.fileno())):
            break
        file.close()                                     # its holder deleted it meanwhile: again
    file.seek(0)
    file.truncate()
    file.write(f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    file.flush()
    return FolderLock(folder, file)


def _lock_exclusive(file, tries=20, wait_s=0.005):
    """flock(LOCK_EX | LOCK_NB), tried again for up to ``tries · wait_s`` seconds: a reader's
    ``held_by`` holds a shared lock for an instant, and must not turn a writer away."""
    for attempt in range(tries):
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(wait_s)


def locked_message(folder, holder):
    return f"{folder} is being written by another process ({holder}); wait for it to finish or stop it"


def held_by(folder):
    """The holder of ``folder``'s lock in words ("pid 1234, started ..."), or None when no live
    process holds it. Writes nothing: a shared lock, tried and dropped, on ``.lock`` if it exists."""
    if fcntl is None:
        return None
    try:
        file = open(Path(folder) / LOCK_FILE, encoding="utf-8")
    except OSError:
        return None
    with file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return describe(file.read().strip())
        return None


def describe(holder):
    """'pid 1234, started 2024-05-01T10:00:00' from the record "1234 2024-05-01T10:00:00"."""
    parts = holder.split()
    if len(parts) == 2 and parts[0].isdigit():
        return f"pid {parts[0]}, started {parts[1]}"
    return "pid not yet recorded: it is starting"
