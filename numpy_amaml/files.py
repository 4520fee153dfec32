"""The one way this package writes a file: atomically.

``atomic_write(path)`` opens a temporary file in the same folder and renames it onto
``path`` only when the ``with`` block finishes without an exception. The rename is atomic
on POSIX and Windows, so a reader (or a crash, a full disk, ``kill -9``) sees the old file
or the complete new one, never a half-written file. On an exception the temporary file is
deleted. Checkpoints, the Omniglot cache and downloads, run folders' config and metrics,
and the sweep's cell results, CSV and summary all go through it.

The temporary file is named ``.<name>.<random>.tmp``: hidden, and recognisable if a
``kill -9`` ever leaves one behind (``remove_stale_temporaries`` clears them once they are
old enough that no live writer can own them).
"""
import contextlib
import os
import tempfile
import time
from pathlib import Path

STALE_AFTER_S = 3600     # a temporary file untouched this long belongs to no running writer


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """``with atomic_write(path) as f: ...``: write ``f`` (binary, or text with mode="w"),
    then rename it onto ``path``; ``path`` is untouched if the block raises."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)                       # mkstemp creates files readable by the owner only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text):
    """Replace the file at ``path`` by ``text`` (UTF-8), atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def remove_stale_temporaries(folder, name):
    """Delete temporary files that an interrupted ``atomic_write(folder / name)`` left behind:
    those last modified more than STALE_AFTER_S seconds ago. A younger one may be another
    process's write in progress (two runs, or two sweep workers, building the same Omniglot
    cache at once): deleting it would make that write fail."""
    for leftover in Path(folder).glob(f".{name}.*.tmp"):
        try:
            if time.time() - leftover.stat().st_mtime > STALE_AFTER_S:
                leftover.unlink(missing_ok=True)
        except FileNotFoundError:          # its writer finished (renamed it) meanwhile
            pass
