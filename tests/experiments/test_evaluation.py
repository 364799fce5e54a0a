"""experiments.evaluation: one home for outputs, losses and evaluation rows, below the drivers."""

import ast
from pathlib import Path

import numpy as np
import pytest

import refimpl
from experiments.evaluation import (eval_rows, evaluate, evaluate_network, mean_loss, null_loss, null_loss_of,
                                    simulator_outputs)
from refimpl.finite import FiniteNetwork

ROOT = Path(__file__).resolve().parents[2]


def _project_imports(name):
    tree = ast.parse((ROOT / "experiments" / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith(".") or m.split(".")[0] in ("experiments", "cli")}


def test_evaluation_and_the_loop_sit_below_the_drivers():
    assert _project_imports("evaluation") == set()
    assert _project_imports("loop") == {".validate", ".stop"}     # floor-0 primitives only


def test_losses_by_hand():
    F = np.array([[1.0, 0.0], [0.0, 3.0]])
    Y = np.array([[0.0, 0.0], [0.0, 1.0]])
    assert mean_loss(F, Y) == 0.25 * (1.0 + 4.0)
    ce = mean_loss(F, np.array([[1.0, 0.0], [0.0, 1.0]]), "ce")
    want = np.mean([np.log(1 + np.exp(-1.0)), np.log(1 + np.exp(-3.0))])
    assert ce == pytest.approx(want, rel=1e-14)
    assert null_loss(Y) == null_loss_of(Y) == 0.25
    assert null_loss_of(np.array([[1.0, 0.0, 0.0]]), "ce") == pytest.approx(np.log(3), rel=1e-15)
    rows = eval_rows(0, 50, 10)
    assert len(rows) == 10 and np.all(np.diff(rows) > 0) and np.array_equal(eval_rows(0, 5, 10), np.arange(5))


def test_evaluate_a_simulator_and_a_finite_network_from_the_same_start():
    rng = np.random.default_rng(0)
    X, Y, Xt, Yt = (rng.standard_normal(s) for s in ((30, 4), (30, 2), (10, 4), (10, 2)))

    class Data:
        X_train, Y_train, X_test, Y_test, labels_train, labels_test = X, Y, Xt, Yt, None, None
    net = refimpl.RandomNetwork.sample(4, 3, 2, width=100, seed=0)
    sim = refimpl.BottleneckSimulator(net, X, Y, lr=0.1, X_eval=Xt)
    rows = np.arange(0, 30, 3)
    got = evaluate(sim, Data, rows)
    F = net.f(net.g(X))
    assert got["train_loss"] == pytest.approx(0.5 * np.mean(np.sum((F[rows] - Y[rows]) ** 2, axis=1)), rel=1e-12)
    assert got["train_acc"] is None and got["test_acc"] is None
    assert np.allclose(simulator_outputs(sim, Xt), net.f(net.g(Xt)), rtol=1e-12, atol=1e-14)
    fin = evaluate_network(FiniteNetwork.from_random_network(net), Data, rows)
    assert fin["train_loss"] == pytest.approx(got["train_loss"], rel=1e-12)
    assert fin["test_loss"] == pytest.approx(got["test_loss"], rel=1e-12)
    assert fin["train_err"] is None
