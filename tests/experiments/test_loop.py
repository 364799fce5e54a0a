"""The one SGD loop (experiments/loop.py): the same steps as a hand-written loop, callbacks, stop and divergence."""

import numpy as np
import pytest

import refimpl
from refimpl.dynamics import DivergenceError
from refimpl.finite import FiniteNetwork
from experiments.loop import BatchOrder, SGDLoop, batch_indices, due, every, full_batch
from experiments.backends import resolve_backend
from experiments.validate import TrainError


def _problem(n=30, d0=4, dr=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d0)), rng.standard_normal((n, dr))


def test_batch_order_is_batch_indices_and_refuses_a_batch_larger_than_the_data():
    order = BatchOrder(3, 25, 4)
    assert all(np.array_equal(order(t), batch_indices(3, t, 25, 4)) for t in range(15))
    assert np.array_equal(full_batch(7)(5), np.arange(7))
    with pytest.raises(TrainError, match="batch_size: expected at most the number of training points"):
        batch_indices(0, 0, 5, 6)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("width", [4, "inf"])
def test_the_loop_makes_the_hand_written_steps_bit_for_bit(width, backend):
    X, Y = _problem()
    be = resolve_backend(backend)

    def make():
        if width == "inf":
            return be.InfiniteSimulator(X, Y, lr=0.3, seed=1)
        return be.BottleneckSimulator(refimpl.RandomNetwork.sample(4, width, 2, width=300, seed=1), X, Y, lr=0.3)
    by_hand, looped = make(), make()
    losses = [by_hand.step(batch_indices(2, t, 30, 6)) for t in range(7)]
    seen = []
    last = SGDLoop(looped.step, BatchOrder(2, 30, 6), after=[lambda done, loss: seen.append(loss)]).run(0, 7)
    assert seen == losses and last == losses[-1] and looped.t == 7
    assert np.array_equal(by_hand.outputs(X), looped.outputs(X))


def test_a_finite_network_steps_through_a_closure_and_a_resumed_loop_continues_the_same_batches():
    X, Y = _problem()
    a, b = (FiniteNetwork.sample(4, 3, 2, width=50, seed=0) for _ in range(2))
    for t in range(6):
        idx = batch_indices(0, t, 30, 5)
        a.step(X[idx], Y[idx], lr=0.2)
    loop = SGDLoop(lambda idx: b.step(X[idx], Y[idx], lr=0.2), BatchOrder(0, 30, 5))
    loop.run(0, 2)
    loop.run(2, 6)                                   # as a resumed run: from step 2 on
    assert loop.done == 6 and np.array_equal(a.outputs(X), b.outputs(X))


def test_callbacks_run_in_order_on_their_schedule_and_progress_counts_steps():
    calls = []

    class Bar:
        n = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1, loss=None):
            Bar.n += n
            calls.append(("bar", loss))
    loop = SGDLoop(lambda idx: float(idx[0]), lambda t: np.array([10 * t]),
                   before=[lambda step: calls.append(("before", step))],
                   after=[every(3, lambda done: calls.append(("eval", done)), stop=7),
                          lambda done, loss: calls.append(("after", done, loss))],
                   progress=Bar())
    assert loop.run(0, 7) == 60.0
    assert [c[1] for c in calls if c[0] == "eval"] == [3, 6, 7]
    assert calls[:3] == [("before", 0), ("after", 1, 0.0), ("bar", 0.0)]
    assert Bar.n == 7 and loop.step == 6 and loop.done == 7
    assert [due(k, 3, 7) for k in range(1, 8)] == [False, False, True, False, False, True, True]


def test_a_callback_stops_the_loop():
    X, Y = _problem()
    sim = refimpl.InfiniteSimulator(X, Y, lr=0.3, seed=0)
    loop = SGDLoop(sim.step, BatchOrder(0, 30, 6), after=[lambda done, loss: done == 4])
    loop.run(0, 100)
    assert sim.t == 4 and loop.done == 4


def test_divergence_propagates_or_ends_the_loop_with_the_error_kept():
    X, Y = _problem()

    def sim():
        return refimpl.BottleneckSimulator(refimpl.RandomNetwork.sample(4, 3, 2, width=200, seed=0), X, Y, lr=500.0)
    with pytest.raises(DivergenceError):
        SGDLoop(sim().step, BatchOrder(0, 30, 6)).run(0, 50)
    seen = []
    s = sim()
    loop = SGDLoop(s.step, BatchOrder(0, 30, 6), on_divergence=lambda exc, step: seen.append(step))
    loop.run(0, 50)
    assert isinstance(loop.diverged, DivergenceError) and seen == [s.t] and s.t < 50
