"""Exact top-k by magnitude in O(n): radix select on float32 bit patterns.

``|x|``'s IEEE bit pattern (``bits & 0x7fffffff``, the *key*) orders
non-negative floats exactly as their values, with +Inf above every finite value
and NaN above +Inf.  :func:`topk_exact` finds the k-th largest key with one
histogram pass over the input (top 11 key bits, four interleaved histograms to
break store dependencies), gathers the few candidates in the boundary bin and
finishes the select on them (11 then 9 more bits), then collects the result in
one last, branch-free pass.  Ties at the threshold are broken by lowest index,
so the result is deterministic; indices come out ascending with their values.
"""

import numpy as np

from ._checks import as_f32, check_int
from .config import kernel

__all__ = ["topk_exact", "kth_largest_key", "magnitude_keys"]

_MASK = np.uint32(0x7FFFFFFF)


@kernel
def _find_bin(hist, k):
    """Highest bin b with count(bins >= b) >= k; returns (b, k - count(bins > b))."""
    above = 0
    b = hist.shape[0] - 1
    while b > 0:
        c = hist[b]
        if above + c >= k:
            return b, k - above
        above += c
        b -= 1
    return 0, k - above


@kernel
def _kth_key(bits, k):
    """(T, need): the k-th largest key, and how many elements equal to T belong to the top k.

    ``bits`` are uint32 patterns (masked here); requires 1 <= k <= bits.size.
    """
    n = bits.shape[0]
    mask = np.uint32(0x7FFFFFFF)
    hist = _histogram_top(bits)
    b1, need = _find_bin(hist, k)
    # Gather the boundary bin's keys.
    cand = np.empty(hist[b1] + 1, dtype=np.uint32)
    c = 0
    ub1 = np.uint32(b1)
    for i in range(n):
        key = bits[i] & mask
        cand[c] = key
        c += (key >> 20) == ub1
    # Second digit: key bits 9..19.
    h2 = np.zeros(2048, dtype=np.int64)
    for j in range(c):
        h2[(cand[j] >> 9) & 0x7FF] += 1
    b2, need = _find_bin(h2, need)
    c2 = 0
    ub2 = np.uint32(b2)
    for j in range(c):
        key = cand[j]
        cand[c2] = key
        c2 += ((key >> 9) & 0x7FF) == ub2
    # Last digit: key bits 0..8.
    h3 = np.zeros(512, dtype=np.int64)
    for j in range(c2):
        h3[cand[j] & 0x1FF] += 1
    b3, need = _find_bin(h3, need)
    t = (np.uint32(b1) << 20) | (np.uint32(b2) << 9) | np.uint32(b3)
    return t, need


@kernel
def _collect(bits, x, t, need, out_idx, out_val, dense):
    """Write indices (ascending) and values of keys > t, plus the first ``need`` keys == t.

    ``dense`` picks the branch-free loop (it writes slot ``c`` unconditionally,
    so outputs need one spare slot); otherwise a 16-element block test skips
    blocks with nothing to take, which is several times faster at low density.
    Returns the number taken.
    """
    n = bits.shape[0]
    mask = np.uint32(0x7FFFFFFF)
    c = 0
    eq_taken = 0
    if dense:
        for i in range(n):
            key = bits[i] & mask
            eq = key == t
            take = (key > t) | (eq & (eq_taken < need))
            out_idx[c] = i
            out_val[c] = x[i]
            c += take
            eq_taken += eq & take
        return c
    nfull = n - (n & 15)
    for i0 in range(0, nfull, 16):
        s = np.uint32(0)
        for j in range(16):
            s |= np.uint32((bits[i0 + j] & mask) >= t)
        if s:
            for i in range(i0, i0 + 16):
                key = bits[i] & mask
                if key >= t:
                    if key > t or eq_taken < need:
                        out_idx[c] = i
                        out_val[c] = x[i]
                        c += 1
                        eq_taken += key == t
    for i in range(nfull, n):
        key = bits[i] & mask
        if key >= t:
            if key > t or eq_taken < need:
                out_idx[c] = i
                out_val[c] = x[i]
                c += 1
                eq_taken += key == t
    return c


@kernel
def _histogram_top(bits):
    """Histogram of the top 11 magnitude-key bits (four interleaved copies, summed)."""
    n = bits.shape[0]
    mask = np.uint32(0x7FFFFFFF)
    h4 = np.zeros((4, 2048), dtype=np.int64)
    n4 = n - (n & 3)
    i = 0
    while i < n4:
        h4[0, (bits[i] & mask) >> 20] += 1
        h4[1, (bits[i + 1] & mask) >> 20] += 1
        h4[2, (bits[i + 2] & mask) >> 20] += 1
        h4[3, (bits[i + 3] & mask) >> 20] += 1
        i += 4
    while i < n:
        h4[0, (bits[i] & mask) >> 20] += 1
        i += 1
    return h4[0] + h4[1] + h4[2] + h4[3]


@kernel
def _finish(cand_idx, cand_val, m, k, out_idx, out_val):
    """Exact top-k among m ascending candidates (indices, values) into the outputs."""
    ckeys = cand_val[:m].view(np.uint32)
    t, need = _kth_key(ckeys, k)
    c = 0
    eq_taken = 0
    mask = np.uint32(0x7FFFFFFF)
    for j in range(m):
        key = ckeys[j] & mask
        if key > t or (key == t and eq_taken < need):
            out_idx[c] = cand_idx[j]
            out_val[c] = cand_val[j]
            c += 1
            eq_taken += key == t
    return c


@kernel
def _topk_from_hist(x, hist, k, out_idx, out_val):
    """Top-k of x into outputs with k + 1 slots, given the top-bits histogram of x.

    Pass 2 collects every element whose bin is at or above the boundary bin (a
    superset of the answer whose size the histogram gives exactly), and the
    select finishes on those candidates.  When the boundary bin is huge (ties,
    zeros) the keys-only path is used instead.
    """
    n = x.shape[0]
    bits = x.view(np.uint32)
    b1, need = _find_bin(hist, k)
    m = (k - need) + hist[b1]
    if m <= 2 * k + 65536:
        cand_idx = np.empty(m + 1, np.int64)
        cand_val = np.empty(m + 1, np.float32)
        got = _collect(bits, x, np.uint32(b1) << 20, m + 1, cand_idx, cand_val, m > n // 16)
        if got == k:
            out_idx[:k] = cand_idx[:k]
            out_val[:k] = cand_val[:k]
            return k
        return _finish(cand_idx, cand_val, got, k, out_idx, out_val)
    t, need = _kth_key(bits, k)
    return _collect(bits, x, t, need, out_idx, out_val, k > n // 16)


@kernel
def _topk_into(x, k, out_idx, out_val):
    """Top-k of x: one histogram pass, then :func:`_topk_from_hist` (two passes in the common case)."""
    return _topk_from_hist(x, _histogram_top(x.view(np.uint32)), k, out_idx, out_val)


def magnitude_keys(x):
    """The uint32 magnitude keys of float32 ``x`` (a view of the bits; mask with 0x7fffffff)."""
    return as_f32(x).view(np.uint32)


def kth_largest_key(x, k):
    """``(T, need)``: the k-th largest magnitude key of ``x`` and the ties at T it takes."""
    x = as_f32(x)
    k = check_int(k, "k", 1, x.shape[0])
    t, need = _kth_key(x.view(np.uint32), k)
    return int(t), int(need)


def topk_exact(x, k):
    """The k entries of largest magnitude: ``(indices int64 ascending, values float32)``.

    ``x`` is a 1-D float16/32/64 array (float32 is not copied); ``0 <= k <= x.size``.
    Ties at the k-th magnitude go to the lowest indices.  NaN ranks above +-Inf,
    which rank above every finite value (module docstring).
    """
    x = as_f32(x)
    n = x.shape[0]
    k = check_int(k, "k", 0, n)
    if k == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    if k == n:
        return np.arange(n, dtype=np.int64), x.copy()
    idx = np.empty(k + 1, np.int64)
    val = np.empty(k + 1, np.float32)
    _topk_into(x, k, idx, val)
    return idx[:k], val[:k]
