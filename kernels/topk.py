"""Exact top-k by magnitude in O(n): a sampled threshold, else radix select on float32 bit patterns.

``|x|``'s IEEE bit pattern (``bits & 0x7fffffff``, the *key*) orders
non-negative floats exactly as their values, with +Inf above every finite value
and NaN above +Inf.  :func:`topk_exact`

1. estimates a threshold key ``t`` a little below the k-th largest from a small
   stratified sample (runs of 16 consecutive entries, positions from a fixed
   seed; about ``100 n / k`` entries, between 4096 and n / 16), then collects
   every entry with key >= t in one pass (64-entry blocks: a vectorized compare
   makes a 64-bit mask whose set bits are walked with ``tzcnt``).  When that
   gives between k and ``2k + 1024`` candidates they hold the whole answer, and
   the select finishes among them (:func:`_finish`);
2. otherwise (a bad sample, massive ties) it falls back to the radix select:
   one histogram pass over the top 11 key bits, a pass that collects the
   entries at or above the boundary bin, and the select among those (or, when
   the boundary bin is huge, the exact k-th key and a collection that takes
   ties up to ``need``).

Step 1 runs from 1,024 entries on.  Key sets of at most 65,536 entries (short
inputs, samples, candidates) find the k-th key with 7- and 8-bit digits
(:func:`_kth_key_small`: 128/256-bin histograms, a few KiB of scratch) instead
of the 2048-bin ones, whose 68 KiB of zeroed scratch per call dominated the
cost of a small vector; a short input then takes one collecting pass (keys
above it, ties up to ``need``).  Every select is exact, so the result does not
depend on which one ran.

The sample only decides how fast the answer comes, never what it is.  Ties at
the threshold are broken by lowest index, so the result is deterministic;
indices come out ascending with their values.

Parallel kernels (see :mod:`gcomp.kernels.config`): the histogram is summed
from per-unit histograms (integers, order-free), and the collection makes the
64-bit masks and per-unit counts in one parallel pass, then each unit writes
its entries from the exclusive prefix sum of the counts in a second one, so
indices stay in order.  Results are the same for every thread count (they are
the exact top k).
"""

import math

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from . import config
from ._checks import as_f32, check_int
from ._units import chunk_count
from .config import PAR_CHUNK, kernel
from .index_coding import ctz64
from .random import rand32, seed_key32

__all__ = ["topk_exact", "kth_largest_key", "magnitude_keys"]

_MASK = np.uint32(0x7FFFFFFF)

#: entries per unit of the parallel histogram (a multiple of PAR_CHUNK: fewer partial histograms)
_HIST_UNIT = 4 * PAR_CHUNK

#: the seed of exact top-k's threshold sample (it changes only the speed, never the result)
_SAMPLE_SEED = np.uint64(0x70B4_5EED)


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
def _kth_from_hist(bits, hist, k):
    """:func:`_kth_key` given the top-bits histogram of ``bits`` (one more pass, gathering the boundary bin)."""
    n = bits.shape[0]
    mask = np.uint32(0x7FFFFFFF)
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
def _kth_key(bits, k):
    """(T, need): the k-th largest key, and how many elements equal to T belong to the top k.

    ``bits`` are uint32 patterns (masked here); requires 1 <= k <= bits.size.
    """
    if bits.shape[0] <= _SMALL_N:
        return _kth_key_small(bits, k)
    return _kth_from_hist(bits, _histogram_top(bits), k)


#: exact top-k tries the sampled threshold from this size on (below it: the small-input select, then one
#: collecting pass); the sample changes only the speed, never the result
_SAMPLED_MIN = 1024

#: inputs up to this size take the small-input select (:func:`_kth_key_small`: 2 KiB of scratch per digit
#: instead of the 2048-bin histograms' 68 KiB, zeroed per call); it gives the same (T, need)
_SMALL_N = 65536


@kernel
def _digit_hist4(keys, m, shift, width, h4, hist):
    """``hist[:width]`` = the histogram of digit ``(key >> shift) & (width - 1)`` over ``keys[:m]`` (four
    interleaved int32 copies in ``h4``, so repeated bins do not serialise on one counter; h4 left zeroed)."""
    dmask = np.uint32(width - 1)
    sh = np.uint32(shift)
    m4 = m - (m & 3)
    for i in range(0, m4, 4):
        h4[0, (keys[i] >> sh) & dmask] += 1
        h4[1, (keys[i + 1] >> sh) & dmask] += 1
        h4[2, (keys[i + 2] >> sh) & dmask] += 1
        h4[3, (keys[i + 3] >> sh) & dmask] += 1
    for i in range(m4, m):
        h4[0, (keys[i] >> sh) & dmask] += 1
    for b in range(width):
        hist[b] = np.int64(h4[0, b]) + np.int64(h4[1, b]) + np.int64(h4[2, b]) + np.int64(h4[3, b])
        h4[0, b] = 0
        h4[1, b] = 0
        h4[2, b] = 0
        h4[3, b] = 0


@kernel
def _kth_key_small(bits, k):
    """:func:`_kth_key` by radix select on a 7-bit, then three 8-bit digits of the key (128/256-bin histograms).

    The same (T, need) as the 11/11/9-bit select (both are exact); its scratch is
    small enough that a short input does not pay for zeroing 2048-bin histograms.
    """
    n = bits.shape[0]
    mask = np.uint32(0x7FFFFFFF)
    h4 = np.zeros((4, 256), np.int32)
    hist = np.empty(256, np.int64)
    cand = np.empty(n + 1, dtype=np.uint32)
    for i in range(n):
        cand[i] = bits[i] & mask
    c = n
    need = k
    t = np.uint32(0)
    for d in range(4):
        shift = 24 - 8 * d
        width = 128 if d == 0 else 256
        _digit_hist4(cand, c, shift, width, h4, hist)
        b, need = _find_bin(hist[:width], need)
        ub = np.uint32(b)
        t |= ub << np.uint32(shift)
        if d < 3:
            c2 = 0
            for j in range(c):
                key = cand[j]
                cand[c2] = key
                c2 += ((key >> np.uint32(shift)) & np.uint32(width - 1)) == ub
            c = c2
    return t, need


# ---------------------------------------------------------------------------
# collection: every entry with key >= t, in index order
# ---------------------------------------------------------------------------


@intrinsic
def _ge_mask64(typingctx, bits, i0, t):
    """uint64 whose bit j is set iff ``(bits[i0 + j] & 0x7fffffff) >= t``, j < 64 (no bounds check).

    Written in LLVM IR as one ``<64 x i32>`` compare bitcast to ``i64``: on
    AVX-512 that is four ``vpcmpud`` into mask registers and one ``kmovq``
    (AVX2: compares and ``vmovmskps``), several times fewer instructions than
    the shift-and-or loop LLVM makes of the same thing written in Python.
    """
    if not (isinstance(bits, types.Array) and bits.dtype == types.uint32 and bits.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i32 = ir.IntType(32)
        vec = ir.VectorType(i32, 64)
        i0 = context.cast(builder, args[1], signature.args[1], types.intp)
        t = context.cast(builder, args[2], signature.args[2], types.uint32)
        v = builder.load(builder.bitcast(builder.gep(ary.data, [i0]), vec.as_pointer()), align=4)
        v = builder.and_(v, ir.Constant(vec, [0x7FFFFFFF] * 64))
        tv = builder.insert_element(ir.Constant(vec, ir.Undefined), t, ir.Constant(i32, 0))
        tv = builder.shuffle_vector(tv, ir.Constant(vec, ir.Undefined), ir.Constant(vec, [0] * 64))
        return builder.bitcast(builder.icmp_unsigned(">=", v, tv), ir.IntType(64))

    return types.uint64(bits, i0, t), codegen


@kernel
def _mask64(bits, i0, t):
    """Bit j set iff entry ``i0 + j`` has key >= t (64 entries, ``i0 + 64 <= bits.size``)."""
    return _ge_mask64(bits, i0, np.uint32(t))


@kernel
def _mask_tail(bits, i0, e, t):
    """:func:`_mask64` for the ``e - i0 < 64`` entries of a vector's last block."""
    mask = np.uint32(0x7FFFFFFF)
    b = bits[i0:e]
    m = np.uint64(0)
    for j in range(b.shape[0]):
        m |= np.uint64((b[j] & mask) >= t) << np.uint64(j)
    return m


@kernel
def _take_bits(x, m, base, out_idx, out_val, c, cap):
    """Write the entries of the set bits of ``m`` (entry ``base + j`` for bit j) from slot c while below cap."""
    while m:
        j = ctz64(m)
        if c < cap:
            out_idx[c] = base + j
            out_val[c] = x[base + j]
        c += 1
        m &= m - np.uint64(1)
    return c


@kernel
def _collect_ge_range(bits, x, t, s, e, out_idx, out_val, pos, limit, stop):
    """One pass over ``s:e`` (``s`` a multiple of 64): the entries with key >= t, ascending, written from slot
    ``pos`` while below slot ``limit``.  Returns their count; with ``stop``, returns ``limit - pos + 1`` as
    soon as the count exceeds ``limit - pos`` (the caller only needs to know it does)."""
    c = pos
    nfull = s + ((e - s) & ~63)
    for i0 in range(s, nfull, 64):
        m = _mask64(bits, i0, t)
        if m:
            c = _take_bits(x, m, i0, out_idx, out_val, c, limit)
            if stop and c > limit:
                return limit - pos + 1
    if nfull < e:
        c = _take_bits(x, _mask_tail(bits, nfull, e, t), nfull, out_idx, out_val, c, limit)
    if stop and c > limit:
        return limit - pos + 1
    return c - pos


@kernel
def _unit_capacity(n, expected):
    """Scratch slots per unit for about ``expected`` entries in all: twice the even share, plus 64."""
    share = (expected * PAR_CHUNK + n - 1) // max(n, 1)
    return min(PAR_CHUNK, 2 * share + 64)


@kernel(parallel=True)
def _collect_units_prange(bits, x, t, unit_cap, sc_idx, sc_val, counts):
    """Pass 1: each unit collects into its own ``unit_cap`` scratch slots (counting past them: its true count)."""
    n = bits.shape[0]
    for u in prange(counts.shape[0]):
        counts[u] = _collect_ge_range(bits, x, t, u * PAR_CHUNK, min(n, (u + 1) * PAR_CHUNK), sc_idx, sc_val,
                                      u * unit_cap, (u + 1) * unit_cap, False)


@kernel
def _place_unit(bits, x, t, u, unit_cap, sc_idx, sc_val, count, pos, out_idx, out_val):
    """Pass 2 for unit ``u``: copy its scratch to slot ``pos``, or, if it overflowed, collect it again there."""
    if count <= unit_cap:
        out_idx[pos : pos + count] = sc_idx[u * unit_cap : u * unit_cap + count]
        out_val[pos : pos + count] = sc_val[u * unit_cap : u * unit_cap + count]
    else:
        n = bits.shape[0]
        _collect_ge_range(bits, x, t, u * PAR_CHUNK, min(n, (u + 1) * PAR_CHUNK), out_idx, out_val, pos,
                          pos + count, False)


@kernel(parallel=True)
def _place_prange(bits, x, t, unit_cap, sc_idx, sc_val, counts, offsets, out_idx, out_val):
    for u in prange(counts.shape[0]):
        _place_unit(bits, x, t, u, unit_cap, sc_idx, sc_val, counts[u], offsets[u], out_idx, out_val)


@kernel
def _exclusive_sum(counts):
    """``offsets[u]`` = entries before unit u; ``offsets[-1]`` the total."""
    offsets = np.empty(counts.shape[0] + 1, np.int64)
    acc = 0
    for u in range(counts.shape[0]):
        offsets[u] = acc
        acc += counts[u]
    offsets[counts.shape[0]] = acc
    return offsets


def _variants(factory):
    """``(serial, parallel)`` kernels made by ``factory(par)``.

    ``par`` is a compile-time constant in each (a closure variable: Numba prunes
    the other branch before typing), so the serial kernel never compiles, loads
    or starts anything parallel.  Numba caches both (the closure value is part
    of the cache key).
    """
    return kernel(factory(False)), kernel(factory(True))


def _make_collect_ge(par):
    def _collect_ge(bits, x, t, out_idx, out_val, cap):
        """Every entry with key >= t, indices ascending, into the outputs if there are at most ``cap``.

        Returns the count, or any value above ``cap`` when there are more (the
        outputs then hold nothing meaningful).  Parallel: each unit collects into
        its own scratch and counts, then copies to the prefix sum of the counts.
        """
        n = bits.shape[0]
        if par:
            # Pass 1: per-unit scratch (the entries are in L1 when found) and true counts; pass 2: copy each
            # unit's entries to the prefix sum of the counts (collecting an overflowed unit again there).
            nu = chunk_count(n)
            unit_cap = _unit_capacity(n, cap)
            sc_idx = np.empty(nu * unit_cap, np.int64)
            sc_val = np.empty(nu * unit_cap, np.float32)
            counts = np.empty(nu, np.int64)
            _collect_units_prange(bits, x, t, unit_cap, sc_idx, sc_val, counts)
            offsets = _exclusive_sum(counts)
            total = offsets[-1]
            if total <= cap:
                _place_prange(bits, x, t, unit_cap, sc_idx, sc_val, counts, offsets, out_idx, out_val)
            return total
        else:
            return _collect_ge_range(bits, x, t, 0, n, out_idx, out_val, 0, cap, True)

    return _collect_ge


_collect_ge_ser, _collect_ge_par = _variants(_make_collect_ge)


# ---------------------------------------------------------------------------
# collection with ties: keys > t, plus the first ``need`` keys == t
# ---------------------------------------------------------------------------


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
def _count_gt_eq(bits, t, s, e):
    """(#keys > t, #keys == t) over ``s:e``."""
    mask = np.uint32(0x7FFFFFFF)
    b = bits[s:e]
    gt = 0
    eq = 0
    for i in range(b.shape[0]):
        key = b[i] & mask
        gt += key > t
        eq += key == t
    return gt, eq


@kernel
def _collect_ties_range(bits, x, t, s, e, eq_budget, out_idx, out_val, pos):
    """Keys > t and the first ``eq_budget`` keys == t of ``s:e``, written from slot ``pos``."""
    mask = np.uint32(0x7FFFFFFF)
    c = pos
    eq_taken = 0
    for i in range(s, e):
        key = bits[i] & mask
        if key >= t:
            if key > t or eq_taken < eq_budget:
                out_idx[c] = i
                out_val[c] = x[i]
                c += 1
                eq_taken += key == t
    return c


@kernel(parallel=True)
def _count_gt_eq_prange(bits, t, gt, eq):
    n = bits.shape[0]
    for u in prange(gt.shape[0]):
        gt[u], eq[u] = _count_gt_eq(bits, t, u * PAR_CHUNK, min(n, (u + 1) * PAR_CHUNK))


@kernel(parallel=True)
def _collect_ties_prange(bits, x, t, budget, offsets, out_idx, out_val):
    n = bits.shape[0]
    for u in prange(budget.shape[0]):
        _collect_ties_range(bits, x, t, u * PAR_CHUNK, min(n, (u + 1) * PAR_CHUNK), budget[u], out_idx, out_val,
                            offsets[u])


@kernel
def _tie_budgets(bits, t, need):
    """Per unit: how many keys == t it takes (the first ``need`` in index order overall), and the exclusive
    prefix sum of what it writes (keys > t plus those).  Counted on Numba's threads."""
    nu = chunk_count(bits.shape[0])
    gt = np.empty(nu, np.int64)
    eq = np.empty(nu, np.int64)
    _count_gt_eq_prange(bits, t, gt, eq)
    budget = np.empty(nu, np.int64)
    taken = np.empty(nu, np.int64)
    eq_before = 0
    for u in range(nu):
        budget[u] = min(eq[u], max(0, need - eq_before))
        eq_before += eq[u]
        taken[u] = gt[u] + budget[u]
    return budget, _exclusive_sum(taken)


def _make_collect_ties(par):
    def _collect_ties(bits, x, t, need, out_idx, out_val):
        """:func:`_collect` (keys > t and the first ``need`` keys == t); parallel: per-unit counts, then writes."""
        n = bits.shape[0]
        if par:
            budget, offsets = _tie_budgets(bits, t, need)
            _collect_ties_prange(bits, x, t, budget, offsets, out_idx, out_val)
            return offsets[-1]
        else:
            return _collect(bits, x, t, need, out_idx, out_val, out_idx.shape[0] > n // 16)

    return _collect_ties


_collect_ties_ser, _collect_ties_par = _variants(_make_collect_ties)


# ---------------------------------------------------------------------------
# histogram of the top 11 key bits
# ---------------------------------------------------------------------------


@kernel
def _hist_range(bits, s, e, h4):
    """Add the top-11-bit key histogram of ``s:e`` into ``h4`` (4 x 2048 int32: four interleaved copies)."""
    mask = np.uint32(0x7FFFFFFF)
    b = bits[s:e]
    m = b.shape[0]
    m4 = m - (m & 3)
    for i in range(0, m4, 4):
        h4[0, (b[i] & mask) >> 20] += 1
        h4[1, (b[i + 1] & mask) >> 20] += 1
        h4[2, (b[i + 2] & mask) >> 20] += 1
        h4[3, (b[i + 3] & mask) >> 20] += 1
    for i in range(m4, m):
        h4[0, (b[i] & mask) >> 20] += 1


@kernel
def _fold(h4, hist):
    """hist += the sum of the four copies (int64), and zero h4."""
    for b in range(2048):
        hist[b] += np.int64(h4[0, b]) + np.int64(h4[1, b]) + np.int64(h4[2, b]) + np.int64(h4[3, b])
        h4[0, b] = 0
        h4[1, b] = 0
        h4[2, b] = 0
        h4[3, b] = 0


@kernel
def _histogram_top(bits):
    """Histogram (int64[2048]) of the top 11 magnitude-key bits, :data:`_HIST_UNIT` entries at a time."""
    n = bits.shape[0]
    hist = np.zeros(2048, np.int64)
    h4 = np.zeros((4, 2048), np.int32)
    for s in range(0, n, _HIST_UNIT):
        _hist_range(bits, s, min(n, s + _HIST_UNIT), h4)
        _fold(h4, hist)
    return hist


@kernel(parallel=True)
def _histogram_units_prange(bits, rows):
    n = bits.shape[0]
    for u in prange(rows.shape[0]):
        h4 = np.zeros((4, 2048), np.int32)
        _hist_range(bits, u * _HIST_UNIT, min(n, (u + 1) * _HIST_UNIT), h4)
        _fold(h4, rows[u])


@kernel
def _histogram_par(bits):
    """:func:`_histogram_top` from per-unit histograms made on Numba's threads (integers: the same counts)."""
    n = bits.shape[0]
    rows = np.zeros(((n + _HIST_UNIT - 1) // _HIST_UNIT, 2048), np.int64)
    _histogram_units_prange(bits, rows)
    hist = np.zeros(2048, np.int64)
    for u in range(rows.shape[0]):
        for b in range(2048):
            hist[b] += rows[u, b]
    return hist


# ---------------------------------------------------------------------------
# the select
# ---------------------------------------------------------------------------


@kernel
def _select_cands_range(ckeys, cand_idx, cand_val, t, s, e, budget, out_idx, out_val, pos):
    """Candidates ``s:e`` with key > t, and the first ``budget`` with key == t, written from slot ``pos``."""
    mask = np.uint32(0x7FFFFFFF)
    kb = ckeys[s:e]
    ib = cand_idx[s:e]
    vb = cand_val[s:e]
    c = pos
    eq_taken = 0
    for j in range(kb.shape[0]):
        key = kb[j] & mask
        if key > t or (key == t and eq_taken < budget):
            out_idx[c] = ib[j]
            out_val[c] = vb[j]
            c += 1
            eq_taken += key == t
    return c


@kernel(parallel=True)
def _select_cands_prange(ckeys, cand_idx, cand_val, t, budget, offsets, out_idx, out_val):
    m = ckeys.shape[0]
    for u in prange(budget.shape[0]):
        _select_cands_range(ckeys, cand_idx, cand_val, t, u * PAR_CHUNK, min(m, (u + 1) * PAR_CHUNK), budget[u],
                            out_idx, out_val, offsets[u])


@kernel
def _finish_par(cand_idx, cand_val, m, k, out_idx, out_val):
    """:func:`_finish` with the histogram, the counts and the final writes on Numba's threads."""
    ckeys = cand_val[:m].view(np.uint32)
    t, need = _kth_from_hist(ckeys, _histogram_par(ckeys), k)
    budget, offsets = _tie_budgets(ckeys, t, need)
    _select_cands_prange(ckeys, cand_idx, cand_val, t, budget, offsets, out_idx, out_val)
    return offsets[-1]


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


def _make_topk_from_hist(par):
    def _topk_from_hist(x, hist, k, out_idx, out_val):
        """Top-k of x into outputs with k + 1 slots, given the top-bits histogram of x.

        Collects every element whose bin is at or above the boundary bin (a
        superset of the answer whose size the histogram gives exactly), and the
        select finishes on those candidates.  When the boundary bin is huge (ties,
        zeros) the exact k-th key is found first and the collection takes ties up
        to ``need``.
        """
        bits = x.view(np.uint32)
        b1, need = _find_bin(hist, k)
        m = (k - need) + hist[b1]
        if m <= 2 * k + 65536:
            cand_idx = np.empty(m + 1, np.int64)
            cand_val = np.empty(m + 1, np.float32)
            if par:
                got = _collect_ge_par(bits, x, np.uint32(b1) << 20, cand_idx, cand_val, m)
            else:
                got = _collect_ge_ser(bits, x, np.uint32(b1) << 20, cand_idx, cand_val, m)
            if got == k:
                out_idx[:k] = cand_idx[:k]
                out_val[:k] = cand_val[:k]
                return k
            if par:
                return _finish_par(cand_idx, cand_val, got, k, out_idx, out_val)
            else:
                return _finish(cand_idx, cand_val, got, k, out_idx, out_val)
        t, need = _kth_from_hist(bits, hist, k)
        if par:
            return _collect_ties_par(bits, x, t, need, out_idx, out_val)
        else:
            return _collect_ties_ser(bits, x, t, need, out_idx, out_val)

    return _topk_from_hist


_topk_from_hist_ser, _topk_from_hist_par = _variants(_make_topk_from_hist)


@kernel
def _sample_keys(bits, m, key):
    """Keys of a stratified sample of about ``m`` entries: one run of 16 consecutive entries per stratum."""
    n = bits.shape[0]
    mask = np.uint32(0x7FFFFFFF)
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
    return sample[:c]


@kernel(parallel=True)
def _sample_runs_prange(bits, runs, key, sample):
    """:func:`_sample_keys` when every stratum is at least 16 entries wide (each run is whole): runs in parallel."""
    n = bits.shape[0]
    mask = np.uint32(0x7FFFFFFF)
    stride = n / runs
    for g in prange((runs + 1023) // 1024):
        for s in range(g * 1024, min(runs, (g + 1) * 1024)):
            lo = np.int64(s * stride)
            hi = np.int64((s + 1) * stride)
            if hi > n:
                hi = n
            width = hi - lo - 15
            if width < 1:
                width = 1
            j = lo + np.int64((np.uint64(rand32(key, s)) * np.uint64(width)) >> np.uint64(32))
            for q in range(16):
                sample[s * 16 + q] = bits[j + q] & mask


@kernel
def _sample_keys_par(bits, m, key):
    """:func:`_sample_keys`, the same keys, the runs fetched on Numba's threads when all are whole."""
    n = bits.shape[0]
    runs = (m + 15) // 16
    if n // runs < 17:
        return _sample_keys(bits, m, key)
    sample = np.empty(runs * 16, np.uint32)
    _sample_runs_prange(bits, runs, key, sample)
    return sample


@kernel
def _margin_rank(m, k, n):
    """The sample rank whose key is the threshold: ``mu + 3 sqrt(mu) + 1`` with ``mu = m k / n`` (at most m)."""
    mu = m * (k / n)
    return min(np.int64(mu + 3.0 * math.sqrt(mu) + 1.0), m)


@kernel
def _exact_sample_size(n, k):
    """Sample size for exact top-k's threshold: about 100 n / k (the threshold sits near 100 samples), 4096 to n/16."""
    return min(max(4096, np.int64(100.0 * (n / k))), max(n // 16, 1))


def _make_topk_into(par):
    def _topk_into(x, k, out_idx, out_val):
        """Top-k of x (outputs with k + 1 slots): a sampled threshold when it works, else the radix select."""
        n = x.shape[0]
        bits = x.view(np.uint32)
        if n >= _SAMPLED_MIN:
            sample = _sample_keys(bits, _exact_sample_size(n, k), seed_key32(_SAMPLE_SEED))
            t, _ = _kth_key(sample, _margin_rank(sample.shape[0], k, n))
            cap = 2 * k + 1024
            cand_idx = np.empty(cap, np.int64)
            cand_val = np.empty(cap, np.float32)
            if par:
                got = _collect_ge_par(bits, x, t, cand_idx, cand_val, cap)
            else:
                got = _collect_ge_ser(bits, x, t, cand_idx, cand_val, cap)
            if k <= got <= cap:
                if par:
                    return _finish_par(cand_idx, cand_val, got, k, out_idx, out_val)
                else:
                    return _finish(cand_idx, cand_val, got, k, out_idx, out_val)
        if par:
            return _topk_from_hist_par(x, _histogram_par(bits), k, out_idx, out_val)
        elif n <= _SMALL_N:
            # short inputs: the exact k-th key with little scratch, then one collecting pass (same result)
            t, need = _kth_key_small(bits, k)
            return _collect_ties_ser(bits, x, t, need, out_idx, out_val)
        else:
            return _topk_from_hist_ser(x, _histogram_top(bits), k, out_idx, out_val)

    return _topk_into


_topk_into_ser, _topk_into_par = _variants(_make_topk_into)


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
    return _topk_exact_trusted(x, k)


def _topk_exact_trusted(x, k):
    """:func:`topk_exact` for a 1-D contiguous float32 ``x`` and an int ``0 < k < x.size``: no checks."""
    idx = np.empty(k + 1, np.int64)
    val = np.empty(k + 1, np.float32)
    config.run(x.shape[0], _topk_into_ser, _topk_into_par, x, k, idx, val, at_least=config.PARALLEL_MIN_SELECTION)
    return idx[:k], val[:k]
