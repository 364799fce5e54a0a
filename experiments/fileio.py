"""Files that nothing can half-write, and the checks that read them back.

* :func:`atomic_write_bytes` / :func:`save_npz`: temporary file in the same folder, fsync, rename.
* :func:`read_json` / :func:`load_npz`: every problem is a one-line ``ValueError`` that names the file
  and says what is wrong with it (never NumPy's or ``json``'s own wording, never advice to unpickle).
* :class:`DirLock`: a lock file holding the owner's pid, so that two processes never write into the
  same run or sweep directory; a lock whose process is gone is stale and is taken over.
* :func:`remove_stale_temp_files`: the ``.<name>.*.tmp`` files a killed writer leaves behind.
* :func:`refuse_link` / :func:`refuse_links_inside`: output folders and their entries that are symbolic
  links are refused, so nothing outside an output folder is ever moved, deleted or overwritten.
* :func:`fault_point`: the fault-injection hook of the tests (``BOTTLENECK_FAULT=event:n`` kills the
  process with SIGKILL, or ``$BOTTLENECK_FAULT_SIGNAL``, at the n-th occurrence of ``event``; unset, it does
  nothing).
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

#: The record of a sweep directory (written by :mod:`experiments.sweep`, read by :mod:`experiments.plots`).
SWEEP_FILE = "sweep.json"


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


# ----------------------------------------------------------------------------
# fault injection (tests)
# ----------------------------------------------------------------------------

def _parse_fault(text):
    if not text or ":" not in text:
        return None
    name, _, count = text.rpartition(":")
    try:
        return name, int(count)
    except ValueError:
        return None


_FAULT = _parse_fault(os.environ.get("BOTTLENECK_FAULT", ""))
_FAULT_SIGNAL = getattr(signal, "SIG" + os.environ.get("BOTTLENECK_FAULT_SIGNAL", "KILL").upper().removeprefix("SIG"),
                        signal.SIGKILL)
_FAULT_SEEN = {}
#: ``$BOTTLENECK_FAULT_SWALLOW=1``: the interrupt the signal raises is swallowed where it is sent (tests).
_FAULT_SWALLOWED = os.environ.get("BOTTLENECK_FAULT_SWALLOW") == "1"


def fault_point(event):
    """Send this process SIGKILL (or ``$BOTTLENECK_FAULT_SIGNAL``, e.g. ``TERM``) at the n-th ``event`` when
    ``BOTTLENECK_FAULT=event:n`` (tests only)."""
    if _FAULT is None or _FAULT[0] != event:
        return
    _FAULT_SEEN[event] = _FAULT_SEEN.get(event, 0) + 1
    if _FAULT_SEEN[event] == _FAULT[1]:
        if _FAULT_SWALLOWED:                  # as in a C callback that prints "Exception ignored" and goes on
            try:
                os.kill(os.getpid(), _FAULT_SIGNAL)
                time.sleep(0.05)
            except KeyboardInterrupt:
                pass
            return
        os.kill(os.getpid(), _FAULT_SIGNAL)


# ----------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------

class DiskFull(OSError):
    """A write failed for want of space (ENOSPC) or quota (EDQUOT); the message names the file."""

    def __str__(self):
        return f"{self.filename}: no space left on the device (or quota exceeded) while writing it"


#: errno values that mean "the disk is full".
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def disk_full(exc):
    """True for an OSError that means the disk (or the quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _FULL


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically (temporary file ``.<name>.*.tmp`` in the same folder, then rename).

    A full disk raises :class:`DiskFull` naming ``path``; the old file is then left as it was.
    """
    path = Path(path)
    try:
        _atomic_write_bytes(path, data)
    except OSError as exc:
        if disk_full(exc) and not isinstance(exc, DiskFull):
            raise DiskFull(exc.errno, os.strerror(exc.errno), str(path)) from None
        raise


def _atomic_write_bytes(path, data):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)            # mkstemp makes 0600; give the usual mode
        with os.fdopen(fd, "wb") as fh:
            half = len(data) // 2
            fh.write(data[:half])
            fh.flush()
            fault_point(f"write:{path.name}")     # a kill in the middle of the write (tests)
            fh.write(data[half:])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temp_files(folder, names):
    """Delete the temporary files ``.<name>.*.tmp`` of the given file names in ``folder``; returns them."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


# ----------------------------------------------------------------------------
# reading back, with messages that name the file
# ----------------------------------------------------------------------------

def save_npz(path, arrays):
    """Save a dict of arrays as an (uncompressed) npz file, atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def npz_headers(path):
    """{name: (shape, dtype)} of the arrays in an npz file, read from their .npy headers (no array is loaded).

    Raises ValueError (one line, naming the file) for a file that is not such an archive.
    """
    path = Path(path)
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"member {info.filename!r} is not an array")
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ValueError(f"unsupported .npy version {version}")
                out[info.filename[:-4]] = (tuple(shape), dtype)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, SyntaxError, TypeError) as exc:
        raise ValueError(f"{path}: cannot be read as a checkpoint (not an npz archive of numeric arrays, or "
                         f"damaged: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return out


def load_npz(path, check=None):
    """Load an npz file written by :func:`save_npz` (never unpickles).

    ``check(name, shape, dtype)``, if given, is called for every array with its .npy header before any
    array is loaded (so a header that claims a huge array is refused before memory is allocated); it
    raises ValueError to refuse the file.

    Raises ValueError (one line, naming the file) for a missing, truncated or damaged file, or one that
    is not an npz archive of plain numeric arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: missing")
    if check is not None:
        for name, (shape, dtype) in npz_headers(path).items():
            if dtype.hasobject or dtype.kind not in "biufc":
                raise ValueError(f"{path}: array {name!r} has the non-numeric type {dtype} (damaged or crafted)")
            check(name, shape, dtype)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an npz archive")
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, AttributeError) as exc:
        reason = "truncated or damaged" if isinstance(exc, (zipfile.BadZipFile, EOFError)) else \
            "not an npz archive of numeric arrays, or damaged"
        raise ValueError(f"{path}: cannot be read as a checkpoint ({reason})") from None


def read_json(path):
    """The JSON object in ``path``; ValueError (one line, naming the file) if missing, not UTF-8 or not JSON."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: missing") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text (UTF-8) file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------
# symbolic links: nothing is read, moved or written through a link in an output folder
# ----------------------------------------------------------------------------

def refuse_link(path, what="out"):
    """ValueError (one line) if ``path`` itself is a symbolic link (also a dangling one).

    An output folder given as a link is refused: moving or clearing it would act on the link's
    target, a folder outside the one named.
    """
    if os.path.islink(path):
        raise ValueError(f"{what}: {path} is a symbolic link (to {os.readlink(path)}); give the folder itself, "
                         "nothing is written through a link")


def check_output_folder(path, what="out"):
    """ValueError (one line naming ``what``) unless ``path`` can be an output folder: a UTF-8 path, not a
    symbolic link, a folder if it exists, and otherwise creatable (its nearest existing parent is a folder
    this user may write in).  Nothing is created; called before any work starts."""
    p = Path(path)
    text = str(p)
    if text.strip() == "":
        raise ValueError(f"{what}: expected a folder path, got ''")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what}: {text.encode('utf-8', 'surrogateescape')!r} is not a UTF-8 path; "
                         "give a folder whose name is valid UTF-8") from None
    refuse_link(p, what)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what}: {p} exists and is not a directory")
    parent = p
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what}: cannot create {p}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: cannot write in {parent} (permission denied)")
    return p


def staging_name(out, kind):
    """Prefix ``.<name>.<kind>-`` of a hidden folder next to ``out``, shortened (with a hash) so that, with
    the random suffix of mkdtemp, it stays within the 255-byte name limit for any legal ``out``."""
    import hashlib
    name = Path(out).name
    if len(name.encode("utf-8", "surrogateescape")) > 200:
        tag = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        name = name.encode("utf-8", "surrogateescape")[:160].decode("utf-8", "ignore") + "~" + tag
    return f".{name}.{kind}-"


def make_folder_beside(parent, prefix):
    """A new folder ``parent/<prefix><random>`` (``tempfile.mkdtemp``) with the usual mode (mkdtemp makes 0700)."""
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(folder, 0o777 & ~_UMASK)
    return folder


def refuse_links_inside(root, entries):
    """ValueError (one line) naming the first ``root/entry`` that is, or lies below, a symbolic link.

    ``entries`` are paths relative to ``root`` (files or folders, any depth; missing ones are fine).
    A run or sweep folder whose own files or run folders are links would read, move or write files
    outside it.
    """
    root = Path(root)
    for rel in entries:
        p = root
        for part in Path(rel).parts:
            p = p / part
            if os.path.islink(p):
                raise ValueError(f"{p}: is a symbolic link inside {root} (to {os.readlink(p)}); a run or sweep "
                                 "folder may not hold links in place of its own files or folders; replace it by "
                                 "the real file or folder")


# ----------------------------------------------------------------------------
# lock files
# ----------------------------------------------------------------------------

def _proc_stat(pid):
    """The fields of /proc/<pid>/stat after the command name (state first), or None where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid):
    """The start time of process ``pid`` (clock ticks since boot, Linux), or None where unknown."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def _alive(pid, start):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return False                      # dead, not yet reaped (e.g. an orphan under an init that does not reap)
    if start is not None:
        now = _start_time(pid)
        if now is not None and now != start:
            return False                  # the pid was reused by another process
    return True


class LockedError(ValueError):
    """The directory is in use by another live process."""


class DirLock:
    """``<folder>/<name>`` holding "pid start-time host" of the process that writes into ``folder``.

    ``acquire`` refuses (LockedError) while the owner lives; a lock of a process that is gone
    (killed, crashed) is stale and taken over.  A lock of another host is never taken over.
    """

    def __init__(self, folder, name=".lock"):
        self.path = Path(folder) / name
        self.held = False

    def _content(self):
        return f"{os.getpid()} {_start_time(os.getpid())} {socket.gethostname()}\n"

    def owner(self):
        """(pid, start, host) of the current lock, or None (no lock or unreadable)."""
        try:
            parts = self.path.read_text().split()
            return int(parts[0]), (None if parts[1] == "None" else int(parts[1])), parts[2]
        except (OSError, ValueError, IndexError):
            return None

    def live_owner(self):
        """(pid, start, host) of the lock's owner while that process lives, else None (no lock, stale lock)."""
        owner = self.owner()
        return owner if owner is not None and _alive(owner[0], owner[1]) else None

    def acquire(self):
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self._content())
            for _ in range(3):
                try:
                    os.link(tmp, self.path)          # atomic: fails if a lock exists
                    self.held = True
                    return self
                except FileExistsError:
                    pass
                owner = self.owner()
                if owner is not None:
                    pid, start, host = owner
                    if host != socket.gethostname():
                        raise LockedError(f"{self.path.parent}: in use by process {pid} on {host} (lock file "
                                          f"{self.path}); delete that file if no such process runs")
                    if pid == os.getpid():
                        self.held = True
                        return self
                    if _alive(pid, start):
                        raise LockedError(f"{self.path.parent}: in use by process {pid} (lock file {self.path}); "
                                          f"wait for it to finish or stop it")
                try:                                  # stale: its process is gone
                    self.path.unlink()
                except FileNotFoundError:
                    pass
            raise LockedError(f"{self.path.parent}: cannot take the lock {self.path}")
        finally:
            os.unlink(tmp)

    def release(self):
        if self.held:
            owner = self.owner()
            if owner is not None and owner[0] == os.getpid():
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def write_csv(path, columns, rows):
    """Write the dicts ``rows`` as CSV with the header ``columns``, atomically.

    None is written as an empty cell, a float as its ``repr`` (every digit, read back exactly).
    """
    import csv
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else
                             repr(float(row[k])) if isinstance(row[k], float) else row[k]) for k in columns})
    atomic_write_text(path, buf.getvalue())


def read_csv(path):
    """The rows of a CSV file as dicts of strings ([] when the file does not exist)."""
    import csv
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
