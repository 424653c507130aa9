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
   ``2k + 1024`` are kept; 64-entry compare masks walked with ``tzcnt``, see
   :mod:`gcomp.kernels.topk`, in parallel for large vectors);
3. if at least k were collected, the exact top-k among them is returned:
   then the result equals :func:`gcomp.kernels.topk.topk_exact` (same tie
   rule).  If fewer, the threshold is lowered (``r`` doubled) and the pass
   repeated, at most twice; if still fewer but at least
   ``ceil(min_fraction * k)`` were found, those are returned; otherwise (and
   when the threshold admits too many, as with massive ties) the exact radix
   select runs.

**A sample as large as the vector** (``n <= 1024`` with the default sample,
or ``sample_fraction = 1``): the sampled runs then cover every entry (strata
at most 16 wide, one run of 16 each), so every entry's key is in the sample at
least once and at most twice; the first threshold's rank in ``x`` is at least
``r / 2`` and the second try's at least ``r >= k``, so at least k are
collected, and the result is the exact top-k (or, when more than the
candidate cap are collected, the exact radix select's).  Such calls go to
:func:`gcomp.kernels.topk.topk_exact`'s kernel directly: the same result
without the sample and its select.

**Count bound** (documented guarantee): the number returned ``c`` satisfies
``ceil(min_fraction * k) <= c <= k``, and the selection is always the ``c``
largest magnitudes (ties by lowest index), indices ascending.  On
gradient-like data ``c == k`` nearly always.
"""

import math

import numpy as np

from . import config
from ._checks import as_f32, check_int, check_seed
from .random import seed_key32
from .topk import (
    _SMALL_N,
    _collect_ge_par,
    _collect_ge_ser,
    _finish,
    _finish_par,
    _histogram_par,
    _histogram_top,
    _kth_from_hist,
    _kth_key_small,
    _margin_rank,
    _sample_keys,
    _sample_keys_par,
    _topk_exact_trusted,
    _topk_into_par,
    _topk_into_ser,
    _variants,
)

__all__ = ["topk_sampled", "sample_size"]


def _make_sampled_into(par):
    def _sampled_into(x, k, seed, m, min_count, out_idx, out_val):
        n = x.shape[0]
        bits = x.view(np.uint32)
        # Stratified sample in runs of 16 consecutive elements (one cache line):
        # one random run per stratum, so sampling costs m / 16 cache misses.
        if par:
            sample = _sample_keys_par(bits, m, seed_key32(seed))
            hist = _histogram_par(sample)
        else:
            sample = _sample_keys(bits, m, seed_key32(seed))
            # a short sample selects with little scratch (_kth_key_small, the same T) rather than a histogram
            hist = _histogram_top(sample) if sample.shape[0] > _SMALL_N else np.zeros(0, np.int64)
        m = sample.shape[0]
        r = _margin_rank(m, k, n)
        cap = 2 * k + 1024
        cand_idx = np.empty(cap, np.int64)
        cand_val = np.empty(cap, np.float32)
        total = 0
        for _attempt in range(3):
            if hist.shape[0] == 0:
                t, _ = _kth_key_small(sample, r)
            else:
                t, _ = _kth_from_hist(sample, hist, r)
            if par:
                total = _collect_ge_par(bits, x, t, cand_idx, cand_val, cap)
            else:
                total = _collect_ge_ser(bits, x, t, cand_idx, cand_val, cap)
            if total > cap:
                break
            if total >= k:
                if par:
                    return _finish_par(cand_idx, cand_val, total, k, out_idx, out_val)
                else:
                    return _finish(cand_idx, cand_val, total, k, out_idx, out_val)
            if r == m:
                break
            r = min(2 * r, m)
        if 0 < total <= cap and total >= min_count:
            out_idx[:total] = cand_idx[:total]
            out_val[:total] = cand_val[:total]
            return total
        if par:
            return _topk_into_par(x, k, out_idx, out_val)
        else:
            return _topk_into_ser(x, k, out_idx, out_val)

    return _sampled_into


_sampled_into_ser, _sampled_into_par = _variants(_make_sampled_into)


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
    return _topk_sampled_trusted(x, k, seed, sample_fraction, min_fraction)


def _topk_sampled_trusted(x, k, seed, sample_fraction, min_fraction):
    """:func:`topk_sampled` without its argument checks, for a caller whose arguments are valid already
    (a compressor's parameters, checked when it was built; ``x`` a 1-D contiguous float32 array; ``k`` an
    int in [0, x.size]; ``seed`` an int in [0, 2**64)): the same kernel with the same arguments, so the same
    result."""
    n = x.shape[0]
    if k == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    if k == n:
        return np.arange(n, dtype=np.int64), x.copy()
    m = sample_size(n, sample_fraction)
    if m >= n:  # the sample is the whole vector: the result is the exact top-k (module docstring), without sampling
        return _topk_exact_trusted(x, k)
    idx = np.empty(k + 1, np.int64)
    val = np.empty(k + 1, np.float32)
    c = config.run(n, _sampled_into_ser, _sampled_into_par, x, k, np.uint64(seed), m,
                   max(1, math.ceil(min_fraction * k)), idx, val, at_least=config.PARALLEL_MIN_SELECTION)
    return idx[:c], val[:c]
