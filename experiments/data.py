"""Data sets of the paper's experiments (MATH §7): MNIST, CIFAR-10 (binary) and the synthetic regression task.

Everything is returned as a :class:`Dataset` of float64 arrays ready for the simulators:
``X_train`` (N, d0), ``Y_train`` (N, dr), ``X_test``, ``Y_test``.

Where the files are
-------------------
:func:`resolve_data_dir` picks the data directory: the ``data_dir`` argument (``--data-dir``), else the
environment variable ``BOTTLENECK_DATA``, else the user cache directory
``$XDG_CACHE_HOME/bottleneck-dynamics`` (``~/.cache/bottleneck-dynamics`` when XDG_CACHE_HOME is unset).
Inside it the files keep their official names and may sit directly in the directory or in the subfolders
``mnist/`` and ``cifar-10-batches-bin/`` (the layout written by :func:`experiments.download.download`)::

    DIR/mnist/train-images-idx3-ubyte.gz     (or uncompressed train-images-idx3-ubyte; also DIR/ itself)
    DIR/mnist/train-labels-idx1-ubyte.gz
    DIR/mnist/t10k-images-idx3-ubyte.gz
    DIR/mnist/t10k-labels-idx1-ubyte.gz
    DIR/cifar-10-batches-bin/data_batch_1.bin ... data_batch_5.bin, test_batch.bin   (3073-byte records)
    DIR/cifar-10-batches-bin/batches.meta.txt (optional: class names, one per line)

Formats
-------
MNIST: idx files (gzipped or not; recognised by content, not by name). Images: magic 0x00000803,
dimensions (N, 28, 28), uint8. Labels: magic 0x00000801, dimension (N,), uint8 values 0..9.
CIFAR-10 binary version: records of 3073 bytes, one label byte (0..9) then the 1024-byte R, G and B planes,
each 32x32 row-major.

Subsets (``train_size``, ``test_size``)
---------------------------------------
With a size of None every row of the split is used, in file order. With a size k the rows are a seeded,
class-stratified choice: each class c gets a quota q_c proportional to its frequency in the split
(floor of k n_c / n, the remaining rows going to the largest fractional parts, ties to the lower class),
and takes the first q_c rows of a seeded permutation of that class's rows (``numpy.random.default_rng``
seeded with ``[seed, 0]`` for train and ``[seed, 1]`` for test, classes in order). The chosen rows are
returned in file order, and :attr:`Dataset.index_train` / :attr:`Dataset.index_test` hold their positions
in the original split (for CIFAR-10: positions among all 50,000 / 10,000 records, before the class filter).
The same seed always gives the same rows.

Preprocessing (identical for train and test)
--------------------------------------------
1. Pixels (uint8) are divided by 255 and flattened: MNIST row-major to d0 = 784; CIFAR-10 in the file's
   order (R plane, G plane, B plane, each row-major) to d0 = 3072.
2. Centring: the mean training image (mean over the training rows actually used, i.e. after the subset)
   is subtracted from every train and test image.
3. Scaling: all train and test inputs are divided by one scalar
   ``s = sqrt(mean over training rows of |x|^2 / d0)``, the root-mean-square of the centred training
   coordinates. After this the training inputs satisfy ``mean_i |x_i|^2 / d0 = 1`` exactly, the scale of
   the synthetic N(0, I) inputs, so the kernels' |x|^2/d0 normalisation (MATH §2) sees O(1) values.

The statistics (mean image, ``s``) come from the training rows only and the identical affine map is
applied to the test rows; ``meta["preprocessing"]`` records the scheme and ``s``. Test inputs are not
rescaled to norm 1 on their own.

Targets: plain one-hot vectors (0/1, not centred), as in the paper (MSE on one-hot targets): 10 columns
for MNIST, one column per chosen class for CIFAR-10 in the order the classes were given (default
deer, dog: column 0 = deer = CIFAR label 4, column 1 = dog = CIFAR label 5).

The synthetic regression data set is made by :func:`experiments.synthetic.make_synthetic`; ``load_dataset``
only forwards to it.

Errors
------
Bad files raise :class:`DataError` (a ``ValueError``) whose one-line message names the file and the
problem: missing file, wrong magic number, truncated file, trailing bytes, wrong record size, label out of
range, inconsistent counts. Bad arguments raise ``ValueError`` naming the argument.

The loaders never download: :mod:`experiments.download` fetches the official files (``cli.py download``).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path

import numpy as np

from refimpl.validate import non_negative_int, positive_int

from .validate import TrainError


class DataError(ValueError):
    """A data file is missing, malformed or fails its checksum; the message names the file and the problem."""


# ----------------------------------------------------------------------------------------------------
# Official file names, checksums, mirrors
# ----------------------------------------------------------------------------------------------------

MNIST_SUBDIR = "mnist"
#: idx file stems (without .gz) of MNIST: (images, labels) per split.
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_CLASSES = [str(k) for k in range(10)]
MNIST_IMAGE_MAGIC = 0x00000803
MNIST_LABEL_MAGIC = 0x00000801

CIFAR_SUBDIR = "cifar-10-batches-bin"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{k}.bin" for k in range(1, 6))
CIFAR_TEST_FILE = "test_batch.bin"
CIFAR_META_FILE = "batches.meta.txt"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
#: Records in each official CIFAR-10 batch file (the most a batch file may hold).
CIFAR_BATCH_RECORDS = 10_000
CIFAR_DEFAULT_CLASSES = ("deer", "dog")

#: Bytes per read when files are hashed or copied.
READ_CHUNK = 1 << 20

DATASETS = ("synthetic", "mnist", "cifar", "multi-index", "manifold")
#: ``--dataset npz:PATH``: the user's own arrays in an .npz file (:func:`load_npz`).
NPZ_PREFIX = "npz:"
NPZ_KEYS = ("X_train", "Y_train", "X_test", "Y_test")
#: Share of the rows held out as the test set of an .npz file without X_test, Y_test.
NPZ_HOLDOUT = 0.2
#: Generated data sets (no files): their options are forwarded to their generator.
GENERATED = ("synthetic", "multi-index", "manifold")


def is_npz(dataset):
    """True for ``"npz:PATH"``, the user's own data set."""
    return isinstance(dataset, str) and dataset.startswith(NPZ_PREFIX)


def dataset_name(value):
    """A checked ``--dataset``: one of :data:`DATASETS` (aliases allowed), or ``npz:PATH`` with PATH made
    absolute (so a run resumes from anywhere); ValueError naming the argument otherwise."""
    text = str(value).strip()
    if text.lower().startswith(NPZ_PREFIX):
        path = text[len(NPZ_PREFIX):].strip()
        if not path:
            raise ValueError("dataset: expected npz:PATH with the path of an .npz file, got 'npz:'")
        return NPZ_PREFIX + str(Path(path).expanduser().resolve())
    key = ALIASES.get(text.lower(), text.lower())
    if key not in DATASETS:
        raise ValueError(f"dataset: expected one of {', '.join(DATASETS)} or npz:PATH, got {value!r}")
    return key


def dataset_label(dataset):
    """A short name of a data set for folder names: ``npz-<file stem>`` for ``npz:PATH``."""
    return f"npz-{Path(dataset[len(NPZ_PREFIX):]).stem}" if is_npz(dataset) else str(dataset)


def check_loss_fits_task(loss, dataset, task):
    """TrainError unless ``loss`` can train on ``dataset`` with ``task``: cross-entropy needs class targets
    (MATH §4.3), so it is refused on the generated regression data and on the autoencoder."""
    if is_npz(dataset) and task != "autoencoder":
        return                      # known once the file is read: load_npz refuses ce on float targets
    if loss == "ce" and (dataset in GENERATED or task == "autoencoder"):
        raise TrainError(f"loss: 'ce' needs a classification data set (mnist or cifar); {dataset} "
                         f"{'with --task autoencoder ' if task == 'autoencoder' else ''}is regression "
                         "(use --loss mse)")
#: Other names of the data sets.
ALIASES = {"cifar10": "cifar", "cifar-10": "cifar"}


# ----------------------------------------------------------------------------------------------------
# Data directory
# ----------------------------------------------------------------------------------------------------

def default_cache_dir():
    """``$XDG_CACHE_HOME/bottleneck-dynamics``, or ``~/.cache/bottleneck-dynamics`` (XDG base-dir spec)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "bottleneck-dynamics"


def resolve_data_dir(data_dir=None):
    """The data directory: ``data_dir`` if given, else ``$BOTTLENECK_DATA``, else :func:`default_cache_dir`.

    Parameters
    ----------
    data_dir : str or Path or None

    Returns
    -------
    Path (``~`` expanded; not created, not required to exist)
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("BOTTLENECK_DATA", "")
    if env:
        return Path(env).expanduser()
    return default_cache_dir()


def _find_file(root, subdir, names, what):
    """First existing file among ``root/subdir/name`` then ``root/name`` for each name in ``names``."""
    root = Path(root)
    for folder in (root / subdir, root):
        for name in names:
            path = folder / name
            if path.is_file():
                return path
    tried = " or ".join(names)
    raise DataError(
        f"{what}: file {tried} not found in {root / subdir} or {root}; get the data with "
        f"'python cli.py download {'mnist' if subdir == MNIST_SUBDIR else 'cifar'} --data-dir {root}' "
        f"or point --data-dir / BOTTLENECK_DATA at a folder that has it")


# ----------------------------------------------------------------------------------------------------
# idx files (MNIST)
# ----------------------------------------------------------------------------------------------------

#: idx type codes (third magic byte) -> big-endian NumPy dtype.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path):
    """Whole file content; gzip data (magic 1f 8b) is decompressed. Errors become DataError."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except EOFError:
            raise DataError(f"{path}: truncated file: the gzip stream ends early") from None
        except (OSError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc})") from None
    return raw


def _read_idx(path, expect=None):
    """Parse an idx file; returns (array, magic number).  ``expect``: (magic, what) the file must start with."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated file: {len(data)} bytes, shorter than the 4-byte idx magic number")
    magic = int.from_bytes(data[:4], "big")
    if expect is not None and magic != expect[0]:
        raise DataError(f"{path}: wrong magic number 0x{magic:08x}, expected 0x{expect[0]:08x} ({expect[1]})")
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x}: an idx file starts with two zero bytes, a type code "
            f"(0x08 uint8 ... 0x0e float64) and the number of dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated file: {len(data)} bytes, shorter than the {header}-byte idx header "
                        f"for {ndim} dimensions")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[code])
    need = math.prod(shape) * dtype.itemsize   # Python ints: no overflow for absurd headers
    have = len(data) - header
    if have < need:
        raise DataError(f"{path}: truncated file: shape {shape} needs {need} data bytes after the header, "
                        f"found {have}")
    if have > need:
        raise DataError(f"{path}: {have - need} unexpected bytes after the data of shape {shape} "
                        f"(wrong header or not an idx file)")
    arr = np.frombuffer(data, dtype=dtype, count=need // dtype.itemsize, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True), magic


def read_idx(path):
    """Read an idx file (gzipped or not) into a NumPy array.

    Parameters
    ----------
    path : str or Path
        An idx file: magic ``00 00 TT NN`` (TT the type code, NN the number of dimensions), NN big-endian
        uint32 dimensions, then the data in C order, big-endian.

    Returns
    -------
    ndarray of the stored shape, native byte order, writable.

    Raises
    ------
    DataError
        Wrong magic number, truncated header or data, trailing bytes, corrupt gzip, unreadable file.
    """
    return _read_idx(path)[0]


# ----------------------------------------------------------------------------------------------------
# Raw splits (uint8 images, integer labels)
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class RawData:
    """Undecoded data of one classification data set, before subsetting and preprocessing.

    Attributes
    ----------
    name : str
    images_train : (N, ...) uint8 array; (N, 28, 28) for MNIST, (N, 3, 32, 32) for CIFAR-10 (planes R, G, B)
    labels_train : (N,) int64, class positions 0..k-1 in ``classes``
    images_test, labels_test : the same for the test split
    classes : list of str, the class names, in column order
    class_ids : list of int, the labels the classes carry in the files
    index_train, index_test : (N,) int64, positions of the rows in the original split
    files : list of Path, the files read
    """

    name: str
    images_train: np.ndarray
    labels_train: np.ndarray
    images_test: np.ndarray
    labels_test: np.ndarray
    classes: list
    class_ids: list
    index_train: np.ndarray
    index_test: np.ndarray
    files: list


def _parse_classes(classes, names, argument="classes"):
    """Class selection -> list of label ids. Accepts names (any case), ids, digit strings, "a,b" or "all"."""
    if isinstance(classes, str):
        if classes.strip().lower() == "all":
            return list(range(len(names)))
        classes = [c for c in classes.split(",") if c.strip()]
    try:
        items = list(classes)
    except TypeError:
        raise ValueError(f"{argument}: expected class names or label ids, got {classes!r}") from None
    lower = [n.lower() for n in names]
    ids = []
    for item in items:
        if isinstance(item, (bool, np.bool_)):
            raise ValueError(f"{argument}: expected class names or label ids, got {item!r}")
        if isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.strip().isdigit()):
            k = int(item)
            if not 0 <= k < len(names):
                raise ValueError(f"{argument}: label id {k} out of range 0..{len(names) - 1}")
        elif isinstance(item, str) and item.strip().lower() in lower:
            k = lower.index(item.strip().lower())
        else:
            raise ValueError(f"{argument}: unknown class {item!r}; expected one of {names} or ids "
                             f"0..{len(names) - 1}")
        if k in ids:
            raise ValueError(f"{argument}: class {names[k]!r} given twice")
        ids.append(k)
    if not ids:
        raise ValueError(f"{argument}: expected at least one class")
    return ids


def _check_labels(path, labels, n_classes, where="index"):
    bad = np.flatnonzero(labels >= n_classes)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{path}: label out of range: value {int(labels[i])} at {where} {i} "
                        f"({bad.size} bad in all); labels must be 0..{n_classes - 1}")


def _select(raw, class_ids, names):
    """Keep the rows of the given label ids; relabel them 0..k-1 in the given order."""
    lut = np.full(len(names), -1, dtype=np.int64)
    lut[class_ids] = np.arange(len(class_ids))
    out = {}
    for split in ("train", "test"):
        labels = lut[getattr(raw, "labels_" + split)]
        keep = np.flatnonzero(labels >= 0)
        out["images_" + split] = getattr(raw, "images_" + split)[keep]
        out["labels_" + split] = labels[keep]
        out["index_" + split] = getattr(raw, "index_" + split)[keep]
    return RawData(name=raw.name, classes=[names[k] for k in class_ids], class_ids=list(class_ids),
                   files=raw.files, **out)


def load_mnist(data_dir=None, classes=None):
    """Read the four MNIST idx files (gzipped or not) from ``data_dir`` or ``data_dir/mnist``.

    Parameters
    ----------
    data_dir : str or Path or None, see :func:`resolve_data_dir`
    classes : None (all ten digits) or a selection of digits, see :func:`load_cifar10`

    Returns
    -------
    RawData with images (N, 28, 28) uint8: 60,000 train and 10,000 test for the official files.

    Raises
    ------
    DataError
        Missing file, wrong magic number, truncated file, image size not 28x28, label out of range,
        different counts in the image and label files.
    """
    root = resolve_data_dir(data_dir)
    splits, files = {}, []
    for split, (img_stem, lab_stem) in MNIST_FILES.items():
        img_path = _find_file(root, MNIST_SUBDIR, (img_stem, img_stem + ".gz"), "MNIST")
        lab_path = _find_file(root, MNIST_SUBDIR, (lab_stem, lab_stem + ".gz"), "MNIST")
        images, magic = _read_idx(img_path, (MNIST_IMAGE_MAGIC, "idx3 uint8 images"))
        if magic != MNIST_IMAGE_MAGIC:
            raise DataError(f"{img_path}: wrong magic number 0x{magic:08x}, expected 0x{MNIST_IMAGE_MAGIC:08x} "
                            f"(idx3 uint8 images)")
        if images.shape[1:] != (28, 28):
            raise DataError(f"{img_path}: images of size {images.shape[1]}x{images.shape[2]}, expected 28x28")
        labels, magic = _read_idx(lab_path, (MNIST_LABEL_MAGIC, "idx1 uint8 labels"))
        if magic != MNIST_LABEL_MAGIC:
            raise DataError(f"{lab_path}: wrong magic number 0x{magic:08x}, expected 0x{MNIST_LABEL_MAGIC:08x} "
                            f"(idx1 uint8 labels)")
        _check_labels(lab_path, labels, 10)
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{lab_path}: {labels.shape[0]} labels but {img_path.name} holds "
                            f"{images.shape[0]} images")
        splits[split] = (images, labels.astype(np.int64))
        files += [img_path, lab_path]
    raw = RawData(name="mnist", images_train=splits["train"][0], labels_train=splits["train"][1],
                  images_test=splits["test"][0], labels_test=splits["test"][1], classes=list(MNIST_CLASSES),
                  class_ids=list(range(10)), index_train=np.arange(len(splits["train"][1])),
                  index_test=np.arange(len(splits["test"][1])), files=files)
    if classes is None:
        return raw
    return _select(raw, _parse_classes(classes, MNIST_CLASSES), MNIST_CLASSES)


def _read_cifar_batch(path):
    """Records of one CIFAR-10 binary file -> (images (n, 3, 32, 32) uint8, labels (n,) int64)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if data.size == 0 or data.size % CIFAR_RECORD_BYTES:
        raise DataError(
            f"{path}: wrong record size: {data.size} bytes is not a whole number of {CIFAR_RECORD_BYTES}-byte "
            f"records (1 label byte + 3072 pixel bytes); the file is truncated or not the CIFAR-10 binary "
            f"version (official files: 30,730,000 bytes = 10,000 records)")
    records = data.reshape(-1, CIFAR_RECORD_BYTES)
    if records.shape[0] > CIFAR_BATCH_RECORDS:
        raise DataError(f"{path}: {records.shape[0]} records; a CIFAR-10 batch file holds at most "
                        f"{CIFAR_BATCH_RECORDS:,} (official files: exactly {CIFAR_BATCH_RECORDS:,})")
    labels = records[:, 0].astype(np.int64)
    _check_labels(path, labels, 10, where="record")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _read_cifar_names(root):
    """Class names from batches.meta.txt when present, else the built-in list."""
    for folder in (Path(root) / CIFAR_SUBDIR, Path(root)):
        path = folder / CIFAR_META_FILE
        if path.is_file():
            try:
                text = path.read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"{path}: cannot read class names ({exc})") from None
            names = [line.strip() for line in text.splitlines() if line.strip()]
            if len(names) != 10:
                raise DataError(f"{path}: expected 10 class names, one per line, found {len(names)}")
            return names, path
    return list(CIFAR_CLASSES), None


def load_cifar10(data_dir=None, classes=CIFAR_DEFAULT_CLASSES):
    """Read the CIFAR-10 binary version from ``data_dir/cifar-10-batches-bin`` or ``data_dir``.

    Parameters
    ----------
    data_dir : str or Path or None, see :func:`resolve_data_dir`
    classes : sequence of class names (case-insensitive) or label ids 0..9, a comma-separated string, or
        "all". Default ("deer", "dog"), the paper's dog-vs-deer task. Column/label k of the result is the
        k-th class given.

    Returns
    -------
    RawData with images (N, 3, 32, 32) uint8 (R, G, B planes as in the file), labels 0..k-1; for the
    default classes 10,000 train and 2,000 test images.

    Raises
    ------
    DataError
        Missing file, size not a whole number of 3073-byte records, label byte out of range, bad
        batches.meta.txt.
    """
    root = resolve_data_dir(data_dir)
    names, meta_path = _read_cifar_names(root)
    class_ids = _parse_classes(CIFAR_DEFAULT_CLASSES if classes is None else classes, names)
    paths = {f: _find_file(root, CIFAR_SUBDIR, (f,), "CIFAR-10") for f in CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,)}
    lut = np.full(10, -1, dtype=np.int64)
    lut[class_ids] = np.arange(len(class_ids))
    out = {}
    for split, fnames in (("train", CIFAR_TRAIN_FILES), ("test", (CIFAR_TEST_FILE,))):
        images, labels, index, offset = [], [], [], 0
        for fname in fnames:
            img, lab = _read_cifar_batch(paths[fname])
            if offset and lab.size != labels_per_file:
                raise DataError(f"{paths[fname]}: {lab.size} records, but {fnames[0]} holds {labels_per_file}; "
                                "the training batch files hold the same number (10,000 in the official files)")
            labels_per_file = lab.size
            mapped = lut[lab]
            keep = np.flatnonzero(mapped >= 0)
            images.append(img[keep])          # copies only the selected records
            labels.append(mapped[keep])
            index.append(keep + offset)
            offset += lab.size
        out["images_" + split] = np.concatenate(images)
        out["labels_" + split] = np.concatenate(labels)
        out["index_" + split] = np.concatenate(index)
    files = list(paths.values()) + ([meta_path] if meta_path else [])
    return RawData(name="cifar", classes=[names[k] for k in class_ids], class_ids=class_ids, files=files, **out)


# ----------------------------------------------------------------------------------------------------
# Subsets, preprocessing, Dataset
# ----------------------------------------------------------------------------------------------------

def _check_size(argument, size, available):
    if size is None:
        return None
    size = positive_int(argument, size)
    if size > available:
        raise ValueError(f"{argument}: asked for {size} rows but only {available} are available")
    return size


def stratified_subset(labels, size, rng):
    """Rows of a class-stratified subset of ``size`` rows, in increasing order (see the module docstring).

    Parameters
    ----------
    labels : (n,) int array, classes 0..k-1
    size : int, 1 <= size <= n
    rng : numpy.random.Generator

    Returns
    -------
    (size,) int64 array of sorted row positions
    """
    labels = np.asarray(labels)
    n = labels.size
    counts = np.bincount(labels)
    exact = size * counts / n
    quota = np.floor(exact).astype(np.int64)
    short = size - int(quota.sum())
    if short:
        # largest fractional parts first; the stable sort breaks ties towards the lower class
        order = np.argsort(-(exact - quota), kind="stable")
        quota[order[:short]] += 1
    chosen = []
    for c, q in enumerate(quota):
        rows = np.flatnonzero(labels == c)
        perm = rng.permutation(rows.size)
        chosen.append(rows[perm[:q]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def preprocess(images_train, images_test):
    """The documented input map: /255, flatten, subtract the mean training image, divide by one RMS scale.

    Parameters
    ----------
    images_train : (N, ...) uint8, N >= 2
    images_test : (M, ...) uint8 with the same trailing shape

    Returns
    -------
    X_train : (N, d0) float64, centred, with mean_i |x_i|^2 / d0 = 1
    X_test : (M, d0) float64, the same affine map
    info : dict (JSON-serialisable) describing the map, with the scale ``s`` applied after centring
    """
    n = images_train.shape[0]
    X_train = images_train.reshape(n, -1).astype(np.float64)
    X_test = images_test.reshape(images_test.shape[0], -1).astype(np.float64)
    X_train /= 255.0
    X_test /= 255.0
    mean = X_train.mean(axis=0)
    X_train -= mean
    X_test -= mean
    scale = float(np.sqrt(np.mean(X_train ** 2)))
    if not scale > 0:
        raise ValueError(f"train_size: the {n} training image(s) are all identical, so the inputs cannot be "
                         f"centred and scaled; use at least 2 different images")
    X_train /= scale
    X_test /= scale
    info = {
        "scheme": "pixels/255, flattened (file order), minus mean training image, divided by one scalar s "
                  "so that mean over training rows of |x|^2/d0 = 1; identical map on test",
        "flatten_order": "row-major (28x28)" if images_train.shape[1:] == (28, 28)
        else "channel planes R,G,B, each row-major 32x32",
        "pixel_divisor": 255.0,
        "centre": "mean training image",
        "scale_s": scale,
        "mean_image_norm": float(np.linalg.norm(mean)),
        "statistics_from": f"the {n} training rows used",
        "targets": "one-hot, not centred",
    }
    return X_train, X_test, info


def one_hot(labels, k):
    """(n,) int labels 0..k-1 -> (n, k) float64 one-hot rows."""
    Y = np.zeros((labels.size, k), dtype=np.float64)
    Y[np.arange(labels.size), labels] = 1.0
    return Y


@dataclasses.dataclass
class Dataset:
    """A train/test data set for the simulators.

    Attributes
    ----------
    name : str, "mnist", "cifar" or "synthetic"
    X_train : (N, d0) float64 inputs
    Y_train : (N, dr) float64 targets (one-hot for classification)
    X_test : (M, d0) float64
    Y_test : (M, dr) float64
    labels_train, labels_test : (N,), (M,) int64 class positions (columns of Y), or None for regression
    classes : list of str (the class of each column of Y), or None for regression
    meta : dict, JSON-serialisable: sizes, preprocessing, source files, subset seed and digests
    index_train, index_test : (N,), (M,) int64 positions of the rows in the original split, or None
    """

    name: str
    X_train: np.ndarray
    Y_train: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray
    labels_train: np.ndarray | None = None
    labels_test: np.ndarray | None = None
    classes: list | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    index_train: np.ndarray | None = None
    index_test: np.ndarray | None = None

    @property
    def n_train(self):
        return self.X_train.shape[0]

    @property
    def n_test(self):
        return self.X_test.shape[0]

    @property
    def d0(self):
        return self.X_train.shape[1]

    @property
    def dr(self):
        return self.Y_train.shape[1]


def _digest(index):
    return hashlib.sha256(np.ascontiguousarray(index, dtype="<i8").tobytes()).hexdigest()


def _classification_dataset(raw, train_size, test_size, seed):
    n_train_all, n_test_all = raw.labels_train.size, raw.labels_test.size
    train_size = _check_size("train_size", train_size, n_train_all)
    test_size = _check_size("test_size", test_size, n_test_all)
    rows = {}
    for split, size, stream, labels in (("train", train_size, 0, raw.labels_train),
                                        ("test", test_size, 1, raw.labels_test)):
        if size is None:
            rows[split] = np.arange(labels.size)
        else:
            rows[split] = stratified_subset(labels, size, np.random.default_rng([seed, stream]))
    img_tr, img_te = raw.images_train[rows["train"]], raw.images_test[rows["test"]]
    lab_tr, lab_te = raw.labels_train[rows["train"]], raw.labels_test[rows["test"]]
    idx_tr, idx_te = raw.index_train[rows["train"]], raw.index_test[rows["test"]]
    X_train, X_test, info = preprocess(img_tr, img_te)
    k = len(raw.classes)
    meta = {
        "dataset": raw.name,
        "n_train": int(lab_tr.size), "n_test": int(lab_te.size),
        "n_train_available": int(n_train_all), "n_test_available": int(n_test_all),
        "d0": int(X_train.shape[1]), "dr": k,
        "classes": list(raw.classes), "class_ids_in_files": [int(c) for c in raw.class_ids],
        "class_counts_train": np.bincount(lab_tr, minlength=k).tolist(),
        "class_counts_test": np.bincount(lab_te, minlength=k).tolist(),
        "subset": {
            "method": "all rows, file order" if train_size is None and test_size is None else
            "class-stratified: per class the first quota rows of a permutation from "
            "numpy.random.default_rng([seed, 0 train / 1 test]); file order",
            "seed": int(seed), "train_size": train_size, "test_size": test_size,
            "train_index_sha256": _digest(idx_tr), "test_index_sha256": _digest(idx_te),
        },
        "preprocessing": info,
        "source_files": [str(p) for p in raw.files],
    }
    return Dataset(name=raw.name, X_train=X_train, Y_train=one_hot(lab_tr, k), X_test=X_test,
                   Y_test=one_hot(lab_te, k), labels_train=lab_tr, labels_test=lab_te,
                   classes=list(raw.classes), meta=meta, index_train=idx_tr, index_test=idx_te)


def _npz_array(path, z, key):
    """``z[key]`` as a numeric array; DataError for an object array (never unpickled) or other non-numbers."""
    try:
        arr = z[key]
    except ValueError as exc:                       # numpy refuses object arrays without allow_pickle
        raise DataError(f"dataset: {path}: {key} is an object array ({str(exc).splitlines()[0]}); expected "
                        "numbers (the file is read without pickle)") from None
    if arr.dtype.kind not in "biuf":
        raise DataError(f"dataset: {path}: {key} has dtype {arr.dtype}; expected floats or integer labels")
    return arr


def _npz_targets(path, key, Y, n):
    """Targets of one split: integer labels (n,) stay labels; floats become (n, dr)."""
    if Y.ndim == 1 and Y.dtype.kind in "biu":
        return Y.astype(np.int64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2:
        raise DataError(f"dataset: {path}: {key} has shape {Y.shape}; expected ({n},) integer labels or "
                        f"({n}, dr) float targets")
    return Y.astype(np.float64)


def load_npz(path, train_size=None, test_size=None, seed=0, loss="mse"):
    """The user's own data set from an .npz file (``--dataset npz:PATH``; README "Your own data").

    The file holds ``X_train`` (N, d0) and ``Y_train``, and optionally ``X_test`` (M, d0) and ``Y_test``.
    Targets are float arrays (N, dr) (or (N,) for one output), or integer class labels (N,), which become
    one-hot targets over the classes found in train and test (sorted), so the accuracy is reported.
    Inputs and targets are used as given (no centring or scaling).  Without ``X_test``, ``Y_test`` a seeded
    :data:`NPZ_HOLDOUT` share of the rows (``default_rng([seed, 3])``) is held out as the test set.
    ``train_size`` / ``test_size`` take a seeded subset as for MNIST (class-stratified for labels).
    The file is read with ``allow_pickle=False``; its sha256 is recorded in ``meta["sha256"]``.

    Raises
    ------
    DataError (one line naming the file) for a missing file, missing keys, object arrays, wrong shapes,
    NaN or inf, mismatched rows, or ``loss="ce"`` on float targets.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset: npz file {path} not found")
    digest = sha256_file(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"dataset: {path} is not a readable .npz file ({str(exc).splitlines()[0]})") from None
    if not hasattr(z, "files"):
        raise DataError(f"dataset: {path} holds a single array; expected an .npz with X_train, Y_train "
                        "(np.savez(path, X_train=..., Y_train=...))")
    with z:
        found = set(z.files)
        missing = [k for k in ("X_train", "Y_train") if k not in found]
        if not missing and ("X_test" in found) != ("Y_test" in found):
            missing = ["Y_test" if "X_test" in found else "X_test"]
        if missing:
            raise DataError(f"dataset: {path} has no {', '.join(missing)}; expected keys X_train, Y_train "
                            f"(and optionally X_test, Y_test together), found {', '.join(sorted(found)) or 'none'}")
        arrays = {k: _npz_array(path, z, k) for k in NPZ_KEYS if k in found}
    X = arrays["X_train"]
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise DataError(f"dataset: {path}: X_train has shape {X.shape}; expected (N, d0) with N, d0 >= 1")
    Y = _npz_targets(path, "Y_train", arrays["Y_train"], X.shape[0])
    if Y.shape[0] != X.shape[0]:
        raise DataError(f"dataset: {path}: X_train has {X.shape[0]} rows but Y_train has {Y.shape[0]}; "
                        "expected one target per input")
    split = "file"
    base_train, base_test = np.arange(X.shape[0]), None      # positions of the rows in the file
    if "X_test" in arrays:
        Xt = arrays["X_test"]
        if Xt.ndim != 2 or Xt.shape[1] != X.shape[1] or Xt.shape[0] < 1:
            raise DataError(f"dataset: {path}: X_test has shape {Xt.shape}; expected (M, {X.shape[1]}) like X_train")
        Yt = _npz_targets(path, "Y_test", arrays["Y_test"], Xt.shape[0])
        if Yt.shape[0] != Xt.shape[0]:
            raise DataError(f"dataset: {path}: X_test has {Xt.shape[0]} rows but Y_test has {Yt.shape[0]}; "
                            "expected one target per input")
        base_test = np.arange(Xt.shape[0])
        if (Yt.ndim == 1) != (Y.ndim == 1) or (Y.ndim == 2 and Yt.shape[1] != Y.shape[1]):
            raise DataError(f"dataset: {path}: Y_test has shape {Yt.shape} and dtype {arrays['Y_test'].dtype} "
                            f"but Y_train {Y.shape} and {arrays['Y_train'].dtype}; expected the same kind of targets")
    else:
        if X.shape[0] < 2:
            raise DataError(f"dataset: {path}: X_train has 1 row and there is no X_test; expected at least 2 "
                            "rows to hold some out as the test set")
        perm = np.random.default_rng([int(seed), 3]).permutation(X.shape[0])
        n_test = max(1, int(round(NPZ_HOLDOUT * X.shape[0])))
        test_rows, train_rows = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        X, Xt, Y, Yt = X[train_rows], X[test_rows], Y[train_rows], Y[test_rows]
        base_train, base_test = train_rows, test_rows
        split = (f"no X_test in the file: a seeded {NPZ_HOLDOUT:.0%} of the rows (default_rng([seed, 3]), "
                 f"{n_test} rows) held out as the test set")
    for key, arr in (("X_train", X), ("X_test", Xt), ("Y_train", Y), ("Y_test", Yt)):
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise DataError(f"dataset: {path}: {key} has {bad} NaN or inf value(s); expected finite numbers")
    labels = Y.ndim == 1
    if not labels and loss == "ce":
        raise DataError(f"loss: 'ce' needs integer class labels; {path} has float targets (use --loss mse)")
    if labels:
        classes = np.unique(np.concatenate([Y, Yt]))
        lab_tr, lab_te = np.searchsorted(classes, Y), np.searchsorted(classes, Yt)
    rows = {}
    for name, size, n, stream, lab in (("train", train_size, X.shape[0], 0, lab_tr if labels else None),
                                       ("test", test_size, Xt.shape[0], 1, lab_te if labels else None)):
        size = _check_size(f"{name}_size", size, n)
        rng = np.random.default_rng([int(seed), stream])
        if size is None:
            rows[name] = np.arange(n)
        elif labels:
            rows[name] = stratified_subset(lab, size, rng)
        else:
            rows[name] = np.sort(rng.permutation(n)[:size])
    X, Xt = X[rows["train"]].astype(np.float64), Xt[rows["test"]].astype(np.float64)
    index_train, index_test = base_train[rows["train"]].astype(np.int64), base_test[rows["test"]].astype(np.int64)
    meta = {"dataset": "npz", "file": str(path), "sha256": digest, "n_train": int(X.shape[0]),
            "n_test": int(Xt.shape[0]), "d0": int(X.shape[1]), "split": split,
            "subset": {"seed": int(seed), "train_size": train_size, "test_size": test_size,
                       "train_index_sha256": _digest(index_train), "test_index_sha256": _digest(index_test)},
            "preprocessing": {"scheme": "none: the file's arrays as given"}}
    if labels:
        k = int(classes.size)
        lab_tr, lab_te = lab_tr[rows["train"]], lab_te[rows["test"]]
        meta.update(dr=k, classes=[str(c) for c in classes.tolist()], targets="one-hot of the integer labels",
                    class_counts_train=np.bincount(lab_tr, minlength=k).tolist())
        return Dataset(name=NPZ_PREFIX + str(path), X_train=X, Y_train=one_hot(lab_tr, k), X_test=Xt,
                       Y_test=one_hot(lab_te, k), labels_train=lab_tr, labels_test=lab_te,
                       classes=meta["classes"], meta=meta, index_train=index_train, index_test=index_test)
    Y, Yt = Y[rows["train"]], Yt[rows["test"]]
    meta.update(dr=int(Y.shape[1]), targets="float targets as given")
    return Dataset(name=NPZ_PREFIX + str(path), X_train=X, Y_train=Y, X_test=Xt, Y_test=Yt, meta=meta,
                   index_train=index_train, index_test=index_test)


def load_dataset(name, data_dir=None, train_size=None, test_size=None, seed=0, classes=None,
                 **synthetic_options):
    """Load a data set of MATH §7 as float64 arrays (see the module docstring for files and preprocessing).

    Parameters
    ----------
    name : {"synthetic", "mnist", "cifar", "multi-index", "manifold"} ("cifar10" and "cifar-10" are
        accepted for "cifar"); the last two are made by :mod:`experiments.tasks` (MATH §7.2, §7.3)
    data_dir : str or Path or None, see :func:`resolve_data_dir` (unused for "synthetic")
    train_size, test_size : int or None
        Number of rows to keep (seeded class-stratified subset); None keeps the whole split. For
        "synthetic" they are the numbers of points drawn (None: make_synthetic's defaults, 2000 each).
    seed : int >= 0, subset seed (for "synthetic": the seed of every random draw)
    classes : class selection for "mnist" / "cifar" (see :func:`load_cifar10`); default all digits for
        MNIST and ("deer", "dog") for CIFAR-10
    **synthetic_options : forwarded to :func:`experiments.synthetic.make_synthetic` (``d0``, ``dr``,
        ``hidden``) or to the generator of "multi-index" / "manifold" (``d0``, ``latent_dim``)

    Returns
    -------
    Dataset

    Raises
    ------
    DataError for bad or missing files, ValueError for bad arguments.
    """
    if is_npz(str(name).strip()):
        loss = synthetic_options.pop("loss", "mse")
        if synthetic_options or classes is not None:
            raise ValueError(f"unexpected options for npz data: {', '.join(sorted(synthetic_options)) or 'classes'}")
        return load_npz(dataset_name(name)[len(NPZ_PREFIX):], train_size, test_size, seed, loss=loss)
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"name: unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    non_negative_int("seed", seed)
    if key == "synthetic":
        if classes is not None:
            raise ValueError("classes: not used by the synthetic regression data set")
        from .synthetic import make_synthetic  # lazy: only the synthetic task needs it
        sizes = {k: v for k, v in (("n_train", train_size), ("n_test", test_size)) if v is not None}
        X_train, Y_train, X_test, Y_test, meta = make_synthetic(seed=seed, **sizes, **synthetic_options)
        meta = {"dataset": "synthetic", **meta,
                "preprocessing": {"scheme": "none here: inputs N(0, I), targets standardised by make_synthetic"}}
        return Dataset(name="synthetic", X_train=X_train, Y_train=Y_train, X_test=X_test, Y_test=Y_test,
                       meta=meta)
    if key in ("multi-index", "manifold"):
        if classes is not None:
            raise ValueError(f"classes: not used by the {key} data set")
        from . import tasks     # lazy, like the synthetic task
        sizes = {k: v for k, v in (("n_train", train_size), ("n_test", test_size)) if v is not None}
        make = tasks.make_multi_index if key == "multi-index" else tasks.make_manifold
        X_train, Y_train, X_test, Y_test, meta, *_ = make(seed=seed, **sizes, **synthetic_options)
        meta = {"dataset": key, **meta}
        return Dataset(name=key, X_train=X_train, Y_train=Y_train, X_test=X_test, Y_test=Y_test, meta=meta)
    if synthetic_options:
        raise ValueError(f"unexpected options for {key}: {', '.join(sorted(synthetic_options))} "
                         f"(they apply to the generated data sets only: synthetic, multi-index, manifold)")
    raw = load_mnist(data_dir, classes=classes) if key == "mnist" else load_cifar10(data_dir, classes=classes)
    ds = _classification_dataset(raw, train_size, test_size, int(seed))
    ds.meta["data_dir"] = str(resolve_data_dir(data_dir))
    return ds


# ----------------------------------------------------------------------------------------------------
# checksums
# ----------------------------------------------------------------------------------------------------

def sha256_file(path):
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(READ_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
