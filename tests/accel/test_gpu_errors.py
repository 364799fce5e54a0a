"""A gpu backend that is installed but broken says so in one line, with the cause (fake CuPy modules)."""

import sys
import types

import pytest

import accel
from accel import gpu, standin


@pytest.fixture
def fake_cupy(monkeypatch):
    def install(module):
        monkeypatch.delenv(gpu.STANDIN_ENV, raising=False)
        monkeypatch.setitem(sys.modules, "cupy", module)
        gpu.reset()
    yield install
    gpu.reset()


def _message(exc_info):
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_driver_too_old(fake_cupy):
    def count():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version")
    fake_cupy(types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=count))))
    with pytest.raises(accel.BackendUnavailable) as exc:
        accel.get_backend("gpu")
    assert "no usable CUDA device" in _message(exc) and "InsufficientDriver" in _message(exc)
    assert not gpu.available() and "InsufficientDriver" in gpu.unavailable_reason()


def test_no_device(fake_cupy):
    fake_cupy(types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 0))))
    with pytest.raises(accel.BackendUnavailable, match="sees no CUDA device"):
        accel.get_backend("gpu", "float32")


def test_kernel_does_not_compile(fake_cupy):
    class Broken(standin.NumpyDevice):
        class ElementwiseKernel:
            def __init__(self, *args, **kwargs):
                pass

            def __call__(self, *args):
                raise RuntimeError("nvrtc: error: failed to compile bd_pair_relu\n(long log)")
    fake_cupy(Broken())
    with pytest.raises(accel.BackendUnavailable) as exc:
        accel.get_backend("gpu")
    assert "GPU kernels fail" in _message(exc) and "nvrtc" in _message(exc)


def test_wrong_value_on_the_device(fake_cupy):
    class Wrong(standin.NumpyDevice):
        class ElementwiseKernel:
            def __init__(self, *args, **kwargs):
                pass

            def __call__(self, *args):
                for out in args[-2:]:
                    out[...] = 0.0
    fake_cupy(Wrong())
    with pytest.raises(accel.BackendUnavailable, match="wrong value"):
        accel.get_backend("gpu")
