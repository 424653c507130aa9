"""TernGrad (Wen et al., 2017): stochastic ternary codes times the bucket's max |x|.

For each bucket of ``bucket_size`` entries (the last one may be partial) with
``v = x`` (or ``v = x + residual``, see below) and ``scale = max |v|``::

    keep  = u * scale < |v|               u = uniform01(seed_key32(seed), i) = k / 2**24
    code  = 1 + keep * (1 if v >= 0 else -1)          (0: -1, 1: 0, 2: +1)

so ``P(code != 1) = |v| / scale`` and decoding, ``value = scale * (code - 1)``,
is unbiased (up to float32 rounding and the 24-bit resolution of ``u``).  ``i``
is the global element index.  The comparison is evaluated as
``k * (scale / 2**24) < |v|`` (the same float32 value as ``u * scale``), or,
when ``scale < 2**-100`` would make ``scale / 2**24`` lose bits to underflow,
as ``k * scale < |v| * 2**24``: written that way so that fast-math
reassociation (which may fold ``2**-24 * scale``) cannot flush tiny buckets.  Codes are packed LSB-first at 2 bits; code 3 is
never produced.  A zero bucket has ``scale = 0`` and every code 1 (decodes to 0).

Non-finite values (the policy of :mod:`gcomp.kernels`): a bucket holding a NaN
or +-Inf gets ``scale = NaN`` and all-zero codes, so all of it decodes to NaN.

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
    _pack_tail,
    _pack_words,
    _rand32_u32,
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
from .random import seed_key32
from .uniform import _absmax

__all__ = ["terngrad_encode", "terngrad_decode"]

#: the value buffer of an encode without error feedback: never written, so one empty array serves every call
_NO_VBUF = np.empty(0, np.float32)
_U8 = np.dtype(np.uint8)
_F32 = np.dtype(np.float32)

#: elements per chunk of a bucket: codes and values of a chunk stay in L1
_CHUNK = 2048

_F32_NAN = np.float32(np.nan)
_TINY = np.float32(2.0**-100)


@kernel
def _codes(xc, rc, c0, key, s2, m2, codes, vbuf):
    """Codes of one chunk: keep iff ``k * s2 < |v| * m2`` (``k``: the 24 random bits)."""
    c = c0
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for i in range(xc.shape[0]):
        v = xc[i]
        if rc is not None:
            v = v + rc[i]
            vbuf[i] = v
        k = np.float32(np.int32(_rand32_u32(key, c) >> np.uint32(8)))
        step = (one if v >= zero else -one) if k * s2 < abs(v) * m2 else zero
        codes[i] = np.uint8(one + step)
        c = np.uint32(c + np.uint32(1))


@kernel(exact=True)
def _residual_update(vc, codes, rc, scale):
    """``rc = vc - decode(code)`` for one chunk.

    Strict IEEE (:data:`~gcomp.kernels.config.EXACT_MATH`): the decoded value is
    rounded to float32 before the subtraction, as ``terngrad_decode`` stores it.
    """
    for i in range(rc.shape[0]):
        rc[i] = vc[i] - scale * (np.float32(codes[i]) - np.float32(1.0))


@kernel(exact=True)
def _dequant(codes, scale, oc, accumulate):
    """``oc (+)= scale * (code - 1)``, rounded to float32 before any accumulation."""
    if accumulate:
        for i in range(oc.shape[0]):
            oc[i] += scale * (np.float32(codes[i]) - np.float32(1.0))
    else:
        for i in range(oc.shape[0]):
            oc[i] = scale * (np.float32(codes[i]) - np.float32(1.0))


@kernel(exact=True)
def _thresholds(scale):
    """``(s2, m2)``: keep iff ``k * s2 < |v| * m2`` (module docstring), strict IEEE."""
    if scale >= _TINY:
        return scale * np.float32(2.0**-24), np.float32(1.0)
    return scale, np.float32(2.0**24)


@kernel
def _encode_range(x, residual, s, e, scale, key, packed, p16, p32, p64, cw, codes, vbuf):
    """Codes (and the residual update) of entries ``s:e`` (``s`` a multiple of 8) of one bucket."""
    if not (scale == scale):
        packed[(2 * s) >> 3 : (2 * e + 7) >> 3] = 0
        if residual is not None:
            residual[s:e] = _F32_NAN
        return
    s2, m2 = _thresholds(scale)
    for cs in range(s, e, _CHUNK):
        ce = min(cs + _CHUNK, e)
        m = ce - cs
        c0 = np.uint32(cs & 0xFFFFFFFF)
        if residual is None:
            _codes(x[cs:ce], None, c0, key, s2, m2, codes, vbuf)
        else:
            _codes(x[cs:ce], residual[cs:ce], c0, key, s2, m2, codes, vbuf)
            _residual_update(vbuf[:m], codes, residual[cs:ce], scale)
        nw = m >> 3
        off = (2 * cs) >> 3
        _pack_words(cw, nw, 2, packed, p16, p32, p64, off)
        if m & 7:
            _pack_tail(codes, 8 * nw, m & 7, 2, packed, off + nw * 2)


@kernel
def _encode_buckets(x, residual, bucket_size, key, packed, scales, cw, vbuf, b0, b1):
    """Buckets ``b0:b1`` (each at most :data:`PAR_CHUNK` entries): max ``|v|``, then codes, bucket by bucket."""
    n = x.shape[0]
    p16, p32, p64 = _word_views(packed)
    codes = cw.view(np.uint8)
    for b in range(b0, b1):
        s = b * bucket_size
        e = min(s + bucket_size, n)
        if residual is None:
            scale, finite = _absmax(x[s:e], None)
        else:
            scale, finite = _absmax(x[s:e], residual[s:e])
        scale = scale if finite else _F32_NAN
        scales[b] = scale
        if not (scale == scale):
            packed[(2 * s) >> 3 : (2 * e + 7) >> 3] = 0
            if residual is not None:
                residual[s:e] = _F32_NAN
            continue
        s2, m2 = _thresholds(scale)
        for cs in range(s, e, _CHUNK):
            ce = min(cs + _CHUNK, e)
            m = ce - cs
            c0 = np.uint32(cs & 0xFFFFFFFF)
            if residual is None:
                _codes(x[cs:ce], None, c0, key, s2, m2, codes, vbuf)
            else:
                _codes(x[cs:ce], residual[cs:ce], c0, key, s2, m2, codes, vbuf)
                _residual_update(vbuf[:m], codes, residual[cs:ce], scale)
            nw = m >> 3
            off = (2 * cs) >> 3
            _pack_words(cw, nw, 2, packed, p16, p32, p64, off)
            if m & 7:
                _pack_tail(codes, 8 * nw, m & 7, 2, packed, off + nw * 2)


@kernel
def _piece_absmax(x, residual, bucket_size, q, pieces):
    """max ``|v|`` of piece ``q`` (NaN if it holds a NaN or +-Inf; 0 if empty)."""
    s, e = piece_range(x.shape[0], bucket_size, q, pieces)
    if s >= e:
        return np.float32(0.0)
    if residual is None:
        scale, finite = _absmax(x[s:e], None)
    else:
        scale, finite = _absmax(x[s:e], residual[s:e])
    return scale if finite else _F32_NAN


@kernel
def _big_scales(parts, pieces, scales):
    for b in range(scales.shape[0]):
        scale = np.float32(0.0)
        for q in range(b * pieces, (b + 1) * pieces):
            p = parts[q]
            scale = p if (p > scale or p != p) and scale == scale else scale
        scales[b] = scale


@kernel
def _piece_encode(x, residual, bucket_size, key, packed, scales, q, pieces, cw, vbuf):
    s, e = piece_range(x.shape[0], bucket_size, q, pieces)
    if s < e:
        p16, p32, p64 = _word_views(packed)
        codes = cw.view(np.uint8)
        _encode_range(x, residual, s, e, scales[q // pieces], key, packed, p16, p32, p64, cw, codes, vbuf)


@kernel
def _terngrad_encode(x, residual, bucket_size, seed, packed, scales, cw, vbuf):
    """Buckets of at most :data:`PAR_CHUNK` entries, one pass each (:func:`_encode_buckets`)."""
    key = seed_key32(np.uint64(seed))
    nb = scales.shape[0]
    _encode_buckets(x, residual, bucket_size, key, packed, scales, cw, vbuf, 0, nb)


@kernel
def _terngrad_encode_big(x, residual, bucket_size, seed, packed, scales, cw, vbuf):
    """Buckets larger than :data:`PAR_CHUNK`: statistics per piece, combined in piece order, then codes per piece.

    A separate kernel so that the usual small buckets never compile this path.
    """
    key = seed_key32(np.uint64(seed))
    nb = scales.shape[0]
    pieces = piece_count(bucket_size)
    parts = np.empty(nb * pieces, np.float32)
    for q in range(nb * pieces):
        parts[q] = _piece_absmax(x, residual, bucket_size, q, pieces)
    _big_scales(parts, pieces, scales)
    for q in range(nb * pieces):
        _piece_encode(x, residual, bucket_size, key, packed, scales, q, pieces, cw, vbuf)


@kernel(parallel=True)
def _terngrad_encode_par(x, residual, bucket_size, seed, packed, scales, cw, vbuf):
    """:func:`_terngrad_encode` on Numba's threads: the same work units (groups of whole buckets), the same bits."""
    key = seed_key32(np.uint64(seed))
    nb = scales.shape[0]
    g = PAR_CHUNK // bucket_size
    for u in prange((nb + g - 1) // g):
        _encode_buckets(x, residual, bucket_size, key, packed, scales, np.empty(cw.shape[0], np.uint64),
                        np.empty(vbuf.shape[0], np.float32), u * g, min(nb, (u + 1) * g))


@kernel(parallel=True)
def _terngrad_encode_big_par(x, residual, bucket_size, seed, packed, scales, cw, vbuf):
    """:func:`_terngrad_encode_big` on Numba's threads: the same pieces, the same bits."""
    key = seed_key32(np.uint64(seed))
    nb = scales.shape[0]
    pieces = piece_count(bucket_size)
    parts = np.empty(nb * pieces, np.float32)
    for q in prange(nb * pieces):
        parts[q] = _piece_absmax(x, residual, bucket_size, q, pieces)
    _big_scales(parts, pieces, scales)
    for q in prange(nb * pieces):
        _piece_encode(x, residual, bucket_size, key, packed, scales, q, pieces, np.empty(cw.shape[0], np.uint64),
                      np.empty(vbuf.shape[0], np.float32))


_ENCODERS = (_terngrad_encode, _terngrad_encode_par)
_BIG_ENCODERS = (_terngrad_encode_big, _terngrad_encode_big_par)


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
            off = (2 * cs) >> 3
            _unpack_words(packed, p16, p32, p64, off, nw, 2, cw)
            if m & 7:
                _unpack_tail(packed, off + nw * 2, m & 7, 2, codes, 8 * nw)
            _dequant(codes, scale, out[cs:ce], accumulate)


@kernel
def _terngrad_decode(packed, scales, bucket_size, n, out, accumulate, cw):
    for u in range(unit_count(n, bucket_size)):
        _decode_unit(packed, scales, bucket_size, n, out, accumulate, cw, u)


@kernel(parallel=True)
def _terngrad_decode_par(packed, scales, bucket_size, n, out, accumulate, cw):
    for u in prange(unit_count(n, bucket_size)):
        _decode_unit(packed, scales, bucket_size, n, out, accumulate, np.empty(cw.shape[0], np.uint64), u)


def terngrad_encode(x, bucket_size, seed, residual=None, packed=None, scales=None):
    """TernGrad-quantize ``x``; returns ``(packed 2-bit codes uint8, scales float32[nbuckets])``.

    Codes: 0 means -1, 1 means 0, 2 means +1 (times the bucket's scale).
    ``bucket_size``: a positive multiple of 8; ``seed`` in [0, 2**64).
    ``residual`` (optional, float32, length n, updated in place): fused error
    feedback, see the module docstring.  ``packed`` and ``scales`` (optional):
    the output arrays, of exactly their lengths (e.g. views of a packet's
    payload, aligned or not).
    """
    bucket_size = check_bucket_size(bucket_size)
    seed = check_seed(seed)
    x = as_f32(x)
    n = x.shape[0]
    packed = encode_out(packed, (2 * n + 7) // 8, _U8, "packed")
    scales = encode_out(scales, -(-n // bucket_size), _F32, "scales")
    return _terngrad_encode_trusted(x, bucket_size, seed, check_residual(residual, n), packed, scales)


def _terngrad_encode_trusted(x, bucket_size, seed, residual=None, packed=None, scales=None):
    """:func:`terngrad_encode` after its argument checks (its body), for a caller whose arguments are valid already
    (a compressor's parameters, checked when it was built; ``x`` a 1-D contiguous float32 array; ``seed`` an int
    in [0, 2**64); ``residual`` None or checked; the outputs both None, or both writeable arrays of exactly their
    lengths)."""
    n = x.shape[0]
    if packed is None:
        packed = np.empty((2 * n + 7) // 8, dtype=np.uint8)
        scales = np.empty(-(-n // bucket_size), dtype=np.float32)
    chunk = min(_CHUNK, bucket_size, n)
    cw = np.empty((chunk + 7) // 8, dtype=np.uint64)
    vbuf = _NO_VBUF if residual is None else np.empty(chunk, dtype=np.float32)
    encoders = _ENCODERS if bucket_size <= PAR_CHUNK else _BIG_ENCODERS
    config.run(n, *encoders, x, residual, bucket_size, np.uint64(seed), packed, scales, cw, vbuf)
    return packed, scales


def terngrad_decode(packed, scales, bucket_size, n, out=None, accumulate=False):
    """Decode TernGrad codes: ``value = scale * (code - 1)``; returns float32[n].

    With ``accumulate=True`` the values are added into ``out`` (required).
    """
    bucket_size = check_bucket_size(bucket_size)
    n = check_int(n, "n", 0)
    packed = check_packed(packed, (2 * n + 7) // 8)
    scales = check_scales(scales, -(-n // bucket_size), "scales")
    out = decode_out(out, n, accumulate)
    cw = np.empty((min(_CHUNK, bucket_size, n) + 7) // 8, dtype=np.uint64)
    config.run(n, _terngrad_decode, _terngrad_decode_par, packed, scales, bucket_size, n, out, bool(accumulate), cw)
    return out if out.shape[0] == n else out[:n]
