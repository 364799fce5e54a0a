"""bottleneck-dynamics reference implementation: pure NumPy, float64, read next to docs/MATH.md.

Public API
----------
Kernels (MATH §2, §5): :func:`nngp`, :func:`sigmadot`, :func:`ntk`, :func:`xi`,
:func:`sigma1`, :func:`sigma2`, :func:`ntk_inf`, :func:`nngp_inf`;
architecture: :class:`Layers`, :func:`architecture`; activations: :mod:`refimpl.activations`.
Initial functions (MATH §3): :class:`RandomNetwork`.
Dynamics (MATH §4, §5): :class:`BottleneckSimulator`, :class:`InfiniteSimulator`;
several bottlenecks (MATH §9): :class:`RandomChain`, :class:`ChainSimulator` (:mod:`refimpl.chain`);
schedules and momentum (MATH §8): the simulators' ``lr_schedule``, ``momentum``, ``nesterov``, with
:class:`Schedule` and :func:`parse_schedule` (:mod:`refimpl.optim`).
"""

from .kernels import (Layers, architecture, nngp, sigmadot, ntk, xi, xi_coefficients, sigma1, sigma2, ntk_inf,
                      nngp_inf)
from .network import RandomNetwork
from .dynamics import BottleneckSimulator, InfiniteSimulator, DivergenceError, History
from .chain import ChainSimulator, RandomChain
from .optim import Schedule, parse_schedule

__version__ = "0.1.0"

__all__ = [
    "nngp", "sigmadot", "ntk", "xi", "xi_coefficients", "sigma1", "sigma2", "ntk_inf", "nngp_inf",
    "Layers", "architecture",
    "RandomNetwork", "BottleneckSimulator", "InfiniteSimulator", "DivergenceError", "History",
    "RandomChain", "ChainSimulator", "Schedule", "parse_schedule",
]
