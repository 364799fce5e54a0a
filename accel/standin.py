"""A NumPy stand-in for the part of CuPy that the GPU backend uses, so that CI runs its code.

:data:`numpy_device` is an object with CuPy's names (``asarray``, ``asnumpy``, ``empty``,
``zeros``, ``float32``, ``float64``, ``sqrt``, ``ElementwiseKernel``, ``cuda.Device``,
``cuda.runtime.memGetInfo``, ``get_default_memory_pool``) backed by NumPy on the host.
Its :class:`ElementwiseKernel` takes the kernel's CUDA-C source (the ``operation`` and
``preamble`` of :mod:`accel.pair_source`), wraps the operation in a C loop over the elements
and compiles it with the host C compiler (``cc``/``gcc``; ``$CC`` if set) into a shared
library that it calls through ctypes.  The libraries are cached in a private folder of the user
(``$XDG_CACHE_HOME`` or ``~/.cache``, then ``bottleneck-dynamics/kernels``, mode 0700) under names
that carry the hash of compiler, flags and source; a folder or library that another user owns or
can write is refused (:class:`KernelCacheUnsafe`), never loaded.  So the very source that CuPy hands to NVRTC on a GPU is
executed in CI, on NumPy arrays, by the same Python code (accel.xpcore) as on the device.

Only the subset of ElementwiseKernel the backend needs is supported: every non-raw argument is
a C-contiguous array of one common shape or a scalar, outputs are passed in, and the types are
NumPy names or the one placeholder ``T``.

The stand-in "device" reports :attr:`NumpyDevice.memory_bytes` of free memory (64 MiB by
default), so the history pass's memory-sized blocking is exercised at small sizes.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import types

import numpy as np

_C_TYPES = {"float64": "double", "float32": "float", "int64": "long long", "int32": "int"}
_CTYPES_SCALAR = {"float64": ctypes.c_double, "float32": ctypes.c_float,
                  "int64": ctypes.c_longlong, "int32": ctypes.c_int}


class CompilerUnavailable(RuntimeError):
    """No host C compiler, or it failed on the kernel source (the message says which)."""


def compiler():
    """Path of the host C compiler ($CC, else cc or gcc), or None."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class KernelCacheUnsafe(CompilerUnavailable):
    """The kernel cache folder or a library in it could be written by someone else: refused."""


#: Flags of every compilation (IEEE semantics: no fast-math, no FMA contraction, so that the results
#: compare with refimpl); part of each library's name hash.
CFLAGS = ("-std=c99", "-O2", "-ffp-contract=off", "-fPIC", "-shared")


def cache_root():
    """``$XDG_CACHE_HOME/bottleneck-dynamics/kernels``, or ``~/.cache/bottleneck-dynamics/kernels``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bottleneck-dynamics", "kernels")


def _check_private(path, what):
    """Refuse (KernelCacheUnsafe, one line) a ``path`` that is a link, not ours, or writable by others."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise KernelCacheUnsafe(f"kernel cache: cannot inspect {path} ({exc.strerror or exc})") from None
    kind = stat.S_ISDIR if what == "folder" else stat.S_ISREG
    if stat.S_ISLNK(st.st_mode) or not kind(st.st_mode):
        raise KernelCacheUnsafe(f"kernel cache: {path} is not a plain {what} (a link or another kind of file); "
                                "refusing to use it")
    if st.st_uid != os.getuid():
        raise KernelCacheUnsafe(f"kernel cache: {path} is owned by uid {st.st_uid}, not by this user "
                                f"(uid {os.getuid()}); refusing to load code from it; remove it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KernelCacheUnsafe(f"kernel cache: {path} is writable by group or others (mode "
                                f"{stat.S_IMODE(st.st_mode):04o}); refusing to load code from it; "
                                f"chmod go-w it or remove it")


def _cache_dir():
    """The private kernel cache (:func:`cache_root`), created with mode 0700 and checked on every use.

    KernelCacheUnsafe when it is a link, belongs to another user or can be written by group or others:
    a library found there could be anyone's.  (The folder above it may be shared with the data cache
    and is not checked: whoever replaces ``kernels`` there fails the owner check.)
    """
    path = cache_root()
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise KernelCacheUnsafe(f"kernel cache: cannot create {path} ({exc.strerror or exc})") from None
    _check_private(path, "folder")
    return path


def cxx_compiler():
    """Path of the host C++ compiler ($CXX, else c++ or g++), or None (for :mod:`accel.cudasim`)."""
    for name in (os.environ.get("CXX"), "c++", "g++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cxx_flags():
    """:data:`CFLAGS` for C++ (the CUDA harness): the same optimisation and FP contraction."""
    return tuple("-std=c++11" if f.startswith("-std=") else f for f in CFLAGS)


def library_name(cc, source, name="kernel", flags=None):
    """File name of the library built by ``cc`` with ``flags`` (default :data:`CFLAGS`) from
    ``source``: carries their hash."""
    digest = hashlib.sha256("\0".join((cc, *(CFLAGS if flags is None else flags), source)).encode()).hexdigest()[:32]
    return f"{name}-{digest}.so"


def compile_shared(source, name="kernel", cxx=False):
    """Compile C ``source`` (C++ with ``cxx``) into a shared library (cached by content), load it.

    The library is looked up in the private cache (:func:`_cache_dir`) by a name that carries the
    hash of the compiler, the flags and the source (:func:`library_name`), and loaded only if it is
    a plain file of this user that nobody else can write.
    """
    cc = cxx_compiler() if cxx else compiler()
    if cc is None:
        raise CompilerUnavailable("no C++ compiler (c++, g++ or $CXX) to build the CUDA harness" if cxx else
                                  "no C compiler (cc, gcc or $CC) to build the kernel source")
    flags = cxx_flags() if cxx else CFLAGS
    folder = _cache_dir()
    lib = os.path.join(folder, library_name(cc, source, name, flags))
    if not os.path.lexists(lib):
        fd, src = tempfile.mkstemp(suffix=".cpp" if cxx else ".c", dir=folder)
        with os.fdopen(fd, "w") as fh:
            fh.write(source)
        tmp = lib + f".{os.getpid()}.tmp"
        cmd = [cc, *flags, "-o", tmp, src, "-lm"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        os.unlink(src)
        if res.returncode:
            lines = res.stderr.strip().splitlines()
            first = ([ln for ln in lines if "error" in ln] or lines or ["(no message)"])[0]
            raise CompilerUnavailable(f"{os.path.basename(cc)} failed on kernel {name}: {first}")
        os.chmod(tmp, 0o700)
        os.replace(tmp, lib)
    _check_private(lib, "file")
    return ctypes.CDLL(lib)


def _parse(params):
    """'T x, raw float64 y' -> [(raw, type, name), ...]."""
    out = []
    for part in params.split(","):
        words = part.split()
        raw = words[0] == "raw"
        if raw:
            words = words[1:]
        if len(words) != 2:
            raise ValueError(f"params: cannot parse {part!r}")
        out.append((raw, words[0], words[1]))
    return out


#: Type every kernel call with CuPy's own rules too, where CuPy's code generator is importable
#: (:func:`accel.nvrtc.check_standin_call`: the CUDA source CuPy would generate for the call, so a
#: call that CuPy would reject fails here, in CI, without a GPU).
CUPY_TYPING = True


def _cupy_typing(kernel, args):
    from . import nvrtc
    if nvrtc.toolchain_reason() is None:
        nvrtc.check_standin_call(kernel, args, nvrtc.cuda_preamble(kernel.preamble))


class ElementwiseKernel:
    """CuPy's ElementwiseKernel on the host: the operation in a C loop, compiled with gcc."""

    def __init__(self, in_params, out_params, operation, name="kernel", preamble="", **kwargs):
        self.in_params, self.out_params = in_params, out_params
        self.inputs = _parse(in_params)
        self.outputs = _parse(out_params)
        self.operation = operation
        self.name = name
        self.preamble = preamble
        self._libs = {}

    def source(self, T, scalar_names):
        """The C source of the loop with ``T`` bound and the given non-raw inputs as scalars."""
        args, before, after = ["long long _n"], [], []
        for k, (raw, typ, name) in enumerate(self.inputs + self.outputs):
            ctype = T if typ == "T" else _C_TYPES[typ]
            is_out = k >= len(self.inputs)
            if raw:
                args.append(f"{ctype} *{name}")
            elif name in scalar_names:
                args.append(f"{ctype} {name}")
            else:
                args.append(f"{ctype} *_p_{name}")
                if is_out:
                    before.append(f"{ctype} {name};")
                    after.append(f"_p_{name}[i] = {name};")
                else:
                    before.append(f"const {ctype} {name} = _p_{name}[i];")
        return "\n".join([
            f"typedef {T} T;", self.preamble,
            f"void {self.name}({', '.join(args)})", "{",
            "    for (long long i = 0; i < _n; ++i) {",
            *("        " + s for s in before),
            "        {", self.operation, "        }",
            *("        " + s for s in after),
            "    }", "}", ""])

    def __call__(self, *args):
        params = self.inputs + self.outputs
        if len(args) != len(params):
            raise TypeError(f"{self.name}: expected {len(params)} arguments, got {len(args)}")
        T = None
        for (raw, typ, name), a in zip(params, args):
            if typ == "T" and isinstance(a, np.ndarray):
                T = _C_TYPES[a.dtype.name]
                break
        T = T or "double"
        shape = None
        scalars = []
        cargs = []
        for (raw, typ, name), a in zip(params, args):
            want = np.dtype({"double": "float64", "float": "float32"}[T]) if typ == "T" else np.dtype(typ)
            if isinstance(a, np.ndarray):
                if a.dtype != want or not a.flags.c_contiguous:
                    raise TypeError(f"{self.name}: argument {name}: expected a C-contiguous {want} "
                                    f"array, got {a.dtype} (contiguous: {a.flags.c_contiguous})")
                if not raw:
                    if shape is not None and a.shape != shape:
                        raise ValueError(f"{self.name}: argument {name}: shape {a.shape}, expected {shape}")
                    shape = a.shape
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            else:
                if raw:
                    raise TypeError(f"{self.name}: raw argument {name} must be an array")
                scalars.append(name)
                cargs.append(_CTYPES_SCALAR[want.name](a))
        if shape is None:
            raise ValueError(f"{self.name}: no array argument fixes the loop size")
        if CUPY_TYPING:
            _cupy_typing(self, args)
        key = (T, tuple(scalars))
        if key not in self._libs:
            lib = compile_shared(self.source(T, set(scalars)), self.name)
            fn = getattr(lib, self.name)
            fn.restype = None
            self._libs[key] = fn
        self._libs[key](ctypes.c_longlong(int(np.prod(shape))), *cargs)


class RawModule:
    """``cupy.RawModule(code=..., options=...)`` on the host: the CUDA source run by the CPU
    execution harness :mod:`accel.cudasim` (every thread of a block a coroutine, barriers as
    synchronisation points), compiled with :func:`cxx_flags`.  ``options`` (NVRTC's) are kept
    and not used."""

    def __init__(self, code, options=(), **kwargs):
        from . import cudasim
        self.code = code
        self.options = tuple(options)
        self._names = set(cudasim.kernel_signatures(code))
        self._kernels = {}
        #: Each kernel's dynamic shared memory limit (CUDA's default until raised through the driver API).
        self.shared_limit = {name: DEFAULT_SHARED_LIMIT for name in self._names}

    def get_function(self, name):
        if name not in self._names:
            raise KeyError(f"kernel {name!r} is not in the module (has: {sorted(self._names)})")
        return _ModuleFunction(self, name)


#: The dynamic shared memory a CUDA kernel may use per block until its attribute is raised, and the most
#: the stand-in device allows then (sm_90's opt-in maximum, 227 KiB).
DEFAULT_SHARED_LIMIT = 48 * 1024
OPTIN_SHARED_LIMIT = 227 * 1024


class _ModuleFunction:
    """One kernel of a :class:`RawModule`, called like ``cupy.RawKernel``; compiled on first call
    (again when :data:`CFLAGS` change, e.g. to FMA contraction).  A launch with more dynamic shared
    memory than the kernel's limit fails as on a GPU (CUDA_ERROR_INVALID_VALUE)."""

    def __init__(self, module, name):
        self.module = module
        self.name = name
        self.ptr = _DriverAPI.handle(module, name)      # the CUfunction handle of cupy's Function

    def __call__(self, grid, block, args, shared_mem=0):
        from . import cudasim
        limit = self.module.shared_limit[self.name]
        if int(shared_mem) > limit:
            raise cudasim.HarnessError(
                f"{self.name}: launch with {int(shared_mem)} bytes of dynamic shared memory above the "
                f"kernel's limit of {limit} (CUDA_ERROR_INVALID_VALUE: raise "
                f"CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES first)")
        flags = cxx_flags()
        kernels = self.module._kernels
        if flags not in kernels:
            kernels[flags] = cudasim.load(self.module.code, lambda src, name: compile_shared(src, name, cxx=True))
        kernels[flags][self.name](grid, block, args, shared_mem=shared_mem)


class _DriverAPI:
    """What the backend uses of CUDA's driver API (``cupy_backends.cuda.api.driver``) on the stand-in:
    ``funcSetAttribute`` of a kernel's dynamic shared memory limit, checked as the driver checks it."""

    CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
    _handles = {}

    @classmethod
    def handle(cls, module, name):
        key = (id(module), name)
        if key not in cls._handles:
            cls._handles[key] = (len(cls._handles) + 1, module)
        return cls._handles[key][0]

    def funcSetAttribute(self, ptr, attrib, value):
        if attrib != self.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES:
            raise ValueError(f"attrib: the stand-in sets only the dynamic shared memory limit (8), got {attrib!r}")
        found = [(k, m) for k, (h, m) in self._handles.items() if h == ptr]
        if not found:
            raise ValueError(f"ptr: no kernel has the handle {ptr!r}")
        if not isinstance(value, int) or not 0 <= value <= OPTIN_SHARED_LIMIT:
            raise ValueError(f"CUDA_ERROR_INVALID_VALUE: dynamic shared memory limit {value!r} above the "
                             f"device's {OPTIN_SHARED_LIMIT}")
        (_, name), module = found[0]
        module.shared_limit[name] = value


class _MemoryPool:
    """What the backend reads of CuPy's memory pool (the stand-in keeps no pool)."""

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self):
        pass

    def get_limit(self):
        return 0


class NumpyDevice:
    """The subset of the ``cupy`` module used by accel.xpcore and accel.gpu, on NumPy."""

    __name__ = "numpy-standin"
    #: Source target of accel.pair_source (host C instead of CUDA).
    KERNEL_TARGET = "host"
    ElementwiseKernel = ElementwiseKernel
    RawModule = RawModule
    #: Free "device" memory reported to the blocking logic.
    memory_bytes = 64 << 20

    float32 = np.float32
    float64 = np.float64
    ndarray = np.ndarray
    asarray = staticmethod(np.asarray)
    ascontiguousarray = staticmethod(np.ascontiguousarray)
    empty = staticmethod(np.empty)
    zeros = staticmethod(np.zeros)
    sqrt = staticmethod(np.sqrt)
    matmul = staticmethod(np.matmul)
    concatenate = staticmethod(np.concatenate)
    # the history's per-entry weights under momentum (refimpl.engine.MomentumRows)
    zeros_like = staticmethod(np.zeros_like)
    abs = staticmethod(np.abs)
    any = staticmethod(np.any)
    argmax = staticmethod(np.argmax)

    def __init__(self):
        self._pool = _MemoryPool()
        device = types.SimpleNamespace(synchronize=lambda: None, id=0,
                                       attributes={"MultiProcessorCount": 1,
                                                   "MaxSharedMemoryPerBlockOptin": OPTIN_SHARED_LIMIT,
                                                   "MaxSharedMemoryPerMultiprocessor": 228 * 1024,
                                                   "ReservedSharedMemoryPerBlock": 1024,
                                                   "ComputeCapabilityMajor": 9,
                                                   "ComputeCapabilityMinor": 0})
        #: cupy_backends.cuda.api.driver's part that the backend uses (accel.xpcore.XPEngine.driver)
        self.driver_api = _DriverAPI()
        self.cuda = types.SimpleNamespace(
            Device=lambda *a: device,
            runtime=types.SimpleNamespace(memGetInfo=lambda: (self.memory_bytes, self.memory_bytes),
                                          getDeviceCount=lambda: 1))

    @staticmethod
    def asnumpy(a):
        return np.asarray(a)

    def get_default_memory_pool(self):
        return self._pool


#: The stand-in used by accel.standin_backend() and the tests.
numpy_device = NumpyDevice()
