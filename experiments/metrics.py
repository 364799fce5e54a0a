"""Extra training metrics: feature learning in the bottleneck and steps to reach a training loss.

The paper reports losses and accuracies only (appendix D.4).  The two measures
of feature learning here are this project's additions; both are evaluated on a
fixed evaluation subset of the training set (the rows of
:func:`experiments.evaluation.eval_rows`), with ``G_t = g_t(xi)`` the bottleneck
embeddings of those rows (n, d) and ``Y`` their targets (n, dr):

``feature_movement``
    ``|G_t - G_0|_F / |G_0|_F``, how far the embeddings have moved from their
    random initial values (0 at step 0).  In the NTK regime (d -> infinity) the
    relative movement of each layer's features vanishes; with a finite
    bottleneck it need not.
``kernel_alignment``
    The centred kernel-target alignment of the bottleneck Gram matrix with the
    target Gram matrix,

        A(K1, K2) = <H K1 H, H K2 H>_F / (|H K1 H|_F |H K2 H|_F),   H = I - 1 1^T / n,

    with ``K1 = G_t G_t^T`` and ``K2 = Y Y^T``.  It lies in [0, 1]; larger
    means the embedding geometry is more aligned with the targets.

For ``width = inf`` there is no bottleneck and both columns are left empty.

Steps to a training loss (:func:`steps_to_thresholds`): the thresholds are
*absolute* losses, the same for every width and seed of a data set, written as
fractions of the data set's null loss ``L_null = mean_i |y_i|^2 / 2`` over the
whole training set (the loss of the zero predictor; 0.5 for the standardised
synthetic targets and for one-hot targets; the same for every seed, whereas the
evaluation rows depend on the seed).  Absolute thresholds compare runs
at the same loss level, which is what "reaching a given training loss" means;
a threshold relative to each run's own initial loss would mix in the random
initial loss.

Steps to a training accuracy (:func:`steps_to_accuracies`, classification only):
the first evaluated step at which the training accuracy (on the same evaluation
rows) is at or above each of :data:`ACCURACY_LEVELS`.  Loss and accuracy can rank
the widths differently (the MSE rewards the size of every output, the accuracy
only the arg max), so both are reported.
"""

from __future__ import annotations

import numpy as np

#: Default thresholds as fractions of the null loss (see the module docstring).
THRESHOLD_FRACTIONS = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02)
#: Default training-accuracy levels (classification) for :func:`steps_to_accuracies`.
ACCURACY_LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95)


def _centre(M):
    """Subtract the column means: H M with H = I - 1 1^T / n.  (n, k) -> (n, k)."""
    M = np.asarray(M, dtype=np.float64)
    return M - M.mean(axis=0, keepdims=True)


def centred_alignment(G, Y):
    """Centred kernel alignment of the linear kernels ``G G^T`` and ``Y Y^T``.

    Uses ``H G G^T H = Gc Gc^T`` with ``Gc = H G``, so that
    ``<Gc Gc^T, Yc Yc^T>_F = |Gc^T Yc|_F^2`` and ``|Gc Gc^T|_F = |Gc^T Gc|_F``:
    O(n k^2) instead of O(n^2 k).

    Parameters
    ----------
    G : (n, d) array
    Y : (n, r) array

    Returns
    -------
    float in [0, 1], or NaN when either centred kernel is zero.
    """
    Gc, Yc = _centre(G), _centre(Y)
    if Gc.shape[0] != Yc.shape[0]:
        raise ValueError(f"Y: expected {Gc.shape[0]} rows like G, got {Yc.shape[0]}")
    num = np.sum((Gc.T @ Yc) ** 2)
    den = np.linalg.norm(Gc.T @ Gc) * np.linalg.norm(Yc.T @ Yc)
    return float(num / den) if den > 0 else float("nan")


def relative_movement(G, G0):
    """``|G - G0|_F / |G0|_F`` for arrays of equal shape; None (an empty cell) where it is undefined:
    ``G0`` zero or too small for a finite ratio (e.g. a tiny output scale of g), or non-finite values."""
    G, G0 = np.asarray(G, dtype=np.float64), np.asarray(G0, dtype=np.float64)
    with np.errstate(all="ignore"):
        den = np.linalg.norm(G0)
        value = np.linalg.norm(G - G0) / den if den > 0 else np.nan
    return float(value) if np.isfinite(value) else None


class FeatureProbe:
    """The bottleneck metrics of one run, with ``G_0`` captured at construction.

    Build it right after the simulator, before any step or checkpoint is
    loaded, so that ``G_0`` is the initial embedding (for a resumed run the
    simulator is rebuilt from the same seed, so ``G_0`` is the same).

    Parameters
    ----------
    sim : simulator of any backend (BottleneckSimulator-like or InfiniteSimulator-like)
    X : (N, d0) training inputs;  Y : (N, dr) training targets
    rows : (n,) int array, the fixed evaluation rows
    """

    columns = ("feature_movement", "kernel_alignment")

    def __init__(self, sim, X, Y, rows):
        self.X, self.rows = X, np.asarray(rows)
        self.Y = np.asarray(Y, dtype=np.float64)[self.rows]
        self.bottleneck = hasattr(sim, "embeddings")
        self.G0 = self._G(sim) if self.bottleneck else None

    def _G(self, sim):
        return np.asarray(sim.embeddings(self.X), dtype=np.float64)[self.rows]

    def __call__(self, sim):
        """Dict of the metric columns (None without a bottleneck)."""
        if not self.bottleneck:
            return {c: None for c in self.columns}
        G = self._G(sim)
        with np.errstate(all="ignore"):
            alignment = centred_alignment(G, self.Y)
        # an undefined metric (G_0 or the centred kernel zero or below float64's range) is an empty cell
        return {"feature_movement": relative_movement(G, self.G0),
                "kernel_alignment": alignment if np.isfinite(alignment) else None}


def steps_to_thresholds(steps, losses, thresholds):
    """First evaluated step at which the loss is at or below each threshold.

    Parameters
    ----------
    steps : (k,) evaluation steps, increasing
    losses : (k,) losses at those steps
    thresholds : iterable of floats

    Returns
    -------
    list with, per threshold, the first ``steps[i]`` with ``losses[i] <= threshold``, or None
    when the run never reaches it.  The resolution is the evaluation interval: the
    step returned is an upper bound on the first step that reached the threshold.
    """
    steps = np.asarray(steps)
    losses = np.asarray(losses, dtype=np.float64)
    out = []
    for thr in thresholds:
        hit = np.nonzero(losses <= thr)[0]
        out.append(int(steps[hit[0]]) if hit.size else None)
    return out


def steps_to_accuracies(steps, accuracies, levels):
    """First evaluated step at which the accuracy is at or above each level.

    Parameters
    ----------
    steps : (k,) evaluation steps, increasing
    accuracies : (k,) accuracies at those steps (NaN: never counts as reached)
    levels : iterable of floats in [0, 1]

    Returns
    -------
    list with, per level, the first ``steps[i]`` with ``accuracies[i] >= level``, or None.
    """
    steps = np.asarray(steps)
    acc = np.asarray(accuracies, dtype=np.float64)
    out = []
    for level in levels:
        hit = np.nonzero(acc >= level)[0]
        out.append(int(steps[hit[0]]) if hit.size else None)
    return out


def threshold_summary(metrics, loss_null, fractions=THRESHOLD_FRACTIONS):
    """Steps to reach the training losses ``fraction * loss_null`` (summary.json of a run; see the module docstring).

    ``metrics`` are the rows of metrics.csv (values as numbers or strings).  The step is the first
    evaluation at or below the threshold (an upper bound; resolution ``eval_every``), None if never.
    """
    steps = [int(r["step"]) for r in metrics]
    losses = [float(r["train_loss"]) for r in metrics]
    thresholds = [f * loss_null for f in fractions]
    hits = steps_to_thresholds(steps, losses, thresholds)
    return {"loss_null": loss_null, "definition": "first evaluated step with train_loss <= fraction * loss_null",
            "thresholds": [{"fraction": f, "loss": t, "step": h} for f, t, h in zip(fractions, thresholds, hits)]}


def accuracy_summary(metrics, levels=ACCURACY_LEVELS):
    """Steps to reach the training accuracies ``levels`` (summary.json of a run; None for regression)."""
    acc = [r.get("train_acc") for r in metrics]
    if not acc or any(a in (None, "") for a in acc):
        return None
    hits = steps_to_accuracies([int(r["step"]) for r in metrics], [float(a) for a in acc], levels)
    return {"definition": "first evaluated step with train_acc >= level",
            "levels": [{"accuracy": a, "step": h} for a, h in zip(levels, hits)]}
