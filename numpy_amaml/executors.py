"""Where a sweep's independent cells run: local worker processes, or a Dask cluster.

Both executors have ``map_unordered(fn, jobs)``, a generator that yields ``fn(job)`` for every
job as each finishes, and ``describe(n_jobs)``, where the jobs will run, for the log. ``fn``
must be a module-level function (it is pickled by reference) and its jobs plain data; the
cells write their own result files, so where they run changes nothing in the results, the
resume or the CSV. Close the generator (``contextlib.closing``) to stop early: no further job
is started, and the running ones are ended.

    LocalExecutor(workers)       spawned processes on this machine, each handed one job at a
                                 time through a pipe (so none waits in a queue). Interrupts
                                 are the parent's: a worker ignores Ctrl-C (a terminal sends
                                 it to the whole process group), and the parent ends a
                                 running worker with SIGTERM, which the worker turns into
                                 SystemExit so that the file it was writing is removed by
                                 ``files.atomic_write``. A worker starts with both signals
                                 blocked, so one sent while it imports waits until it has
                                 set what to do with it. A worker also exits when its parent
                                 dies (a ``kill -9`` of the sweep leaves no worker computing
                                 a cell for nobody).
    DaskExecutor(address)        the workers of an existing Dask distributed cluster (the
                                 optional ``distributed`` package): ``dask scheduler`` on one
                                 machine, ``dask worker ADDRESS --nthreads 1`` on each of the
                                 others, then ``sweep ... --dask-scheduler ADDRESS``. The
                                 workers must see the same output folder (a shared file
                                 system) and have numpy_amaml installed. Stopping early
                                 cancels the jobs not yet started; Dask cannot stop the
                                 running ones, which finish and write their results.
"""
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing import resource_tracker
from multiprocessing.connection import wait

from numpy_amaml.interrupts import Interrupted

PARENT_CHECK_SECONDS = 1.0
STOP_SECONDS = 10.0         # how long stopped workers get to end before they are killed
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class ExecutorError(RuntimeError):
    """The cells cannot be sent where they were asked to go (no ``distributed``, no scheduler),
    or a worker process died without a result (killed, out of memory)."""


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _exit_with_parent(parent_pid):
    """A daemon thread that ends this process once its parent is gone."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _work(fn, connection, parent_pid):
    """A worker process: run ``fn`` on each job the parent sends and send back the result,
    until the parent closes the pipe. Ctrl-C is ignored; SIGTERM raises SystemExit (also one
    sent while this process started, blocked until now: ``_start_worker``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _exit_with_parent(parent_pid)
    while True:
        try:
            job = connection.recv()
        except EOFError:                    # the parent closed the pipe: no more jobs
            return
        connection.send(fn(job))


class LocalExecutor:
    """``workers`` spawned processes on this machine."""

    def __init__(self, workers=None):
        self.workers = max(1, workers or os.cpu_count() or 1)

    def describe(self, n_jobs):
        n = max(1, min(self.workers, n_jobs))
        return f"{n} local worker process{'es' if n > 1 else ''}"

    def map_unordered(self, fn, jobs):
        """Start min(workers, jobs) processes, hand each a job, and a new one whenever it sends
        a result; on leaving (finished, interrupted or closed) end them all (``_stop``)."""
        queue = list(jobs)[::-1]                # pop() takes the jobs in their order
        workers, busy = {}, set()               # the parent's end of each pipe -> its process
        try:
            for _ in range(min(self.workers, len(queue))):
                connection = _start_worker(fn, workers)
                _send(connection, queue.pop(), workers[connection])
                busy.add(connection)
            while busy:
                for connection in wait(busy):
                    try:
                        result = connection.recv()
                    except (EOFError, OSError):
                        raise _worker_lost(workers[connection]) from None
                    busy.discard(connection)
                    if queue:
                        _send(connection, queue.pop(), workers[connection])
                        busy.add(connection)
                    yield result
        finally:
            _stop(workers, busy)


def _start_worker(fn, workers):
    """Spawn a worker process running ``_work(fn)``, add it to ``workers`` (the parent's end of
    its pipe -> the process) and return that end.

    The child is started by a helper thread whose signal mask blocks SIGINT and SIGTERM; the
    child inherits the mask, so a Ctrl-C sent to the whole process group while it imports
    waits until ``_work`` has set what to do with it (instead of raising KeyboardInterrupt
    there, with a traceback). A Ctrl-C that reaches this (main) thread meanwhile is held until
    the child has started (a child half-started would fail reading its pipe), then raised."""
    outcome = []

    def start():
        try:
            resource_tracker.ensure_running()   # first: starting it unblocks both signals
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)      # in this thread only
            context = multiprocessing.get_context("spawn")
            ours, theirs = context.Pipe()
            process = context.Process(target=_work, args=(fn, theirs, os.getpid()), daemon=True)
            process.start()
            theirs.close()                      # the child's end: ours reads EOF when it dies
            outcome.append((ours, process))
        except BaseException as err:            # raised in the main thread below
            outcome.append(err)

    starter = threading.Thread(target=start, name="start-worker")
    starter.start()
    interrupt = None
    while starter.is_alive():
        try:
            starter.join()
        except KeyboardInterrupt as err:
            interrupt = interrupt or err
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    connection, process = outcome[0]
    workers[connection] = process
    if interrupt is not None:
        raise interrupt
    return connection


def _send(connection, job, process):
    try:
        connection.send(job)
    except OSError:                             # the worker is gone
        raise _worker_lost(process) from None


def _worker_lost(process):
    """The error for a worker whose pipe closed without a result: Interrupted when SIGTERM
    ended it (a signal to the whole process group may reach it before the parent), else
    ExecutorError."""
    process.join(STOP_SECONDS)
    code = process.exitcode
    if code in (128 + signal.SIGTERM, -signal.SIGTERM):
        return Interrupted(signal.SIGTERM)
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    return ExecutorError(f"a worker process ended without finishing its cell ({how}; out of memory?)")


def _stop(workers, busy):
    """Close every pipe (an idle worker returns), SIGTERM the busy workers (each ends its cell
    through SystemExit), wait up to STOP_SECONDS, then kill what is left. A second Ctrl-C
    during the wait skips it."""
    try:
        for connection, process in workers.items():
            connection.close()
            if connection in busy:
                process.terminate()
        for process in workers.values():
            process.join(STOP_SECONDS)
    finally:
        for process in workers.values():
            if process.is_alive():
                process.kill()
                process.join()


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
