"""Benchmark of one SGD step against history length M and bottleneck width d.

``python cli.py bench`` runs :func:`run` and writes JSON and a Markdown table.

What is timed: ``BottleneckSimulator.step`` on a batch of B = 20 points with a
history of M points synthesised directly (no M/B training steps): the
embeddings g0(xi) of random training points of a synthetic data set
(N = 2000, d0 = 16, dr = 1), moved by 1 % noise as training moves them, and
small random loss derivatives.  This keeps the realistic geometry (every query
has its own earlier embeddings in the history, and the usual spread of
angles).  Median of ``reps`` steps after one untimed warm-up step (which
includes Numba's compilation or cache load).

Flop model (useful work of the history pass, MATH §4): per (query, history
point) pair, 2 d for the dot product, 2 d for the Xi contraction and 2 dr for
K C: ``flops = B M (4 d + 2 dr)``.  The per-pair formulas (angles, ~40 flops)
and refimpl's repeated dot products are not counted.

The timed steps run without tracemalloc and, for the gpu backend, between device
synchronisations.  Peak memory is measured in one more, untimed step: ``peak_mib``,
tracemalloc's peak (every NumPy array the step allocates, i.e. refimpl's temporaries; not
Numba's per-tile buffers inside the kernels, which are O(threads x 32 x 512) floats, about
1 MiB); ``rss_peak_mib``, the increase of the process's peak resident set (Linux: VmHWM after
malloc_trim and a reset through /proc/self/clear_refs), which sees every host allocation; and
for the gpu backend ``device_peak_mib``, the high-water mark of CuPy's memory pool over that
step (history included).  The history itself (``history_mib``) is not included in the host
measures.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import tracemalloc

import numpy as np

import refimpl

from accel import BackendUnavailable, get_backend
from .loop import SGDLoop

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_WIDTHS = (10, 100)
BATCH = 20
N_DATA = 2000
D0 = 16
DR = 1


# ---------------------------------------------------------------------------
# machine facts and raw throughput
# ---------------------------------------------------------------------------

def machine_info():
    """CPU model, core count, memory, library versions."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "cpu_count": os.cpu_count()}
    try:
        import numba
        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
    except ImportError:                                    # pragma: no cover
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            info["mem_total_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:                                        # pragma: no cover
        pass
    try:
        info["load_average"] = os.getloadavg()
    except OSError:                                        # pragma: no cover
        pass
    info.update(gpu_info())
    return info


def gpu_info():
    """CuPy version, device name, memory and CUDA versions when the gpu backend can run here."""
    from accel import gpu
    if not gpu.available():
        return {"gpu": gpu.unavailable_reason()}
    if gpu.standin_requested():
        return {"gpu": "NumPy stand-in (BOTTLENECK_GPU=standin)"}
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return {"cupy": cupy.__version__, "gpu": name.decode() if isinstance(name, bytes) else str(name),
                "gpu_memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
                "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                "cuda_driver": cupy.cuda.runtime.driverGetVersion()}
    except Exception as exc:                               # noqa: BLE001 - stand-in or odd driver
        return {"gpu": f"(no device properties: {type(exc).__name__})"}


def _best(fn, reps=5):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def throughput():
    """Measured matmul GFLOP/s (n = 2000, float64 and float32, NumPy's BLAS, all threads),
    elementwise throughput (a + b on 2^24 float64: GB/s moved) and arccos (ns per element)."""
    rng = np.random.default_rng(0)
    out = {}
    for dt in (np.float64, np.float32):
        A = rng.standard_normal((2000, 2000)).astype(dt)
        out[f"matmul_gflops_{np.dtype(dt).name}"] = 2 * 2000**3 / _best(lambda: A @ A) / 1e9
    x = rng.standard_normal(1 << 24)
    y = rng.standard_normal(1 << 24)
    z = np.empty_like(x)
    out["elementwise_add_gbs"] = 3 * x.nbytes / _best(lambda: np.add(x, y, out=z)) / 1e9
    lam = 1.0 - rng.random(1 << 22) * 1e-3
    w = np.empty_like(lam)
    out["arccos_ns"] = _best(lambda: np.arccos(lam, out=w)) / lam.size * 1e9
    return out


# ---------------------------------------------------------------------------
# one measurement
# ---------------------------------------------------------------------------

def _reset_peak_rss():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)     # return freed heap pages, so reuse shows
    except (OSError, AttributeError):                 # pragma: no cover - not glibc
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def synthetic_problem(d, seed=0):
    """Data, initial network and the rows/noise from which histories are drawn."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N_DATA, D0))
    Y = np.tanh(X[:, :DR]) + 0.1 * rng.standard_normal((N_DATA, DR))
    net = refimpl.RandomNetwork.sample(D0, d, DR, width=1000, seed=seed)
    return X, Y, net


def synthetic_history(sim, M, seed=1, chunk=1 << 16):
    """Append M synthetic history points to ``sim`` (in chunks, so no M-sized float64 temporaries)."""
    rng = np.random.default_rng(seed)
    G = sim.embeddings(sim.X)
    scale = 0.01 * float(np.sqrt(np.mean(G * G)))
    for s in range(0, M, chunk):
        k = min(chunk, M - s)
        P = G[rng.integers(0, sim.N, k)] + scale * rng.standard_normal((k, sim.d))
        C = 1e-3 * rng.standard_normal((k, sim.dr))
        sim.history.append(P, C)


def _device_sync(backend):
    """A function that waits for the backend's device (GPU: cupy Device.synchronize; else no-op)."""
    if backend.name == "gpu":
        from accel import gpu
        return gpu.synchronize
    return lambda: None


def measure(backend, d, M, reps=3, seed=0):
    """Seconds per step (median), GFLOP/s and peak memory of ``backend`` at (d, M).

    The timed steps run without tracemalloc (which slows Python-bound code several-fold) and,
    on a GPU, between device synchronisations.  Memory is measured in one more, untimed step:
    tracemalloc's peak and the rise of the peak RSS on the host, and for the gpu backend the
    CuPy memory pool's high-water mark (``device_peak_mib``, history included; the pool's free
    blocks are released before that step).
    """
    X, Y, net = synthetic_problem(d, seed)
    sim = backend.BottleneckSimulator(net, X, Y, lr=0.5)
    synthetic_history(sim, M)
    rng = np.random.default_rng(seed + 7)
    batches = [np.sort(rng.permutation(N_DATA)[:BATCH]) for _ in range(reps + 2)]
    sync = _device_sync(backend)
    sim.step(batches[0])                                   # warm-up: compile / cache load
    times = []

    def timed(idx):
        sync()
        t = time.perf_counter()
        sim.step(idx)
        sync()
        times.append(time.perf_counter() - t)
    SGDLoop(timed, lambda k: batches[1 + k]).run(0, len(batches) - 2)
    # memory: one untimed step
    device_peak = None
    if backend.name == "gpu":
        from accel import gpu
        gpu.free_pool()
    use_rss = _reset_peak_rss()
    base = _rss_kib("VmRSS") if use_rss else 0
    tracemalloc.start()
    sim.step(batches[-1])
    peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    rss_mib = (_rss_kib("VmHWM") - base) / 1024 if use_rss else None
    if backend.name == "gpu":
        from accel import gpu
        sync()
        device_peak = gpu.memory_pool_peak()
    sec = statistics.median(times)
    flops = BATCH * M * (4 * d + 2 * DR)
    return {"backend": backend.name, "dtype": backend.dtype, "d": d, "M": M, "B": BATCH,
            "seconds_per_step": sec, "all_seconds": times, "gflops": flops / sec / 1e9,
            "peak_mib": peak_mib, "rss_peak_mib": rss_mib,
            "device_peak_mib": None if device_peak is None else device_peak / 2**20,
            "history_mib": M * (d + DR) * np.dtype(backend.dtype).itemsize / 2**20,
            **(gpu_step_extras(sim, batches[1:-1], sync, sec, d, M) if backend.name == "gpu" else {})}


def gpu_step_extras(sim, batches, sync, seconds, d, M):
    """What the gpu step is measured against (docs/BENCHMARKS.md, issue targets), from one run.

    ``pass_bytes_per_step``: global memory the step's fused pass(es) request
    (:func:`accel.fused_source.pass_counts` for this device's plan); ``pass_bandwidth_gbs``: those bytes
    over the whole step's time; ``bandwidth_fraction``: that over the device's peak memory bandwidth
    (:meth:`accel.xpcore.XPEngine.peak_bandwidth`; None on the stand-in), a lower bound of what the pass
    itself achieves.  ``host_head_seconds_per_step``: the same batches again with the head's f_0, loss and
    chi on the host (``engine.device_step = False``, the route before), and its ratio to the device step.
    ``tensor_cores``: whether the step's float64 passes ran on the FP64 tensor cores (``BOTTLENECK_TENSOR_CORES``);
    on a device that has them (compute capability 8.0+) and in float64, the same batches again with the other
    route: ``tensor_core_seconds_per_step``, ``plain_seconds_per_step`` and ``tensor_core_speedup`` (plain over
    tensor cores, taken in this one run).
    """
    from accel import fused_source
    eng = sim.engine
    dev = eng.device
    out = {}
    if eng.head.kind is not None:
        modes = (1,) if sim.first_pass_mode() == 1 else (0, 2)
        counts = [fused_source.pass_counts(BATCH, M, d, DR, m, eng.history.P_dev.dtype, eng.head.kind,
                                           dev.multiprocessors(), dev.shared_optin(), dev.shared_two_blocks(),
                                           dev.uses_tensor_cores(eng.history.P_dev.dtype))
                  for m in modes]
        if all(c is not None for c in counts):
            nbytes = sum(c["bytes"] for c in counts)
            peak = dev.peak_bandwidth()
            out.update(pass_bytes_per_step=nbytes, pass_bandwidth_gbs=nbytes / seconds / 1e9,
                       peak_bandwidth_gbs=None if peak is None else peak / 1e9,
                       bandwidth_fraction=None if peak is None else nbytes / seconds / peak)

    def timed_again():
        times = []
        for idx in batches:
            sync()
            t = time.perf_counter()
            sim.step(idx)
            sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times)
    eng.device_step = False
    try:
        out["host_head_seconds_per_step"] = timed_again()
    finally:
        eng.device_step = True
    out["host_head_over_device_step"] = out["host_head_seconds_per_step"] / seconds
    out["tensor_cores"] = dev.uses_tensor_cores(eng.history.P_dev.dtype)
    if dev.mma_available() and eng.history.P_dev.dtype == np.float64:
        dev.tensor_cores = not out["tensor_cores"]
        try:
            other = timed_again()
        finally:
            dev.tensor_cores = out["tensor_cores"]
        tc, plain = (seconds, other) if out["tensor_cores"] else (other, seconds)
        out.update(tensor_core_seconds_per_step=tc, plain_seconds_per_step=plain, tensor_core_speedup=plain / tc)
    return out


def near_pairs(backend, d=100, M=100_000, reps=5, seed=0):
    """Cost of nearly (anti-)parallel pairs in the history pass, as a ratio taken in one run.

    Times ``jacobian(Z)`` (one history pass in mode 1) for B queries against two histories of
    the same size: *spread*, rows in random directions (almost no pair has |cos| > 1 - NEAR),
    and *aligned*, rows and queries within atan(0.2) rad of one direction or its opposite (every pair
    takes the explicit-difference route of MATH §2.1).  Learned low-rank embeddings, e.g. after a
    small initialisation, look like the second.  Returns seconds (best of ``reps``) and the ratio.
    """
    from accel.formulas import NEAR
    rng = np.random.default_rng(seed)
    X, Y, net = synthetic_problem(d, seed)
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    out = {"backend": backend.name, "dtype": backend.dtype, "d": d, "M": M, "B": BATCH}
    for kind in ("spread", "aligned"):
        sim = backend.BottleneckSimulator(net, X, Y, lr=0.5)
        rows = rng.standard_normal((M + BATCH, d))
        if kind == "aligned":
            sign = np.where(rng.random((M + BATCH, 1)) < 0.5, -1.0, 1.0)
            rows = sign * (u + 0.2 * rows / np.linalg.norm(rows, axis=1, keepdims=True))
        sim.history.append(rows[:M], 1e-3 * rng.standard_normal((M, DR)))
        Z = rows[M:]
        cos = (Z / np.linalg.norm(Z, axis=1, keepdims=True)) @ (rows[:2000] / np.linalg.norm(rows[:2000], axis=1,
                                                                                             keepdims=True)).T
        out[f"{kind}_near_fraction"] = float(np.mean(np.abs(cos) > 1 - NEAR))
        sync = _device_sync(backend)
        sim.jacobian(Z)                                    # warm-up
        out[f"{kind}_seconds"] = _best(lambda: (sim.jacobian(Z), sync()), reps)
    out["aligned_over_spread"] = out["aligned_seconds"] / out["spread_seconds"]
    return out


def tracked_step(data_dir, width=50, steps=20, init_width=1000, seed=0, backend="cpu"):
    """Seconds per SGD step at full-MNIST size (60,000 training + 10,000 test tracked inputs), as a
    ratio taken in one run: Theta against the tracked inputs from what the engine stores once per
    tracked set (norms, the nonzero pattern after a column shift; ``accel.cpu``), against the
    generic route that recomputes them every step through the kernel functions (the route before).

    Both simulators start from the same network and data and take the same batches, alternating
    step by step so that load from other processes hits both alike; the median of ``steps`` each,
    of the wall time and of the CPU time of this process (all its threads: robust to other load).
    ``width="inf"``: the same for the network without bottleneck (MATH §5), NTK_inf against the
    tracked inputs from their stored norms and nonzero pattern and the composed recursion, against the
    kernel functions every step; F0 from a network of width ``init_width``.

    Returns a dict with both times, the ratio and the largest difference of the test embeddings
    (width "inf": of the test outputs).
    """
    from experiments import data
    ds = data.load_dataset("mnist", data_dir, seed=seed)
    be = get_backend(backend)
    net = None if width == "inf" else refimpl.RandomNetwork.sample(ds.X_train.shape[1], width, ds.Y_train.shape[1],
                                                                    width=init_width, seed=seed)
    sims = {}
    for route in ("stored", "per_step"):
        if width == "inf":
            sims[route] = be.InfiniteSimulator(ds.X_train, ds.Y_train, lr=0.5, X_eval=ds.X_test, init="network",
                                               width=init_width, seed=seed)
        else:
            sims[route] = be.BottleneckSimulator(net, ds.X_train, ds.Y_train, lr=0.5, X_eval=ds.X_test)
    if not hasattr(sims["per_step"].engine, "stored_route"):
        raise ValueError(f"backend: {backend} has no stored-input route for Theta")
    sims["per_step"].engine.stored_route = False
    rng = np.random.default_rng(seed)
    n = ds.X_train.shape[0]
    times = {"stored": [], "per_step": []}
    cpu_times = {"stored": [], "per_step": []}

    def both_timed(idx):                                  # the same batch for both routes, alternating
        for route, sim in sims.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            sim.step(idx)
            if sgd.step:                                  # the first step compiles
                times[route].append(time.perf_counter() - start)
                cpu_times[route].append(time.process_time() - start_cpu)
    sgd = SGDLoop(both_timed, lambda t: np.sort(rng.permutation(n)[:BATCH]))
    sgd.run(0, steps + 1)
    emb = [sim.outputs(ds.X_test) if width == "inf" else sim.embeddings(ds.X_test) for sim in sims.values()]
    out = {"backend": be.name, "dtype": be.dtype, "train": n, "test": ds.X_test.shape[0], "d0": ds.X_train.shape[1],
           "d": width, "dr": ds.Y_train.shape[1], "B": BATCH, "steps": steps, "cores": os.cpu_count()}
    for route in times:
        out[f"{route}_seconds"] = statistics.median(times[route])
        out[f"{route}_all_seconds"] = times[route]
        out[f"{route}_cpu_seconds"] = statistics.median(cpu_times[route])
    out["per_step_over_stored"] = out["per_step_seconds"] / out["stored_seconds"]
    out["cpu_per_step_over_stored"] = out["per_step_cpu_seconds"] / out["stored_cpu_seconds"]
    out["max_embedding_difference" if width != "inf" else "max_output_difference"] = \
        float(np.max(np.abs(emb[0] - emb[1])))
    return out


# ---------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------

def run(sizes=DEFAULT_SIZES, widths=DEFAULT_WIDTHS, backends=("numpy", "cpu", "gpu"),
        dtypes=("float64", "float32"), reps=3, numpy_max_M=1_000_000, numpy_reps_large=1, near=False,
        log=print):
    """Benchmark every available backend; returns a dict (machine, throughput, results, and with
    ``near`` the cost of nearly parallel pairs, :func:`near_pairs`, at the smallest M)."""
    targets, skipped = [], []
    for name in backends:
        for dtype in (("float64",) if name == "numpy" else dtypes):
            try:
                targets.append(get_backend(name, dtype))
            except BackendUnavailable as exc:
                log(f"skip {name}: unavailable: {exc}")
                skipped.append({"backend": name, "reason": str(exc)})
                break
    report = {"machine": machine_info(), "throughput": throughput(), "results": [], "skipped": skipped,
              "flop_model": "B*M*(4d + 2dr)", "batch": BATCH, "d0": D0, "dr": DR}
    log("throughput: " + ", ".join(f"{k}={v:.3g}" for k, v in report["throughput"].items()))
    for d in widths:
        for M in sizes:
            for be in targets:
                if be.name == "numpy" and M > numpy_max_M:
                    log(f"skip numpy at M={M} (--numpy-max-m {numpy_max_M})")
                    continue
                r = reps if not (be.name == "numpy" and M >= 1_000_000) else numpy_reps_large
                res = measure(be, d, M, reps=r)
                report["results"].append(res)
                log(f"d={d:<4} M={M:<8} {be.name}/{be.dtype:<8} {res['seconds_per_step']:9.4f} s/step "
                    f"{res['gflops']:7.2f} GFLOP/s  peak {res['peak_mib']:.1f} MiB (RSS +{res['rss_peak_mib'] or 0:.0f})")
    _add_ratios(report["results"])
    if near:
        report["near_pairs"] = []
        for d in widths:
            for be in targets:
                if be.name == "numpy":
                    continue
                res = near_pairs(be, d, min(sizes), reps=max(reps, 3))
                report["near_pairs"].append(res)
                log(f"near pairs d={d:<4} M={res['M']:<8} {be.name}/{be.dtype:<8} spread {res['spread_seconds']:.4f} s "
                    f"(near {res['spread_near_fraction']:.2f}), aligned {res['aligned_seconds']:.4f} s "
                    f"(near {res['aligned_near_fraction']:.2f}): x{res['aligned_over_spread']:.2f}")
    return report


def _add_ratios(results):
    ref = {(r["d"], r["M"]): r["seconds_per_step"] for r in results if r["backend"] == "numpy"}
    for r in results:
        base = ref.get((r["d"], r["M"]))
        r["speedup_vs_numpy"] = None if base is None else base / r["seconds_per_step"]


def table(report):
    """A Markdown table of the results."""
    lines = ["| d | M | backend | dtype | s/step | GFLOP/s | x refimpl | peak MiB (tracemalloc) "
             "| peak RSS +MiB | device peak MiB |", "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        sp = "" if r["speedup_vs_numpy"] is None else f"{r['speedup_vs_numpy']:.1f}"
        dev = r.get("device_peak_mib")
        lines.append(f"| {r['d']} | {r['M']:.0e} | {r['backend']} | {r['dtype']} | "
                     f"{r['seconds_per_step']:.4g} | {r['gflops']:.2f} | {sp} | {r['peak_mib']:.1f} | "
                     f"{'' if r['rss_peak_mib'] is None else round(r['rss_peak_mib'])} | "
                     f"{'' if dev is None else round(dev)} |")
    for sk in report.get("skipped", []):
        lines.append(f"| | | {sk['backend']} | | skipped: {sk['reason']} | | | | | |")
    return "\n".join(lines)


def write(report, path):
    """Write the report as JSON (atomically)."""
    from .fileio import atomic_write_text
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
