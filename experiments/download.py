"""Downloads of the official data files (``cli.py download``), every file checked against its sha256.

:func:`download` fetches the official files of MNIST and CIFAR-10 (binary) for users with internet
(``cli.py download``; the readers of :mod:`experiments.data` never download by themselves).  Every file
is streamed to a temporary file in the target directory, its sha256 is checked against :data:`SHA256`,
and only then is it moved into place with ``os.replace``. For CIFAR-10 the
official tarball is checked as a whole, then the seven needed members are extracted one by one (by exact
name only: nothing else in the archive is ever written) and each is checked against its own sha256.

The files go into the data directory of :func:`experiments.data.resolve_data_dir`: MNIST into ``DIR/mnist/``,
CIFAR-10 into ``DIR/cifar-10-batches-bin/``, where the readers of :mod:`experiments.data` find them.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from .data import (ALIASES, CIFAR_META_FILE, CIFAR_SUBDIR, CIFAR_TEST_FILE, CIFAR_TRAIN_FILES, MNIST_FILES,
                   MNIST_SUBDIR, READ_CHUNK, DataError, resolve_data_dir, sha256_file)

#: The official CIFAR-10 archive (binary version).
CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"

#: sha256 of the official files (of the published releases; the CIFAR-10 tarball's digest is the one
#: published for https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, 170,052,171 bytes).
SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
    "batches.meta.txt": "558e74b5e208382e186da55784b4bac2cd52e558448e1b5800990fdb28ed8033",
    CIFAR_ARCHIVE: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
}

#: Public MNIST mirrors serving the original gz files, tried in order (yann.lecun.com no longer serves them
#: reliably).
MNIST_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
#: The CIFAR-10 authors' site, which serves cifar-10-binary.tar.gz.
CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)

#: Refuse to store more than this many bytes from one URL (the largest official file is 170 MB).
MAX_DOWNLOAD_BYTES = 1 << 30


def _expected(checksums, name):
    digest = checksums.get(name)
    if not digest:
        raise DataError(f"{name}: no known sha256 in the checksum table, refusing to use it unchecked")
    return digest.lower()


def _temp_in(folder, name):
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    return os.fdopen(fd, "wb"), Path(tmp)


class _Rejected(Exception):
    """A download or archive member failed its check; the message leaves out the file name."""


def _store_stream(stream, dest, expected, source, say):
    """Copy ``stream`` to a temp file beside ``dest``, check its sha256, then ``os.replace`` it into place.

    Raises ``_Rejected`` on a checksum mismatch or an oversized stream; the temp file is always removed.
    """
    fh, tmp = _temp_in(dest.parent, dest.name)
    try:
        h, n = hashlib.sha256(), 0
        with fh:
            for chunk in iter(lambda: stream.read(READ_CHUNK), b""):
                n += len(chunk)
                if n > MAX_DOWNLOAD_BYTES:
                    raise _Rejected(f"{source} sent more than {MAX_DOWNLOAD_BYTES} bytes; the file was not saved")
                h.update(chunk)
                fh.write(chunk)
                if say and n % (32 * READ_CHUNK) == 0:
                    say(f"  {dest.name}: {n >> 20} MiB")
            fh.flush()
            os.fsync(fh.fileno())
        actual = h.hexdigest()
        if actual != expected:
            raise _Rejected(f"checksum mismatch for {source}: expected sha256 {expected}, got {actual} "
                            f"({n} bytes); the file was not saved")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _fetch(urls, dest, expected, timeout, say, name):
    """Download the first URL that works into ``dest`` (sha256-checked, atomic).

    Raises DataError "<name>: <what went wrong for each URL>" when no URL gave the right file.
    """
    errors = []
    for url in urls:
        if say:
            say(f"downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return _store_stream(resp, dest, expected, url, say)
        except urllib.error.HTTPError as exc:
            errors.append(f"download of {url} failed: HTTP {exc.code} {exc.reason}")
        except urllib.error.URLError as exc:
            errors.append(f"download of {url} failed: {exc.reason}")
        except _Rejected as exc:
            errors.append(str(exc))
        except (OSError, ValueError) as exc:   # timeouts, connection resets, malformed URLs, disk full
            errors.append(f"download of {url} failed: {exc}")
    raise DataError(f"{name}: " + "; ".join(errors))


def _is_ok(path, expected):
    return path.is_file() and sha256_file(path) == expected


def _join(base, name):
    return base.rstrip("/") + "/" + name


def download(dataset, data_dir=None, base_url=None, checksums=None, timeout=60.0, progress=None):
    """Fetch the official files of a data set into the data directory, checking every sha256.

    Parameters
    ----------
    dataset : {"mnist", "cifar"}
    data_dir : str or Path or None, see :func:`resolve_data_dir`; created if missing. MNIST goes to
        ``DIR/mnist/``, CIFAR-10 to ``DIR/cifar-10-batches-bin/``.
    base_url : str or None
        A URL prefix serving the official file names (``<base_url>/train-images-idx3-ubyte.gz``, ...,
        ``<base_url>/cifar-10-binary.tar.gz``); default :data:`MNIST_MIRRORS` / :data:`CIFAR_MIRRORS`,
        tried in order.
    checksums : mapping file name -> sha256 hex, or None for :data:`SHA256`. Every file must have an entry.
    timeout : float, seconds per network operation
    progress : callable(str) or None, receives one-line progress messages

    Returns
    -------
    list of Path, the data files now present (already valid files are kept and not fetched again)

    Raises
    ------
    DataError
        Download failed (HTTP error, unreachable host), checksum mismatch (naming the file and both digests),
        unsafe or incomplete archive. Nothing unchecked is ever left in place, and a failed download leaves
        nothing behind: the files it fetched and the folders it created are removed again (files that were
        there before are kept).
    """
    root = resolve_data_dir(data_dir)
    target = root / (MNIST_SUBDIR if ALIASES.get(str(dataset).strip().lower(), str(dataset).strip().lower())
                     == "mnist" else CIFAR_SUBDIR)
    new_dirs = [p for p in (target, *target.parents) if not p.exists()]
    before = set(target.iterdir()) if target.is_dir() else set()
    try:
        return _download(dataset, data_dir, base_url, checksums, timeout, progress)
    except BaseException:
        if target.is_dir():
            for path in set(target.iterdir()) - before:
                if path.is_file() and not path.is_symlink():
                    path.unlink(missing_ok=True)
        for path in new_dirs:                     # deepest first; only if empty now
            try:
                path.rmdir()
            except OSError:
                break
        raise


def _download(dataset, data_dir=None, base_url=None, checksums=None, timeout=60.0, progress=None):
    """:func:`download` without the clean-up of a failed download."""
    key = ALIASES.get(str(dataset).strip().lower(), str(dataset).strip().lower())
    if key not in ("mnist", "cifar"):
        raise ValueError(f"dataset: expected 'mnist' or 'cifar', got {dataset!r}")
    checksums = SHA256 if checksums is None else dict(checksums)
    root = resolve_data_dir(data_dir)
    bases = (base_url,) if base_url else (MNIST_MIRRORS if key == "mnist" else CIFAR_MIRRORS)
    say = progress
    folder = root / (MNIST_SUBDIR if key == "mnist" else CIFAR_SUBDIR)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{folder}: cannot create the data directory ({exc.strerror or exc})") from None
    if key == "mnist":
        done = []
        for split in ("train", "test"):
            for stem in MNIST_FILES[split]:
                name = stem + ".gz"
                dest, expected = folder / name, _expected(checksums, name)
                if _is_ok(dest, expected):
                    if say:
                        say(f"ok (sha256 verified, already present): {dest}")
                else:
                    _fetch([_join(b, name) for b in bases], dest, expected, timeout, say, name)
                    if say:
                        say(f"ok (sha256 verified): {dest}")
                done.append(dest)
        return done

    wanted = CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE, CIFAR_META_FILE)
    expected = {name: _expected(checksums, name) for name in wanted}
    archive_digest = _expected(checksums, CIFAR_ARCHIVE)
    dests = [folder / name for name in wanted]
    if all(_is_ok(folder / name, expected[name]) for name in wanted):
        if say:
            say(f"ok (sha256 verified, already present): {folder}")
        return dests
    try:
        fh, tmp_archive = _temp_in(root, CIFAR_ARCHIVE)
    except OSError as exc:
        raise DataError(f"{root}: cannot write the archive there ({exc.strerror or exc})") from None
    fh.close()
    try:
        _fetch([_join(b, CIFAR_ARCHIVE) for b in bases], tmp_archive, archive_digest, timeout, say,
               CIFAR_ARCHIVE)
        _extract_cifar(tmp_archive, folder, expected, say)
    finally:
        tmp_archive.unlink(missing_ok=True)
    return dests


def _extract_cifar(archive, folder, expected, say):
    """Extract exactly the members ``cifar-10-batches-bin/<name>`` for the names in ``expected``.

    Guards against path traversal and similar tricks: the archive is first scanned, and any member with an
    absolute path, a backslash or a ``..`` component rejects the whole archive before anything is written;
    members are then looked up by exact name and written only to ``folder/<name>`` (``extractall`` is never
    used); wanted members must be regular files (no links, devices); every extracted file is sha256-checked
    before ``os.replace``.
    """
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {}
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                if member.name.startswith("/") or "\\" in member.name or ".." in parts:
                    raise DataError(f"{CIFAR_ARCHIVE}: unsafe path {member.name!r} in archive; archive rejected, "
                                    f"nothing extracted")
                if len(parts) == 2 and parts[0] == CIFAR_SUBDIR and parts[1] in expected:
                    if parts[1] in members:
                        raise DataError(f"{CIFAR_ARCHIVE}: member {member.name!r} appears twice; archive rejected")
                    if not member.isfile():
                        raise DataError(f"{CIFAR_ARCHIVE}: member {member.name!r} is not a regular file; "
                                        f"archive rejected")
                    members[parts[1]] = member
            missing = [n for n in expected if n not in members]
            if missing:
                raise DataError(f"{CIFAR_ARCHIVE}: archive lacks "
                                f"{', '.join(CIFAR_SUBDIR + '/' + n for n in missing)}")
            for name, member in members.items():
                dest = folder / name
                if _is_ok(dest, expected[name]):
                    continue
                with tar.extractfile(member) as stream:
                    try:
                        _store_stream(stream, dest, expected[name], f"{member.name} in {CIFAR_ARCHIVE}", say)
                    except _Rejected as exc:
                        raise DataError(f"{name}: {exc}") from None
                if say:
                    say(f"ok (sha256 verified): {dest}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{CIFAR_ARCHIVE}: cannot read the archive ({exc})") from None
