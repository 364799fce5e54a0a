"""Worker processes of the sweeps: a local process pool and a Dask cluster.

* :func:`run_local`: tasks in ``jobs`` local worker processes (started with ``spawn``; a script that
  uses it needs the usual ``if __name__ == "__main__":`` guard of multiprocessing).  Every worker gets the
  thread variables (``OMP_NUM_THREADS`` etc.) it is given, so that the BLAS rounding, and with it every
  number, is the same whatever the number of workers (:func:`thread_env`).  A worker that dies is noticed at
  once; workers die with the parent process (``PR_SET_PDEATHSIG`` on Linux, a watchdog on the parent pid
  elsewhere) and leave Ctrl-C and SIGTERM to it; with a GPU backend each takes its own device
  (:mod:`experiments.devices`).
* :func:`pool_starmap`: ``starmap`` in such workers (the per-width rate probes of :mod:`experiments.lr_probe`).
* :func:`dask_client` / :func:`run_dask`: the same tasks on an existing Dask cluster (the optional
  ``dask[distributed]``; connected before anything is written).
"""

from __future__ import annotations

import contextlib
import os
import time

from . import devices
from .validate import TrainError

#: Environment variables that set the thread count of BLAS / OpenMP / Numba in a worker.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
#: How long to wait for a Dask scheduler before giving up.
DASK_CONNECT_TIMEOUT = "10s"


def default_jobs():
    """Number of cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


def thread_env(jobs):
    """The thread variables of every worker of a new sweep: the user's where set, else ``cores // jobs``.

    They are stored in sweep.json and applied again on resume, whatever ``--jobs`` then is, because
    the number of BLAS threads changes the rounding of the results.
    """
    threads = str(max(1, default_jobs() // jobs))
    return {k: os.environ.get(k) or threads for k in THREAD_VARS}


@contextlib.contextmanager
def _environ(values):
    """Set environment variables for the worker processes about to be spawned."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _die_with_parent(parent_pid):
    """Make this worker die when the sweep process does (Linux: PR_SET_PDEATHSIG; elsewhere a watchdog)."""
    import signal
    import threading
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the parent's; it stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_IGN)     # so is SIGTERM (cli.py handles it as Ctrl-C)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:                    # the parent died before prctl took effect
        os._exit(1)

    def watchdog():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)
    threading.Thread(target=watchdog, daemon=True, name="parent-watchdog").start()


def worker_init(device_slots=None):
    """Workers leave Ctrl-C to the parent, which terminates them (no traceback per worker);
    with a GPU backend each takes its own device (experiments.devices)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devices.claim(device_slots)


def _worker_main(conn, parent_pid, fn, device_slots=None):
    """A local worker: runs ``fn`` on the tasks the parent sends until it sends None."""
    _die_with_parent(parent_pid)
    worker_init(device_slots)
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        i, task = item
        conn.send((i, fn(task)))


def _dead_worker_message(proc):
    """Why the task of the dead worker ``proc`` did not finish, in one line."""
    code = proc.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    return f"its worker process {proc.pid} died ({how}); continue it with --resume"


def pool_starmap(fn, args, jobs, env):
    """``[fn(*a) for a in args]`` in ``jobs`` spawned worker processes with the sweep's thread variables."""
    import multiprocessing
    with _environ(env):
        with multiprocessing.get_context("spawn").Pool(processes=jobs) as pool:
            return pool.starmap(fn, args)


def run_local(fn, tasks, jobs, env, on_result, on_death, backend=None):
    """Run ``fn(task)`` for the tasks in ``jobs`` spawned worker processes; ``on_result(i, fn(tasks[i]))`` as
    each finishes.

    ``fn`` is a module-level function (the workers import it).  Every worker gets the thread variables
    ``env`` and, with a GPU ``backend``, its own device (:mod:`experiments.devices`).  A worker that dies
    (killed, out of memory) is noticed at once: ``on_death(i, message)`` reports its task ``i`` (the message
    says how it died) and a new worker takes the next task.
    Workers die with this process (so none goes on writing into a run directory), and on any
    interruption here they are killed before this function returns.
    """
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    slots = devices.worker_slots(backend, context=ctx) if tasks and backend else None
    queue = list(enumerate(tasks))
    workers = {}                                   # conn -> [process, current index or None]

    def start():
        parent, child = ctx.Pipe()
        with _environ(env):
            proc = ctx.Process(target=_worker_main, args=(child, os.getpid(), fn, slots), daemon=True)
            proc.start()
        child.close()
        workers[parent] = [proc, None]
        return parent

    def give(conn):
        if queue:
            workers[conn][1] = queue[0][0]
            conn.send(queue.pop(0))
        else:
            conn.send(None)
            workers[conn][0].join()
            del workers[conn]

    try:
        for _ in range(min(jobs, len(queue))):
            give(start())
        while workers:
            sentinels = {w[0].sentinel: c for c, w in workers.items()}
            for ready in wait(list(workers) + list(sentinels)):
                conn = sentinels.get(ready, ready)
                if conn not in workers:
                    continue
                proc, current = workers[conn]
                try:
                    msg = conn.recv() if conn.poll() else None
                except (EOFError, OSError):
                    msg = None
                if msg is not None:
                    workers[conn][1] = None
                    on_result(*msg)
                    give(conn)
                elif not proc.is_alive():
                    proc.join()
                    del workers[conn]
                    if current is not None:
                        on_death(current, _dead_worker_message(proc))
                    if queue:
                        give(start())
    finally:
        for conn, (proc, _) in list(workers.items()):
            if proc.is_alive():
                proc.kill()
            proc.join()
            conn.close()


def dask_client(scheduler):
    """A connected Dask client, or a one-line TrainError (checked before anything is written)."""
    try:
        from distributed import Client
    except ImportError:
        raise TrainError("scheduler: Dask is not installed; pip install 'bottleneck-dynamics[dask]' "
                         "(dask[distributed])") from None
    try:
        return Client(scheduler, timeout=DASK_CONNECT_TIMEOUT)
    except Exception as exc:   # noqa: BLE001 - OSError, TimeoutError, ValueError for a bad address, ...
        raise TrainError(f"scheduler: cannot connect to {scheduler!r}: {exc}".splitlines()[0]) from None


def run_dask(fn, tasks, client, on_result):
    """Run ``fn(task)`` for the tasks on the connected Dask ``client``; ``on_result(i, fn(tasks[i]))`` as each
    finishes; the client is closed at the end."""
    from distributed import as_completed
    try:
        futures = client.map(fn, tasks, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for fut in as_completed(futures):
                on_result(index[fut.key], fut.result())
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        client.close()
