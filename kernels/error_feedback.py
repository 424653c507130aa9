"""Fused error-feedback steps: add the residual, select or quantize, update the residual.

Residual error feedback (EF-SGD) sends ``C(x + e)`` and keeps
``e <- x + e - D(C(x + e))``.  Done naively that is three or four passes over
memory; here each step takes as few as the compressor allows:

* :func:`ef_topk`: a small sample of ``residual + x`` gives a threshold (as in
  :func:`gcomp.kernels.topk.topk_exact`); one pass adds ``x`` into the residual
  *and* collects the entries of the new residual at or above the threshold; the
  exact top k is selected among those candidates, and the k sent entries of
  the residual are then zeroed (k writes, not a pass).  One pass instead of
  four.  When the sample misleads (fewer than k or more than ``2k + 1024``
  candidates) a histogram pass and a collecting pass over the updated residual
  finish the radix select instead (for vectors under 65536 entries the first
  pass adds and builds the histogram).  The parallel kernel makes masks and
  per-unit counts in the fused pass and writes the candidates from their prefix
  sum, so the result is the same for every thread count.
* :func:`ef_sampled_topk`: one pass adds ``x`` into the residual, one pass
  selects with the sampled threshold, then k writes.
* Quantizers (``qsgd``, ``uniform``, ``sign``, ``terngrad``, ``natural``): their
  encoders take ``residual=`` and do everything in one pass, bucket by bucket
  (the bucket stays in L1 between quantizing and updating): call them with
  ``residual=`` directly.
"""

import numpy as np
from numba import prange

from . import config
from ._checks import as_f32, check_f32_inplace, check_int
from ._units import chunk_count
from .config import PAR_CHUNK, kernel
from .random import rand32, seed_key32
from .sampled_topk import topk_sampled
from .topk import (
    _SAMPLE_SEED,
    _exact_sample_size,
    _exclusive_sum,
    _finish,
    _finish_par,
    _histogram_par,
    _histogram_top,
    _kth_key,
    _margin_rank,
    _mask64,
    _mask_tail,
    _place_prange,
    _take_bits,
    _topk_from_hist_par,
    _topk_from_hist_ser,
    _unit_capacity,
    _variants,
)

__all__ = ["ef_topk", "ef_sampled_topk"]


@kernel
def _accumulate_histogram(x, residual):
    """residual += x, and the top-11-bit magnitude histogram of the new residual, in one pass."""
    n = x.shape[0]
    mask = np.uint32(0x7FFFFFFF)
    h4 = np.zeros((4, 2048), dtype=np.int64)
    rbits = residual.view(np.uint32)
    n4 = n - (n & 3)
    i = 0
    while i < n4:
        residual[i] += x[i]
        residual[i + 1] += x[i + 1]
        residual[i + 2] += x[i + 2]
        residual[i + 3] += x[i + 3]
        h4[0, (rbits[i] & mask) >> 20] += 1
        h4[1, (rbits[i + 1] & mask) >> 20] += 1
        h4[2, (rbits[i + 2] & mask) >> 20] += 1
        h4[3, (rbits[i + 3] & mask) >> 20] += 1
        i += 4
    while i < n:
        residual[i] += x[i]
        h4[0, (rbits[i] & mask) >> 20] += 1
        i += 1
    return h4[0] + h4[1] + h4[2] + h4[3]


@kernel
def _sample_sum_keys(x, residual, m, key):
    """:func:`~gcomp.kernels.topk._sample_keys` of ``residual + x`` (computed, not stored)."""
    n = x.shape[0]
    mask = np.uint32(0x7FFFFFFF)
    runs = (m + 15) // 16
    sample = np.empty(runs * 16, np.uint32)
    v = np.empty(16, np.float32)
    vb = v.view(np.uint32)
    stride = n / runs
    c = 0
    for s in range(runs):
        lo = np.int64(s * stride)
        hi = np.int64((s + 1) * stride)
        if hi > n:
            hi = n
        width = hi - lo - 15
        if width < 1:
            width = 1
        j = lo + np.int64((np.uint64(rand32(key, s)) * np.uint64(width)) >> np.uint64(32))
        for q in range(j, min(j + 16, n)):
            v[q - j] = residual[q] + x[q]
            sample[c] = vb[q - j] & mask
            c += 1
    return sample[:c]


@kernel
def _acc64(x, residual, i0):
    r = residual[i0 : i0 + 64]
    xb = x[i0 : i0 + 64]
    for j in range(64):
        r[j] += xb[j]


@kernel
def _acc_collect_range(x, residual, t, s, e, out_idx, out_val, pos, limit):
    """``residual += x`` over ``s:e`` (``s`` a multiple of 64) and, in the same pass, the entries of the new
    residual with key >= t, written from slot ``pos`` while below slot ``limit``.  Always finishes the
    accumulation; returns the count."""
    rbits = residual.view(np.uint32)
    c = pos
    nfull = s + ((e - s) & ~63)
    for i0 in range(s, nfull, 64):
        _acc64(x, residual, i0)
        m = _mask64(rbits, i0, t)
        if m:
            c = _take_bits(residual, m, i0, out_idx, out_val, c, limit)
    if nfull < e:
        for i in range(nfull, e):
            residual[i] += x[i]
        c = _take_bits(residual, _mask_tail(rbits, nfull, e, t), nfull, out_idx, out_val, c, limit)
    return c - pos


@kernel(parallel=True)
def _acc_collect_units_prange(x, residual, t, unit_cap, sc_idx, sc_val, counts):
    n = x.shape[0]
    for u in prange(counts.shape[0]):
        counts[u] = _acc_collect_range(x, residual, t, u * PAR_CHUNK, min(n, (u + 1) * PAR_CHUNK), sc_idx, sc_val,
                                       u * unit_cap, (u + 1) * unit_cap)


@kernel(parallel=True)
def _zero_at_prange(residual, idx, c):
    """``residual[idx[:c]] = 0`` (distinct indices), :data:`PAR_CHUNK` of them per unit."""
    for u in prange((c + PAR_CHUNK - 1) // PAR_CHUNK):
        for j in range(u * PAR_CHUNK, min(c, (u + 1) * PAR_CHUNK)):
            residual[idx[j]] = 0.0


def _make_ef_topk(par):
    def _ef_topk(x, residual, k, out_idx, out_val):
        n = x.shape[0]
        c = -1
        if n >= 65536:
            sample = _sample_sum_keys(x, residual, _exact_sample_size(n, k), seed_key32(_SAMPLE_SEED))
            t, _ = _kth_key(sample, _margin_rank(sample.shape[0], k, n))
            cap = 2 * k + 1024
            cand_idx = np.empty(cap, np.int64)
            cand_val = np.empty(cap, np.float32)
            if par:
                nu = chunk_count(n)
                unit_cap = _unit_capacity(n, cap)
                sc_idx = np.empty(nu * unit_cap, np.int64)
                sc_val = np.empty(nu * unit_cap, np.float32)
                counts = np.empty(nu, np.int64)
                _acc_collect_units_prange(x, residual, t, unit_cap, sc_idx, sc_val, counts)
                offsets = _exclusive_sum(counts)
                got = offsets[-1]
                if k <= got <= cap:
                    _place_prange(residual.view(np.uint32), residual, t, unit_cap, sc_idx, sc_val, counts, offsets,
                                  cand_idx, cand_val)
            else:
                got = _acc_collect_range(x, residual, t, 0, n, cand_idx, cand_val, 0, cap)
            if k <= got <= cap:
                if par:
                    c = _finish_par(cand_idx, cand_val, got, k, out_idx, out_val)
                else:
                    c = _finish(cand_idx, cand_val, got, k, out_idx, out_val)
            elif par:
                c = _topk_from_hist_par(residual, _histogram_par(residual.view(np.uint32)), k, out_idx, out_val)
            else:
                c = _topk_from_hist_ser(residual, _histogram_top(residual.view(np.uint32)), k, out_idx, out_val)
        else:
            hist = _accumulate_histogram(x, residual)
            c = _topk_from_hist_ser(residual, hist, k, out_idx, out_val)
        if par:
            _zero_at_prange(residual, out_idx, c)
        else:
            for j in range(c):
                residual[out_idx[j]] = 0.0
        return c

    return _ef_topk


_ef_topk_ser, _ef_topk_par = _variants(_make_ef_topk)


@kernel
def _accumulate(x, residual):
    for i in range(x.shape[0]):
        residual[i] += x[i]


@kernel(parallel=True)
def _accumulate_par(x, residual):
    n = x.shape[0]
    for u in prange(chunk_count(n)):
        s = u * PAR_CHUNK
        _accumulate(x[s : min(n, s + PAR_CHUNK)], residual[s : min(n, s + PAR_CHUNK)])


def _check_pair(x, residual):
    x = as_f32(x)
    residual = check_f32_inplace(residual, "residual")
    if residual.shape[0] != x.shape[0]:
        raise ValueError(f"expected residual of {x.shape[0]} entries (like x), found {residual.shape[0]}")
    if np.shares_memory(x, residual):
        raise ValueError("expected x and residual to be distinct arrays, found overlapping memory")
    return x, residual


def ef_topk(x, residual, k):
    """Fused EF top-k: ``residual += x``; send its top k; zero them in the residual.

    Returns ``(indices ascending, values)``; ``residual`` (float32) is updated in place.
    """
    x, residual = _check_pair(x, residual)
    n = x.shape[0]
    k = check_int(k, "k", 0, n)
    if k == 0:
        config.run(n, _accumulate, _accumulate_par, x, residual)
        return np.empty(0, np.int64), np.empty(0, np.float32)
    idx = np.empty(k + 1, np.int64)
    val = np.empty(k + 1, np.float32)
    c = config.run(n, _ef_topk_ser, _ef_topk_par, x, residual, k, idx, val, at_least=config.PARALLEL_MIN_SELECTION)
    return idx[:c], val[:c]


def ef_sampled_topk(x, residual, k, seed, sample_fraction=0.01, min_fraction=0.5):
    """Fused EF with DGC's sampled top-k (see :func:`gcomp.kernels.sampled_topk.topk_sampled`)."""
    x, residual = _check_pair(x, residual)
    config.run(x.shape[0], _accumulate, _accumulate_par, x, residual)
    idx, val = topk_sampled(residual, k, seed, sample_fraction=sample_fraction, min_fraction=min_fraction)
    residual[idx] = 0.0
    return idx, val
