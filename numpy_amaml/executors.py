"""Where a sweep's independent cells run: local worker processes, or a Dask cluster.

Both executors have ``map_unordered(fn, jobs)``, which yields ``fn(job)`` for every job as
each finishes, and ``describe(n_jobs)``, where the jobs will run, for the log. ``fn`` must be a module-level
function (it is pickled by reference) and its jobs plain data; the cells write their own
result files, so where they run changes nothing in the results, the resume or the CSV.

    LocalExecutor(workers)       spawned processes on this machine. Each worker watches its
                                 parent and exits when the parent dies (a ``kill -9`` of the
                                 sweep leaves no worker computing a cell for nobody).
    DaskExecutor(address)        the workers of an existing Dask distributed cluster (the
                                 optional ``distributed`` package): ``dask scheduler`` on one
                                 machine, ``dask worker ADDRESS --nthreads 1`` on each of the
                                 others, then ``sweep ... --dask-scheduler ADDRESS``. The
                                 workers must see the same output folder (a shared file
                                 system) and have numpy_amaml installed.
"""
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

PARENT_CHECK_SECONDS = 1.0


class ExecutorError(RuntimeError):
    """The cells cannot be sent where they were asked to go (no ``distributed``, no scheduler)."""


def _exit_with_parent(parent_pid):
    """Worker initializer: a daemon thread that ends this process once its parent is gone."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


class LocalExecutor:
    """``workers`` spawned processes on this machine."""

    def __init__(self, workers=None):
        self.workers = max(1, workers or os.cpu_count() or 1)

    def describe(self, n_jobs):
        n = max(1, min(self.workers, n_jobs))
        return f"{n} local worker process{'es' if n > 1 else ''}"

    def map_unordered(self, fn, jobs):
        if not jobs:
            return
        workers = min(self.workers, len(jobs))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(fn, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    yield future.result()
            except BaseException:           # Ctrl-C or an error: do not start the queued cells
                for future in futures:
                    future.cancel()
                raise


class DaskExecutor:
    """The workers of the Dask distributed cluster whose scheduler is at ``address``."""

    def __init__(self, address):
        try:
            from distributed import Client
        except ImportError:
            raise ExecutorError("--dask-scheduler needs the optional package 'distributed' "
                               "(pip install distributed)") from None
        try:
            self.client = Client(address, timeout="10s")
        except (OSError, TimeoutError) as err:
            raise ExecutorError(f"cannot reach the Dask scheduler at {address}: {err}") from None
        self.address = address

    def describe(self, n_jobs):
        workers = len(self.client.scheduler_info().get("workers", {}))
        return f"the Dask cluster at {self.address} ({workers} workers)"

    def map_unordered(self, fn, jobs):
        """Submit every job, yield the results as they come; then disconnect from the cluster."""
        from distributed import as_completed as dask_as_completed
        futures = [self.client.submit(fn, job, pure=False) for job in jobs]
        try:
            for future in dask_as_completed(futures):
                yield future.result()
        except BaseException:
            self.client.cancel(futures)
            raise
        finally:
            self.client.close()
