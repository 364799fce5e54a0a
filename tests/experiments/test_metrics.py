"""experiments.metrics and the extra columns / summary fields the training driver writes with them."""

import csv
import json

import numpy as np
import pytest

from experiments.evaluation import null_loss
from experiments.metrics import centred_alignment, relative_movement, steps_to_thresholds
from experiments.train import TrainConfig, train

SMALL = dict(train_size=120, test_size=40, d0=4, dr=2, init_width=400, batch_size=10,
             eval_every=5, eval_size=60, lr=1.0)


def _direct_alignment(G, Y):
    """The definition with n x n matrices: <H K1 H, H K2 H> / (|H K1 H| |H K2 H|)."""
    n = G.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    A, B = H @ G @ G.T @ H, H @ Y @ Y.T @ H
    return np.sum(A * B) / (np.linalg.norm(A) * np.linalg.norm(B))


@pytest.mark.parametrize("seed", range(4))
def test_alignment_matches_the_n_by_n_definition(seed):
    rng = np.random.default_rng(seed)
    n, d, r = 30, 1 + seed * 3, 1 + seed
    G = rng.standard_normal((n, d)) + rng.standard_normal(d)      # non-centred on purpose
    Y = rng.standard_normal((n, r)) + 2.0
    a = centred_alignment(G, Y)
    assert a == pytest.approx(_direct_alignment(G, Y), rel=1e-12)
    assert 0.0 <= a <= 1.0


def test_alignment_invariances_and_extremes():
    rng = np.random.default_rng(7)
    Y = rng.standard_normal((40, 3))
    Q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    # G a rotated, scaled, shifted copy of Y: identical centred kernels up to scale -> alignment 1
    assert centred_alignment(5.0 * Y @ Q + 3.0, Y) == pytest.approx(1.0, abs=1e-12)
    # embeddings orthogonal (after centring) to a one-output target -> 0
    y = np.r_[np.ones(20), -np.ones(20)][:, None]
    g = np.r_[np.tile([1.0, -1.0], 10), np.tile([1.0, -1.0], 10)][:, None]
    assert centred_alignment(g, y) == pytest.approx(0.0, abs=1e-15)


def test_relative_movement_and_null_loss():
    G0 = np.array([[3.0, 4.0]])
    assert relative_movement(G0, G0) == 0.0
    assert relative_movement(np.array([[3.0, 4.5]]), G0) == pytest.approx(0.1)
    assert null_loss(np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.5
    assert null_loss(np.array([[2.0], [0.0]])) == 1.0


def test_steps_to_thresholds_known_curve():
    steps = [0, 10, 20, 30, 40]
    losses = [1.0, 0.6, 0.5, 0.55, 0.2]
    assert steps_to_thresholds(steps, losses, [2.0, 0.6, 0.5, 0.3, 0.1]) == [0, 10, 20, 40, None]


def _rows(path):
    with open(path / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_driver_writes_feature_columns_and_thresholds(tmp_path):
    out = train(TrainConfig(steps=30, width=3, **SMALL), tmp_path / "b", log=lambda m: None)
    rows = _rows(out)
    assert list(rows[0])[:4] == ["step", "train_loss", "test_loss", "wall_s"]
    assert float(rows[0]["feature_movement"]) == 0.0
    moves = [float(r["feature_movement"]) for r in rows[1:]]
    assert all(m > 0 for m in moves)
    assert all(0.0 <= float(r["kernel_alignment"]) <= 1.0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())["steps_to_threshold"]
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["train_loss"]) for r in rows]
    for item in summary["thresholds"]:
        assert item["loss"] == pytest.approx(item["fraction"] * summary["loss_null"])
        if item["step"] is None:
            assert min(losses) > item["loss"]
        else:
            k = steps.index(item["step"])
            assert losses[k] <= item["loss"] and all(x > item["loss"] for x in losses[:k])

    inf = train(TrainConfig(steps=10, width="inf", **SMALL), tmp_path / "inf", log=lambda m: None)
    assert all(r["feature_movement"] == "" and r["kernel_alignment"] == "" for r in _rows(inf))


def test_feature_columns_survive_resume(tmp_path):
    a = train(TrainConfig(steps=12, width=3, **SMALL), tmp_path / "a", log=lambda m: None)
    train(TrainConfig(steps=25), a, resume=True, log=lambda m: None)
    b = train(TrainConfig(steps=25, width=3, **SMALL), tmp_path / "b", log=lambda m: None)
    keys = ("step", "train_loss", "feature_movement", "kernel_alignment")
    assert [[r[k] for k in keys] for r in _rows(a)] == [[r[k] for k in keys] for r in _rows(b)]


def test_steps_to_accuracies_first_step_at_or_above():
    from experiments.metrics import steps_to_accuracies
    steps = [0, 10, 20, 30]
    acc = [0.1, 0.55, 0.5, 0.81]          # not monotone: the first crossing counts
    assert steps_to_accuracies(steps, acc, [0.5, 0.8, 0.81, 0.9]) == [10, 30, 30, None]
    assert steps_to_accuracies(steps, [np.nan] * 4, [0.1]) == [None]
