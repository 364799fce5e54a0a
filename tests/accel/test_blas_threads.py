"""accel.blas_threads: the BLAS pool is found, limited and restored; the Numba passes run under it."""

import numpy as np
import pytest

import accel
import refimpl
from accel import blas_threads, cpu

needs_pool = pytest.mark.skipif(not blas_threads.controllers(),
                                reason="no OpenBLAS / MKL thread pool found in this process")


def test_loaded_libraries_lists_this_process_libraries():
    libs = blas_threads._loaded_libraries()
    # numpy's extension modules are shared libraries mapped into this process (Linux)
    if libs:
        assert any("numpy" in p for p in libs)


@needs_pool
def test_limit_sets_and_restores_the_thread_count():
    before = blas_threads.current()
    with blas_threads.limit(1):
        assert blas_threads.current() == [1] * len(before)
    assert blas_threads.current() == before


@needs_pool
def test_limit_restores_after_an_exception():
    before = blas_threads.current()
    with pytest.raises(RuntimeError):
        with blas_threads.limit(1):
            raise RuntimeError("boom")
    assert blas_threads.current() == before


@needs_pool
def test_numba_step_runs_with_one_blas_thread(monkeypatch):
    be = accel.get_backend("cpu")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 5))
    Y = rng.standard_normal((30, 1))
    net = refimpl.RandomNetwork.sample(5, 4, 1, width=200, seed=0)
    sim = be.BottleneckSimulator(net, X, Y, lr=0.5)
    seen = []
    inner = cpu.history_pass

    def spy(*args, **kwargs):
        seen.append(blas_threads.current())
        return inner(*args, **kwargs)

    monkeypatch.setattr(cpu, "history_pass", spy)
    before = blas_threads.current()
    sim.step(np.arange(5))
    sim.step(np.arange(5, 10))
    assert seen and all(c == [1] * len(before) for c in seen)
    assert blas_threads.current() == before
