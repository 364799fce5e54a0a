"""Data loaders (experiments/data.py): tiny files in the official formats, bad files, and the full data sets
in ../shared/datasets when present.  Downloads: test_download.py."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from experiments import data
from experiments.data import DataError, load_cifar10, load_dataset, load_mnist, read_idx
from experiments.download import SHA256

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


# ------------------------------------------------------------------------------------------------
# writers for tiny files in the official formats
# ------------------------------------------------------------------------------------------------

def idx_bytes(arr, magic=None):
    arr = np.asarray(arr)
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}
    if magic is None:
        magic = (codes[arr.dtype] << 8) | arr.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, content, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def make_mnist(root, n_train=60, n_test=30, gz=True, subdir="mnist", seed=0):
    """Tiny MNIST: random pixels, labels cycling through all ten digits in a shuffled order."""
    rng = np.random.default_rng(seed)
    folder = root / subdir if subdir else root
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        img_stem, lab_stem = data.MNIST_FILES[split]
        suffix = ".gz" if gz else ""
        write(folder / (img_stem + suffix), idx_bytes(images), gz)
        write(folder / (lab_stem + suffix), idx_bytes(labels), gz)
        out[split] = (images, labels)
    return out


def cifar_bytes(images, labels):
    rec = np.concatenate([np.asarray(labels, np.uint8)[:, None], images.reshape(len(labels), -1)], axis=1)
    return rec.astype(np.uint8).tobytes()


def make_cifar(root, per_file=30, n_test=40, subdir="cifar-10-batches-bin", seed=0, meta=True):
    """Tiny CIFAR-10 binary folder: five train files and a test file of random records."""
    rng = np.random.default_rng(seed)
    folder = root / subdir if subdir else root
    train_img, train_lab = [], []
    for fname in data.CIFAR_TRAIN_FILES:
        images = rng.integers(0, 256, size=(per_file, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_file).astype(np.uint8)
        write(folder / fname, cifar_bytes(images, labels))
        train_img.append(images)
        train_lab.append(labels)
    images = rng.integers(0, 256, size=(n_test, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n_test).astype(np.uint8)
    write(folder / data.CIFAR_TEST_FILE, cifar_bytes(images, labels))
    if meta:
        write(folder / data.CIFAR_META_FILE, ("\n".join(data.CIFAR_CLASSES) + "\n\n").encode())
    return {"train": (np.concatenate(train_img), np.concatenate(train_lab)), "test": (images, labels)}


# ------------------------------------------------------------------------------------------------
# idx reader
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write(tmp_path / "a.idx", idx_bytes(arr), gz)
    got = read_idx(path)
    assert got.shape == arr.shape and got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, arr)
    got[0, 0, 0] = 0   # writable, native order


def test_read_idx_big_endian_layout(tmp_path):
    """Bytes written by hand: magic 0x00000c02 (int32, 2 dims), dims 2x1, values 1 and 256 (big-endian)."""
    raw = bytes.fromhex("00000c02" "00000002" "00000001" "00000001" "00000100")
    path = write(tmp_path / "h.idx", raw)
    np.testing.assert_array_equal(read_idx(path), [[1], [256]])


# ------------------------------------------------------------------------------------------------
# MNIST
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz,subdir", [(True, "mnist"), (False, "mnist"), (True, ""), (False, "")])
def test_load_mnist_layouts(tmp_path, gz, subdir):
    ref = make_mnist(tmp_path, gz=gz, subdir=subdir)
    raw = load_mnist(tmp_path)
    np.testing.assert_array_equal(raw.images_train, ref["train"][0])
    np.testing.assert_array_equal(raw.labels_train, ref["train"][1])
    np.testing.assert_array_equal(raw.images_test, ref["test"][0])
    np.testing.assert_array_equal(raw.labels_test, ref["test"][1])
    assert raw.classes == [str(k) for k in range(10)]


def test_mnist_dataset_shapes_onehot_and_preprocessing(tmp_path):
    ref = make_mnist(tmp_path, n_train=60, n_test=30)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.X_train.shape == (60, 784) and ds.X_test.shape == (30, 784)
    assert ds.Y_train.shape == (60, 10) and ds.Y_test.shape == (30, 10)
    assert ds.X_train.dtype == np.float64 and ds.Y_train.dtype == np.float64
    for Y, labels, (_, ref_labels) in ((ds.Y_train, ds.labels_train, ref["train"]),
                                       (ds.Y_test, ds.labels_test, ref["test"])):
        assert set(np.unique(Y)) == {0.0, 1.0}
        np.testing.assert_array_equal(Y.sum(axis=1), 1.0)
        np.testing.assert_array_equal(Y.argmax(axis=1), labels)
        np.testing.assert_array_equal(labels, ref_labels)
    # the documented map, recomputed from the raw pixels with training statistics only
    tr = ref["train"][0].reshape(60, -1) / 255.0
    te = ref["test"][0].reshape(30, -1) / 255.0
    mean = tr.mean(axis=0)
    s = np.sqrt(np.mean((tr - mean) ** 2))
    np.testing.assert_allclose(ds.X_train, (tr - mean) / s, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.X_test, (te - mean) / s, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.mean(np.sum(ds.X_train ** 2, axis=1) / 784), 1.0, rtol=1e-12)
    assert ds.meta["preprocessing"]["scale_s"] == pytest.approx(s, rel=1e-12)
    json.dumps(ds.meta)


def test_identical_map_on_train_and_test(tmp_path):
    """An image present in both splits gets the very same vector."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    labels = (np.arange(20) % 10).astype(np.uint8)
    for split, sl in (("train", slice(0, 20)), ("test", slice(5, 12))):
        img_stem, lab_stem = data.MNIST_FILES[split]
        write(tmp_path / (img_stem + ".gz"), idx_bytes(images[sl]), gz=True)
        write(tmp_path / (lab_stem + ".gz"), idx_bytes(labels[sl]), gz=True)
    ds = load_dataset("mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.X_test, ds.X_train[5:12])


def test_mnist_class_subset(tmp_path):
    make_mnist(tmp_path)
    ds = load_dataset("mnist", data_dir=tmp_path, classes=[3, "7"])
    assert ds.classes == ["3", "7"] and ds.Y_train.shape[1] == 2
    raw = load_mnist(tmp_path)
    np.testing.assert_array_equal(raw.labels_train[ds.index_train], np.where(ds.labels_train == 0, 3, 7))


# ------------------------------------------------------------------------------------------------
# subsets
# ------------------------------------------------------------------------------------------------

def test_subsets_deterministic_stratified_and_real_rows(tmp_path):
    ref = make_mnist(tmp_path, n_train=200, n_test=100)
    a = load_dataset("mnist", data_dir=tmp_path, train_size=50, test_size=20, seed=7)
    b = load_dataset("mnist", data_dir=tmp_path, train_size=50, test_size=20, seed=7)
    c = load_dataset("mnist", data_dir=tmp_path, train_size=50, test_size=20, seed=8)
    for name in ("X_train", "Y_train", "X_test", "Y_test", "index_train", "index_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.meta["subset"] == b.meta["subset"]
    assert not np.array_equal(a.index_train, c.index_train)
    assert a.meta["subset"]["train_index_sha256"] != c.meta["subset"]["train_index_sha256"]
    # 20 of each digit in train, 10 in test: quotas exactly proportional
    np.testing.assert_array_equal(np.bincount(a.labels_train, minlength=10), 5)
    np.testing.assert_array_equal(np.bincount(a.labels_test, minlength=10), 2)
    # rows are real rows of the files, in file order, without repetition
    assert np.all(np.diff(a.index_train) > 0) and np.all(np.diff(a.index_test) > 0)
    np.testing.assert_array_equal(a.labels_train, ref["train"][1][a.index_train])
    # statistics come from the chosen training rows
    tr = ref["train"][0][a.index_train].reshape(50, -1) / 255.0
    te = ref["test"][0][a.index_test].reshape(20, -1) / 255.0
    mean = tr.mean(axis=0)
    s = np.sqrt(np.mean((tr - mean) ** 2))
    np.testing.assert_allclose(a.X_test, (te - mean) / s, atol=1e-12)


def test_stratified_subset_quotas():
    labels = np.repeat([0, 1, 2], [70, 20, 10])
    rows = data.stratified_subset(labels, 15, np.random.default_rng(0))
    # exact quotas 10.5, 3, 1.5 -> floors 10, 3, 1, the last row to the largest remainder (tie: lower class)
    np.testing.assert_array_equal(np.bincount(labels[rows], minlength=3), [11, 3, 1])
    assert rows.size == np.unique(rows).size == 15


@pytest.mark.parametrize("kwargs,argument", [
    ({"train_size": 61}, "train_size"), ({"test_size": 0}, "test_size"), ({"train_size": 2.5}, "train_size"),
    ({"seed": -1}, "seed"), ({"classes": ["cat"]}, "classes"), ({"classes": [1, 1]}, "classes"),
])
def test_bad_arguments_name_the_argument(tmp_path, kwargs, argument):
    make_mnist(tmp_path)
    with pytest.raises(ValueError, match=argument):
        load_dataset("mnist", data_dir=tmp_path, **kwargs)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="name: unknown data set 'svhn'"):
        load_dataset("svhn")


def test_single_training_image_is_refused(tmp_path):
    make_mnist(tmp_path)
    with pytest.raises(ValueError, match="train_size"):
        load_dataset("mnist", data_dir=tmp_path, train_size=1)


# ------------------------------------------------------------------------------------------------
# CIFAR-10
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subdir", ["cifar-10-batches-bin", ""])
def test_cifar_default_deer_dog(tmp_path, subdir):
    ref = make_cifar(tmp_path, subdir=subdir)
    ds = load_dataset("cifar", data_dir=tmp_path)
    assert ds.classes == ["deer", "dog"]
    for split in ("train", "test"):
        images, labels = ref[split]
        keep = np.flatnonzero((labels == 4) | (labels == 5))
        idx, lab = getattr(ds, "index_" + split), getattr(ds, "labels_" + split)
        np.testing.assert_array_equal(idx, keep)
        np.testing.assert_array_equal(lab, (labels[keep] == 5).astype(int))   # deer -> 0, dog -> 1
        Y = getattr(ds, "Y_" + split)
        assert Y.shape == (keep.size, 2)
        np.testing.assert_array_equal(Y.argmax(axis=1), lab)
        np.testing.assert_array_equal(Y.sum(axis=1), 1.0)
    # flattening keeps the file's R, G, B plane order: undo the affine map and compare with the record bytes
    info = ds.meta["preprocessing"]
    tr = ref["train"][0][ds.index_train].reshape(ds.n_train, -1) / 255.0
    mean = tr.mean(axis=0)
    np.testing.assert_allclose(ds.X_train * info["scale_s"] + mean, tr, atol=1e-12)
    te = ref["test"][0][ds.index_test].reshape(ds.n_test, -1) / 255.0
    np.testing.assert_allclose(ds.X_test * info["scale_s"] + mean, te, atol=1e-12)
    assert ds.d0 == 3072


def test_cifar_class_selection(tmp_path):
    ref = make_cifar(tmp_path)
    raw = load_cifar10(tmp_path, classes=["dog", 0, "8"])
    assert raw.classes == ["dog", "airplane", "ship"] and raw.class_ids == [5, 0, 8]
    labels = ref["train"][1]
    np.testing.assert_array_equal(np.array([5, 0, 8])[raw.labels_train], labels[raw.index_train])
    assert raw.index_train.size == np.isin(labels, [5, 0, 8]).sum()
    everything = load_cifar10(tmp_path, classes="all")
    assert everything.images_train.shape == (150, 3, 32, 32)
    np.testing.assert_array_equal(everything.labels_train, labels)
    assert load_dataset("cifar10", data_dir=tmp_path, classes="deer,dog").classes == ["deer", "dog"]


def test_cifar_without_meta_file_uses_builtin_names(tmp_path):
    make_cifar(tmp_path, meta=False)
    assert load_cifar10(tmp_path).classes == ["deer", "dog"]


# ------------------------------------------------------------------------------------------------
# bad files: DataError naming the file and the problem
# ------------------------------------------------------------------------------------------------

def _corrupt_mnist(root, case):
    folder = root / "mnist"
    img = folder / "train-images-idx3-ubyte.gz"
    lab = folder / "train-labels-idx1-ubyte.gz"
    if case == "wrong magic (labels as images)":
        img.write_bytes(lab.read_bytes())
        return img, "wrong magic number 0x00000801"
    if case == "garbage magic":
        write(img, b"\x12\x34\x56\x78" + bytes(100), gz=True)
        return img, "wrong magic number 0x12345678"
    if case == "truncated data":
        content = gzip.decompress(img.read_bytes())
        write(img, content[:-100], gz=True)
        return img, "truncated file"
    if case == "truncated header":
        write(img, bytes.fromhex("00000803 0000003c"), gz=True)
        return img, "truncated file"
    if case == "truncated gzip stream":
        content = img.read_bytes()
        img.write_bytes(content[: len(content) // 2])
        return img, "truncated file"
    if case == "extra bytes":
        write(img, gzip.decompress(img.read_bytes()) + b"xyz", gz=True)
        return img, "3 unexpected bytes"
    if case == "label out of range":
        labels = read_idx(lab)
        labels[7] = 10
        write(lab, idx_bytes(labels), gz=True)
        return lab, "label out of range: value 10 at index 7"
    if case == "count mismatch":
        write(lab, idx_bytes(read_idx(lab)[:-1]), gz=True)
        return lab, "59 labels but train-images-idx3-ubyte.gz holds 60 images"
    if case == "wrong image size":
        write(img, idx_bytes(np.zeros((60, 28, 27), np.uint8)), gz=True)
        return img, "28x27"
    if case == "missing file":
        lab.unlink()
        return "train-labels-idx1-ubyte", "not found"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["wrong magic (labels as images)", "garbage magic", "truncated data",
                                  "truncated header", "truncated gzip stream", "extra bytes",
                                  "label out of range", "count mismatch", "wrong image size", "missing file"])
def test_bad_mnist_files(tmp_path, case):
    make_mnist(tmp_path)
    path, problem = _corrupt_mnist(tmp_path, case)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and problem in msg and "\n" not in msg


@pytest.mark.parametrize("case", ["wrong record size", "truncated", "empty", "label out of range",
                                  "missing file", "bad meta"])
def test_bad_cifar_files(tmp_path, case):
    make_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-bin"
    path = folder / "data_batch_3.bin"
    if case == "wrong record size":   # CIFAR-100 style 3074-byte records
        path.write_bytes(bytes(3074 * 3))
        problem = "wrong record size: 9222 bytes is not a whole number of 3073-byte records"
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:-10])
        problem = "not a whole number of 3073-byte records (1 label byte + 3072 pixel bytes); the file is truncated"
    elif case == "empty":
        path.write_bytes(b"")
        problem = "0 bytes is not a whole number"
    elif case == "label out of range":
        content = bytearray(path.read_bytes())
        content[3073 * 4] = 10
        path.write_bytes(bytes(content))
        problem = "label out of range: value 10 at record 4"
    elif case == "missing file":
        path.unlink()
        path = "data_batch_3.bin"
        problem = "not found"
    else:
        path = folder / "batches.meta.txt"
        path.write_text("cat\ndog\n")
        problem = "expected 10 class names"
    with pytest.raises(DataError) as err:
        load_dataset("cifar", data_dir=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and problem in msg and "\n" not in msg


# ------------------------------------------------------------------------------------------------
# data directory
# ------------------------------------------------------------------------------------------------

def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("BOTTLENECK_DATA", raising=False)
    assert data.resolve_data_dir() == tmp_path / "home" / ".cache" / "bottleneck-dynamics"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.resolve_data_dir() == tmp_path / "xdg" / "bottleneck-dynamics"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")   # XDG spec: relative paths are invalid
    assert data.resolve_data_dir() == tmp_path / "home" / ".cache" / "bottleneck-dynamics"
    monkeypatch.setenv("BOTTLENECK_DATA", str(tmp_path / "env"))
    assert data.resolve_data_dir() == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "opt") == tmp_path / "opt"


def test_env_variable_is_used_by_loaders(tmp_path, monkeypatch):
    make_mnist(tmp_path / "env")
    monkeypatch.setenv("BOTTLENECK_DATA", str(tmp_path / "env"))
    assert load_dataset("mnist").n_train == 60


# ------------------------------------------------------------------------------------------------
# the real data sets in ../shared/datasets
# ------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason=f"MNIST not available at {SHARED / 'mnist'}")
def test_shared_mnist():
    ds = load_dataset("mnist", data_dir=SHARED)
    assert ds.X_train.shape == (60000, 784) and ds.X_test.shape == (10000, 784)
    assert ds.Y_train.shape == (60000, 10)
    np.testing.assert_array_equal(ds.labels_train[:20], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 3, 5, 3, 6, 1, 7, 2, 8, 6, 9])
    np.testing.assert_array_equal(ds.labels_test[:20], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6, 9, 0, 1, 5, 9, 7, 3, 4])
    assert ds.meta["class_counts_train"] == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert ds.meta["class_counts_test"] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # the files are the official ones
    for path in ds.meta["source_files"]:
        assert data.sha256_file(path) == SHA256[Path(path).name], path
    # the test inputs get the training map: close to, not exactly, the normalised scale
    assert abs(np.mean(ds.X_test ** 2) - 1.0) < 0.05


@pytest.mark.skipif(not (SHARED / "cifar-10-batches-bin").is_dir(),
                    reason=f"CIFAR-10 not available at {SHARED / 'cifar-10-batches-bin'}")
def test_shared_cifar_dog_vs_deer():
    ds = load_dataset("cifar", data_dir=SHARED)
    assert ds.classes == ["deer", "dog"]
    assert ds.X_train.shape == (10000, 3072) and ds.X_test.shape == (2000, 3072)
    assert ds.meta["class_counts_train"] == [5000, 5000] and ds.meta["class_counts_test"] == [1000, 1000]
    for path in ds.meta["source_files"]:
        assert data.sha256_file(path) == SHA256[Path(path).name], path
    # README: the first train labels are frog, truck, truck, deer -> the first deer/dog row is record 3
    assert ds.index_train[0] == 3 and ds.labels_train[0] == 0
    sub = load_dataset("cifar", data_dir=SHARED, train_size=100, test_size=40, seed=1)
    assert sub.meta["class_counts_train"] == [50, 50] and sub.meta["class_counts_test"] == [20, 20]
    assert np.isin(sub.index_train, ds.index_train).all()
