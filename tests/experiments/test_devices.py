"""One GPU per sweep worker (experiments.devices), tested with fake device lists."""

import multiprocessing
import time

from experiments import devices
from experiments.pool import worker_init


def test_gpu_ids_from_the_environment_or_the_count():
    assert devices.gpu_ids({"CUDA_VISIBLE_DEVICES": "2, 5,7"}) == ["2", "5", "7"]
    assert devices.gpu_ids({"CUDA_VISIBLE_DEVICES": "3,-1,4"}) == ["3"]      # CUDA stops at -1
    assert devices.gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert devices.gpu_ids({}, count=4) == ["0", "1", "2", "3"]
    assert devices.gpu_ids({}, count=0) == []


def test_default_jobs_is_one_per_gpu_for_the_gpu_backend():
    four = ["0", "1", "2", "3"]
    assert devices.default_jobs("gpu", 16, ids=four) == 4
    assert devices.default_jobs("auto", 16, ids=four) == 4
    assert devices.default_jobs("auto", 16, ids=[]) == 16
    assert devices.default_jobs("cpu", 16, ids=four) == 16
    assert devices.default_jobs("gpu", 16, ids=[]) == 1      # fails later with the backend's reason
    assert devices.assign(6, ["a", "b", "c"]) == ["a", "b", "c", "a", "b", "c"]


def test_each_worker_claims_its_own_device():
    ctx = multiprocessing.get_context("spawn")
    slots = devices.worker_slots("gpu", ids=["4", "6", "9"], context=ctx)
    envs = [{} for _ in range(4)]
    got = [devices.claim(slots, env) for env in envs]
    assert got == ["4", "6", "9", "4"]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == got
    assert devices.worker_slots("cpu", ids=["0"]) is None and devices.claim(None) is None


def test_sweep_workers_see_one_device_each(monkeypatch):
    """The sweep's own pool initializer (spawned processes) sets CUDA_VISIBLE_DEVICES per worker."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,8")
    ctx = multiprocessing.get_context("spawn")
    slots = devices.worker_slots("gpu", context=ctx)
    assert slots[0] == ["5", "8"]
    with ctx.Pool(processes=2, initializer=worker_init, initargs=(slots,)) as pool:
        seen = set(pool.map(devices.visible, range(4), chunksize=1))
        deadline = time.monotonic() + 60
        while slots[1].value < 2 and time.monotonic() < deadline:   # both initializers ran
            time.sleep(0.05)
    assert seen and seen <= {"5", "8"} and slots[1].value == 2
