"""The gcc stand-in of the GPU kernels once more with FMA contraction on, as NVRTC compiles them for
the device (nvcc/NVRTC contract a*b+c into fma by default; the stand-in's CFLAGS turn it off), against
the golden tolerances: results that hold only without contraction would fail here."""

import os
import platform
import shutil
import subprocess

import pytest

import accel
from accel import gpu, standin
from experiments import golden

pytestmark = pytest.mark.skipif(standin.compiler() is None, reason="needs a host C compiler (gcc)")

#: Contraction on; on x86-64 also the FMA instructions, without which gcc has nothing to contract into.
FMA_FLAGS = ("-ffp-contract=fast",) + (("-mfma",) if platform.machine() in ("x86_64", "AMD64") else ())


@pytest.fixture
def fma_standin(monkeypatch):
    flags = tuple(f for f in standin.CFLAGS if not f.startswith("-ffp-contract")) + FMA_FLAGS
    monkeypatch.setattr(standin, "CFLAGS", flags)
    monkeypatch.delenv(gpu.STANDIN_ENV, raising=False)
    gpu.reset()                                   # new engines: kernels rebuilt with these flags
    yield flags
    gpu.reset()


def _fma_instructions(lib):
    out = subprocess.run(["objdump", "-d", lib], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if "vfmadd" in line or "vfmsub" in line or "vfnmadd" in line)


def test_golden_files_hold_with_fma_contraction(fma_standin):
    targets = [t for t in accel.golden_targets() if t[0].startswith("gpu-path")]
    assert [t[0] for t in targets] == ["gpu-path/numpy/float64", "gpu-path/numpy/float32"]
    rows = golden.check(targets[:1], log=None)                       # every case in float64
    rows += golden.check(targets[1:], cases=list(golden.KERNEL_CASES), log=None)
    bad = [(r["label"], r["case"], r["worst"], r["worst_error"], r["tolerance"]) for r in rows if not r["ok"]]
    assert not bad, bad
    assert len(rows) == len(golden.KERNEL_CASES) * 2 + len(golden.TRAJECTORIES)
    # the libraries just used were built with contraction, and (x86-64, objdump) contain fused multiply-adds
    eng = gpu.engine("numpy")
    hist, pair = eng.kernels("relu")
    libs = [os.path.join(standin.cache_root(), standin.library_name(standin.compiler(), pair.source(T, set(s)),
                                                                     pair.name))
            for (T, s) in pair._libs]
    assert libs and all(os.path.exists(p) for p in libs)
    if shutil.which("objdump") and "-mfma" in fma_standin:
        assert max(_fma_instructions(p) for p in libs) > 0
