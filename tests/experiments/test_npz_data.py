"""--dataset npz:PATH, the user's own arrays (experiments.data.load_npz): labels, splits, every refusal
in one line, the digest that guards resume, and the commands that take it."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from experiments import data as D
from experiments import train as T

TINY = ["--steps", "6", "--eval-every", "3", "--batch-size", "5", "--init-width", "64", "-q"]


def _arrays(n=60, d0=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d0))
    return X, (X[:, 0] > 0).astype(np.int64) + 2 * (X[:, 1] > 1)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_integer_labels_become_one_hot_over_the_classes(tmp_path):
    X, y = _arrays()
    y = y * 10 + 3                                          # labels need not be 0..k-1
    path = _write(tmp_path / "d.npz", X_train=X[:40], Y_train=y[:40], X_test=X[40:], Y_test=y[40:])
    ds = D.load_dataset(f"npz:{path}")
    classes = np.unique(y)
    assert ds.Y_train.shape == (40, classes.size) and ds.classes == [str(c) for c in classes]
    assert np.array_equal(classes[ds.Y_train.argmax(1)], y[:40]) and np.all(ds.Y_train.sum(1) == 1)
    assert np.array_equal(classes[ds.labels_test], y[40:])
    assert np.array_equal(ds.X_train, X[:40]) and ds.X_train.dtype == np.float64    # used as given
    assert ds.meta["sha256"] == D.sha256_file(path) and ds.meta["file"] == str(path.resolve())


def test_float_targets_and_a_held_out_test_set(tmp_path):
    X, _ = _arrays(50)
    Y = np.sin(X[:, :2])
    ds = D.load_dataset(f"npz:{_write(tmp_path / 'r.npz', X_train=X, Y_train=Y)}", seed=1)
    assert ds.X_train.shape == (40, 4) and ds.X_test.shape == (10, 4) and ds.labels_train is None
    rows = np.concatenate([ds.index_train, ds.index_test])
    assert sorted(rows.tolist()) == list(range(50))          # a partition of the file's rows
    assert np.array_equal(ds.Y_test, Y[ds.index_test])
    one = D.load_dataset(f"npz:{tmp_path / 'r.npz'}", seed=1, train_size=7)
    assert one.X_train.shape == (7, 4) and set(one.index_train) <= set(ds.index_train)


def _error(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(D.DataError) as info:
        D.load_dataset(f"npz:{path}")
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_keys(tmp_path):
    X, y = _arrays()
    assert "no Y_train" in _error(tmp_path, X_train=X, labels=y)
    assert "no Y_test" in _error(tmp_path, X_train=X, Y_train=y, X_test=X)


def test_wrong_shapes(tmp_path):
    X, y = _arrays()
    assert "X_train has shape (60,)" in _error(tmp_path, X_train=X[:, 0], Y_train=y)
    assert "X_test has shape (60, 3)" in _error(tmp_path, X_train=X, Y_train=y, X_test=X[:, :3], Y_test=y)
    assert "Y_train has shape" in _error(tmp_path, X_train=X, Y_train=np.zeros((60, 2, 2)))


def test_nan_and_inf(tmp_path):
    X, y = _arrays()
    X[3, 1] = np.nan
    assert "X_train has 1 NaN or inf" in _error(tmp_path, X_train=X, Y_train=y)
    X[3, 1] = 0.0
    Y = np.ones((60, 1))
    Y[5] = np.inf
    assert "NaN or inf" in _error(tmp_path, X_train=X, Y_train=Y, X_test=X, Y_test=np.ones((60, 1)))


def test_object_arrays_are_never_unpickled(tmp_path):
    X, y = _arrays()
    obj = np.empty(60, dtype=object)
    obj[:] = [{"label": int(v)} for v in y]
    message = _error(tmp_path, X_train=X, Y_train=obj)
    assert "Y_train is an object array" in message and "without pickle" in message


def test_mismatched_rows(tmp_path):
    X, y = _arrays()
    assert "X_train has 60 rows but Y_train has 59" in _error(tmp_path, X_train=X, Y_train=y[:-1])
    assert "X_test has 60 rows but Y_test has 10" in _error(tmp_path, X_train=X, Y_train=y, X_test=X,
                                                              Y_test=y[:10])


def test_missing_file_and_ce_on_float_targets(tmp_path):
    with pytest.raises(D.DataError, match="not found"):
        D.load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    X, _ = _arrays()
    path = _write(tmp_path / "r.npz", X_train=X, Y_train=X[:, :1])
    with pytest.raises(D.DataError, match="'ce' needs integer class labels"):
        D.load_dataset(f"npz:{path}", loss="ce")


def _invoke(args):
    return CliRunner().invoke(cli.cli, args)


def test_cli_errors_are_one_line_with_exit_2(tmp_path):
    X, y = _arrays()
    path = _write(tmp_path / "bad.npz", X_train=X, Y_train=y[:-1])
    result = _invoke(["train", "--dataset", f"npz:{path}", *TINY, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "X_train has 60 rows but Y_train has 59" in result.stderr
    assert len([ln for ln in result.stderr.splitlines() if ln.startswith("Error")]) == 1
    assert not (tmp_path / "r").exists()
    assert _invoke(["train", "--dataset", "npz:", *TINY]).exit_code == 2


def test_train_reports_accuracy_and_resume_refuses_a_changed_file(tmp_path):
    X, y = _arrays()
    path = _write(tmp_path / "d.npz", X_train=X[:40], Y_train=y[:40], X_test=X[40:], Y_test=y[40:])
    out = tmp_path / "run"
    result = _invoke(["train", "--dataset", f"npz:{path}", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["dataset"] == f"npz:{path.resolve()}" and saved["data"]["sha256"] == D.sha256_file(path)
    last = (out / "metrics.csv").read_text().splitlines()[-1].split(",")
    assert 0.0 <= float(last[4]) <= 1.0 and 0.0 <= float(last[5]) <= 1.0          # train_acc, test_acc
    original = path.read_bytes()
    X[0, 0] += 1.0
    _write(path, X_train=X[:40], Y_train=y[:40], X_test=X[40:], Y_test=y[40:])
    refused = _invoke(["train", "--resume", str(out), "--steps", "9", "-q"])
    assert refused.exit_code == 2 and "has changed since the run was made" in refused.stderr
    path.write_bytes(original)
    assert _invoke(["train", "--resume", str(out), "--steps", "9", "-q"]).exit_code == 0


def test_sweep_plot_and_finite_sweep_take_npz(tmp_path):
    X, y = _arrays()
    path = _write(tmp_path / "d.npz", X_train=X, Y_train=y)
    sweep = _invoke(["sweep", "--dataset", f"npz:{path}", "--widths", "inf,2", "--steps", "6", "--eval-every",
                     "3", "--batch-size", "5", "--init-width", "64", "--jobs", "1", "--out", str(tmp_path / "s")])
    assert sweep.exit_code == 0, sweep.stderr
    assert (tmp_path / "s" / "accuracy.png").exists() and (tmp_path / "s" / "heatmap.png").exists()
    record = json.loads((tmp_path / "s" / "sweep.json").read_text())["config"]
    assert record["backend_requested"] == "auto" and record["backend"] in ("numpy", "cpu", "gpu")   # resolved once
    assert _invoke(["plot", str(tmp_path / "s"), "--out", str(tmp_path / "fig")]).exit_code == 0
    fin = _invoke(["finite-sweep", "--dataset", f"npz:{path}", "--widths", "2", "--hidden", "16", "--steps", "4",
                   "--eval-every", "2", "--out", str(tmp_path / "f")])
    assert fin.exit_code == 0, fin.stderr
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["widths"][0]["test_err"] is not None                  # classification: an error rate


def test_finite_vs_infinite_takes_npz(tmp_path):
    X, _ = _arrays(40)
    path = _write(tmp_path / "r.npz", X_train=X, Y_train=np.sin(X[:, :1]))
    result = _invoke(["finite-vs-infinite", "--dataset", f"npz:{path}", "--train-size", "30", "--test-size", "8",
                      "--hidden", "20,40", "--steps", "2",
                      "--eval-every", "1", "--limit-width", "30", "--out", str(tmp_path / "c")])
    assert result.exit_code in (0, 3), result.stderr          # 3: the check itself, at this toy size
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["config"]["dataset"] == f"npz:{path.resolve()}"
