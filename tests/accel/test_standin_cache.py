"""The stand-in's kernel cache is private: a folder or library that another user owns
or can write is refused, never loaded; a fresh cache is made with mode 0700."""

import os
import stat

import pytest

from accel import standin

pytestmark = pytest.mark.skipif(standin.compiler() is None, reason="needs a host C compiler (gcc)")

SOURCE = "double twice(double x) { return 2.0 * x; }\n"
OTHER_UID = 65534          # nobody


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "bottleneck-dynamics" / "kernels"


def _call(lib):
    import ctypes
    fn = lib.twice
    fn.restype, fn.argtypes = ctypes.c_double, [ctypes.c_double]
    return fn(21.0)


def test_fresh_cache_is_private_and_names_carry_the_source_hash(cache):
    assert _call(standin.compile_shared(SOURCE, "twice")) == 42.0
    assert stat.S_IMODE(cache.stat().st_mode) & 0o077 == 0
    libs = [p.name for p in cache.iterdir()]
    assert libs == [standin.library_name(standin.compiler(), SOURCE, "twice")]
    assert standin.library_name(standin.compiler(), SOURCE + " ", "twice") != libs[0]
    assert _call(standin.compile_shared(SOURCE, "twice")) == 42.0     # reused from the cache


def test_cache_location_follows_xdg(cache):
    assert standin.cache_root() == str(cache)


@pytest.mark.skipif(os.getuid() != 0, reason="planting a folder of another user needs root (chown)")
def test_foreign_cache_folder_is_refused(cache):
    cache.mkdir(parents=True, mode=0o700)
    os.chown(cache, OTHER_UID, OTHER_UID)
    with pytest.raises(standin.KernelCacheUnsafe, match=r"owned by uid 65534.*refusing"):
        standin.compile_shared(SOURCE, "twice")
    assert list(cache.iterdir()) == []                   # nothing compiled into it, nothing loaded


@pytest.mark.skipif(os.getuid() != 0, reason="planting a file of another user needs root (chown)")
def test_foreign_library_with_the_right_name_is_refused(cache):
    standin.compile_shared(SOURCE, "twice")
    lib = cache / standin.library_name(standin.compiler(), SOURCE, "twice")
    os.chown(lib, OTHER_UID, OTHER_UID)
    with pytest.raises(standin.KernelCacheUnsafe, match="owned by uid 65534"):
        standin.compile_shared(SOURCE, "twice")


def test_world_writable_cache_folder_is_refused(cache):
    cache.mkdir(parents=True)
    os.chmod(cache, 0o777)
    with pytest.raises(standin.KernelCacheUnsafe, match="writable by group or others"):
        standin.compile_shared(SOURCE, "twice")
    assert list(cache.iterdir()) == []


def test_symlinked_cache_folder_is_refused(cache, tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    cache.parent.mkdir(parents=True)
    cache.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(standin.KernelCacheUnsafe, match="not a plain folder"):
        standin.compile_shared(SOURCE, "twice")


def test_writable_library_is_refused(cache):
    standin.compile_shared(SOURCE, "twice")
    lib = cache / standin.library_name(standin.compiler(), SOURCE, "twice")
    os.chmod(lib, 0o766)
    with pytest.raises(standin.KernelCacheUnsafe, match="writable by group or others"):
        standin.compile_shared(SOURCE, "twice")
