"""Scaled sign (EF-signSGD, Karimireddy et al., 2019): 1 bit per entry plus one scale per bucket.

For each bucket of ``bucket_size`` entries (the last one may be partial) with
``v = x`` (or ``v = x + residual``, see below)::

    bit   = 1 if v >= 0 else 0            (so -0.0 and +0.0 give 1)
    scale = mean(|v|) over the bucket     (summed in float64, rounded to float32)

Within a bucket of at most 65536 entries the float64 sum may be formed in any
order (fast-math reassociation; the same order on every run and thread
count); a larger bucket is summed per 65536-entry piece and the pieces added
in order.  So a scale is within one float32 ulp of the exactly rounded mean,
and equal to it unless the float64 sum lands next to a float32 rounding
boundary.

and decoding is ``value = +scale`` for bit 1, ``-scale`` for bit 0.  Bits are
packed LSB-first, one bucket starting on each byte boundary.  Deterministic
(no seed) and biased; use it with error feedback.

Non-finite values (the policy of :mod:`gcomp.kernels`): a bucket holding a NaN
or +-Inf gets ``scale = NaN`` and all-zero bits, so all of it decodes to NaN.

Error feedback, fused (``residual`` given): the encoder signs
``v = x + residual`` and, in the same pass, sets ``residual = v - decode(bit)``;
in a non-finite bucket that is ``v - NaN = NaN`` (IEEE arithmetic, never
silently finite).  ``x`` itself is never modified.
"""

import numpy as np
from numba import prange

from . import config
from ._checks import as_f32, check_int
from ._units import piece_count, piece_range, sum_in_order, unit_count, unit_range
from .bitpack import (
    _pack_tail,
    _pack_words,
    _unpack_tail,
    _unpack_words,
    _word_views,
    check_bucket_size,
    check_packed,
    check_residual,
    check_scales,
    decode_out,
    encode_out,
)
from .config import PAR_CHUNK, kernel

__all__ = ["sign_encode", "sign_decode"]

#: the value buffer of an encode without error feedback: never written, so one empty array serves every call
_NO_VBUF = np.empty(0, np.float32)
_U8 = np.dtype(np.uint8)
_F32 = np.dtype(np.float32)

#: elements per chunk of a bucket: bits and values of a chunk stay in L1
_CHUNK = 2048

_F32_NAN = np.float32(np.nan)


@kernel
def _abssum(xb, rb):
    """Sum of ``|xb (+ rb)|`` in float64 (NaN or Inf iff some entry is)."""
    acc = 0.0
    if rb is None:
        for i in range(xb.shape[0]):
            acc += np.float64(abs(xb[i]))
    else:
        for i in range(xb.shape[0]):
            acc += np.float64(abs(xb[i] + rb[i]))
    return acc


@kernel
def _bits(xc, rc, codes, vbuf):
    zero = np.float32(0.0)
    for i in range(xc.shape[0]):
        v = xc[i]
        if rc is not None:
            v = v + rc[i]
            vbuf[i] = v
        codes[i] = np.uint8(v >= zero)


@kernel(exact=True)
def _residual_update(vc, codes, rc, scale):
    """``rc = vc - decode(bit)`` for one chunk (the decoder's formula)."""
    neg = -scale
    for i in range(vc.shape[0]):
        rc[i] = vc[i] - (scale if codes[i] != 0 else neg)


@kernel(exact=True)
def _dequant(codes, scale, oc, accumulate):
    neg = -scale
    if accumulate:
        for i in range(oc.shape[0]):
            oc[i] += scale if codes[i] != 0 else neg
    else:
        for i in range(oc.shape[0]):
            oc[i] = scale if codes[i] != 0 else neg


@kernel(exact=True)
def _mean(acc, count):
    """The float32 scale from the float64 sum of ``|v|`` over ``count`` entries (strict IEEE)."""
    return np.float32(acc / count)


@kernel
def _encode_range(x, residual, s, e, scale, packed, p16, p32, p64, cw, codes, vbuf):
    """Bits (and the residual update) of entries ``s:e`` (``s`` a multiple of 8) of one bucket."""
    if not np.isfinite(scale):
        packed[s >> 3 : (e + 7) >> 3] = 0
        if residual is not None:
            residual[s:e] = _F32_NAN
        return
    for cs in range(s, e, _CHUNK):
        ce = min(cs + _CHUNK, e)
        m = ce - cs
        if residual is None:
            _bits(x[cs:ce], None, codes, vbuf)
        else:
            _bits(x[cs:ce], residual[cs:ce], codes, vbuf)
            _residual_update(vbuf[:m], codes, residual[cs:ce], scale)
        nw = m >> 3
        off = cs >> 3
        _pack_words(cw, nw, 1, packed, p16, p32, p64, off)
        if m & 7:
            _pack_tail(codes, 8 * nw, m & 7, 1, packed, off + nw * 1)


@kernel
def _encode_buckets(x, residual, bucket_size, packed, scales, cw, vbuf, b0, b1):
    """Buckets ``b0:b1`` (each at most :data:`PAR_CHUNK` entries): mean ``|v|``, then bits, bucket by bucket."""
    n = x.shape[0]
    p16, p32, p64 = _word_views(packed)
    codes = cw.view(np.uint8)
    for b in range(b0, b1):
        s = b * bucket_size
        e = min(s + bucket_size, n)
        if residual is None:
            acc = _abssum(x[s:e], None)
        else:
            acc = _abssum(x[s:e], residual[s:e])
        if not np.isfinite(acc):
            scales[b] = _F32_NAN
            packed[s >> 3 : (e + 7) >> 3] = 0
            if residual is not None:
                residual[s:e] = _F32_NAN
            continue
        scale = _mean(acc, e - s)
        scales[b] = scale
        for cs in range(s, e, _CHUNK):
            ce = min(cs + _CHUNK, e)
            m = ce - cs
            if residual is None:
                _bits(x[cs:ce], None, codes, vbuf)
            else:
                _bits(x[cs:ce], residual[cs:ce], codes, vbuf)
                _residual_update(vbuf[:m], codes, residual[cs:ce], scale)
            nw = m >> 3
            off = cs >> 3
            _pack_words(cw, nw, 1, packed, p16, p32, p64, off)
            if m & 7:
                _pack_tail(codes, 8 * nw, m & 7, 1, packed, off + nw * 1)


@kernel
def _piece_abssum(x, residual, bucket_size, q, pieces):
    s, e = piece_range(x.shape[0], bucket_size, q, pieces)
    if s >= e:
        return 0.0
    if residual is None:
        return _abssum(x[s:e], None)
    return _abssum(x[s:e], residual[s:e])


@kernel
def _big_scales(parts, pieces, bucket_size, n, scales):
    for b in range(scales.shape[0]):
        acc = sum_in_order(parts, b * pieces, (b + 1) * pieces)
        count = min(bucket_size, n - b * bucket_size)
        scales[b] = _mean(acc, count) if np.isfinite(acc) else _F32_NAN


@kernel
def _piece_encode(x, residual, bucket_size, packed, scales, q, pieces, cw, vbuf):
    s, e = piece_range(x.shape[0], bucket_size, q, pieces)
    if s < e:
        p16, p32, p64 = _word_views(packed)
        codes = cw.view(np.uint8)
        _encode_range(x, residual, s, e, scales[q // pieces], packed, p16, p32, p64, cw, codes, vbuf)


@kernel
def _sign_encode(x, residual, bucket_size, packed, scales, cw, vbuf):
    """Buckets of at most :data:`PAR_CHUNK` entries, one pass each (:func:`_encode_buckets`)."""
    _encode_buckets(x, residual, bucket_size, packed, scales, cw, vbuf, 0, scales.shape[0])


@kernel
def _sign_encode_big(x, residual, bucket_size, packed, scales, cw, vbuf):
    """Buckets larger than :data:`PAR_CHUNK`: statistics per piece, combined in piece order, then codes per piece.

    A separate kernel so that the usual small buckets never compile this path.
    """
    nb = scales.shape[0]
    pieces = piece_count(bucket_size)
    parts = np.empty(nb * pieces, np.float64)
    for q in range(nb * pieces):
        parts[q] = _piece_abssum(x, residual, bucket_size, q, pieces)
    _big_scales(parts, pieces, bucket_size, x.shape[0], scales)
    for q in range(nb * pieces):
        _piece_encode(x, residual, bucket_size, packed, scales, q, pieces, cw, vbuf)


@kernel(parallel=True)
def _sign_encode_par(x, residual, bucket_size, packed, scales, cw, vbuf):
    """:func:`_sign_encode` on Numba's threads: the same work units (groups of whole buckets), the same bits."""
    nb = scales.shape[0]
    g = PAR_CHUNK // bucket_size
    for u in prange((nb + g - 1) // g):
        _encode_buckets(x, residual, bucket_size, packed, scales, np.empty(cw.shape[0], np.uint64),
                        np.empty(vbuf.shape[0], np.float32), u * g, min(nb, (u + 1) * g))


@kernel(parallel=True)
def _sign_encode_big_par(x, residual, bucket_size, packed, scales, cw, vbuf):
    """:func:`_sign_encode_big` on Numba's threads: the same pieces, the same bits."""
    nb = scales.shape[0]
    pieces = piece_count(bucket_size)
    parts = np.empty(nb * pieces, np.float64)
    for q in prange(nb * pieces):
        parts[q] = _piece_abssum(x, residual, bucket_size, q, pieces)
    _big_scales(parts, pieces, bucket_size, x.shape[0], scales)
    for q in prange(nb * pieces):
        _piece_encode(x, residual, bucket_size, packed, scales, q, pieces, np.empty(cw.shape[0], np.uint64),
                      np.empty(vbuf.shape[0], np.float32))


_ENCODERS = (_sign_encode, _sign_encode_par)
_BIG_ENCODERS = (_sign_encode_big, _sign_encode_big_par)


@kernel
def _decode_unit(packed, scales, bucket_size, n, out, accumulate, cw, u):
    codes = cw.view(np.uint8)
    p16, p32, p64 = _word_views(packed)
    b0, b1, s0, e0 = unit_range(n, bucket_size, u)
    for b in range(b0, b1):
        s = max(b * bucket_size, s0)
        e = min(b * bucket_size + bucket_size, e0)
        scale = scales[b]
        for cs in range(s, e, _CHUNK):
            ce = min(cs + _CHUNK, e)
            m = ce - cs
            nw = m >> 3
            off = cs >> 3
            _unpack_words(packed, p16, p32, p64, off, nw, 1, cw)
            if m & 7:
                _unpack_tail(packed, off + nw * 1, m & 7, 1, codes, 8 * nw)
            _dequant(codes, scale, out[cs:ce], accumulate)


@kernel
def _sign_decode(packed, scales, bucket_size, n, out, accumulate, cw):
    for u in range(unit_count(n, bucket_size)):
        _decode_unit(packed, scales, bucket_size, n, out, accumulate, cw, u)


@kernel(parallel=True)
def _sign_decode_par(packed, scales, bucket_size, n, out, accumulate, cw):
    for u in prange(unit_count(n, bucket_size)):
        _decode_unit(packed, scales, bucket_size, n, out, accumulate, np.empty(cw.shape[0], np.uint64), u)


def sign_encode(x, bucket_size, residual=None, packed=None, scales=None):
    """Scaled sign of ``x``; returns ``(packed bits uint8, scales float32[nbuckets])``.

    ``bucket_size``: a positive multiple of 8.  ``residual`` (optional,
    float32, length n, updated in place): fused error feedback, see the module
    docstring.  ``packed`` and ``scales`` (optional): the output arrays, of
    exactly their lengths (e.g. views of a packet's payload, aligned or not).
    """
    bucket_size = check_bucket_size(bucket_size)
    x = as_f32(x)
    n = x.shape[0]
    packed = encode_out(packed, (n + 7) // 8, _U8, "packed")
    scales = encode_out(scales, -(-n // bucket_size), _F32, "scales")
    return _sign_encode_trusted(x, bucket_size, check_residual(residual, n), packed, scales)


def _sign_encode_trusted(x, bucket_size, residual=None, packed=None, scales=None):
    """:func:`sign_encode` after its argument checks (its body), for a caller whose arguments are valid already
    (a compressor's parameters, checked when it was built; ``x`` a 1-D contiguous float32 array; ``residual``
    None or checked; the outputs both None, or both writeable arrays of exactly their lengths)."""
    n = x.shape[0]
    if packed is None:
        packed = np.empty((n + 7) // 8, dtype=np.uint8)
        scales = np.empty(-(-n // bucket_size), dtype=np.float32)
    chunk = min(_CHUNK, bucket_size, n)
    cw = np.empty((chunk + 7) // 8, dtype=np.uint64)
    vbuf = _NO_VBUF if residual is None else np.empty(chunk, dtype=np.float32)
    encoders = _ENCODERS if bucket_size <= PAR_CHUNK else _BIG_ENCODERS
    config.run(n, *encoders, x, residual, bucket_size, packed, scales, cw, vbuf)
    return packed, scales


def sign_decode(packed, scales, bucket_size, n, out=None, accumulate=False):
    """Decode scaled signs: ``+scale`` for bit 1, ``-scale`` for bit 0; returns float32[n].

    With ``accumulate=True`` the values are added into ``out`` (required).
    """
    bucket_size = check_bucket_size(bucket_size)
    n = check_int(n, "n", 0)
    packed = check_packed(packed, (n + 7) // 8)
    scales = check_scales(scales, -(-n // bucket_size), "scales")
    out = decode_out(out, n, accumulate)
    cw = np.empty((min(_CHUNK, bucket_size, n) + 7) // 8, dtype=np.uint64)
    config.run(n, _sign_decode, _sign_decode_par, packed, scales, bucket_size, n, out, bool(accumulate), cw)
    return out if out.shape[0] == n else out[:n]
