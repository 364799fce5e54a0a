"""Experiment tooling of bottleneck-dynamics: data, the training driver, sweeps, plots, verification,
finite-network sweeps, golden checks, metrics, benchmarks and file I/O.

Everything here that reads or writes files, draws figures or runs for minutes lives in this package;
the math it drives is :mod:`refimpl` (the executable spec) through the fast backends of :mod:`accel`.
Imports run one way: ``cli.py -> experiments -> accel -> refimpl``.
"""
