"""Bucketed uniform quantization to 1, 2, 4 or 8 bits: max-min or abs-max scaling.

Each bucket of ``bucket_size`` entries (the last one may be partial) sends one
float32 ``scale``, one float32 ``offset`` and a ``bits``-bit code per entry;
decoding is, for both modes, ``value = offset + scale * code`` (one fused
multiply-add, rounded once).

With ``v = x`` (or ``v = x + residual``, see below):

* ``mode="maxmin"``: ``offset = min(v)``, ``scale = (max(v) - min(v)) / (2**bits - 1)``
  (in float64, as ``(max - min) * (1 / (2**bits - 1))``, rounded once to float32);
  codes ``0 .. 2**bits - 1``.
* ``mode="absmax"`` (bits 2, 4 or 8; ``h = 2**(bits-1) - 1``):
  ``scale = max|v| / h`` (in float64 as ``max|v| * (1 / h)``, rounded once),
  ``offset = -(scale * h)`` (float32); codes ``0 .. 2*h`` with
  ``h`` meaning zero (the top code ``2**bits - 1`` is unused).  One bit has no
  zero level, so ``bits=1`` is refused for ``absmax``.

The code is computed from ``t = (v - offset) * (1 / scale)`` (float32), i.e.
``round(v / scale) + h`` in abs-max mode:

* ``rounding="nearest"``: ``code = rint(t)`` (ties to even), clipped to the code range;
* ``rounding="stochastic"``: ``code = floor(t) + (u < t - floor(t))``, clipped, with
  ``u = uniform01(seed_key32(seed), i)`` for the global element index ``i``;
  ``E[offset + scale * code] = v`` (up to float32 rounding and the 24-bit resolution of ``u``).

Degenerate buckets: ``scale == 0`` (a constant bucket, or all zeros in abs-max
mode) gives all-zero codes, which decode exactly to ``offset``.  A bucket whose
``scale`` is so small that ``1 / scale`` overflows float32 computes ``t`` in
float64, the same way.

Non-finite values (the policy of :mod:`gcomp.kernels`): a bucket holding a NaN
or +-Inf gets NaN ``scale`` and ``offset`` and all-zero codes, so all of it
decodes to NaN.  So does a finite max-min bucket whose range does not fit
float32 (``max - min > FLT_MAX`` with ``bits=1``).

Error feedback, fused (``residual`` given): the encoder quantizes
``v = x + residual`` and, in the same pass, sets ``residual = v - decode(code)``;
in a non-finite bucket that is ``v - NaN = NaN`` (IEEE arithmetic, never
silently finite).  ``x`` itself is never modified.
"""

import numpy as np
from numba import prange

from . import config
from ._checks import as_f32, check_int, check_seed
from ._units import piece_count, piece_range, unit_count, unit_range
from .bitpack import (
    _bits_f32,
    _f32_bits,
    _fma_f32,
    _pack_tail,
    _pack_words,
    _uniform01_u32,
    _unpack_tail,
    _unpack_words,
    _word_views,
    check_bits,
    check_bucket_size,
    check_packed,
    check_residual,
    check_scales,
    decode_out,
    encode_out,
)
from .config import PAR_CHUNK, kernel
from .random import seed_key32

__all__ = ["MODES", "ROUNDINGS", "uniform_encode", "uniform_decode"]

#: the value buffer of an encode without error feedback: never written, so one empty array serves every call
_NO_VBUF = np.empty(0, np.float32)

MODES = ("maxmin", "absmax")
ROUNDINGS = ("nearest", "stochastic")

#: elements per chunk of a bucket: codes and values of a chunk stay in L1
_CHUNK = 2048

_U8 = np.dtype(np.uint8)
_F32 = np.dtype(np.float32)
_F32_INF = np.float32(np.inf)
_F32_NAN = np.float32(np.nan)


_KEY_MAX = np.int32(0x7F7FFFFF)  # order key of FLT_MAX
_KEY_MIN = np.int32(-0x7F800000)  # order key of -FLT_MAX (bits 0xFF7FFFFF)


@kernel
def _order_key(v):
    """int32 key ordered like the float32 ``v``: NaNs sort beyond +-Inf on the side of their sign bit."""
    b = _f32_bits(v)
    return np.int32(b ^ np.int32(np.int32(b >> np.int32(31)) & np.int32(0x7FFFFFFF)))


@kernel
def _minmax(xb, rb):
    """(min, max, finite) of ``v = xb (+ rb)``; ``finite`` is False iff some ``v`` is NaN or +-Inf.

    Reduces integer order keys of the bit patterns: without ``nnan`` (excluded
    by gcomp's fast-math flags so that NaN checks survive) LLVM will not
    vectorize a float min/max reduction, but it does vectorize an integer one.
    A NaN or +-Inf puts a key outside ``[key(-FLT_MAX), key(FLT_MAX)]``.
    """
    lo = np.int32(0x7FFFFFFF)
    hi = np.int32(-0x80000000)
    if rb is None:
        for i in range(xb.shape[0]):
            k = _order_key(xb[i])
            lo = k if k < lo else lo
            hi = k if k > hi else hi
    else:
        for i in range(xb.shape[0]):
            k = _order_key(xb[i] + rb[i])
            lo = k if k < lo else lo
            hi = k if k > hi else hi
    finite = lo >= _KEY_MIN and hi <= _KEY_MAX
    # the key map is an involution: map back to the float bit patterns
    lo = np.int32(lo ^ np.int32(np.int32(lo >> np.int32(31)) & np.int32(0x7FFFFFFF)))
    hi = np.int32(hi ^ np.int32(np.int32(hi >> np.int32(31)) & np.int32(0x7FFFFFFF)))
    return _bits_f32(lo), _bits_f32(hi), finite


@kernel
def _absmax(xb, rb):
    """(max |v|, finite) of ``v = xb (+ rb)``; ``finite`` is False iff some ``v`` is NaN or +-Inf.

    The max of ``bits & 0x7FFFFFFF`` (integers, so it vectorizes): NaN and Inf
    patterns exceed FLT_MAX's.
    """
    hi = np.int32(0)
    mask = np.int32(0x7FFFFFFF)
    if rb is None:
        for i in range(xb.shape[0]):
            k = np.int32(_f32_bits(xb[i]) & mask)
            hi = k if k > hi else hi
    else:
        for i in range(xb.shape[0]):
            k = np.int32(_f32_bits(xb[i] + rb[i]) & mask)
            hi = k if k > hi else hi
    return _bits_f32(hi), hi <= _KEY_MAX


@kernel
def _codes_nearest(xc, rc, off, inv, top, codes, vbuf):
    """``code = clip(rint((v - off) * inv), 0, top)`` for one chunk (``off, inv, top``: one float type)."""
    zero = top * np.float32(0.0)
    for i in range(xc.shape[0]):
        v = xc[i]
        if rc is not None:
            v = v + rc[i]
            vbuf[i] = v
        q = np.rint((v - off) * inv)
        q = q if q > zero else zero
        q = q if q < top else top
        codes[i] = np.uint8(q)


@kernel
def _codes_stochastic(xc, rc, c0, key, off, inv, top, codes, vbuf):
    """``code = clip(floor(t) + (u < frac(t)), 0, top)``, ``t = (v - off) * inv``, for one chunk."""
    zero = top * np.float32(0.0)
    one = zero + np.float32(1.0)
    c = c0
    for i in range(xc.shape[0]):
        v = xc[i]
        if rc is not None:
            v = v + rc[i]
            vbuf[i] = v
        t = (v - off) * inv
        fl = np.floor(t)
        u = _uniform01_u32(key, c)
        q = fl + (one if u < t - fl else zero)
        q = q if q > zero else zero
        q = q if q < top else top
        codes[i] = np.uint8(q)
        c = np.uint32(c + np.uint32(1))


@kernel(exact=True)
def _residual_update(vc, codes, rc, scale, offset):
    """``rc = vc - decode(code)`` for one chunk, the decoded value exactly as :func:`uniform_decode` makes it
    (:func:`_dequant`): strict IEEE around an explicit fused multiply-add."""
    for i in range(rc.shape[0]):
        rc[i] = vc[i] - _fma_f32(scale, np.float32(codes[i]), offset)


@kernel(exact=True)
def _dequant(codes, scale, offset, oc, accumulate):
    """``oc (+)= offset + scale * code``, the value rounded once (``fma``), then added (accumulate).

    The fused multiply-add is explicit, so the bits do not depend on what the
    compiler fuses where (earlier releases got the same ``fma`` from fast-math's
    ``contract``; the frozen wire fixtures pin those bits).
    """
    if accumulate:
        for i in range(oc.shape[0]):
            oc[i] += _fma_f32(scale, np.float32(codes[i]), offset)
    else:
        for i in range(oc.shape[0]):
            oc[i] = _fma_f32(scale, np.float32(codes[i]), offset)


@kernel(exact=True)
def _params(lo, hi, finite, bits, absmax):
    """``(scale, offset, inv, inv64, ok)`` of a bucket from its statistic, each rounded as written.

    ``lo, hi`` are (min, max) for max-min and (unused, max |v|) for abs-max.
    ``ok`` is False for a non-finite bucket (NaN scale and offset, zero codes).
    Strict IEEE, so fast-math cannot rewrite ``x * (1 / h)`` as ``x / h``.
    """
    h = (1 << (bits - 1)) - 1
    if absmax:
        scale = np.float32(np.float64(hi) * (1.0 / np.float64(h)))
        offset = -(scale * np.float32(h))
    else:
        top64 = np.float64((1 << bits) - 1)
        scale = np.float32((np.float64(hi) - np.float64(lo)) * (1.0 / top64))
        offset = lo
    inv, inv64 = _inverses(scale)
    return scale, offset, inv, inv64, finite and scale < _F32_INF


@kernel(exact=True)
def _inverses(scale):
    """``(1 / scale, 1 / float64(scale))`` (0 for a zero scale in float32), strict IEEE."""
    inv = np.float32(1.0) / scale if scale > np.float32(0.0) else np.float32(0.0)
    return inv, 1.0 / np.float64(scale)


@kernel
def _stats(x, residual, s, e, absmax):
    """``(lo, hi, finite)`` of ``v = x (+ residual)`` over ``s:e``: (min, max) or (0, max |v|)."""
    if absmax:
        if residual is None:
            amax, finite = _absmax(x[s:e], None)
        else:
            amax, finite = _absmax(x[s:e], residual[s:e])
        return np.float32(0.0), amax, finite
    if residual is None:
        return _minmax(x[s:e], None)
    return _minmax(x[s:e], residual[s:e])


@kernel
def _encode_range(x, residual, s, e, scale, offset, inv, inv64, ok, bits, absmax, stochastic, key, packed,
                  p16, p32, p64, cw, codes, vbuf):
    """Codes (and the residual update) of entries ``s:e`` (``s`` a multiple of 8) of one bucket."""
    if not ok:
        # NaN/Inf in the bucket (or a max-min range beyond float32): NaN scale and offset, zero codes.
        packed[(s * bits) >> 3 : (e * bits + 7) >> 3] = 0
        if residual is not None:
            residual[s:e] = _F32_NAN
        return
    h = (1 << (bits - 1)) - 1
    qtop = 2 * h if absmax else (1 << bits) - 1
    top = np.float32(qtop)
    top64 = np.float64(qtop)
    wide = not (inv < _F32_INF)
    off64 = np.float64(offset)
    for cs in range(s, e, _CHUNK):
        ce = min(cs + _CHUNK, e)
        m = ce - cs
        c0 = np.uint32(cs & 0xFFFFFFFF)
        # (each case calls its loop directly: a dispatching helper would not be inlined)
        if residual is None:
            if wide:
                if stochastic:
                    _codes_stochastic(x[cs:ce], None, c0, key, off64, inv64, top64, codes, vbuf)
                else:
                    _codes_nearest(x[cs:ce], None, off64, inv64, top64, codes, vbuf)
            elif stochastic:
                _codes_stochastic(x[cs:ce], None, c0, key, offset, inv, top, codes, vbuf)
            else:
                _codes_nearest(x[cs:ce], None, offset, inv, top, codes, vbuf)
        else:
            if wide:
                if stochastic:
                    _codes_stochastic(x[cs:ce], residual[cs:ce], c0, key, off64, inv64, top64, codes, vbuf)
                else:
                    _codes_nearest(x[cs:ce], residual[cs:ce], off64, inv64, top64, codes, vbuf)
            elif stochastic:
                _codes_stochastic(x[cs:ce], residual[cs:ce], c0, key, offset, inv, top, codes, vbuf)
            else:
                _codes_nearest(x[cs:ce], residual[cs:ce], offset, inv, top, codes, vbuf)
            _residual_update(vbuf[:m], codes, residual[cs:ce], scale, offset)
        nw = m >> 3
        off = (cs * bits) >> 3
        _pack_words(cw, nw, bits, packed, p16, p32, p64, off)
        if m & 7:
            _pack_tail(codes, 8 * nw, m & 7, bits, packed, off + nw * bits)


@kernel
def _store_params(scales, offsets, b, scale, offset, ok):
    scales[b] = scale if ok else _F32_NAN
    offsets[b] = offset if ok else _F32_NAN


@kernel
def _encode_buckets(x, residual, bits, bucket_size, absmax, stochastic, key, packed, scales, offsets, cw, vbuf,
                    b0, b1):
    """Buckets ``b0:b1`` (each at most :data:`PAR_CHUNK` entries): statistic, then codes, bucket by bucket."""
    n = x.shape[0]
    p16, p32, p64 = _word_views(packed)
    codes = cw.view(np.uint8)
    for b in range(b0, b1):
        s = b * bucket_size
        e = min(s + bucket_size, n)
        if absmax:
            if residual is None:
                hi, finite = _absmax(x[s:e], None)
            else:
                hi, finite = _absmax(x[s:e], residual[s:e])
            lo = np.float32(0.0)
        elif residual is None:
            lo, hi, finite = _minmax(x[s:e], None)
        else:
            lo, hi, finite = _minmax(x[s:e], residual[s:e])
        scale, offset, inv, inv64, ok = _params(lo, hi, finite, bits, absmax)
        _store_params(scales, offsets, b, scale, offset, ok)
        if not ok:
            # NaN/Inf in the bucket (or a max-min range beyond float32): NaN scale and offset, zero codes.
            packed[(s * bits) >> 3 : (e * bits + 7) >> 3] = 0
            if residual is not None:
                residual[s:e] = _F32_NAN
            continue
        h = (1 << (bits - 1)) - 1
        qtop = 2 * h if absmax else (1 << bits) - 1
        top = np.float32(qtop)
        top64 = np.float64(qtop)
        wide = not (inv < _F32_INF)
        off64 = np.float64(offset)
        for cs in range(s, e, _CHUNK):
            ce = min(cs + _CHUNK, e)
            m = ce - cs
            c0 = np.uint32(cs & 0xFFFFFFFF)
            # (each case calls its loop directly: a dispatching helper would not be inlined)
            if residual is None:
                if wide:
                    if stochastic:
                        _codes_stochastic(x[cs:ce], None, c0, key, off64, inv64, top64, codes, vbuf)
                    else:
                        _codes_nearest(x[cs:ce], None, off64, inv64, top64, codes, vbuf)
                elif stochastic:
                    _codes_stochastic(x[cs:ce], None, c0, key, offset, inv, top, codes, vbuf)
                else:
                    _codes_nearest(x[cs:ce], None, offset, inv, top, codes, vbuf)
            else:
                if wide:
                    if stochastic:
                        _codes_stochastic(x[cs:ce], residual[cs:ce], c0, key, off64, inv64, top64, codes, vbuf)
                    else:
                        _codes_nearest(x[cs:ce], residual[cs:ce], off64, inv64, top64, codes, vbuf)
                elif stochastic:
                    _codes_stochastic(x[cs:ce], residual[cs:ce], c0, key, offset, inv, top, codes, vbuf)
                else:
                    _codes_nearest(x[cs:ce], residual[cs:ce], offset, inv, top, codes, vbuf)
                _residual_update(vbuf[:m], codes, residual[cs:ce], scale, offset)
            nw = m >> 3
            off = (cs * bits) >> 3
            _pack_words(cw, nw, bits, packed, p16, p32, p64, off)
            if m & 7:
                _pack_tail(codes, 8 * nw, m & 7, bits, packed, off + nw * bits)


@kernel
def _piece_stats(x, residual, bucket_size, absmax, q, pieces, plo, phi, pfin):
    s, e = piece_range(x.shape[0], bucket_size, q, pieces)
    if s < e:
        plo[q], phi[q], pfin[q] = _stats(x, residual, s, e, absmax)
    else:  # an empty trailing piece of the last bucket: neutral
        plo[q], phi[q], pfin[q] = np.float32(np.inf), np.float32(-np.inf), True


@kernel
def _big_params(plo, phi, pfin, pieces, bits, absmax, scales, offsets):
    """Per-bucket parameters from the per-piece statistics (min/max: order-free)."""
    for b in range(scales.shape[0]):
        lo = plo[b * pieces]
        hi = phi[b * pieces]
        finite = pfin[b * pieces]
        for q in range(b * pieces + 1, (b + 1) * pieces):
            lo = min(lo, plo[q])
            hi = max(hi, phi[q])
            finite = finite and pfin[q]
        if absmax:
            lo = np.float32(0.0)
        scale, offset, _, _, ok = _params(lo, hi, finite, bits, absmax)
        _store_params(scales, offsets, b, scale, offset, ok)


@kernel
def _piece_encode(x, residual, bits, bucket_size, absmax, stochastic, key, packed, scales, offsets, q, pieces,
                  cw, vbuf):
    s, e = piece_range(x.shape[0], bucket_size, q, pieces)
    if s < e:
        b = q // pieces
        scale = scales[b]
        inv, inv64 = _inverses(scale)
        p16, p32, p64 = _word_views(packed)
        codes = cw.view(np.uint8)
        _encode_range(x, residual, s, e, scale, offsets[b], inv, inv64, scale == scale, bits, absmax, stochastic,
                      key, packed, p16, p32, p64, cw, codes, vbuf)


@kernel
def _uniform_encode(x, residual, bits, bucket_size, absmax, stochastic, seed, packed, scales, offsets, cw, vbuf):
    """Buckets of at most :data:`PAR_CHUNK` entries, one pass each (:func:`_encode_buckets`)."""
    key = seed_key32(np.uint64(seed))
    nb = scales.shape[0]
    _encode_buckets(x, residual, bits, bucket_size, absmax, stochastic, key, packed, scales, offsets, cw, vbuf,
                    0, nb)


@kernel
def _uniform_encode_big(x, residual, bits, bucket_size, absmax, stochastic, seed, packed, scales, offsets, cw, vbuf):
    """Buckets larger than :data:`PAR_CHUNK`: statistics per piece, combined in piece order, then codes per piece.

    A separate kernel so that the usual small buckets never compile this path.
    """
    key = seed_key32(np.uint64(seed))
    nb = scales.shape[0]
    pieces = piece_count(bucket_size)
    plo = np.empty(nb * pieces, np.float32)
    phi = np.empty(nb * pieces, np.float32)
    pfin = np.empty(nb * pieces, np.bool_)
    for q in range(nb * pieces):
        _piece_stats(x, residual, bucket_size, absmax, q, pieces, plo, phi, pfin)
    _big_params(plo, phi, pfin, pieces, bits, absmax, scales, offsets)
    for q in range(nb * pieces):
        _piece_encode(x, residual, bits, bucket_size, absmax, stochastic, key, packed, scales, offsets, q, pieces,
                      cw, vbuf)


@kernel(parallel=True)
def _uniform_encode_par(x, residual, bits, bucket_size, absmax, stochastic, seed, packed, scales, offsets, cw, vbuf):
    """:func:`_uniform_encode` on Numba's threads: the same work units (groups of whole buckets), the same bits."""
    key = seed_key32(np.uint64(seed))
    nb = scales.shape[0]
    g = PAR_CHUNK // bucket_size
    for u in prange((nb + g - 1) // g):
        _encode_buckets(x, residual, bits, bucket_size, absmax, stochastic, key, packed, scales, offsets,
                        np.empty(cw.shape[0], np.uint64), np.empty(vbuf.shape[0], np.float32),
                        u * g, min(nb, (u + 1) * g))


@kernel(parallel=True)
def _uniform_encode_big_par(x, residual, bits, bucket_size, absmax, stochastic, seed, packed, scales, offsets, cw, vbuf):
    """:func:`_uniform_encode_big` on Numba's threads: the same pieces, the same bits."""
    key = seed_key32(np.uint64(seed))
    nb = scales.shape[0]
    pieces = piece_count(bucket_size)
    plo = np.empty(nb * pieces, np.float32)
    phi = np.empty(nb * pieces, np.float32)
    pfin = np.empty(nb * pieces, np.bool_)
    for q in prange(nb * pieces):
        _piece_stats(x, residual, bucket_size, absmax, q, pieces, plo, phi, pfin)
    _big_params(plo, phi, pfin, pieces, bits, absmax, scales, offsets)
    for q in prange(nb * pieces):
        _piece_encode(x, residual, bits, bucket_size, absmax, stochastic, key, packed, scales, offsets, q, pieces,
                      np.empty(cw.shape[0], np.uint64), np.empty(vbuf.shape[0], np.float32))


_ENCODERS = (_uniform_encode, _uniform_encode_par)
_BIG_ENCODERS = (_uniform_encode_big, _uniform_encode_big_par)


@kernel
def _decode_unit(packed, scales, offsets, bits, bucket_size, n, out, accumulate, cw, u):
    """Work unit ``u`` of a decode (:func:`~gcomp.kernels._units.unit_range`)."""
    codes = cw.view(np.uint8)
    p16, p32, p64 = _word_views(packed)
    b0, b1, s0, e0 = unit_range(n, bucket_size, u)
    for b in range(b0, b1):
        s = max(b * bucket_size, s0)
        e = min(b * bucket_size + bucket_size, e0)
        scale = scales[b]
        offset = offsets[b]
        for cs in range(s, e, _CHUNK):
            ce = min(cs + _CHUNK, e)
            m = ce - cs
            nw = m >> 3
            off = (cs * bits) >> 3
            _unpack_words(packed, p16, p32, p64, off, nw, bits, cw)
            if m & 7:
                _unpack_tail(packed, off + nw * bits, m & 7, bits, codes, 8 * nw)
            _dequant(codes, scale, offset, out[cs:ce], accumulate)


@kernel
def _uniform_decode(packed, scales, offsets, bits, bucket_size, n, out, accumulate, cw):
    for u in range(unit_count(n, bucket_size)):
        _decode_unit(packed, scales, offsets, bits, bucket_size, n, out, accumulate, cw, u)


@kernel(parallel=True)
def _uniform_decode_par(packed, scales, offsets, bits, bucket_size, n, out, accumulate, cw):
    for u in prange(unit_count(n, bucket_size)):
        _decode_unit(packed, scales, offsets, bits, bucket_size, n, out, accumulate,
                     np.empty(cw.shape[0], np.uint64), u)


def _check_choice(value, name, choices):
    if not isinstance(value, str):
        raise TypeError(f"expected {name} to be a str in {choices}, found {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"expected {name} in {choices}, found {value!r}")
    return value


def uniform_encode(x, bits, bucket_size, mode="maxmin", rounding="nearest", seed=0, residual=None,
                   packed=None, scales=None, offsets=None):
    """Quantize ``x`` per bucket; returns ``(packed codes uint8, scales float32[nb], offsets float32[nb])``.

    ``bits`` in (1, 2, 4, 8) (``absmax`` needs 2, 4 or 8); ``bucket_size`` a
    positive multiple of 8; ``mode`` in ``MODES``; ``rounding`` in
    ``ROUNDINGS``; ``seed`` (used by stochastic rounding) in [0, 2**64).
    ``residual`` (optional, float32, length n, updated in place): fused error
    feedback, see the module docstring.  ``packed``, ``scales`` and ``offsets``
    (optional): the output arrays, of exactly their lengths (e.g. views of a
    packet's payload, aligned or not).
    """
    bits = check_bits(bits)
    bucket_size = check_bucket_size(bucket_size)
    mode = _check_choice(mode, "mode", MODES)
    rounding = _check_choice(rounding, "rounding", ROUNDINGS)
    if mode == "absmax" and bits == 1:
        raise ValueError("expected bits in (2, 4, 8) for mode='absmax' (one bit has no zero level), found 1")
    seed = check_seed(seed)
    x = as_f32(x)
    n = x.shape[0]
    nb = -(-n // bucket_size)
    packed = encode_out(packed, (n * bits + 7) // 8, _U8, "packed")
    scales = encode_out(scales, nb, _F32, "scales")
    offsets = encode_out(offsets, nb, _F32, "offsets")
    return _uniform_encode_trusted(x, bits, bucket_size, mode == "absmax", rounding == "stochastic", seed,
                                   check_residual(residual, n), packed, scales, offsets)


def _uniform_encode_trusted(x, bits, bucket_size, absmax, stochastic, seed, residual=None, packed=None, scales=None,
                            offsets=None):
    """:func:`uniform_encode` after its argument checks (its body), for a caller whose arguments are valid already
    (a compressor's parameters, checked when it was built; ``x`` a 1-D contiguous float32 array; ``seed`` an int
    in [0, 2**64); ``residual`` None or checked; the outputs all None, or all writeable arrays of exactly their
    lengths)."""
    n = x.shape[0]
    if packed is None:
        nb = -(-n // bucket_size)
        packed = np.empty((n * bits + 7) // 8, dtype=np.uint8)
        scales = np.empty(nb, dtype=np.float32)
        offsets = np.empty(nb, dtype=np.float32)
    chunk = min(_CHUNK, bucket_size, n)
    cw = np.empty((chunk + 7) // 8, dtype=np.uint64)
    vbuf = _NO_VBUF if residual is None else np.empty(chunk, dtype=np.float32)
    encoders = _ENCODERS if bucket_size <= PAR_CHUNK else _BIG_ENCODERS
    config.run(n, *encoders,
               x, residual, bits, bucket_size, absmax, stochastic, np.uint64(seed), packed, scales, offsets, cw, vbuf)
    return packed, scales, offsets


def uniform_decode(packed, scales, offsets, bits, bucket_size, n, out=None, accumulate=False):
    """Decode: ``value = offset + scale * code`` per bucket; returns float32[n].

    With ``accumulate=True`` the values are added into ``out`` (required).
    """
    bits = check_bits(bits)
    bucket_size = check_bucket_size(bucket_size)
    n = check_int(n, "n", 0)
    nb = -(-n // bucket_size)
    packed = check_packed(packed, (n * bits + 7) // 8)
    scales = check_scales(scales, nb, "scales")
    offsets = check_scales(offsets, nb, "offsets")
    out = decode_out(out, n, accumulate)
    cw = np.empty((min(_CHUNK, bucket_size, n) + 7) // 8, dtype=np.uint64)
    config.run(n, _uniform_decode, _uniform_decode_par,
               packed, scales, offsets, bits, bucket_size, n, out, bool(accumulate), cw)
    return out if out.shape[0] == n else out[:n]
