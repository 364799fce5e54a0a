"""The deep-GP synthetic data set (MATH §7): its construction and the in-memory cache of its draws."""

import numpy as np
import pytest

from experiments import synthetic


@pytest.fixture(autouse=True)
def empty_cache():
    synthetic._cache.clear()
    yield
    synthetic._cache.clear()


def test_targets_standardised_on_training_points_and_shapes():
    Xtr, Ytr, Xte, Yte, meta = synthetic.make_synthetic(n_train=60, n_test=40, d0=5, dr=2, hidden=3, seed=3)
    assert Xtr.shape == (60, 5) and Ytr.shape == (60, 2) and Xte.shape == (40, 5) and Yte.shape == (40, 2)
    np.testing.assert_allclose(Ytr.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Ytr.std(axis=0), 1, rtol=1e-12)
    assert meta["n_train"] == 60 and meta["seed"] == 3


def test_cached_draw_is_bit_identical_to_a_fresh_one_and_drawn_once(monkeypatch):
    calls = []
    draw = synthetic._draw
    monkeypatch.setattr(synthetic, "_draw", lambda *a: calls.append(a) or draw(*a))
    first = synthetic.make_synthetic(n_train=30, n_test=20, d0=4, seed=1)
    second = synthetic.make_synthetic(n_train=30, n_test=20, d0=4, seed=1)
    assert len(calls) == 1
    synthetic._cache.clear()
    fresh = synthetic.make_synthetic(n_train=30, n_test=20, d0=4, seed=1)
    assert len(calls) == 2
    for a, b, c in zip(first[:4], second[:4], fresh[:4]):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert first[4] == second[4] == fresh[4]
    other = synthetic.make_synthetic(n_train=30, n_test=20, d0=4, seed=2)
    assert len(calls) == 3 and not np.array_equal(other[1], first[1])


def test_callers_cannot_change_the_cached_draw():
    X, Y, _, _, meta = synthetic.make_synthetic(n_train=30, n_test=20, d0=4, seed=0)
    keep = Y.copy()
    X[:] = 0
    Y[:] = 7
    meta["seed"] = 99
    _, Y2, _, _, meta2 = synthetic.make_synthetic(n_train=30, n_test=20, d0=4, seed=0)
    assert np.array_equal(Y2, keep) and meta2["seed"] == 0


def test_cache_is_bounded():
    for seed in range(synthetic.SYNTHETIC_CACHE_SIZE + 3):
        synthetic.make_synthetic(n_train=10, n_test=5, d0=3, seed=seed)
    assert len(synthetic._cache) == synthetic.SYNTHETIC_CACHE_SIZE


def test_bad_size_names_the_argument():
    with pytest.raises(ValueError, match="n_train"):
        synthetic.make_synthetic(n_train=0)
