"""QSGD stochastic quantization (Alistarh et al., 2017), one L2 norm per bucket.

For each bucket of ``bucket_size`` entries (the last one may be partial) with
``v = x`` (or ``v = x + residual``, see below) and ``norm = ||v||_2``::

    l     = |v| * (levels / norm)                       (float32; in [0, levels])
    level = floor(l) + (u < l - floor(l))               u = uniform01(seed_key32(seed), i)
    code  = levels + level   if v >= 0   else   levels - level     (in 0 .. 2*levels)

and decoding is ``value = (norm * (1 / levels)) * (code - levels)`` in float32
(``1 / levels`` rounded to float32 first, so encoder and decoder agree to the bit).  ``i``
is the global element index, so the codes do not depend on ``bucket_size``
beyond the norms.  ``E[value] = v`` (up to float32 rounding and the 24-bit
resolution of ``u``).  Codes are packed LSB-first at :func:`qsgd_code_bits`
bits: 2 for ``levels == 1``, 4 up to 7 levels, 8 up to 127.

Details:

* The norm is accumulated in float64 (no overflow or underflow of the squares)
  and rounded to float32.  A zero bucket has ``norm = 0`` and every code
  ``levels`` (decodes to 0).  A bucket whose norm is so small that
  ``levels / norm`` overflows float32 is quantized in float64, the same way.
* Non-finite values (the policy of :mod:`gcomp.kernels`): a bucket holding a
  NaN or +-Inf gets ``norm = NaN`` and all-zero codes, so all of it decodes to
  NaN.  A finite bucket whose norm overflows float32 (entries within a factor
  ``sqrt(bucket_size)`` of FLT_MAX) is treated the same way.
* Error feedback, fused (``residual`` given): the encoder quantizes
  ``v = x + residual`` and, in the same pass, sets ``residual = v - decode(code)``.
  In a non-finite bucket that is ``v - NaN``: the residual becomes NaN there
  (IEEE arithmetic; never silently finite).  ``x`` itself is never modified.
"""

import math

import numpy as np
from numba import prange

from . import config
from ._checks import as_f32, check_int, check_seed
from ._units import piece_range, sum_in_order, unit_count, unit_range
from .bitpack import (
    _pack_tail,
    _pack_words,
    _uniform01_u32,
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

__all__ = ["qsgd_code_bits", "qsgd_encode", "qsgd_decode"]

#: the value buffer of an encode without error feedback: never written, so one empty array serves every call
_NO_VBUF = np.empty(0, np.float32)

#: elements per chunk of a bucket: codes and values of a chunk stay in L1
_CHUNK = 2048

_U8 = np.dtype(np.uint8)
_F32 = np.dtype(np.float32)
_F32_INF = np.float32(np.inf)
_F32_NAN = np.float32(np.nan)


def qsgd_code_bits(levels):
    """Bits per code for ``levels`` (codes take ``0 .. 2*levels``): 2, 4 or 8."""
    levels = check_int(levels, "levels", 1, 127)
    return 2 if levels == 1 else (4 if levels <= 7 else 8)


@kernel
def _sumsq(xb, rb):
    """Sum of squares of ``xb`` (plus ``rb`` when given), in float64."""
    acc = 0.0
    if rb is None:
        for i in range(xb.shape[0]):
            v = np.float64(xb[i])
            acc += v * v
    else:
        for i in range(xb.shape[0]):
            v = np.float64(xb[i] + rb[i])
            acc += v * v
    return acc


@kernel
def _codes(xc, rc, c0, key, inv, lv, codes, vbuf):
    """Codes of one chunk into ``codes``; with ``rc``, also ``v = x + r`` into ``vbuf``.

    ``inv = levels / norm`` and ``lv = levels`` are both float32 or both float64.
    """
    c = c0
    one = lv * np.float32(0.0) + np.float32(1.0)
    zero = lv * np.float32(0.0)
    for i in range(xc.shape[0]):
        v = xc[i]
        if rc is not None:
            v = v + rc[i]
            vbuf[i] = v
        a = abs(v) * inv
        fl = np.floor(a)
        u = _uniform01_u32(key, c)
        lev = min(fl + (one if u < a - fl else zero), lv)
        # lv + lev for v >= 0, lv - lev below (lev is 0 for v = -0.0); copysign is one
        # bitwise op where the select on v >= 0 takes a compare and a blend
        codes[i] = np.uint8(lv + np.copysign(lev, v))
        c = np.uint32(c + np.uint32(1))


@kernel(exact=True)
def _residual_update(vc, codes, rc, sc, lv):
    """``rc = vc - decode(codes)`` for one chunk.

    Compiled without ``contract`` (:data:`~gcomp.kernels.config.EXACT_MATH`): the
    decoded value is rounded to float32 before the subtraction, exactly as
    :func:`qsgd_decode` stores it, so no fused multiply-add makes the residual differ.
    """
    for i in range(rc.shape[0]):
        rc[i] = vc[i] - sc * (np.float32(codes[i]) - lv)


@kernel(exact=True)
def _dequant(codes, sc, lv, oc, accumulate):
    """``oc (+)= sc * (code - lv)``: rounded to float32 before any accumulation (no fused multiply-add)."""
    if accumulate:
        for i in range(oc.shape[0]):
            oc[i] += sc * (np.float32(codes[i]) - lv)
    else:
        for i in range(oc.shape[0]):
            oc[i] = sc * (np.float32(codes[i]) - lv)


@kernel
def _encode_range(x, residual, s, e, norm, levels, bits, key, packed, p16, p32, p64, cw, codes, vbuf):
    """Codes (and the residual update) of entries ``s:e`` of one bucket whose norm is ``norm``.

    ``s`` is a multiple of 8 (a bucket or :data:`PAR_CHUNK` piece start), so the
    range starts on a byte of ``packed``.  A non-finite ``norm`` zeroes the codes
    (and sets the residual to NaN).
    """
    if not (norm < _F32_INF):
        # NaN/Inf in the bucket (or a norm beyond float32): NaN norm, zero codes.
        packed[(s * bits) >> 3 : (e * bits + 7) >> 3] = 0
        if residual is not None:
            residual[s:e] = _F32_NAN
        return
    lv = np.float32(levels)
    lv64 = np.float64(levels)
    sc, inv, inv64 = _params(norm, levels)
    wide = not (inv < _F32_INF)
    for cs in range(s, e, _CHUNK):
        ce = min(cs + _CHUNK, e)
        m = ce - cs
        c0 = np.uint32(cs & 0xFFFFFFFF)
        if residual is None:
            if wide:
                _codes(x[cs:ce], None, c0, key, inv64, lv64, codes, vbuf)
            else:
                _codes(x[cs:ce], None, c0, key, inv, lv, codes, vbuf)
        else:
            if wide:
                _codes(x[cs:ce], residual[cs:ce], c0, key, inv64, lv64, codes, vbuf)
            else:
                _codes(x[cs:ce], residual[cs:ce], c0, key, inv, lv, codes, vbuf)
            _residual_update(vbuf[:m], codes, residual[cs:ce], sc, lv)
        nw = m >> 3
        off = (cs * bits) >> 3
        _pack_words(cw, nw, bits, packed, p16, p32, p64, off)
        if m & 7:
            _pack_tail(codes, 8 * nw, m & 7, bits, packed, off + nw * bits)


@kernel(exact=True)
def _params(norm, levels):
    """``(norm * (1 / levels), levels / norm, float64 levels / norm)``, each rounded as written.

    Strict IEEE (:data:`~gcomp.kernels.config.EXACT_MATH`): fast-math's ``arcp``
    would be free to turn ``norm * (1 / levels)`` into ``norm / levels``, and the
    encoder (residual) and the decoder must use the same step to the bit.
    """
    lv = np.float32(levels)
    sc = norm * (np.float32(1.0) / lv)
    inv = lv / norm if norm > np.float32(0.0) else np.float32(0.0)
    return sc, inv, np.float64(levels) / np.float64(norm)


@kernel(exact=True)
def _norm(acc):
    """The float32 norm from the float64 sum of squares (NaN/Inf pass through)."""
    return np.float32(math.sqrt(acc))


@kernel
def _encode_buckets(x, residual, levels, bucket_size, key, bits, packed, norms, cw, vbuf, b0, b1):
    """Buckets ``b0:b1`` (each at most :data:`PAR_CHUNK` entries): norm, then codes, bucket by bucket."""
    n = x.shape[0]
    p16, p32, p64 = _word_views(packed)
    codes = cw.view(np.uint8)
    for b in range(b0, b1):
        s = b * bucket_size
        e = min(s + bucket_size, n)
        if residual is None:
            acc = _sumsq(x[s:e], None)
        else:
            acc = _sumsq(x[s:e], residual[s:e])
        norm = _norm(acc)
        norms[b] = norm if norm < _F32_INF else _F32_NAN
        if not (norm < _F32_INF):
            # NaN/Inf in the bucket (or a norm beyond float32): NaN norm, zero codes.
            packed[(s * bits) >> 3 : (e * bits + 7) >> 3] = 0
            if residual is not None:
                residual[s:e] = _F32_NAN
            continue
        lv = np.float32(levels)
        lv64 = np.float64(levels)
        sc, inv, inv64 = _params(norm, levels)
        wide = not (inv < _F32_INF)
        for cs in range(s, e, _CHUNK):
            ce = min(cs + _CHUNK, e)
            m = ce - cs
            c0 = np.uint32(cs & 0xFFFFFFFF)
            if residual is None:
                if wide:
                    _codes(x[cs:ce], None, c0, key, inv64, lv64, codes, vbuf)
                else:
                    _codes(x[cs:ce], None, c0, key, inv, lv, codes, vbuf)
            else:
                if wide:
                    _codes(x[cs:ce], residual[cs:ce], c0, key, inv64, lv64, codes, vbuf)
                else:
                    _codes(x[cs:ce], residual[cs:ce], c0, key, inv, lv, codes, vbuf)
                _residual_update(vbuf[:m], codes, residual[cs:ce], sc, lv)
            nw = m >> 3
            off = (cs * bits) >> 3
            _pack_words(cw, nw, bits, packed, p16, p32, p64, off)
            if m & 7:
                _pack_tail(codes, 8 * nw, m & 7, bits, packed, off + nw * bits)


@kernel
def _piece_sumsq(x, residual, bucket_size, q, pieces):
    """Sum of squares of piece ``q`` (of ``pieces`` per bucket) of a bucket larger than :data:`PAR_CHUNK`."""
    s, e = piece_range(x.shape[0], bucket_size, q, pieces)
    if s >= e:
        return 0.0
    if residual is None:
        return _sumsq(x[s:e], None)
    return _sumsq(x[s:e], residual[s:e])


@kernel
def _big_norms(parts, pieces, norms):
    for b in range(norms.shape[0]):
        norm = _norm(sum_in_order(parts, b * pieces, (b + 1) * pieces))
        norms[b] = norm if norm < _F32_INF else _F32_NAN


@kernel
def _piece_encode(x, residual, levels, bucket_size, key, bits, packed, norms, q, pieces, cw, vbuf):
    s, e = piece_range(x.shape[0], bucket_size, q, pieces)
    if s < e:
        p16, p32, p64 = _word_views(packed)
        codes = cw.view(np.uint8)
        _encode_range(x, residual, s, e, norms[q // pieces], levels, bits, key, packed, p16, p32, p64, cw, codes, vbuf)


@kernel
def _qsgd_encode(x, residual, levels, bucket_size, seed, bits, packed, norms, cw, vbuf):
    """Buckets of at most :data:`PAR_CHUNK` entries, one pass each (:func:`_encode_buckets`)."""
    key = seed_key32(np.uint64(seed))
    nb = norms.shape[0]
    _encode_buckets(x, residual, levels, bucket_size, key, bits, packed, norms, cw, vbuf, 0, nb)


@kernel
def _qsgd_encode_big(x, residual, levels, bucket_size, seed, bits, packed, norms, cw, vbuf):
    """Buckets larger than :data:`PAR_CHUNK`: statistics per piece, combined in piece order, then codes per piece.

    A separate kernel so that the usual small buckets never compile this path.
    """
    key = seed_key32(np.uint64(seed))
    nb = norms.shape[0]
    pieces = (bucket_size + PAR_CHUNK - 1) // PAR_CHUNK
    parts = np.empty(nb * pieces, np.float64)
    for q in range(nb * pieces):
        parts[q] = _piece_sumsq(x, residual, bucket_size, q, pieces)
    _big_norms(parts, pieces, norms)
    for q in range(nb * pieces):
        _piece_encode(x, residual, levels, bucket_size, key, bits, packed, norms, q, pieces, cw, vbuf)


@kernel(parallel=True)
def _qsgd_encode_par(x, residual, levels, bucket_size, seed, bits, packed, norms, cw, vbuf):
    """:func:`_qsgd_encode` on Numba's threads: the same work units (groups of whole buckets), the same bits."""
    key = seed_key32(np.uint64(seed))
    nb = norms.shape[0]
    g = PAR_CHUNK // bucket_size
    for u in prange((nb + g - 1) // g):
        cwu = np.empty(cw.shape[0], np.uint64)
        vbu = np.empty(vbuf.shape[0], np.float32)
        _encode_buckets(x, residual, levels, bucket_size, key, bits, packed, norms, cwu, vbu, u * g,
                        min(nb, (u + 1) * g))


@kernel(parallel=True)
def _qsgd_encode_big_par(x, residual, levels, bucket_size, seed, bits, packed, norms, cw, vbuf):
    """:func:`_qsgd_encode_big` on Numba's threads: the same pieces, the same bits."""
    key = seed_key32(np.uint64(seed))
    nb = norms.shape[0]
    pieces = (bucket_size + PAR_CHUNK - 1) // PAR_CHUNK
    parts = np.empty(nb * pieces, np.float64)
    for q in prange(nb * pieces):
        parts[q] = _piece_sumsq(x, residual, bucket_size, q, pieces)
    _big_norms(parts, pieces, norms)
    for q in prange(nb * pieces):
        cwu = np.empty(cw.shape[0], np.uint64)
        vbu = np.empty(vbuf.shape[0], np.float32)
        _piece_encode(x, residual, levels, bucket_size, key, bits, packed, norms, q, pieces, cwu, vbu)


_ENCODERS = (_qsgd_encode, _qsgd_encode_par)
_BIG_ENCODERS = (_qsgd_encode_big, _qsgd_encode_big_par)


@kernel
def _decode_range(packed, p16, p32, p64, s, e, sc, lv, bits, out, accumulate, cw):
    """Decode entries ``s:e`` (``s`` a multiple of 8) of one bucket with step ``sc``."""
    codes = cw.view(np.uint8)
    for cs in range(s, e, _CHUNK):
        ce = min(cs + _CHUNK, e)
        m = ce - cs
        nw = m >> 3
        off = (cs * bits) >> 3
        _unpack_words(packed, p16, p32, p64, off, nw, bits, cw)
        if m & 7:
            _unpack_tail(packed, off + nw * bits, m & 7, bits, codes, 8 * nw)
        _dequant(codes, sc, lv, out[cs:ce], accumulate)


@kernel
def _decode_unit(packed, norms, levels, bucket_size, bits, n, out, accumulate, cw, u):
    """Work unit ``u`` of a decode (:func:`unit_range`): whole buckets, or one piece of a large bucket."""
    p16, p32, p64 = _word_views(packed)
    lv = np.float32(levels)
    b0, b1, s0, e0 = unit_range(n, bucket_size, u)
    for b in range(b0, b1):
        s = max(b * bucket_size, s0)
        e = min(b * bucket_size + bucket_size, e0)
        sc, _, _ = _params(norms[b], levels)
        _decode_range(packed, p16, p32, p64, s, e, sc, lv, bits, out, accumulate, cw)


@kernel
def _qsgd_decode(packed, norms, levels, bucket_size, bits, n, out, accumulate, cw):
    for u in range(unit_count(n, bucket_size)):
        _decode_unit(packed, norms, levels, bucket_size, bits, n, out, accumulate, cw, u)


@kernel(parallel=True)
def _qsgd_decode_par(packed, norms, levels, bucket_size, bits, n, out, accumulate, cw):
    for u in prange(unit_count(n, bucket_size)):
        _decode_unit(packed, norms, levels, bucket_size, bits, n, out, accumulate,
                     np.empty(cw.shape[0], np.uint64), u)


def qsgd_encode(x, levels, bucket_size, seed, residual=None, packed=None, norms=None):
    """QSGD-quantize ``x``; returns ``(packed codes uint8, norms float32[nbuckets])``.

    ``x``: 1-D float16/32/64 array; ``levels`` in [1, 127]; ``bucket_size`` a
    positive multiple of 8; ``seed`` in [0, 2**64).  ``residual`` (optional,
    float32, length n, updated in place): fused error feedback, see the
    module docstring.  ``packed`` and ``norms`` (optional): the output arrays,
    of exactly their lengths (e.g. views of a packet's payload, aligned or not).
    """
    levels = check_int(levels, "levels", 1, 127)
    bits = qsgd_code_bits(levels)
    bucket_size = check_bucket_size(bucket_size)
    seed = check_seed(seed)
    x = as_f32(x)
    n = x.shape[0]
    packed = encode_out(packed, (n * bits + 7) // 8, _U8, "packed")
    norms = encode_out(norms, -(-n // bucket_size), _F32, "norms")
    return _qsgd_encode_trusted(x, levels, bits, bucket_size, seed, check_residual(residual, n), packed, norms)


def _qsgd_encode_trusted(x, levels, bits, bucket_size, seed, residual=None, packed=None, norms=None):
    """:func:`qsgd_encode` after its argument checks (its body), for a caller whose arguments are valid already
    (a compressor's parameters, checked when it was built; ``bits`` the code width of ``levels``; ``x`` a 1-D
    contiguous float32 array; ``seed`` an int in [0, 2**64); ``residual`` None or checked; ``packed`` and
    ``norms`` both None, or both writeable arrays of exactly their lengths)."""
    n = x.shape[0]
    if packed is None:
        packed = np.empty((n * bits + 7) // 8, dtype=np.uint8)
        norms = np.empty(-(-n // bucket_size), dtype=np.float32)
    chunk = min(_CHUNK, bucket_size, n)
    cw = np.empty((chunk + 7) // 8, dtype=np.uint64)
    vbuf = _NO_VBUF if residual is None else np.empty(chunk, dtype=np.float32)
    encoders = _ENCODERS if bucket_size <= PAR_CHUNK else _BIG_ENCODERS
    config.run(n, *encoders,
               x, residual, levels, bucket_size, np.uint64(seed), bits, packed, norms, cw, vbuf)
    return packed, norms


def qsgd_decode(packed, norms, levels, bucket_size, n, out=None, accumulate=False):
    """Decode QSGD codes: ``value = (norm * (1 / levels)) * (code - levels)``; returns float32[n].

    With ``accumulate=True`` the values are added into ``out`` (required).
    """
    levels = check_int(levels, "levels", 1, 127)
    bits = qsgd_code_bits(levels)
    bucket_size = check_bucket_size(bucket_size)
    n = check_int(n, "n", 0)
    packed = check_packed(packed, (n * bits + 7) // 8)
    norms = check_scales(norms, -(-n // bucket_size), "norms")
    out = decode_out(out, n, accumulate)
    cw = np.empty((min(_CHUNK, bucket_size, n) + 7) // 8, dtype=np.uint64)
    config.run(n, _qsgd_decode, _qsgd_decode_par, packed, norms, levels, bucket_size, bits, n, out, bool(accumulate), cw)
    return out if out.shape[0] == n else out[:n]
