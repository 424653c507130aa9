"""Threshold selection: every entry with ``|x| >= tau``.

Magnitudes are compared as bit patterns (see :mod:`gcomp.kernels`), so NaN
(which ranks above +Inf) is always selected and never silently dropped.  One
vectorized counting pass sizes the output exactly, one collecting pass fills it.
"""

import math

import numpy as np

from ._checks import as_f32
from .config import kernel
from .topk import _collect

__all__ = ["threshold_select", "threshold_count", "magnitude_key"]


@kernel
def _count_ge(bits, t):
    mask = np.uint32(0x7FFFFFFF)
    c = 0
    for i in range(bits.shape[0]):
        c += (bits[i] & mask) >= t
    return c


def magnitude_key(tau):
    """The uint32 key of a threshold ``tau >= 0`` (NaN and negative values are refused)."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating, np.integer)):
        raise TypeError(f"expected a real threshold tau, found {type(tau).__name__}")
    tau = float(tau)
    if math.isnan(tau) or tau < 0:
        raise ValueError(f"expected a threshold tau >= 0, found {tau}")
    return np.array([tau], dtype=np.float32).view(np.uint32)[0] & np.uint32(0x7FFFFFFF)


def threshold_count(x, tau):
    """How many entries of ``x`` have ``|x| >= tau``."""
    x = as_f32(x)
    return int(_count_ge(x.view(np.uint32), magnitude_key(tau)))


def threshold_select(x, tau):
    """``(indices int64 ascending, values float32)`` of the entries with ``|x| >= tau``.

    ``tau`` is rounded to float32 first (the comparison is in float32).
    """
    x = as_f32(x)
    t = magnitude_key(tau)
    bits = x.view(np.uint32)
    count = int(_count_ge(bits, t))
    idx = np.empty(count + 1, np.int64)
    val = np.empty(count + 1, np.float32)
    n = x.shape[0]
    _collect(bits, x, t, count + 1, idx, val, count > n // 16)
    return idx[:count], val[:count]
