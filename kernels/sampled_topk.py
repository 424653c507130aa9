"""Approximate top-k by a sampled threshold (DGC, Lin et al. 2018).

:func:`topk_sampled` estimates the magnitude threshold from a stratified random
sample of the input (one element per stratum, positions from the seed), so it
reads the input in full only once:

1. sample ``m = max(ceil(sample_fraction * n), 1024)`` magnitudes, in runs of
   16 consecutive elements (one random run per stratum, one cache miss each),
   and take the
   ``r``-th largest as the threshold, with ``r = mu + 3 sqrt(mu) + 1`` and
   ``mu = m k / n``: a threshold a little *below* the k-th largest magnitude,
   so that the candidates cover the true top k with high probability;
2. one pass collects every element at or above the threshold (at most
   ``2k + 1024`` are kept);
3. if at least k were collected, the exact top-k among them is returned:
   then the result equals :func:`gcomp.kernels.topk.topk_exact` (same tie
   rule).  If fewer, the threshold is lowered (``r`` doubled) and the pass
   repeated, at most twice; if still fewer but at least
   ``ceil(min_fraction * k)`` were found, those are returned; otherwise (and
   when the threshold admits too many, as with massive ties) the exact radix
   select runs.

**Count bound** (documented guarantee): the number returned ``c`` satisfies
``ceil(min_fraction * k) <= c <= k``, and the selection is always the ``c``
largest magnitudes (ties by lowest index), indices ascending.  On
gradient-like data ``c == k`` nearly always.
"""

import math

import numpy as np

from ._checks import as_f32, check_int, check_seed
from .config import kernel
from .random import rand32, seed_key32
from .topk import _finish, _kth_key, _topk_into

__all__ = ["topk_sampled", "sample_size"]


@kernel
def _collect_capped(bits, x, t, out_idx, out_val, cap):
    """Indices/values of keys >= t, ascending, keeping at most ``cap``; returns the total count."""
    n = bits.shape[0]
    mask = np.uint32(0x7FFFFFFF)
    c = 0
    nfull = n - (n & 15)
    for i0 in range(0, nfull, 16):
        s = np.uint32(0)
        for j in range(16):
            s |= np.uint32((bits[i0 + j] & mask) >= t)
        if s:
            for i in range(i0, i0 + 16):
                if (bits[i] & mask) >= t:
                    if c < cap:
                        out_idx[c] = i
                        out_val[c] = x[i]
                    c += 1
    for i in range(nfull, n):
        if (bits[i] & mask) >= t:
            if c < cap:
                out_idx[c] = i
                out_val[c] = x[i]
            c += 1
    return c


@kernel
def _sampled_into(x, k, seed, m, min_count, out_idx, out_val):
    n = x.shape[0]
    bits = x.view(np.uint32)
    mask = np.uint32(0x7FFFFFFF)
    key = seed_key32(seed)
    # Stratified sample in runs of 16 consecutive elements (one cache line):
    # one random run per stratum, so sampling costs m / 16 cache misses.
    runs = (m + 15) // 16
    sample = np.empty(runs * 16, np.uint32)
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
            sample[c] = bits[q] & mask
            c += 1
    m = c
    sample = sample[:m]
    mu = m * (k / n)
    r = np.int64(mu + 3.0 * math.sqrt(mu) + 1.0)
    if r > m:
        r = m
    cap = 2 * k + 1024
    cand_idx = np.empty(cap, np.int64)
    cand_val = np.empty(cap, np.float32)
    for _attempt in range(3):
        t, _ = _kth_key(sample, r)
        total = _collect_capped(bits, x, t, cand_idx, cand_val, cap)
        if total > cap:
            break
        if total >= k:
            return _finish(cand_idx, cand_val, total, k, out_idx, out_val)
        if r == m:
            break
        r = min(2 * r, m)
    if 0 < total <= cap and total >= min_count:
        out_idx[:total] = cand_idx[:total]
        out_val[:total] = cand_val[:total]
        return total
    return _topk_into(x, k, out_idx, out_val)


def sample_size(n, sample_fraction=0.01):
    """How many elements :func:`topk_sampled` samples from ``n``."""
    return min(n, max(math.ceil(sample_fraction * n), 1024))


def topk_sampled(x, k, seed, sample_fraction=0.01, min_fraction=0.5):
    """Approximate top-k by magnitude from a sampled threshold: ``(indices, values)``.

    Returns ``c`` entries with ``ceil(min_fraction * k) <= c <= k``, always the
    ``c`` largest magnitudes, indices ascending (see the module docstring).
    ``seed`` picks the sample positions; the same seed gives the same result.
    """
    x = as_f32(x)
    n = x.shape[0]
    k = check_int(k, "k", 0, n)
    seed = check_seed(seed)
    if not (isinstance(sample_fraction, (int, float)) and 0.0 < sample_fraction <= 1.0):
        raise ValueError(f"expected 0 < sample_fraction <= 1, found {sample_fraction!r}")
    if not (isinstance(min_fraction, (int, float)) and 0.0 <= min_fraction <= 1.0):
        raise ValueError(f"expected 0 <= min_fraction <= 1, found {min_fraction!r}")
    if k == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    if k == n:
        return np.arange(n, dtype=np.int64), x.copy()
    idx = np.empty(k + 1, np.int64)
    val = np.empty(k + 1, np.float32)
    m = sample_size(n, sample_fraction)
    min_count = max(1, math.ceil(min_fraction * k))
    c = _sampled_into(x, k, np.uint64(seed), m, min_count, idx, val)
    return idx[:c], val[:c]
