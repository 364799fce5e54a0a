"""One GPU per sweep worker: which devices there are, how many workers, which worker gets which.

``cli.py sweep --backend gpu`` starts one local worker process per GPU by default; each worker
sets ``CUDA_VISIBLE_DEVICES`` to its own device before CuPy is imported (the worker's
initializer runs before any task), so CuPy in that worker sees exactly one device, as device 0.
The device list is the entries of ``CUDA_VISIBLE_DEVICES`` when the user set it, else every
device CuPy counts.  With more workers than devices (``--jobs``), devices are shared round-robin.

On a Dask cluster the same is done by starting one worker per GPU, each with its own
``CUDA_VISIBLE_DEVICES`` (see the README).
"""

from __future__ import annotations

import os

ENV = "CUDA_VISIBLE_DEVICES"


def device_count():
    """Number of CUDA devices CuPy sees here (0 without CuPy or driver); creates no context."""
    try:
        import cupy
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:                                   # noqa: BLE001 - no CuPy, no driver
        return 0


def gpu_ids(environ=None, count=None):
    """Device ids (strings) that workers may be given.

    The entries of ``CUDA_VISIBLE_DEVICES`` if set (up to the first invalid one, as CUDA reads
    it: ``-1`` hides every device), else ``0 .. count - 1`` with ``count`` from
    :func:`device_count` unless given.
    """
    env = os.environ if environ is None else environ
    raw = env.get(ENV)
    if raw is not None:
        out = []
        for item in raw.split(","):
            item = item.strip()
            if not item or item.startswith("-"):
                break
            out.append(item)
        return out
    n = device_count() if count is None else count
    return [str(i) for i in range(n)]


def uses_gpu(backend, ids):
    """Whether workers of ``backend`` run on GPUs ("gpu"; "auto" when there are any)."""
    return backend == "gpu" or (backend == "auto" and bool(ids))


def default_jobs(backend, cpu_jobs, ids=None):
    """Default number of workers: one per GPU for a GPU backend, else ``cpu_jobs``."""
    ids = gpu_ids() if ids is None else ids
    if uses_gpu(backend, ids):
        return max(1, len(ids))
    return cpu_jobs


def assign(jobs, ids):
    """Device of each of ``jobs`` workers: ids round-robin."""
    return [ids[k % len(ids)] for k in range(jobs)] if ids else [None] * jobs


def worker_slots(backend, ids=None, context=None):
    """What a worker initializer needs to claim a device: ``(ids, shared counter)``, or None
    when the backend does not use GPUs (or none is visible)."""
    ids = gpu_ids() if ids is None else ids
    if not uses_gpu(backend, ids) or not ids:
        return None
    import multiprocessing
    ctx = context or multiprocessing.get_context("spawn")
    return list(ids), ctx.Value("i", 0)


def claim(slots, environ=None):
    """In a new worker (before CuPy is imported): take the next device and make it the only one
    visible.  Returns the device id (None when ``slots`` is None)."""
    if slots is None:
        return None
    ids, counter = slots
    with counter.get_lock():
        k = counter.value
        counter.value = k + 1
    device = assign(k + 1, ids)[k]
    (os.environ if environ is None else environ)[ENV] = device
    return device


def visible(_=None):
    """This process's CUDA_VISIBLE_DEVICES (for tests and logs; the argument is ignored)."""
    return os.environ.get(ENV)
