"""Downloads (experiments/download.py) against a local HTTP server: checksums, failures that leave nothing
behind, unsafe archives, and the ``cli.py download`` command."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading

import pytest

from experiments import data, download
from experiments.data import DataError, load_dataset
from test_data import SHARED, make_cifar, make_mnist, write

# ------------------------------------------------------------------------------------------------
# download, against a local HTTP server
# ------------------------------------------------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):   # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; shut down after the test (requests time out at 10 s)."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(_Handler):
        timeout = 10

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}/files", requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _sha(content):
    return hashlib.sha256(content).hexdigest()


def _serve_mnist(www):
    """Tiny gz MNIST files under www/files/ and the checksum table that matches them."""
    make_mnist(www, subdir="files")
    return {p.name: _sha(p.read_bytes()) for p in (www / "files").iterdir()}


def test_download_mnist_good(server, tmp_path):
    www, url, requests = server
    table = _serve_mnist(www)
    messages = []
    paths = download.download("mnist", tmp_path / "data", base_url=url, checksums=table, progress=messages.append)
    assert sorted(p.name for p in paths) == sorted(table)
    for p in paths:
        assert p.parent == tmp_path / "data" / "mnist"
        assert p.read_bytes() == (www / "files" / p.name).read_bytes()
    assert not list((tmp_path / "data" / "mnist").glob(".*part"))
    ds = load_dataset("mnist", data_dir=tmp_path / "data")
    assert ds.n_train == 60 and ds.n_test == 30
    # a second call finds valid files and fetches nothing
    n = len(requests)
    download.download("mnist", tmp_path / "data", base_url=url + "/", checksums=table)
    assert len(requests) == n == 4


def test_download_checksum_mismatch(server, tmp_path):
    www, url, _ = server
    table = _serve_mnist(www)
    good = table["t10k-images-idx3-ubyte.gz"]
    target = www / "files" / "t10k-images-idx3-ubyte.gz"
    corrupt = bytearray(target.read_bytes())
    corrupt[100] ^= 0xFF
    target.write_bytes(bytes(corrupt))
    with pytest.raises(DataError) as err:
        download.download("mnist", tmp_path / "data", base_url=url, checksums=table)
    msg = str(err.value)
    assert msg.startswith(f"t10k-images-idx3-ubyte.gz: checksum mismatch for {url}/t10k-images-idx3-ubyte.gz")
    assert f"expected sha256 {good}" in msg and f"got {_sha(bytes(corrupt))}" in msg
    folder = tmp_path / "data" / "mnist"
    assert not (folder / "t10k-images-idx3-ubyte.gz").exists()
    assert not list(folder.glob(".*"))                       # no temp file left behind
    assert not folder.exists()                               # a failed download leaves nothing behind


def test_download_missing_file(server, tmp_path):
    www, url, _ = server
    table = _serve_mnist(www)
    (www / "files" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        download.download("mnist", tmp_path / "data", base_url=url, checksums=table)
    msg = str(err.value)
    assert msg == f"train-labels-idx1-ubyte.gz: download of {url}/train-labels-idx1-ubyte.gz failed: HTTP 404 " \
                  "File not found"
    assert not list((tmp_path / "data" / "mnist").glob("*labels*"))


def test_a_failed_download_leaves_nothing_behind_but_keeps_what_was_there(server, tmp_path):
    www, url, _ = server
    table = _serve_mnist(www)
    (www / "files" / "t10k-labels-idx1-ubyte.gz").unlink()          # the last file fails
    with pytest.raises(DataError):
        download.download("mnist", tmp_path / "new" / "data", base_url=url, checksums=table)
    assert not (tmp_path / "new").exists()                         # no empty mnist/, no parents
    mine = tmp_path / "old" / "mnist"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    good = (www / "files" / "train-images-idx3-ubyte.gz").read_bytes()
    (mine / "train-images-idx3-ubyte.gz").write_bytes(good)         # already there and valid: kept
    with pytest.raises(DataError):
        download.download("mnist", tmp_path / "old", base_url=url, checksums=table)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "train-images-idx3-ubyte.gz"]


def test_download_offline_exits_2_and_leaves_no_folder(tmp_path):
    from click.testing import CliRunner
    import cli
    result = CliRunner().invoke(cli.cli, ["download", "mnist", "--data-dir", str(tmp_path / "d"),
                                          "--base-url", "http://127.0.0.1:9"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert not (tmp_path / "d").exists()


def test_download_refuses_files_without_checksum(server, tmp_path):
    www, url, requests = server
    table = _serve_mnist(www)
    del table["t10k-labels-idx1-ubyte.gz"]
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: no known sha256"):
        download.download("mnist", tmp_path / "data", base_url=url, checksums=table)


def test_download_unreachable_host(tmp_path):
    # port 9 on 127.0.0.1 ("discard") has no listener here: the connection is refused at once
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: download of "
                                        "http://127.0.0.1:9/train-images-idx3-ubyte.gz failed: .*refused"):
        download.download("mnist", tmp_path, base_url="http://127.0.0.1:9", timeout=5)


def _tarball(members):
    """gz tarball bytes from (name, bytes or None for a symlink) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _cifar_members(tmp_path):
    make_cifar(tmp_path / "src", per_file=5, n_test=5)
    folder = tmp_path / "src" / "cifar-10-batches-bin"
    return [(f"cifar-10-batches-bin/{p.name}", p.read_bytes()) for p in sorted(folder.iterdir())]


def _serve_cifar(www, members):
    blob = _tarball(members)
    write(www / "files" / download.CIFAR_ARCHIVE, blob)
    table = {name.split("/")[-1]: _sha(content) for name, content in members if content is not None}
    table[download.CIFAR_ARCHIVE] = _sha(blob)
    return table


def test_download_cifar_good(server, tmp_path):
    www, url, _ = server
    members = _cifar_members(tmp_path)
    members.append(("cifar-10-batches-bin/readme.html", b"<html></html>"))   # present in the real tarball
    table = _serve_cifar(www, members)
    table.pop("readme.html")
    paths = download.download("cifar", tmp_path / "data", base_url=url, checksums=table)
    assert len(paths) == 7
    folder = tmp_path / "data" / "cifar-10-batches-bin"
    assert sorted(p.name for p in folder.iterdir()) == sorted(table.keys() - {download.CIFAR_ARCHIVE})
    assert not list((tmp_path / "data").glob(".*"))            # the tarball and temp files are gone
    assert load_dataset("cifar", data_dir=tmp_path / "data", classes="all").n_train == 25


def test_download_cifar_member_checksum(server, tmp_path):
    www, url, _ = server
    table = _serve_cifar(www, _cifar_members(tmp_path))
    table["data_batch_2.bin"] = "0" * 64
    with pytest.raises(DataError, match="data_batch_2.bin: checksum mismatch .* expected sha256 0{64}, got"):
        download.download("cifar", tmp_path / "data", base_url=url, checksums=table)
    assert not (tmp_path / "data" / "cifar-10-batches-bin" / "data_batch_2.bin").exists()


def test_download_cifar_archive_checksum(server, tmp_path):
    www, url, _ = server
    table = _serve_cifar(www, _cifar_members(tmp_path))
    table[download.CIFAR_ARCHIVE] = "f" * 64
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz: checksum mismatch"):
        download.download("cifar", tmp_path / "data", base_url=url, checksums=table)
    assert not (tmp_path / "data").exists()                 # nothing left behind, not even the folders


@pytest.mark.parametrize("evil", ["../evil.bin", "cifar-10-batches-bin/../../evil.bin", "/tmp/evil.bin",
                                  "symlink"])
def test_download_cifar_rejects_unsafe_archives(server, tmp_path, evil):
    www, url, _ = server
    members = _cifar_members(tmp_path)
    if evil == "symlink":
        k = [name for name, _ in members].index("cifar-10-batches-bin/data_batch_1.bin")
        members[k] = (members[k][0], None)          # data_batch_1.bin as a link to /etc/passwd
        problem = "is not a regular file"
    else:
        members.insert(0, (evil, b"pwned"))
        problem = "unsafe path"
    table = _serve_cifar(www, members)
    table.setdefault("data_batch_1.bin", "0" * 64)
    with pytest.raises(DataError, match=problem):
        download.download("cifar", tmp_path / "data" / "deep", base_url=url, checksums=table)
    assert not list((tmp_path / "data").rglob("*evil*"))
    assert not (tmp_path / "data" / "deep").exists()      # nothing left behind


def test_default_checksum_table_matches_readme_digests():
    """The built-in table covers every official file; spot-check entries against the shared README."""
    for name in (*data.CIFAR_TRAIN_FILES, data.CIFAR_TEST_FILE, data.CIFAR_META_FILE, download.CIFAR_ARCHIVE):
        assert len(download.SHA256[name]) == 64
    for stems in data.MNIST_FILES.values():
        for stem in stems:
            assert len(download.SHA256[stem + ".gz"]) == 64 and len(download.SHA256[stem]) == 64
    readme = SHARED / "README.md"
    if readme.is_file():
        text = readme.read_text()
        for name, digest in download.SHA256.items():
            if name != download.CIFAR_ARCHIVE:
                assert digest in text, name




def test_download_into_a_file_path_is_a_clear_error(tmp_path):
    (tmp_path / "not-a-dir").write_text("x")
    with pytest.raises(DataError, match="not-a-dir/mnist: cannot create the data directory"):
        download.download("mnist", tmp_path / "not-a-dir", base_url="http://127.0.0.1:9")


# ------------------------------------------------------------------------------------------------
# cli.py download
# ------------------------------------------------------------------------------------------------

def _cli():
    click_testing = pytest.importorskip("click.testing")
    import cli
    return click_testing.CliRunner(), cli.cli


def test_cli_download_corrupt_file_is_one_line_error(server, tmp_path):
    """The official checksum table rejects a tiny file served under an official name."""
    www, url, _ = server
    write(www / "files" / "train-images-idx3-ubyte.gz", b"not the real file")
    runner, cli = _cli()
    result = runner.invoke(cli, ["download", "mnist", "--data-dir", str(tmp_path / "d"), "--base-url", url])
    assert result.exit_code != 0 and not isinstance(result.exception, DataError)   # handled, no traceback
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert ("train-images-idx3-ubyte.gz: checksum mismatch" in errors[0]
            and f"expected sha256 {download.SHA256['train-images-idx3-ubyte.gz']}" in errors[0])
    assert not (tmp_path / "d").exists()                   # nothing left behind


def test_cli_download_missing_file(server, tmp_path):
    www, url, _ = server
    runner, cli = _cli()
    result = runner.invoke(cli, ["download", "cifar", "--data-dir", str(tmp_path / "d"), "--base-url", url])
    assert result.exit_code != 0
    assert f"Error: cifar-10-binary.tar.gz: download of {url}/cifar-10-binary.tar.gz failed: HTTP 404" in result.output
    assert not list((tmp_path / "d").rglob("*.*"))


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason=f"MNIST not available at {SHARED / 'mnist'}")
def test_cli_download_keeps_verified_files():
    """The shared folder already holds the official files: verified, nothing fetched (no network needed)."""
    runner, cli = _cli()
    result = runner.invoke(cli, ["download", "mnist", "--data-dir", str(SHARED), "--base-url", "http://127.0.0.1:9"])
    assert result.exit_code == 0, result.output
    assert f"mnist: 4 files verified in {SHARED}" in result.output
