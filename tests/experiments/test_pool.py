"""The worker pool of the sweeps (experiments/pool.py), with plain tasks: results, thread variables, a worker
that dies (reported at once, the other tasks still run)."""

import os

import pytest

from experiments.pool import THREAD_VARS, default_jobs, pool_starmap, run_local, thread_env


def square_or_die(task):
    """A task of the tests: ``task["x"] ** 2`` and the worker's OMP_NUM_THREADS; ``die`` ends the worker."""
    if task.get("die"):
        os._exit(3)
    return {"y": task["x"] ** 2, "threads": os.environ.get("OMP_NUM_THREADS"), "pid": os.getpid()}


def add(a, b):
    return a + b


def test_every_task_runs_once_in_workers_with_the_given_thread_variables():
    got, dead = {}, []
    tasks = [{"x": x} for x in range(5)]
    run_local(square_or_die, tasks, 2, {"OMP_NUM_THREADS": "3"}, lambda i, r: got.setdefault(i, r),
              lambda i, msg: dead.append(i))
    assert sorted(got) == list(range(5)) and not dead
    assert [got[i]["y"] for i in range(5)] == [0, 1, 4, 9, 16]
    assert {r["threads"] for r in got.values()} == {"3"}
    assert os.getpid() not in {r["pid"] for r in got.values()} and len({r["pid"] for r in got.values()}) <= 2


def test_a_dead_worker_is_reported_and_the_other_tasks_still_run():
    got, dead = {}, {}
    tasks = [{"x": 1}, {"x": 2, "die": True}, {"x": 3}]
    run_local(square_or_die, tasks, 1, {}, lambda i, r: got.setdefault(i, r), lambda i, msg: dead.setdefault(i, msg))
    assert sorted(got) == [0, 2] and [got[0]["y"], got[2]["y"]] == [1, 9]
    assert list(dead) == [1]
    assert "died (exit status 3); continue it with --resume" in dead[1]


def test_starmap_and_thread_env(monkeypatch):
    assert pool_starmap(add, [(1, 2), (3, 4)], 2, {}) == [3, 7]
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "5")          # the user's setting is kept
    env = thread_env(1)
    assert env["MKL_NUM_THREADS"] == "5" and env["OMP_NUM_THREADS"] == str(default_jobs())


def test_dask_client_refuses_in_one_line_without_dask_or_a_scheduler(monkeypatch):
    from experiments import pool
    from experiments.validate import TrainError
    monkeypatch.setattr(pool, "DASK_CONNECT_TIMEOUT", "1s")
    with pytest.raises(TrainError, match="^scheduler: "):
        pool.dask_client("tcp://127.0.0.1:9")
