"""Keep freed array memory for reuse (glibc's malloc, Linux): fewer page faults.

Every NumPy array takes its buffer from ``malloc``. glibc serves large requests (above a
threshold that starts at 128 KiB and adapts) with a fresh ``mmap`` and hands them back to
the system with ``munmap`` when the array is freed, and it trims the top of its heap back
to the system whenever more than 128 KiB there is free. A meta-iteration allocates and
frees the same few hundred activation buffers, of a few hundred KiB to a few MiB, again
and again; each fresh mapping is zero-filled by the kernel page by page on first touch
(a page fault per 4 KiB). Raising both thresholds lets glibc keep the freed blocks in
its heap and hand the same memory out again:

    M_MMAP_THRESHOLD = 64 MiB    requests below this come from the heap
    M_TRIM_THRESHOLD = 256 MiB   free memory at the heap's top is kept up to this

(the values of the environment variables MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_;
both must be set: fixing one switches glibc's adaptation off and leaves the other at
128 KiB, which is slower than either default). Measured on the strided Omniglot CNN, one
thread: ~6,000 page faults per meta-iteration fewer, 7 % less time. The price: a process
may keep up to 256 MiB of freed memory instead of returning it.

``keep_freed_memory()`` is called by the command line (``python -m numpy_amaml ...``)
before any command runs; library users may call it themselves. Elsewhere than glibc
(macOS, Windows, musl) it does nothing and returns False.
"""
import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3       # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 64 * 2**20
TRIM_THRESHOLD = 256 * 2**20


def keep_freed_memory():
    """Set glibc's mmap and trim thresholds (above). True if both were set, else False."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt                  # glibc only (musl has none)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
