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


def _runtime(count, driver=None, runtime=12090):
    """A fake cupy.cuda.runtime: getDeviceCount, and driverGetVersion unless ``driver`` is None."""
    ns = types.SimpleNamespace(getDeviceCount=count, runtimeGetVersion=lambda: runtime)
    if driver is not None:
        ns.driverGetVersion = lambda: driver
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=ns))


def _insufficient():
    raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version")


def test_no_driver_at_all_is_not_called_an_old_driver(fake_cupy):
    """CuPy installed on a machine without a GPU: the runtime says "driver version is insufficient";
    the message must say that there is no driver (driverGetVersion() == 0)."""
    fake_cupy(_runtime(_insufficient, driver=0))
    with pytest.raises(accel.BackendUnavailable) as exc:
        accel.get_backend("gpu")
    assert "no NVIDIA driver found" in _message(exc) and "insufficient" not in _message(exc)
    be = accel.get_backend("auto")
    assert be.name == "cpu" and "no NVIDIA driver found" in be.chosen_because
    assert accel.get_backend("cpu").chosen_because is None


def test_no_driver_call_falls_back_to_the_loader(fake_cupy, monkeypatch):
    fake_cupy(_runtime(_insufficient))
    monkeypatch.setattr(gpu, "_libcuda_present", lambda: False)
    assert "no NVIDIA driver found" in gpu.unavailable_reason()
    gpu.reset()
    monkeypatch.setattr(gpu, "_libcuda_present", lambda: True)
    assert "no usable CUDA device" in gpu.unavailable_reason() and "InsufficientDriver" in gpu.unavailable_reason()


def test_driver_too_old(fake_cupy):
    fake_cupy(_runtime(_insufficient, driver=11080, runtime=12090))
    with pytest.raises(accel.BackendUnavailable) as exc:
        accel.get_backend("gpu")
    msg = _message(exc)
    assert "driver supports CUDA 11.8" in msg and "CUDA 12.9" in msg and "cupy-cuda11x" in msg
    assert not gpu.available() and "older than" in gpu.unavailable_reason()


def test_no_device(fake_cupy):
    fake_cupy(types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 0))))
    with pytest.raises(accel.BackendUnavailable, match="sees no CUDA device") as exc:
        accel.get_backend("gpu", "float32")
    assert "driver is installed" in _message(exc)


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


def test_a_standin_run_leaves_no_gpu_behind(monkeypatch):
    """BOTTLENECK_GPU=standin is read at every probe: once it is unset, `auto` and `available()`
    see the real machine again, even without gpu.reset() (a stand-in test once made later
    sweeps in the same process pick a GPU that was not there)."""
    gpu.reset()
    monkeypatch.setenv(gpu.STANDIN_ENV, "standin")
    assert gpu.available() and gpu.unavailable_reason() is None
    monkeypatch.delenv(gpu.STANDIN_ENV)
    monkeypatch.setattr(gpu, "_probe_cupy", lambda: (None, "no CUDA device (test)"))
    assert not gpu.available()
    assert gpu.unavailable_reason() == "no CUDA device (test)"
    from experiments.backends import auto_backend
    assert auto_backend() != "gpu"
