"""experiments.tasks: the multi-index task, the manifold and the autoencoder (MATH §7.2, §7.3)."""

import numpy as np
import pytest

from experiments.data import load_dataset
from experiments.tasks import (as_autoencoder, make_manifold, make_multi_index, multi_index_h,
                               orthonormal_projection)
from experiments.train import TrainConfig, load_data
from test_data import make_mnist


def test_multi_index_shapes_seeding_and_standardised():
    a = make_multi_index(n_train=300, n_test=100, d0=32, latent_dim=2, seed=3)
    b = make_multi_index(n_train=300, n_test=100, d0=32, latent_dim=2, seed=3)
    c = make_multi_index(n_train=300, n_test=100, d0=32, latent_dim=2, seed=4)
    Xtr, Ytr, Xte, Yte, meta, U = a
    assert Xtr.shape == (300, 32) and Ytr.shape == (300, 1) and Xte.shape == (100, 32) and Yte.shape == (100, 1)
    assert U.shape == (2, 32) and np.allclose(U @ U.T, np.eye(2), atol=1e-12)
    for x, y in zip(a[:4] + (a[5],), b[:4] + (b[5],)):
        assert np.array_equal(x, y)                    # same seed: identical
    assert not np.allclose(a[0], c[0]) and not np.allclose(a[5], c[5])
    assert abs(Ytr.mean()) < 1e-12 and abs(Ytr.std() - 1) < 1e-12      # standardised on the training rows
    assert meta["latent_dim"] == 2 and meta["d0"] == 32


@pytest.mark.parametrize("k", [1, 2, 4])
def test_multi_index_target_depends_only_on_Ux(k):
    Xtr, Ytr, Xte, Yte, meta, U = make_multi_index(n_train=200, n_test=50, d0=16, latent_dim=k, seed=1)
    # the target is h(U x) up to the recorded affine standardisation
    raw = multi_index_h(np.concatenate([Xtr, Xte]) @ U.T)
    expect = (raw - meta["target_mean"]) / meta["target_std"]
    assert np.allclose(np.concatenate([Ytr, Yte])[:, 0], expect, atol=1e-12)
    # moving x within the null space of U leaves h(U x) unchanged, moving it along U changes it
    rng = np.random.default_rng(0)
    V = rng.standard_normal((200, 16))
    V_null = V - (V @ U.T) @ U
    assert np.allclose(multi_index_h((Xtr + 3 * V_null) @ U.T), multi_index_h(Xtr @ U.T), atol=1e-12)
    assert not np.allclose(multi_index_h((Xtr + 0.5 * V) @ U.T), multi_index_h(Xtr @ U.T))


def test_multi_index_h_known_values():
    z = np.array([[0.3, -1.2], [1.0, 2.0]])
    expect = np.tanh(2 * z[:, 0]) * z[:, 1] + np.tanh(2 * z[:, 1]) * z[:, 0]
    assert np.allclose(multi_index_h(z), expect)
    assert np.allclose(multi_index_h(z[:, :1]), np.tanh(2 * z[:, 0]) * z[:, 0])      # k = 1


def test_orthonormal_projection_rows():
    U = orthonormal_projection(4, 128, np.random.default_rng(0))
    assert U.shape == (4, 128) and np.allclose(U @ U.T, np.eye(4), atol=1e-12)


def test_manifold_shapes_seeding_scale_and_dimension():
    Xtr, Ytr, Xte, Yte, meta = make_manifold(n_train=400, n_test=100, d0=16, latent_dim=2, seed=0)
    assert Xtr.shape == (400, 16) and Ytr.shape == (400, 2) and Xte.shape == (100, 16) and Yte.shape == (100, 2)
    assert np.allclose(Xtr.mean(axis=0), 0, atol=1e-12)
    assert np.isclose(np.mean(np.sum(Xtr ** 2, axis=1)) / 16, 1.0)
    again = make_manifold(n_train=400, n_test=100, d0=16, latent_dim=2, seed=0)
    assert np.array_equal(Xtr, again[0]) and np.array_equal(Yte, again[3])
    # a smooth 2-dim manifold: locally the points span ~2 dimensions (neighbours of one point)
    Xbig, Zbig, *_ = make_manifold(n_train=20000, n_test=1, d0=16, latent_dim=2, seed=0)
    near = np.argsort(np.sum((Zbig - Zbig[0]) ** 2, axis=1))[:30]      # latent neighbours
    s = np.linalg.svd(Xbig[near] - Xbig[near].mean(0), compute_uv=False)
    assert s[2] < 0.1 * s[1]
    with pytest.raises(ValueError, match="latent_dim"):
        make_manifold(n_train=10, n_test=10, d0=3, latent_dim=4)


def test_autoencoder_targets_are_inputs_on_mnist_and_manifold(tmp_path):
    make_mnist(tmp_path, n_train=60, n_test=30)
    ds = load_dataset("mnist", data_dir=tmp_path)
    ae = as_autoencoder(ds)
    assert ae.Y_train.shape == (60, 784) and ae.Y_test.shape == (30, 784)
    assert np.array_equal(ae.Y_train, ds.X_train) and np.array_equal(ae.Y_test, ds.X_test)
    assert ae.labels_train is None and ae.classes is None and ae.meta["dr"] == 784
    assert ds.Y_train.shape == (60, 10)              # the original is left alone
    cfg = TrainConfig(dataset="manifold", task="autoencoder", d0=12, latent_dim=3, train_size=50, test_size=20)
    m = load_data(cfg)
    assert m.X_train.shape == (50, 12) and m.Y_train.shape == (50, 12) and np.array_equal(m.X_test, m.Y_test)
    cfg = TrainConfig(dataset="mnist", data_dir=str(tmp_path), task="autoencoder", train_size=20, test_size=10)
    m = load_data(cfg)
    assert m.Y_train.shape == (20, 784) and np.array_equal(m.X_train, m.Y_train)


def test_load_dataset_dispatch_multi_index():
    ds = load_dataset("multi-index", train_size=50, test_size=20, seed=2, d0=8, latent_dim=1)
    assert ds.name == "multi-index" and ds.X_train.shape == (50, 8) and ds.Y_train.shape == (50, 1)
    assert ds.meta["dataset"] == "multi-index" and ds.labels_train is None


def test_finite_sweep_autoencoder_on_the_manifold(tmp_path):
    import json
    from experiments.finite_sweep import SweepConfig, finite_sweep
    cfg = SweepConfig(dataset="manifold", task="autoencoder", d0=6, latent_dim=2, train_size=40, test_size=20,
                      widths=(2,), hidden=200, steps=8, batch_size=5, eval_every=4, lr=0.5)
    summary = finite_sweep(cfg, tmp_path / "fs", log=lambda m: None)
    assert summary["widths"][0]["status"] == "done"
    saved = json.loads((tmp_path / "fs" / "config.json").read_text())
    assert saved["config"]["task"] == "autoencoder" and saved["data"]["dr"] == 6
