"""Bucketed uniform quantization to 1, 2, 4 or 8 bits: max-min or abs-max scaling.

Each bucket of ``bucket_size`` entries (the last one may be partial) sends one
float32 ``scale``, one float32 ``offset`` and a ``bits``-bit code per entry;
decoding is, for both modes, ``value = offset + scale * code``.

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

from ._checks import as_f32, check_int, check_seed
from .bitpack import (
    _bits_f32,
    _f32_bits,
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
)
from .config import kernel
from .random import seed_key32

__all__ = ["MODES", "ROUNDINGS", "uniform_encode", "uniform_decode"]

MODES = ("maxmin", "absmax")
ROUNDINGS = ("nearest", "stochastic")

#: elements per chunk of a bucket: codes and values of a chunk stay in L1
_CHUNK = 2048

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


@kernel
def _residual_update(vc, codes, rc, scale, offset):
    """``rc = vc - (offset + scale * code)`` for one chunk.

    Two loops: the decoded values are rounded to float32 (stored) before the
    subtraction, as :func:`uniform_decode` stores them.
    """
    for i in range(rc.shape[0]):
        rc[i] = offset + scale * np.float32(codes[i])
    for i in range(rc.shape[0]):
        rc[i] = vc[i] - rc[i]


@kernel
def _uniform_encode(x, residual, bits, bucket_size, absmax, stochastic, seed, packed, scales, offsets, cw, vbuf):
    n = x.shape[0]
    codes = cw.view(np.uint8)
    p16, p32, p64 = _word_views(packed)
    key = seed_key32(np.uint64(seed))
    h = (1 << (bits - 1)) - 1
    qtop = 2 * h if absmax else (1 << bits) - 1
    top = np.float32(qtop)
    top64 = np.float64(qtop)
    rtop = 1.0 / top64
    rh = 1.0 / np.float64(h)
    for b in range(scales.shape[0]):
        s = b * bucket_size
        e = min(s + bucket_size, n)
        if absmax:
            if residual is None:
                amax, finite = _absmax(x[s:e], None)
            else:
                amax, finite = _absmax(x[s:e], residual[s:e])
            scale = np.float32(np.float64(amax) * rh)
            offset = -(scale * np.float32(h))
        else:
            if residual is None:
                lo, hi, finite = _minmax(x[s:e], None)
            else:
                lo, hi, finite = _minmax(x[s:e], residual[s:e])
            scale = np.float32((np.float64(hi) - np.float64(lo)) * rtop)
            offset = lo
        if not finite or not (scale < _F32_INF):
            # NaN/Inf in the bucket (or a max-min range beyond float32): NaN scale and offset, zero codes.
            scales[b] = _F32_NAN
            offsets[b] = _F32_NAN
            packed[(s * bits) >> 3 : (e * bits + 7) >> 3] = 0
            if residual is not None:
                residual[s:e] = _F32_NAN
            continue
        scales[b] = scale
        offsets[b] = offset
        inv = np.float32(1.0) / scale if scale > np.float32(0.0) else np.float32(0.0)
        wide = not (inv < _F32_INF)
        off64 = np.float64(offset)
        inv64 = 1.0 / np.float64(scale)
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
def _uniform_decode(packed, scales, offsets, bits, bucket_size, n, out, accumulate, cw):
    codes = cw.view(np.uint8)
    p16, p32, p64 = _word_views(packed)
    for b in range(scales.shape[0]):
        s = b * bucket_size
        e = min(s + bucket_size, n)
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
            oc = out[cs:ce]
            if accumulate:
                for i in range(oc.shape[0]):
                    oc[i] += offset + scale * np.float32(codes[i])
            else:
                for i in range(oc.shape[0]):
                    oc[i] = offset + scale * np.float32(codes[i])


def _check_choice(value, name, choices):
    if not isinstance(value, str):
        raise TypeError(f"expected {name} to be a str in {choices}, found {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"expected {name} in {choices}, found {value!r}")
    return value


def uniform_encode(x, bits, bucket_size, mode="maxmin", rounding="nearest", seed=0, residual=None):
    """Quantize ``x`` per bucket; returns ``(packed codes uint8, scales float32[nb], offsets float32[nb])``.

    ``bits`` in (1, 2, 4, 8) (``absmax`` needs 2, 4 or 8); ``bucket_size`` a
    positive multiple of 8; ``mode`` in ``MODES``; ``rounding`` in
    ``ROUNDINGS``; ``seed`` (used by stochastic rounding) in [0, 2**64).
    ``residual`` (optional, float32, length n, updated in place): fused error
    feedback, see the module docstring.
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
    residual = check_residual(residual, n)
    nb = -(-n // bucket_size)
    packed = np.empty((n * bits + 7) // 8, dtype=np.uint8)
    scales = np.empty(nb, dtype=np.float32)
    offsets = np.empty(nb, dtype=np.float32)
    chunk = min(_CHUNK, bucket_size, n)
    cw = np.empty((chunk + 7) // 8, dtype=np.uint64)
    vbuf = np.empty(chunk if residual is not None else 0, dtype=np.float32)
    absmax, stochastic = mode == "absmax", rounding == "stochastic"
    _uniform_encode(x, residual, bits, bucket_size, absmax, stochastic, np.uint64(seed), packed, scales, offsets, cw, vbuf)
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
    _uniform_decode(packed, scales, offsets, bits, bucket_size, n, out, bool(accumulate), cw)
    return out if out.shape[0] == n else out[:n]
