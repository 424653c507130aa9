"""Natural compression (Horvath et al., 2019): unbiased stochastic rounding to powers of two.

Each entry ``v = x`` (or ``v = x + residual``, see below) is sent as a sign bit
and an 8-bit exponent code, straight from its float32 bit pattern
``(sign, e, m)`` (``e``: the biased exponent, ``m``: the 23-bit mantissa)::

    up       = (rand32(seed_key32(seed), i) >> 8) < 2*m     i.e. uniform01(...) < m / 2**23
    exponent = min(e + up, 255)
    sign     = 1 for a negative sign bit (including -0.0 and negative NaNs)

Decoding rebuilds a float32 from ``(sign, exponent, mantissa 0)``:

* ``exponent`` in 1..254 decodes to ``+-2**(exponent - 127)``;
* ``exponent == 0`` decodes to ``+-0``.  Subnormals work unchanged: ``|v| = m * 2**-149``
  rounds up to ``2**-126`` (code 1) with probability ``m / 2**23``, else to 0;
* ``exponent == 255`` decodes to NaN.

``P(up) = m / 2**23`` exactly (an integer comparison of 24 random bits), so
``E[decode] = v`` exactly for every finite ``v`` whose rounding cannot overflow.
Exponents come out unpacked (``uint8[n]``); signs packed LSB-first at one bit.

Non-finite values (the policy of :mod:`gcomp.kernels`): NaN and +-Inf have
``e = 255`` and decode to NaN; so does a finite entry in ``[2**127, FLT_MAX]``
that rounds up past the float32 range.

Error feedback, fused (``residual`` given): the encoder rounds
``v = x + residual`` and, in the same pass, sets ``residual = v - decode(code)``;
where the code decodes to NaN that is ``v - NaN = NaN`` (IEEE arithmetic,
never silently finite).  ``x`` itself is never modified.
"""

import numpy as np
from numba import prange

from . import config
from ._checks import as_f32, check_int, check_seed
from ._units import chunk_count
from .bitpack import (
    _pack_tail,
    _pack_words,
    _rand32_u32,
    _unpack_tail,
    _unpack_words,
    _word_views,
    check_packed,
    check_residual,
    decode_out,
    encode_out,
)
from .config import PAR_CHUNK, kernel
from .random import seed_key32

__all__ = ["natural_encode", "natural_decode"]

#: elements per chunk: a multiple of 8 so each chunk's signs start on a byte
_CHUNK = 2048


@kernel
def _add(xc, rc, vbuf):
    for i in range(xc.shape[0]):
        vbuf[i] = xc[i] + rc[i]


@kernel
def _round(vb, c0, key, exps, sgn, dbits):
    """Exponent codes and sign bits of the uint32 patterns ``vb``; the decoded patterns into ``dbits`` unless None."""
    c = c0
    for i in range(vb.shape[0]):
        b = vb[i]
        e = np.uint32((b >> np.uint32(23)) & np.uint32(0xFF))
        m2 = np.uint32((b & np.uint32(0x7FFFFF)) << np.uint32(1))
        up = np.uint32(np.uint32(_rand32_u32(key, c) >> np.uint32(8)) < m2)
        e2 = np.uint32(e + up)
        e2 = e2 if e2 < np.uint32(255) else np.uint32(255)
        exps[i] = np.uint8(e2)
        sgn[i] = np.uint8(b >> np.uint32(31))
        if dbits is not None:
            nan = np.uint32(0x400000) if e2 == np.uint32(255) else np.uint32(0)
            dbits[i] = np.uint32((b & np.uint32(0x80000000)) | np.uint32(e2 << np.uint32(23)) | nan)
        c = np.uint32(c + np.uint32(1))


@kernel
def _residual_update(vbuf, dec, rc):
    for i in range(vbuf.shape[0]):
        rc[i] = vbuf[i] - dec[i]


@kernel
def _encode_range(x, residual, key, exps, signs, p16, p32, p64, sw, vbuf, dbits, s, e):
    """Entries ``s:e`` (``s`` a multiple of 8), :data:`_CHUNK` at a time."""
    sgn = sw.view(np.uint8)
    dec = dbits.view(np.float32)
    for cs in range(s, e, _CHUNK):
        ce = min(cs + _CHUNK, e)
        m = ce - cs
        c0 = np.uint32(cs & 0xFFFFFFFF)
        if residual is None:
            _round(x[cs:ce].view(np.uint32), c0, key, exps[cs:ce], sgn, None)
        else:
            _add(x[cs:ce], residual[cs:ce], vbuf)
            _round(vbuf[:m].view(np.uint32), c0, key, exps[cs:ce], sgn, dbits)
            _residual_update(vbuf[:m], dec, residual[cs:ce])
        nw = m >> 3
        _pack_words(sw, nw, 1, signs, p16, p32, p64, cs >> 3)
        if m & 7:
            _pack_tail(sgn, 8 * nw, m & 7, 1, signs, (cs >> 3) + nw)


@kernel
def _natural_encode(x, residual, seed, exps, signs, sw, vbuf, dbits):
    p16, p32, p64 = _word_views(signs)
    _encode_range(x, residual, seed_key32(np.uint64(seed)), exps, signs, p16, p32, p64, sw, vbuf, dbits, 0, x.shape[0])


@kernel(parallel=True)
def _natural_encode_par(x, residual, seed, exps, signs, sw, vbuf, dbits):
    """:func:`_natural_encode` on Numba's threads, :data:`PAR_CHUNK` entries per unit (same bits)."""
    n = x.shape[0]
    key = seed_key32(np.uint64(seed))
    for u in prange(chunk_count(n)):
        p16, p32, p64 = _word_views(signs)
        _encode_range(x, residual, key, exps, signs, p16, p32, p64, np.empty(sw.shape[0], np.uint64),
                      np.empty(vbuf.shape[0], np.float32), np.empty(dbits.shape[0], np.uint32),
                      u * PAR_CHUNK, min(n, (u + 1) * PAR_CHUNK))


@kernel
def _patterns(ec, sgn, dbits):
    for i in range(ec.shape[0]):
        e = np.uint32(ec[i])
        nan = np.uint32(0x400000) if e == np.uint32(255) else np.uint32(0)
        dbits[i] = np.uint32(np.uint32(np.uint32(sgn[i]) << np.uint32(31)) | np.uint32(e << np.uint32(23)) | nan)


@kernel
def _decode_range(exps, signs, p16, p32, p64, out, accumulate, sw, dbits, s, e):
    sgn = sw.view(np.uint8)
    dec = dbits.view(np.float32)
    for cs in range(s, e, _CHUNK):
        ce = min(cs + _CHUNK, e)
        m = ce - cs
        nw = m >> 3
        _unpack_words(signs, p16, p32, p64, cs >> 3, nw, 1, sw)
        if m & 7:
            _unpack_tail(signs, (cs >> 3) + nw, m & 7, 1, sgn, 8 * nw)
        if accumulate:
            _patterns(exps[cs:ce], sgn, dbits)
            oc = out[cs:ce]
            for i in range(m):
                oc[i] += dec[i]
        else:
            _patterns(exps[cs:ce], sgn, out[cs:ce].view(np.uint32))


@kernel
def _natural_decode(exps, signs, n, out, accumulate, sw, dbits):
    p16, p32, p64 = _word_views(signs)
    _decode_range(exps, signs, p16, p32, p64, out, accumulate, sw, dbits, 0, n)


@kernel(parallel=True)
def _natural_decode_par(exps, signs, n, out, accumulate, sw, dbits):
    for u in prange(chunk_count(n)):
        p16, p32, p64 = _word_views(signs)
        _decode_range(exps, signs, p16, p32, p64, out, accumulate, np.empty(sw.shape[0], np.uint64),
                      np.empty(dbits.shape[0], np.uint32), u * PAR_CHUNK, min(n, (u + 1) * PAR_CHUNK))


def natural_encode(x, seed, residual=None, exps=None, signs=None):
    """Round ``x`` stochastically to powers of two; returns ``(exponents uint8[n], signs uint8[ceil(n/8)])``.

    ``seed`` in [0, 2**64).  ``residual`` (optional, float32, length n,
    updated in place): fused error feedback, see the module docstring.
    ``exps`` and ``signs`` (optional): the output arrays, of exactly their
    lengths (e.g. views of a packet's payload).
    """
    seed = check_seed(seed)
    x = as_f32(x)
    n = x.shape[0]
    exps = encode_out(exps, n, _U8, "exps")
    signs = encode_out(signs, (n + 7) // 8, _U8, "signs")
    return _natural_encode_trusted(x, seed, check_residual(residual, n), exps, signs)


#: the empty error-feedback scratch of an encode without residual (never written: its size is 0)
_NO_VBUF = np.empty(0, np.float32)
_NO_DBITS = np.empty(0, np.uint32)
_U8 = np.dtype(np.uint8)


def _natural_encode_trusted(x, seed, residual=None, exps=None, signs=None):
    """:func:`natural_encode` after its argument checks (its body), for a caller whose arguments are valid already
    (``x`` a 1-D contiguous float32 array; ``seed`` an int in [0, 2**64); ``residual`` None or checked; the
    outputs both None, or both writeable arrays of exactly their lengths)."""
    n = x.shape[0]
    if exps is None:
        exps = np.empty(n, dtype=np.uint8)
        signs = np.empty((n + 7) // 8, dtype=np.uint8)
    chunk = min(_CHUNK, n)
    sw = np.empty((chunk + 7) // 8, dtype=np.uint64)
    vbuf = _NO_VBUF if residual is None else np.empty(chunk, dtype=np.float32)
    dbits = _NO_DBITS if residual is None else np.empty(chunk, dtype=np.uint32)
    config.run(n, _natural_encode, _natural_encode_par, x, residual, np.uint64(seed), exps, signs, sw, vbuf, dbits)
    return exps, signs


def natural_decode(exponents, signs, n, out=None, accumulate=False):
    """Decode ``(exponents, signs)`` to float32[n] (see the module docstring).

    With ``accumulate=True`` the values are added into ``out`` (required).
    """
    n = check_int(n, "n", 0)
    exponents = check_packed(exponents, n, "exponents")
    signs = check_packed(signs, (n + 7) // 8, "signs")
    out = decode_out(out, n, accumulate)
    chunk = min(_CHUNK, n)
    sw = np.empty((chunk + 7) // 8, dtype=np.uint64)
    dbits = np.empty(chunk if accumulate else 0, dtype=np.uint32)
    config.run(n, _natural_decode, _natural_decode_par, exponents, signs, n, out, bool(accumulate), sw, dbits)
    return out if out.shape[0] == n else out[:n]
