"""Array modules with the special functions that refimpl's activations ask of them (MATH §1, §2.2).

refimpl imports NumPy only.  An activation's ``phi`` runs on any array module ``xp`` with NumPy's
names; erf needs ``xp.erf``, which NumPy lacks (refimpl uses libm's there) and CuPy keeps in
``cupyx.scipy.special``.  :func:`with_special_functions` returns the module with ``erf`` added, so
finite networks of any activation run on the GPU (experiments.finite_sweep).
"""

from __future__ import annotations

import types


class _Extended(types.ModuleType):
    """An array module plus a few functions; every other name is the base module's."""

    def __init__(self, base, functions):
        super().__init__(base.__name__)
        self._base = base
        self.__dict__.update(functions)

    def __getattr__(self, name):
        return getattr(self._base, name)


def with_special_functions(xp, erf=None):
    """``xp`` with ``erf`` (default: CuPy's ``cupyx.scipy.special.erf``); ``xp`` itself if it has one
    or is NumPy (whose erf refimpl supplies)."""
    import numpy as np
    if xp is np or hasattr(xp, "erf"):
        return xp
    if erf is None:
        from cupyx.scipy.special import erf
    return _Extended(xp, {"erf": erf})
