"""Random-k: a uniformly random k-subset of ``range(n)`` from an explicit seed.

The subset is drawn with Robert Floyd's algorithm::

    S = {}
    for j in n-k, ..., n-1:
        t = uniform integer in [0, j]
        S += {j} if t in S else {t}

which makes exactly k draws and gives every k-subset probability
``1 / C(n, k)``.  The draws come from a SplitMix64 counter started at
``np.uint64(seed)``: bounds below 2**32 use :func:`gcomp.kernels.random.bounded`
(Lemire's method on the high 32 bits of ``splitmix64(state + 1)``); larger
bounds (n > 2**32) use the same method on all 64 bits, with a 64x64->128-bit
multiply built from 32-bit halves.  Everything is integer arithmetic, so the
subset is a pure function of ``(n, k, seed)``: identical on every rank and
every machine.  Global RNGs are never touched.

The set ``S`` lives in a bitmap of n bits, which also yields the ascending
order for free (the bitmap decoder of :mod:`gcomp.kernels.index_coding`:
scan 64-bit words, ``tzcnt`` each set bit).  When
that bitmap would be large and much bigger than the sample (n up to 2**40
would need 128 GiB), ``S`` is an open-addressing hash set of ~2k slots and
the k indices are sorted at the end.  Floyd's draws do not depend on how
``S`` is stored, so both paths return the same indices.
"""

import numpy as np

from . import random as _random
from ._checks import as_f32, check_int, check_seed, out_array
from .config import kernel
from .index_coding import _bitmap_decode

__all__ = ["randomk_indices", "randomk_select"]

#: largest n accepted (the bitmap / hash paths and the draws are exact well beyond)
MAX_N = 1 << 40

#: bitmaps up to this many bytes are always used (cheap to clear and scan)
_BITMAP_ALWAYS_BYTES = 1 << 24

_GOLDEN64 = 0x9E3779B97F4A7C15

# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------


@kernel
def _mul64x64(a, b):
    """Full 128-bit product of two uint64: ``(hi, lo)``."""
    mask = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    a_lo = a & mask
    a_hi = a >> s32
    b_lo = b & mask
    b_hi = b >> s32
    p0 = a_lo * b_lo
    p1 = a_lo * b_hi
    p2 = a_hi * b_lo
    p3 = a_hi * b_hi
    mid = (p0 >> s32) + (p1 & mask) + (p2 & mask)
    hi = p3 + (p1 >> s32) + (p2 >> s32) + (mid >> s32)
    lo = a * b
    return hi, lo


@kernel
def _bounded64(state, bound):
    """Unbiased integer in [0, bound) for 2**32 <= bound < 2**63 (Lemire, 64-bit).

    Same state protocol as :func:`random.bounded`: each draw is
    ``splitmix64(state + 1)``.  Returns ``(value, new_state)``.
    """
    b = np.uint64(bound)
    state = state + np.uint64(1)
    hi, lo = _mul64x64(_random.splitmix64(state), b)
    if lo < b:
        t = (np.uint64(0) - b) % b
        while lo < t:
            state = state + np.uint64(1)
            hi, lo = _mul64x64(_random.splitmix64(state), b)
    return np.int64(hi), state


_BOUND32 = 1 << 32


@kernel
def _floyd_bitmap_steps(j0, j1, state, bits, use64):
    """Floyd steps ``j`` in ``[j0, j1)`` on the bitmap set; returns the new state."""
    for j in range(j0, j1):
        if use64:
            t, state = _bounded64(state, j + 1)
        else:
            t, state = _random.bounded(state, j + 1)
        byte = t >> 3
        mask = np.uint8(1 << (t & 7))
        if bits[byte] & mask:
            byte = j >> 3
            mask = np.uint8(1 << (j & 7))
        bits[byte] |= mask
    return state


@kernel
def _randomk_bitmap(n, k, seed, bits, out):
    """Floyd's algorithm with ``bits`` (>= ceil(n/8) bytes, cleared here) as the set.

    Writes the k ascending indices to ``out`` (``out.shape[0] == k``);
    returns the number of set bits found (k).
    """
    nb = (n + 7) >> 3
    for i in range(nb):
        bits[i] = np.uint8(0)
    state = np.uint64(seed)
    # the bound j + 1 stays below 2**32 while j < 2**32 - 1: 32-bit draws, then 64-bit ones
    split = min(max(n - k, _BOUND32 - 1), n)
    state = _floyd_bitmap_steps(n - k, split, state, bits, False)
    state = _floyd_bitmap_steps(split, n, state, bits, True)
    return _bitmap_decode(bits[:nb], out)


@kernel
def _hash_insert(table, log2size, key):
    """Insert non-negative ``key`` into the linear-probing set ``table``; True when already there."""
    size_mask = np.uint64(table.shape[0] - 1)
    stored = np.uint64(key) + np.uint64(1)  # 0 marks an empty slot
    h = (np.uint64(key) * np.uint64(_GOLDEN64)) >> np.uint64(64 - log2size)
    while True:
        cur = table[h]
        if cur == np.uint64(0):
            table[h] = stored
            return False
        if cur == stored:
            return True
        h = (h + np.uint64(1)) & size_mask


@kernel
def _floyd_hash_steps(j0, j1, state, table, log2size, out, c, use64):
    """Floyd steps ``j`` in ``[j0, j1)`` on the hash set, appending to ``out[c:]``; returns the new state."""
    for j in range(j0, j1):
        if use64:
            t, state = _bounded64(state, j + 1)
        else:
            t, state = _random.bounded(state, j + 1)
        if _hash_insert(table, log2size, t):
            t = j
            _hash_insert(table, log2size, t)
        out[c] = t
        c += 1
    return state


@kernel
def _randomk_hash(n, k, seed, table, log2size, out):
    """Floyd's algorithm with an open-addressing set of ``2**log2size`` > k slots (cleared here).

    Writes the k indices to ``out`` (``out.shape[0] == k``) and sorts them; returns k.
    """
    for i in range(table.shape[0]):
        table[i] = np.uint64(0)
    state = np.uint64(seed)
    split = min(max(n - k, _BOUND32 - 1), n)
    state = _floyd_hash_steps(n - k, split, state, table, log2size, out, 0, False)
    state = _floyd_hash_steps(split, n, state, table, log2size, out, split - (n - k), True)
    out.sort()
    return k


@kernel
def _gather(x, indices, out):
    for t in range(indices.shape[0]):
        out[t] = x[indices[t]]


# ---------------------------------------------------------------------------
# wrappers
# ---------------------------------------------------------------------------


def _hash_log2size(k):
    return max(4, (2 * k - 1).bit_length())


def _use_bitmap(n, k):
    bitmap_bytes = (n + 7) >> 3
    hash_bytes = 8 << _hash_log2size(k)
    return bitmap_bytes <= max(_BITMAP_ALWAYS_BYTES, 4 * hash_bytes)


def _randomk(n, k, seed, out, method):
    if method == "bitmap":
        bits = np.empty((n + 7) >> 3, dtype=np.uint8)
        written = _randomk_bitmap(n, k, seed, bits, out[:k])
    else:
        log2size = _hash_log2size(k)
        table = np.empty(1 << log2size, dtype=np.uint64)
        written = _randomk_hash(n, k, seed, table, log2size, out[:k])
    assert written == k
    return out[:k]


def randomk_indices(n, k, seed, out=None):
    """``k`` ascending unique int64 indices, a uniformly random k-subset of ``range(n)``.

    A pure function of ``(n, k, seed)`` (identical on every machine).
    ``0 <= k <= n <= 2**40``; ``seed`` in ``[0, 2**64)``.  Returns a view
    of ``out`` when given (it may be larger than k).
    """
    n = check_int(n, "n", 0, MAX_N)
    k = check_int(k, "k", 0)
    if k > n:
        raise ValueError(f"expected k <= n = {n}, found k = {k}")
    seed = np.uint64(check_seed(seed))
    out = out_array(out, k, np.int64)
    return _randomk(n, k, seed, out, "bitmap" if _use_bitmap(n, k) else "hash")


def _randomk_indices_trusted(n, k, seed):
    """:func:`randomk_indices` without its argument checks, for a caller whose ``0 <= k <= n <= 2**40`` and
    int ``seed`` in [0, 2**64) are valid already (a compressor: k from its ratio, seed from ``seed_for``):
    the same kernels with the same arguments, so the same indices."""
    return _randomk(n, k, np.uint64(seed), np.empty(k, np.int64), "bitmap" if _use_bitmap(n, k) else "hash")


def randomk_select(x, k, seed):
    """``(indices, values)``: :func:`randomk_indices` ``(x.size, k, seed)`` and ``x`` at them.

    Values are float32 (float16/float64 input converted), copied as they are,
    NaN and +-Inf included.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"expected x to be a numpy array, found {type(x).__name__}")
    if x.ndim != 1:
        raise ValueError(f"expected x to be 1-D (kernels work on flat vectors), found shape {x.shape}; pass x.ravel()")
    if x.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"expected x of dtype float16, float32 or float64, found {x.dtype}")
    idx = randomk_indices(x.shape[0], k, seed)
    if x.dtype == np.float32:
        values = np.empty(k, dtype=np.float32)
        _gather(as_f32(x), idx, values)
    else:
        # convert only the k selected values
        values = x[idx].astype(np.float32)
    return idx, values
