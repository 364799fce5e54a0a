"""The GPU backend's CUDA sources exactly as CuPy generates them, compiled by NVRTC: no GPU needed.

CuPy's code generator (``cupy._core._kernel``) and NVRTC both work on a machine without a GPU or
driver.  This module uses them to check, in CI, what the GPU will compile:

* :func:`elementwise_code` types the arguments of one ``ElementwiseKernel`` call with CuPy's own
  rules (``_decide_params_type``: the ``T`` placeholder, declared dtypes, scalars cast to the
  parameter's type; ``reduce_dims``; 32- or 64-bit indexing per array) and returns the CUDA
  source that CuPy would hand to NVRTC for it;
* :func:`check_standin_call` does this for a call of the NumPy stand-in (:mod:`accel.standin`), so
  every kernel call of the stand-in suite is typed by CuPy and its generated source recorded
  (:data:`SEEN`);
* :func:`variants` lists every source variant the backend can generate: the history and pair
  kernels of :mod:`accel.pair_source` per architecture, working dtype (float64, float32) and
  index width (32- and 64-bit), plus the RawKernel sources of :mod:`accel.fused_source` (its
  ``cuda_sources()``: ``(name, source, options)``);
* :func:`compile_source` compiles one with NVRTC for ``sm_90`` or ``sm_80`` with CuPy's options
  (its include paths, ``-ftz=true``, ``--device-as-default-execution-space``) and reports ptxas'
  registers, spill stores and spill loads per kernel.

CuPy is imported lazily; :func:`toolchain_reason` says (one line) why the check cannot run here:
``pip install -e '.[nvrtc]'`` installs ``cupy-cuda12x`` (without its 3 GB ``[ctk]`` extra) and
``nvidia-cuda-nvrtc-cu12``, which is all it needs.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re

import numpy as np

#: GPU architectures compiled for in CI (H100/H200: sm_90; A100: sm_80).
ARCHS = ("90", "80")

#: {(kernel name, sha256 of the generated source): generated source} of every stand-in call typed
#: by :func:`check_standin_call` in this process.
SEEN = {}

_ARRAY, _INDEXER, _SCALAR = 1, 2, 3              # cupy._core._kernel._ArgKind
_LIMIT_32 = 1 << 31                              # CuPy: 32-bit indexing up to 2**31 bytes / elements


@functools.lru_cache(maxsize=None)
def _toolchain():
    """(modules, None) or (None, one-line reason)."""
    try:
        import cupy
        from cupy._core import _carray, _kernel, _scalar, core
        from cupy.cuda import compiler, nvrtc
    except ImportError as exc:
        if getattr(exc, "name", "") and str(getattr(exc, "name", "")).startswith("cupy"):
            return None, "CuPy is not installed (pip install -e '.[nvrtc]' installs cupy-cuda12x and NVRTC)"
        return None, f"CuPy does not import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    except Exception as exc:                       # noqa: BLE001 - a broken installation
        return None, f"CuPy does not import ({type(exc).__name__}: {exc})"
    try:
        version = nvrtc.getVersion()
    except Exception as exc:                       # noqa: BLE001 - libnvrtc missing
        return None, (f"NVRTC is not loadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                      "pip install nvidia-cuda-nvrtc-cu12")
    mods = dict(cupy=cupy, carray=_carray, kernel=_kernel, scalar=_scalar, core=core, compiler=compiler,
                nvrtc=nvrtc, nvrtc_version=tuple(version))
    return mods, None


def toolchain_reason():
    """Why CuPy's code generator or NVRTC cannot run here (one line), or None when they can."""
    return _toolchain()[1]


def nvrtc_version():
    """(major, minor) of the NVRTC that :func:`compile_source` uses."""
    return _mods()["nvrtc_version"]


def _mods():
    mods, reason = _toolchain()
    if mods is None:
        raise RuntimeError(reason)
    return mods


# ------------------------------------------------------------------------ code generation

@functools.lru_cache(maxsize=None)
def _cupy_kernel(in_params, out_params, operation, name, preamble):
    return _mods()["cupy"].ElementwiseKernel(in_params, out_params, operation, name, preamble=preamble)


def elementwise_code(in_params, out_params, operation, name, preamble, args):
    """CUDA source that CuPy generates for one call of an ElementwiseKernel (its typing rules).

    Parameters
    ----------
    in_params, out_params, operation, name, preamble : str
        As given to ``cupy.ElementwiseKernel``.
    args : sequence
        One entry per parameter (inputs, then outputs): ``("array", dtype, ndim, index_32_bits)``
        for a C-contiguous array, ``("scalar", value)`` for a Python or NumPy scalar.

    Returns
    -------
    str
        The kernel source (without CuPy's ``#include`` prefix, which :func:`compile_source` adds).

    Raises
    ------
    TypeError
        The arguments do not type-check under CuPy's rules (a dtype that contradicts the
        parameter's, two different dtypes for ``T``, a non-array output, a float for an integer
        parameter).
    """
    m = _mods()
    ek = _cupy_kernel(in_params, out_params, operation, name, preamble)
    if len(args) != ek.nargs:
        raise TypeError(f"{name}: expected {ek.nargs} arguments (with outputs), got {len(args)}")
    in_dt = tuple(np.dtype(a[1]).type if a[0] == "array" else None for a in args[:ek.nin])
    out_args = args[ek.nin:]
    for p, a in zip(ek.out_params, out_args):
        if a[0] != "array":
            raise TypeError(f"{name}: output {p.name} must be an array")
    out_dt = tuple(np.dtype(a[1]).type for a in out_args)
    in_types, out_types, type_map = ek._decide_params_type(in_dt, out_dt)
    kernel, carray, scalar = m["kernel"], m["carray"], m["scalar"]
    infos = []
    reduced = True                                  # reduce_dims: all non-raw arrays are C-contiguous here
    nonraw_ndim = max([a[2] for p, a in zip(ek.params, args) if a[0] == "array" and not p.raw] or [1])
    loop_ndim = 1 if reduced else nonraw_ndim
    for p, t, a in zip(ek.params, in_types + out_types, args):
        if a[0] == "array":
            ndim = loop_ndim if not p.raw else a[2]
            infos.append(kernel._ArgInfo(_ARRAY, m["cupy"].ndarray, np.dtype(a[1]).type, ndim, True, bool(a[3])))
        else:
            value = a[1]
            kind = np.dtype(t).kind
            if kind in "iu" and not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name}: scalar {p.name} = {value!r} for a {np.dtype(t).name} parameter")
            infos.append(kernel._ArgInfo(_SCALAR, scalar.CScalar, np.dtype(t).type, 0, True, True))
    index_32 = all(bool(a[3]) for a in args if a[0] == "array")
    infos.append(kernel._ArgInfo(_INDEXER, carray.Indexer, None, loop_ndim, True, index_32))
    return kernel._get_elementwise_kernel_code(tuple(infos), type_map, ek.params, ek.operation, ek.name,
                                               ek.preamble)


def _root_nbytes(a):
    while isinstance(getattr(a, "base", None), np.ndarray):
        a = a.base
    return a.nbytes


def standin_args(params, args):
    """:func:`elementwise_code`'s ``args`` for a call of the stand-in with NumPy arrays and scalars.

    An array's index width is CuPy's: 32-bit when the allocation it views spans at most 2**31
    bytes (a view inherits its base's width).
    """
    out = []
    for (raw, typ, pname), a in zip(params, args):
        if isinstance(a, np.ndarray):
            out.append(("array", a.dtype, a.ndim, _root_nbytes(a) <= _LIMIT_32))
        else:
            out.append(("scalar", a))
    return out


def check_standin_call(kernel, args, cuda_preamble):
    """Type one stand-in ElementwiseKernel call with CuPy's rules; record and return its source.

    ``kernel`` is an :class:`accel.standin.ElementwiseKernel`; ``cuda_preamble`` the preamble
    the GPU target would use (the stand-in's own is the host-C one).
    """
    params = kernel.inputs + kernel.outputs
    spec = standin_args(params, args)
    code = elementwise_code(kernel.in_params, kernel.out_params, kernel.operation, kernel.name,
                            cuda_preamble, spec)
    SEEN[(kernel.name, hashlib.sha256(code.encode()).hexdigest())] = code
    return code


# ------------------------------------------------------------------------ the variants

def _spec(params, dtypes, index_32, scalars):
    """Argument spec of one call: arrays of the parameter's dtype (T -> ``dtypes['T']``), 1-D;
    the parameters parsed by CuPy (``params``: an in_params or out_params string)."""
    core = _mods()["kernel"]
    out = []
    for p in core._get_param_info(params, True):
        if p.name in scalars:
            out.append(("scalar", scalars[p.name]))
        else:
            dt = dtypes[p.ctype] if p.dtype is None else np.dtype(p.dtype).name
            out.append(("array", dt, 1, index_32))
    return out


def elementwise_variants():
    """Every (name, source, options) the pair_source kernels generate under CuPy.

    Per architecture: the history kernel for T = float64 and float32, the pair kernel (float64
    only), each with 32- and 64-bit indexing (64-bit: a history over 2**31 bytes).  The scalar
    parameters are those of :class:`accel.xpcore.XPEngine`'s calls.
    """
    from . import pair_source as ps
    hist_scalars = dict(nb=1, qb=1, dim=1, dr=1, R=1, mode=1, exact_near=0, m=1.0, par=0.0)
    pair_scalars = dict(ncols=1, dim=1, m=1.0, par=0.0, what=0)
    out = []
    for arch in sorted(ps.ARCH):
        pre = ps.preamble(arch, "cuda")
        for idx in (True, False):
            bits = 32 if idx else 64
            for T in ("float64", "float32"):
                spec = _spec(ps.HISTORY_IN, {"T": T}, idx, hist_scalars) + \
                    _spec(ps.HISTORY_OUT, {"T": T}, idx, {})
                code = elementwise_code(ps.HISTORY_IN, ps.HISTORY_OUT, ps.HISTORY_OP, f"bd_history_{arch}",
                                        pre, spec)
                out.append((f"bd_history_{arch}/{T}/idx{bits}", code, ()))
            spec = _spec(ps.PAIR_IN, {}, idx, pair_scalars) + _spec(ps.PAIR_OUT, {}, idx, {})
            code = elementwise_code(ps.PAIR_IN, ps.PAIR_OUT, ps.PAIR_OP, f"bd_pair_{arch}", pre, spec)
            out.append((f"bd_pair_{arch}/float64/idx{bits}", code, ()))
    return out


def raw_variants():
    """(name, source, options) of the fused RawKernel sources (:func:`accel.fused_source.cuda_sources`)."""
    from . import fused_source
    return [(str(n), str(s), tuple(o)) for n, s, o in fused_source.cuda_sources()]


def variants():
    """Every CUDA source variant of the backend: ``[(name, source, options, kind)]``, kind
    "elementwise" (compiled with CuPy's header prefix) or "raw" (a RawKernel: as given)."""
    return ([(n, s, o, "elementwise") for n, s, o in elementwise_variants()]
            + [(n, s, o, "raw") for n, s, o in raw_variants()])


# ------------------------------------------------------------------------ NVRTC

class CompileResult(dict):
    """name, arch, ok, log, and per kernel ``registers``, ``spill_stores``, ``spill_loads``,
    ``stack_bytes`` (from ptxas -v), in ``kernels`` ({kernel: {...}})."""


_PTXAS_FN = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REG = re.compile(r"Used (\d+) registers")


def parse_ptxas(log):
    """{entry function: {registers, spill_stores, spill_loads, stack_bytes}} from ptxas -v output."""
    out, current, pending = {}, None, False
    for line in log.splitlines():
        fn = _PTXAS_FN.search(line)
        if fn:
            current = fn.group(1)
            out[current] = {}
            pending = True
            continue
        if "Function properties for" in line:
            name = line.split("Function properties for", 1)[1].strip()
            pending = name == current
            continue
        sp = _PTXAS_SPILL.search(line)
        if sp and current and pending:
            out[current].update(stack_bytes=int(sp.group(1)), spill_stores=int(sp.group(2)),
                                spill_loads=int(sp.group(3)))
        rg = _PTXAS_REG.search(line)
        if rg and current:
            out[current]["registers"] = int(rg.group(1))
            pending = False
    return out


def cupy_options(arch, options=()):
    """The NVRTC options CuPy uses for a kernel on ``sm_<arch>`` (cubin), plus ptxas -v."""
    m = _mods()
    opts = tuple(m["core"].assemble_cupy_compiler_options(tuple(options)))
    opts += ("-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")
    major, minor = m["nvrtc_version"]
    if (major >= 13 or (major == 12 and minor >= 8)) and getattr(m["compiler"], "_use_pch", False):
        opts += ("--pch",)
    return opts + ("-Xptxas=-v",)


def full_source(source, kind="elementwise"):
    """What NVRTC compiles: CuPy's ``#include`` prefix before an elementwise kernel's source."""
    if kind != "elementwise":
        return source
    headers = _mods()["core"]._cupy_header_list
    return "\n".join(f"#include <{h}>" for h in headers) + source


def compile_source(name, source, arch, options=(), kind="elementwise"):
    """Compile one variant with NVRTC for ``sm_<arch>``; a :class:`CompileResult` (never raises
    for a compile error: ``ok`` False and the log)."""
    m = _mods()
    log = io.StringIO()
    res = CompileResult(name=name, arch=arch, ok=False, log="", kernels={})
    try:
        prog = m["compiler"]._NVRTCProgram(full_source(source, kind), "", (), (), name_expressions=None,
                                           method="cubin")
        prog.compile(cupy_options(arch, options), log)
        res["ok"] = True
    except Exception as exc:                       # noqa: BLE001 - CompileException: the log says why
        res["log"] = f"{type(exc).__name__}: {exc}"
    text = log.getvalue()
    res["log"] = (res["log"] + "\n" + text).strip()
    res["kernels"] = parse_ptxas(text)
    return res


def _cache_path(name, source, arch, options, kind):
    """Where the ptxas report of a successful compile of exactly this input is kept (or None: cache off)."""
    if os.environ.get("BOTTLENECK_NVRTC_CACHE", "1").strip() == "0":
        return None
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    key = "\0".join((name, full_source(source, kind), arch, *cupy_options(arch, options),
                     repr(nvrtc_version())))
    return os.path.join(base, "bottleneck-dynamics", "nvrtc", hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")


def compile_cached(name, source, arch, options=(), kind="elementwise"):
    """:func:`compile_source`, or the report of an earlier successful compile of the same source, arch,
    options and NVRTC version (``~/.cache/bottleneck-dynamics/nvrtc``; BOTTLENECK_NVRTC_CACHE=0: off)."""
    path = _cache_path(name, source, arch, options, kind)
    if path and os.path.exists(path):
        try:
            with open(path) as fh:
                got = json.load(fh)
            if isinstance(got, dict) and got.get("ok") is True and isinstance(got.get("kernels"), dict):
                return CompileResult(got, cached=True)
        except (OSError, ValueError):
            pass
    res = compile_source(name, source, arch, options, kind)
    if path and res["ok"]:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(res, fh)
        os.replace(tmp, path)
    return res


def compile_all(archs=ARCHS, jobs=None):
    """Compile :func:`variants` for each arch (threads: NVRTC releases the GIL; cached by content,
    :func:`compile_cached`); a list of :class:`CompileResult` in variant order."""
    from concurrent.futures import ThreadPoolExecutor
    tasks = [(n, s, arch, o, kind) for n, s, o, kind in variants() for arch in archs]
    jobs = jobs or max(1, min(len(tasks), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda t: compile_cached(*t), tasks))


def cuda_preamble(host_preamble):
    """The "cuda" preamble of :mod:`accel.pair_source` that corresponds to a "host" one (the
    stand-in is built with the host macros; CuPy gets the CUDA ones)."""
    from .pair_source import TARGET_MACROS
    host = TARGET_MACROS["host"]
    if host_preamble.startswith(host):
        return TARGET_MACROS["cuda"] + host_preamble[len(host):]
    return host_preamble
