"""Threshold selection: every entry with ``|x| >= tau``.

Magnitudes are compared as bit patterns (see :mod:`gcomp.kernels`), so NaN
(which ranks above +Inf) is always selected and never silently dropped.  One
vectorized counting pass sizes the output exactly, one collecting pass fills it
(64-entry compare masks walked with ``tzcnt``).  The parallel kernel collects
each unit into its own scratch and counts in one pass, then copies to the
prefix sum of the counts (see :mod:`gcomp.kernels.topk`): the same indices, in
order.
"""

import math

import numpy as np
from numba import prange

from . import config
from ._checks import as_f32
from ._units import chunk_count
from .config import PAR_CHUNK, kernel
from .topk import _collect_ge_range, _collect_units_prange, _exclusive_sum, _place_prange, _variants

__all__ = ["threshold_select", "threshold_count", "magnitude_key"]


@kernel
def _count_ge_range(bits, t, s, e):
    mask = np.uint32(0x7FFFFFFF)
    b = bits[s:e]
    c = 0
    for i in range(b.shape[0]):
        c += (b[i] & mask) >= t
    return c


@kernel
def _count_ge(bits, t):
    return _count_ge_range(bits, t, 0, bits.shape[0])


@kernel(parallel=True)
def _count_ge_par(bits, t):
    n = bits.shape[0]
    counts = np.empty(chunk_count(n), np.int64)
    for u in prange(counts.shape[0]):
        counts[u] = _count_ge_range(bits, t, u * PAR_CHUNK, min(n, (u + 1) * PAR_CHUNK))
    return counts.sum()


def _make_select(par):
    def _select(x, t):
        """(indices, values) of the keys >= t: count, allocate, collect; parallel: masks and counts, then writes."""
        n = x.shape[0]
        bits = x.view(np.uint32)
        if par:
            # per-unit scratch for up to 1/16 of each unit (overflowed units are collected again in pass 2)
            nu = chunk_count(n)
            unit_cap = PAR_CHUNK // 16
            sc_idx = np.empty(nu * unit_cap, np.int64)
            sc_val = np.empty(nu * unit_cap, np.float32)
            counts = np.empty(nu, np.int64)
            _collect_units_prange(bits, x, t, unit_cap, sc_idx, sc_val, counts)
            offsets = _exclusive_sum(counts)
            idx = np.empty(offsets[-1], np.int64)
            val = np.empty(offsets[-1], np.float32)
            _place_prange(bits, x, t, unit_cap, sc_idx, sc_val, counts, offsets, idx, val)
            return idx, val
        else:
            count = _count_ge(bits, t)
            idx = np.empty(count, np.int64)
            val = np.empty(count, np.float32)
            _collect_ge_range(bits, x, t, 0, n, idx, val, 0, count, False)
            return idx, val

    return _select


_select_ser, _select_par = _variants(_make_select)


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
    return int(config.run(x.shape[0], _count_ge, _count_ge_par, x.view(np.uint32), magnitude_key(tau)))


def threshold_select(x, tau):
    """``(indices int64 ascending, values float32)`` of the entries with ``|x| >= tau``.

    ``tau`` is rounded to float32 first (the comparison is in float32).
    """
    x = as_f32(x)
    return config.run(x.shape[0], _select_ser, _select_par, x, magnitude_key(tau), at_least=config.PARALLEL_MIN_SELECTION)
