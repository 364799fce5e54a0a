"""Evaluation: the outputs of a model on a data set, and the losses and accuracies the runs report.

One home for what every experiment evaluates (``train``, the per-width probe, ``finite-sweep``, the
finite-against-infinite comparison):

- the outputs F_t of a simulator of any backend (:func:`simulator_outputs`) or of a finite network
  (:func:`network_outputs`, NumPy or CuPy arrays);
- the trained loss averaged over points (:func:`mean_loss`: ``mean |F - y|^2 / 2`` for ``mse``, the
  cross-entropy of MATH §4.3 for ``ce``) and the zero predictor's (:func:`null_loss`,
  :func:`null_loss_of`);
- the fixed training rows on which the training metrics are taken (:func:`eval_rows`,
  :func:`run_eval_rows`);
- the metrics rows: :func:`evaluate` (simulators; with centring the outputs are ``F - F0``, MATH §7.4)
  and :func:`evaluate_network` (finite networks; error rates instead of accuracies).

This module sits below the drivers: it imports nothing of ``experiments`` (a centring is any object
with ``centred(split, F, rows)``, :class:`experiments.controls.Centring`).
"""

from __future__ import annotations

import numpy as np

from refimpl.dynamics import pointwise_loss


def simulator_outputs(sim, X, rows=None):
    """F_t on the inputs X (q, d0) of a simulator of any backend, at ``rows`` of them (None: all) -> (q', dr).

    A bottleneck simulator reads its tracked embeddings g_t(X) and applies f_t; ``inf`` reads F_t.
    """
    if hasattr(sim, "f"):                          # bottleneck: F = f_t(g_t(X))
        G = sim.embeddings(X)
        return sim.f(G if rows is None else G[rows])
    F = sim.outputs(X)
    return F if rows is None else F[rows]


def network_outputs(net, X):
    """F(X) (q, dr) of a finite network as a NumPy array (the network may hold CuPy arrays)."""
    return to_numpy(net.outputs(X))


def to_numpy(a):
    """A NumPy array of ``a`` (copied from the device for CuPy arrays)."""
    get = getattr(a, "get", None)          # cupy arrays
    return np.asarray(get() if callable(get) else a)


def mean_loss(F, Y, loss="mse"):
    """The trained loss averaged over the rows: ``mean |F - y|^2 / 2`` (mse), or the cross-entropy (ce).

    F, Y : (n, dr) arrays -> float
    """
    if loss == "mse":
        return 0.5 * float(np.mean(np.sum((F - Y) ** 2, axis=1)))
    return float(np.mean(pointwise_loss(F, Y, loss)))


def null_loss(Y):
    """``mean_i |y_i|^2 / 2``, the loss of the zero predictor.  Y (n, dr) -> float."""
    Y = np.asarray(Y, dtype=np.float64)
    return 0.5 * float(np.mean(np.sum(Y * Y, axis=1)))


def null_loss_of(Y, loss="mse"):
    """The trained loss of the zero predictor on Y (mean |y|^2 / 2 for mse; log k or log 2 for ce)."""
    if loss == "mse":
        return null_loss(Y)
    return float(np.mean(pointwise_loss(np.zeros_like(Y), Y, loss)))


def run_eval_rows(config, n):
    """The training rows on which a run's training metrics are evaluated (:func:`eval_rows`).

    ``eval_subset = "fixed"``: one subset per data set (drawn from ``data_seed``), the same for every
    seed and width, so that the seeds' losses differ only by the runs, not by the rows; ``"seed"`` (runs
    made before the option existed): drawn from the run's seed.
    """
    if getattr(config, "eval_subset", "fixed") == "seed":
        return eval_rows(config.seed, n, config.eval_size)
    return eval_rows(config.data_seed, n, config.eval_size, stream=3)


def eval_rows(seed, n, eval_size, stream=2):
    """The fixed training subset (sorted row indices, at most ``eval_size`` of ``n``) on which the training
    metrics are evaluated: the first rows of the permutation ``default_rng((seed, stream))`` (stream 2:
    from a run's seed; stream 3: from the data seed, :func:`run_eval_rows`)."""
    if n <= eval_size:
        return np.arange(n)
    return np.sort(np.random.default_rng((seed, stream)).permutation(n)[:eval_size])


def evaluate(sim, data, rows, centring=None):
    """Losses (the trained one: mean |F - y|^2 / 2, or the cross-entropy) and accuracies (classification).

    Parameters
    ----------
    sim : simulator of any backend;  data : Dataset;  rows : (n,) training rows (:func:`run_eval_rows`)
    centring : None, or :class:`experiments.controls.Centring`: the outputs are then F - F0 (MATH §7.4)

    Returns
    -------
    dict ``train_loss, test_loss, train_acc, test_acc`` (accuracies None for regression)
    """
    out = {}
    for split, X, Y, labels, r in (("train", data.X_train, data.Y_train, data.labels_train, rows),
                                   ("test", data.X_test, data.Y_test, data.labels_test, None)):
        F = simulator_outputs(sim, X, r)
        if centring is not None:
            F = centring.centred(split, F, r)
        Yr = Y if r is None else Y[r]
        out[f"{split}_loss"] = mean_loss(F, Yr, getattr(sim, "loss", "mse"))
        if labels is not None:
            lab = labels if r is None else labels[r]
            out[f"{split}_acc"] = float(np.mean(np.argmax(F, axis=1) == lab))
        else:
            out[f"{split}_acc"] = None
    return out


def evaluate_train_loss(sim, data, rows, centring=None):
    """The training loss on the fixed evaluation rows (the trained loss, as :func:`evaluate`)."""
    F = simulator_outputs(sim, data.X_train, rows)
    if centring is not None:
        F = centring.centred("train", F, rows)
    return mean_loss(F, data.Y_train[rows], getattr(sim, "loss", "mse"))


def evaluate_network(net, data, rows):
    """Losses (the trained one: mean |F - y|^2 / 2 or the cross-entropy) and error rates (1 - accuracy;
    None for regression) of a FiniteNetwork (:mod:`refimpl.finite`) on the training ``rows`` and the
    test set: dict ``train_loss, test_loss, train_err, test_err``."""
    out = {}
    for split, X, Y, labels in (("train", data.X_train[rows], data.Y_train[rows],
                                 None if data.labels_train is None else data.labels_train[rows]),
                                ("test", data.X_test, data.Y_test, data.labels_test)):
        F = network_outputs(net, X)
        out[f"{split}_loss"] = mean_loss(F, Y, getattr(net, "loss_name", "mse"))
        out[f"{split}_err"] = None if labels is None else float(np.mean(np.argmax(F, axis=1) != labels))
    return out
