"""Memory estimates: a run that cannot fit this machine is refused in one line before anything is written.

* :func:`memory_estimate`: peak bytes of a simulated run (``train``, every run of a sweep), and
  :func:`check_memory`, its refusal;
* :func:`finite_memory_estimate`: peak bytes of a finite network trained by SGD (``finite-sweep``);
* :func:`available_memory`: what this machine has (physical memory, or the GPU's).

The estimates are bounds good to a factor of about two; they serve only to refuse what cannot fit.
"""

from __future__ import annotations

import os

import numpy as np

from refimpl.finite import ROW_BLOCK_ELEMENTS
from .validate import TrainError


def memory_estimate(config, n_train, n_test, d0, dr):
    """Peak bytes (float64) of a run: initial network, embeddings, history and evaluation blocks.

    A bound good to a factor of about two; it only serves to refuse runs that cannot fit.
    """
    from refimpl.dynamics import HISTORY_BLOCK, QUERY_BLOCK
    n = n_train + n_test
    steps_rows = config.steps * config.batch_size
    # hidden-to-hidden weights of the deeper random networks (depth > 1): n0 x n0 per extra layer
    extra = max(int(config.depth_g) - 1, 0) + max(int(config.depth_f) - 1, 0)
    if config.width == "inf":
        # Cholesky draw of F0 on all inputs (a few n x n matrices), or a network of width 2048
        draw = 4 * n * n if n <= 4000 else 2048 * (d0 + 2 * 2048 + dr) + 3 * 2048 * min(n, 4096)
        core = draw + n * (d0 + 3 * dr) + 4 * n * config.batch_size + extra * 2048 * 2048
    else:
        d = int(config.width)
        core = (config.init_width * (d0 + 2 * d + dr)             # the random network g0, f0, J0
                + 3 * config.init_width * max(config.batch_size, min(n, 512))   # its hidden activations
                + n * (d0 + 3 * d + dr)                            # inputs, tracked embeddings, A
                + 3 * steps_rows * (d + dr + 1)                    # history (grows by doubling)
                + 4 * QUERY_BLOCK * HISTORY_BLOCK                 # kernel blocks
                + 4 * min(steps_rows, HISTORY_BLOCK) * d * QUERY_BLOCK // 64
                + 2 * extra * config.init_width * config.init_width)
        for k, dk in enumerate(config.chain or ()):       # each further head: its network and history (MATH §9)
            d_in = d if k == 0 else config.chain[k - 1]
            core += (config.init_width * (d_in + dk) + 3 * steps_rows * (d_in + dk + 1)
                     + max(int(config.depth_f) - 1, 0) * config.init_width * config.init_width)
    return 8 * int(core)


def available_memory(xp):
    """Bytes of memory the run can use: GPU memory for cupy, physical memory otherwise (None if unknown)."""
    if xp is not np:
        try:
            free, total = xp.cuda.runtime.memGetInfo()
            return int(total)
        except Exception:   # noqa: BLE001
            return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(config, n_train, n_test, d0, dr):
    """Refuse (one line) a run whose :func:`memory_estimate` exceeds this machine's memory."""
    need = memory_estimate(config, n_train, n_test, d0, dr) + 8 * 4 * (n_train + n_test) * (d0 + dr)
    have = available_memory(np)
    if have is not None and need > have:
        sizes = ", ".join(f"{k} {v}" for k, v in (
            ("train_size", n_train), ("test_size", n_test), ("d0", d0), ("dr", dr), ("width", config.width),
            *((("chain", ",".join(map(str, config.chain))),) if config.chain else ()),
            ("init_width", config.init_width), ("steps", config.steps), ("batch_size", config.batch_size),
            ("depth_g", config.depth_g), ("depth_f", config.depth_f)))
        raise TrainError(f"memory: the run needs about {need / 2**30:.3g} GiB ({sizes}) but this machine has "
                         f"{have / 2**30:.3g} GiB; lower one of these")
    return need


def finite_memory_estimate(d0, d, dr, hidden, batch_size=5):
    """Peak bytes of one finite-network SGD run (float64), see :mod:`experiments.finite_sweep`'s docstring.

    Weights plus one gradient per matrix (16 bytes per weight) and the same again
    while the network is constructed, plus the hidden-activation blocks of the
    forward/backward passes (about 6 blocks of ``min(rows, ROW_BLOCK_ELEMENTS / n) * n``).
    """
    params = hidden * (d0 + 2 * d + dr)
    block = min(ROW_BLOCK_ELEMENTS, max(batch_size, 1) * hidden)
    return 16 * params + 8 * 6 * ROW_BLOCK_ELEMENTS + 8 * 4 * block
