"""Scaled sign (EF-signSGD, Karimireddy et al., 2019): 1 bit per entry plus one scale per bucket.

For each bucket of ``bucket_size`` entries (the last one may be partial) with
``v = x`` (or ``v = x + residual``, see below)::

    bit   = 1 if v >= 0 else 0            (so -0.0 and +0.0 give 1)
    scale = mean(|v|) over the bucket     (summed in float64, rounded to float32)

The float64 sum may be formed in any order (fast-math reassociation), so a
scale is within one float32 ulp of the exactly rounded mean, and equal to it
unless the float64 sum lands next to a float32 rounding boundary.

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

from ._checks import as_f32, check_int
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
)
from .config import kernel

__all__ = ["sign_encode", "sign_decode"]

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


@kernel
def _residual_update(vc, codes, rc, scale):
    """``rc = vc - decode(bit)`` for one chunk (the decoder's formula)."""
    neg = -scale
    for i in range(vc.shape[0]):
        rc[i] = vc[i] - (scale if codes[i] != 0 else neg)


@kernel
def _sign_encode(x, residual, bucket_size, packed, scales, cw, vbuf):
    n = x.shape[0]
    codes = cw.view(np.uint8)
    p16, p32, p64 = _word_views(packed)
    for b in range(scales.shape[0]):
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
        scale = np.float32(acc / (e - s))
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
def _sign_decode(packed, scales, bucket_size, n, out, accumulate, cw):
    codes = cw.view(np.uint8)
    p16, p32, p64 = _word_views(packed)
    for b in range(scales.shape[0]):
        s = b * bucket_size
        e = min(s + bucket_size, n)
        scale = scales[b]
        neg = -scale
        for cs in range(s, e, _CHUNK):
            ce = min(cs + _CHUNK, e)
            m = ce - cs
            nw = m >> 3
            off = cs >> 3
            _unpack_words(packed, p16, p32, p64, off, nw, 1, cw)
            if m & 7:
                _unpack_tail(packed, off + nw * 1, m & 7, 1, codes, 8 * nw)
            oc = out[cs:ce]
            if accumulate:
                for i in range(oc.shape[0]):
                    oc[i] += scale if codes[i] != 0 else neg
            else:
                for i in range(oc.shape[0]):
                    oc[i] = scale if codes[i] != 0 else neg


def sign_encode(x, bucket_size, residual=None):
    """Scaled sign of ``x``; returns ``(packed bits uint8, scales float32[nbuckets])``.

    ``bucket_size``: a positive multiple of 8.  ``residual`` (optional,
    float32, length n, updated in place): fused error feedback, see the module
    docstring.
    """
    bucket_size = check_bucket_size(bucket_size)
    x = as_f32(x)
    n = x.shape[0]
    residual = check_residual(residual, n)
    nb = -(-n // bucket_size)
    packed = np.empty((n + 7) // 8, dtype=np.uint8)
    scales = np.empty(nb, dtype=np.float32)
    chunk = min(_CHUNK, bucket_size, n)
    cw = np.empty((chunk + 7) // 8, dtype=np.uint64)
    vbuf = np.empty(chunk if residual is not None else 0, dtype=np.float32)
    _sign_encode(x, residual, bucket_size, packed, scales, cw, vbuf)
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
    _sign_decode(packed, scales, bucket_size, n, out, bool(accumulate), cw)
    return out if out.shape[0] == n else out[:n]
