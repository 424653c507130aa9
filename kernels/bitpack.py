"""Packing and unpacking 1, 2, 4 and 8-bit codes, LSB-first.

Element ``i`` of a code vector packed at ``bits`` bits occupies bits
``[(i*bits) % 8, (i*bits) % 8 + bits)`` of byte ``(i*bits) // 8``; the unused
high bits of a partial last byte are zero.  Only the low ``bits`` bits of each
code are stored.

The inner helpers work on whole 64-bit words, eight codes at a time (a
multiply gathers eight 1-bit codes into a byte, shift-and-mask ladders squeeze
2- and 4-bit codes), so they vectorize.  :func:`_pack_into` /
:func:`_unpack_from` take any offsets; the quantizer modules (``qsgd``,
``uniform``, ``sign``, ``terngrad``, ``natural``) instead make the word views
once per call (:func:`_word_views`) and, for each chunk of a bucket, call
:func:`_pack_words` / :func:`_unpack_words` on an L1-resident scratch of codes
(uint64 words) plus :func:`_pack_tail` / :func:`_unpack_tail` for a partial
last word.  (Keep those two calls separate in the caller: LLVM inlines
``_pack_words`` but not a helper that also contains the tail loops, and an
out-of-line call with a dozen array arguments costs ~100 ns per chunk.)  The helpers read and write 8/16/32/64-bit words through array
views, possibly unaligned (user-supplied arrays); unaligned word access is fine
on every target numba supports (x86-64, AArch64, ppc64le).

The argument checks shared by the quantizer wrappers (``check_bits``,
``check_bucket_size``, ``check_packed``, ``check_scales``, ``check_residual``,
``decode_out``) live here too; they raise ``TypeError`` / ``ValueError`` with
"expected ..., found ..." messages like :mod:`gcomp.kernels._checks`.

This module also holds two bitcast intrinsics, :func:`_f32_bits` /
:func:`_bits_f32` (numba has no scalar ``view``): integer min/max reductions
over bit patterns vectorize where float ones cannot (without ``nnan``, LLVM
keeps a float min/max reduction scalar), an explicit fused multiply-add,
:func:`_fma_f32` (uniform's ``offset + scale * code``), and the per-element
uniform draws the quantizers share,
:func:`_uniform01_u32` and :func:`_rand32_u32`: bit-identical to
:func:`gcomp.kernels.random.uniform01` / :func:`~gcomp.kernels.random.rand32`
at element index ``i`` (the counter is ``uint32(i)``, exactly as there), but
written so every intermediate stays 32 bits wide.  ``random.uniform01`` widens
its second hash round to 64-bit lanes, and on AVX-512 machines those 512-bit
integer multiplies halve the throughput of the whole quantization loop.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from . import config
from ._checks import check_int, out_array
from .config import PAR_CHUNK, kernel
from .random import _lowbias32

__all__ = ["BITS", "packed_size", "pack_bits", "unpack_bits"]

#: code widths supported everywhere
BITS = (1, 2, 4, 8)

_U8 = np.dtype(np.uint8)
_F32 = np.dtype(np.float32)

_U1 = np.uint64(0x0101010101010101)
_U2 = np.uint64(0x0303030303030303)
_U4 = np.uint64(0x0F0F0F0F0F0F0F0F)


def check_bits(bits, name="bits"):
    """``bits`` must be one of 1, 2, 4, 8 (returned as an int)."""
    if type(bits) is int and bits in BITS:
        return bits  # the common case: a plain int that is allowed
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"expected an integer {name} in (1, 2, 4, 8), found {type(bits).__name__} {bits!r}")
    if int(bits) not in BITS:
        raise ValueError(f"expected {name} in (1, 2, 4, 8), found {bits}")
    return int(bits)


def check_bucket_size(bucket_size):
    """A positive multiple of 8, so each bucket starts on a byte boundary of the packed codes."""
    if type(bucket_size) is int and bucket_size > 0 and not bucket_size & 7:
        return bucket_size  # the common case, in two tests
    bucket_size = check_int(bucket_size, "bucket_size")
    if bucket_size <= 0 or bucket_size % 8:
        raise ValueError(f"expected bucket_size to be a positive multiple of 8, found {bucket_size}")
    return bucket_size


def check_packed(packed, nbytes, name="packed"):
    """``packed``: a 1-D uint8 array of at least ``nbytes`` bytes (made C-contiguous)."""
    if type(packed) is np.ndarray and packed.dtype is _U8 and packed.ndim == 1 and packed.flags.c_contiguous \
            and packed.shape[0] >= nbytes:
        return packed  # the common case, decided in attribute reads (what the checks below would return)
    if not isinstance(packed, np.ndarray):
        raise TypeError(f"expected {name} to be a numpy array, found {type(packed).__name__}")
    if packed.dtype != np.uint8:
        raise TypeError(f"expected {name} of dtype uint8, found {packed.dtype}")
    if packed.ndim != 1:
        raise ValueError(f"expected {name} to be 1-D, found shape {packed.shape}")
    if packed.shape[0] < nbytes:
        raise ValueError(f"expected {name} to hold at least {nbytes} bytes, found {packed.shape[0]}")
    return np.ascontiguousarray(packed)


def check_scales(scales, nbuckets, name):
    """Per-bucket float32 parameters: a 1-D float array with exactly ``nbuckets`` entries."""
    if type(scales) is np.ndarray and scales.dtype is _F32 and scales.ndim == 1 and scales.flags.c_contiguous \
            and scales.shape[0] == nbuckets:
        return scales  # the common case (what the checks below would return)
    if not isinstance(scales, np.ndarray):
        raise TypeError(f"expected {name} to be a numpy array, found {type(scales).__name__}")
    if scales.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"expected {name} of dtype float16, float32 or float64, found {scales.dtype}")
    if scales.ndim != 1 or scales.shape[0] != nbuckets:
        raise ValueError(f"expected {name} to be 1-D with {nbuckets} entries (one per bucket), found shape {scales.shape}")
    return np.ascontiguousarray(scales, dtype=np.float32)


def decode_out(out, n, accumulate):
    """The float32 output of a decoder: ``out`` checked, or a new array; ``accumulate`` needs ``out``."""
    if type(accumulate) is bool and type(out) is np.ndarray and out.dtype is _F32 and out.ndim == 1 \
            and out.flags.c_contiguous and out.flags.writeable and out.shape[0] >= n:
        return out  # the common case: a caller's buffer that passes every check of out_array
    if not isinstance(accumulate, (bool, np.bool_)):
        raise TypeError(f"expected accumulate to be a bool, found {type(accumulate).__name__}")
    if accumulate and out is None:
        raise ValueError("expected out when accumulate=True (decoded values are added into it), found None")
    return out_array(out, n, np.float32)


def encode_out(out, size, dtype, name):
    """An encoder's output array: a new one of ``size`` entries for None, else ``out`` checked to be a writeable
    1-D C-contiguous array of ``dtype`` with exactly ``size`` entries (a packet's payload view, aligned or not)."""
    if out is None:
        return np.empty(size, dtype=dtype)
    if type(out) is np.ndarray and out.dtype is dtype and out.ndim == 1 and out.shape[0] == size \
            and out.flags.c_contiguous and out.flags.writeable:
        return out
    if not isinstance(out, np.ndarray):
        raise TypeError(f"expected {name} to be a numpy array, found {type(out).__name__}")
    raise ValueError(f"expected {name} to be a writeable 1-D C-contiguous {np.dtype(dtype)} array of {size} entries, "
                     f"found dtype={out.dtype} shape={out.shape} contiguous={out.flags.c_contiguous} "
                     f"writeable={out.flags.writeable}")


def check_residual(residual, n):
    """``residual``: None, or a writeable contiguous float32 vector of length ``n``."""
    if residual is None:
        return None
    if type(residual) is np.ndarray and residual.dtype is _F32 and residual.ndim == 1 and residual.shape[0] == n \
            and residual.flags.c_contiguous and residual.flags.writeable:
        return residual  # the common case
    if not isinstance(residual, np.ndarray):
        raise TypeError(f"expected residual to be a numpy array, found {type(residual).__name__}")
    if residual.dtype != np.float32:
        raise TypeError(f"expected residual of dtype float32 (it is updated in place), found {residual.dtype}")
    if residual.ndim != 1 or not residual.flags.c_contiguous or not residual.flags.writeable:
        raise ValueError(
            "expected residual to be a writeable 1-D C-contiguous float32 array, "
            f"found ndim={residual.ndim} contiguous={residual.flags.c_contiguous} writeable={residual.flags.writeable}"
        )
    if residual.shape[0] != n:
        raise ValueError(f"expected residual of length {n} (the length of x), found {residual.shape[0]}")
    return residual


def packed_size(n, bits):
    """Bytes needed for ``n`` codes of ``bits`` bits: ``ceil(n * bits / 8)``."""
    n = check_int(n, "n", 0)
    bits = check_bits(bits)
    return (n * bits + 7) // 8


@kernel
def _packed_size(n, bits):
    return (n * bits + 7) >> 3


@kernel
def _word_views(buf):
    """uint16, uint32 and uint64 views of the longest prefixes of the uint8 array ``buf`` they fit.

    A view costs tens of nanoseconds in numba, so kernels make these once per
    call and index them by word, not once per bucket.
    """
    n = buf.shape[0]
    return buf[: n & ~1].view(np.uint16), buf[: n & ~3].view(np.uint32), buf[: n & ~7].view(np.uint64)


@kernel
def _pack_words(src, nw, bits, out, out16, out32, out64, byte_offset):
    """Pack the codes in ``src[:nw]`` (uint64 words, 8 codes each) into ``out`` from ``byte_offset``.

    ``out16/32/64`` are :func:`_word_views` of ``out``; ``byte_offset`` must be a
    multiple of ``bits`` (true at every multiple-of-8 element).  Writes ``nw * bits`` bytes.
    """
    if bits == 1:
        d1 = out[byte_offset : byte_offset + nw]
        for j in range(nw):
            d1[j] = np.uint8(((src[j] & _U1) * np.uint64(0x0102040810204080)) >> np.uint64(56))
    elif bits == 2:
        d2 = out16[byte_offset >> 1 : (byte_offset >> 1) + nw]
        for j in range(nw):
            y = src[j] & _U2
            y = (y | (y >> np.uint64(6))) & np.uint64(0x000F000F000F000F)
            y = (y | (y >> np.uint64(12))) & np.uint64(0x000000FF000000FF)
            y = y | (y >> np.uint64(24))
            d2[j] = np.uint16(y & np.uint64(0xFFFF))
    elif bits == 4:
        d4 = out32[byte_offset >> 2 : (byte_offset >> 2) + nw]
        for j in range(nw):
            y = src[j] & _U4
            y = (y | (y >> np.uint64(4))) & np.uint64(0x00FF00FF00FF00FF)
            y = (y | (y >> np.uint64(8))) & np.uint64(0x0000FFFF0000FFFF)
            y = y | (y >> np.uint64(16))
            d4[j] = np.uint32(y & np.uint64(0xFFFFFFFF))
    else:
        d8 = out64[byte_offset >> 3 : (byte_offset >> 3) + nw]
        for j in range(nw):
            d8[j] = src[j]


@kernel
def _unpack_words(packed, p16, p32, p64, byte_offset, nw, bits, dst):
    """Unpack ``8 * nw`` codes from ``packed`` at ``byte_offset`` into the uint64 words ``dst[:nw]``.

    ``p16/32/64`` are :func:`_word_views` of ``packed``; ``byte_offset`` a multiple of ``bits``.
    """
    if bits == 1:
        s1 = packed[byte_offset : byte_offset + nw]
        for j in range(nw):
            y = (np.uint64(s1[j]) * _U1) & np.uint64(0x8040201008040201)
            dst[j] = ((y + np.uint64(0x7F7F7F7F7F7F7F7F)) >> np.uint64(7)) & _U1
    elif bits == 2:
        s2 = p16[byte_offset >> 1 : (byte_offset >> 1) + nw]
        for j in range(nw):
            y = np.uint64(s2[j])
            y = (y | (y << np.uint64(24))) & np.uint64(0x000000FF000000FF)
            y = (y | (y << np.uint64(12))) & np.uint64(0x000F000F000F000F)
            dst[j] = (y | (y << np.uint64(6))) & _U2
    elif bits == 4:
        s4 = p32[byte_offset >> 2 : (byte_offset >> 2) + nw]
        for j in range(nw):
            y = np.uint64(s4[j])
            y = (y | (y << np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
            y = (y | (y << np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
            dst[j] = (y | (y << np.uint64(4))) & _U4
    else:
        s8 = p64[byte_offset >> 3 : (byte_offset >> 3) + nw]
        for j in range(nw):
            dst[j] = s8[j]


@kernel
def _pack_tail(codes, start, count, bits, out, byte_offset):
    """Pack ``count <= 8`` codes ``codes[start:start+count]`` byte by byte (the partial last word)."""
    mask = np.uint64((1 << bits) - 1)
    acc = np.uint64(0)
    for k in range(count):
        acc |= (np.uint64(codes[start + k]) & mask) << np.uint64(k * bits)
    for t in range((count * bits + 7) >> 3):
        out[byte_offset + t] = np.uint8((acc >> np.uint64(8 * t)) & np.uint64(0xFF))


@kernel
def _unpack_tail(packed, byte_offset, count, bits, out, start):
    """Unpack ``count <= 8`` codes byte by byte (the partial last word)."""
    mask = np.uint64((1 << bits) - 1)
    acc = np.uint64(0)
    for t in range((count * bits + 7) >> 3):
        acc |= np.uint64(packed[byte_offset + t]) << np.uint64(8 * t)
    for k in range(count):
        out[start + k] = np.uint8((acc >> np.uint64(k * bits)) & mask)


@kernel
def _pack_into(codes, start, count, bits, out, byte_offset):
    """Pack ``codes[start:start+count]`` (low ``bits`` bits each) into ``out`` from ``byte_offset``.

    Any alignment; writes ``ceil(count*bits/8)`` bytes, a partial last byte
    whole with its unused high bits zero.  Makes its own word views (cheap for
    one call, but kernels looping over buckets call :func:`_pack_words` and
    :func:`_pack_tail` on views made once).
    """
    nw = count >> 3
    src = codes[start : start + 8 * nw].view(np.uint64)
    dst = out[byte_offset : byte_offset + nw * bits]
    d16, d32, d64 = _word_views(dst)
    _pack_words(src, nw, bits, dst, d16, d32, d64, 0)
    if count & 7:
        _pack_tail(codes, start + 8 * nw, count & 7, bits, out, byte_offset + nw * bits)


@kernel
def _unpack_from(packed, byte_offset, count, bits, out, start):
    """Unpack ``count`` codes of ``bits`` bits from ``packed[byte_offset:]`` into ``out[start:start+count]``."""
    nw = count >> 3
    src = packed[byte_offset : byte_offset + nw * bits]
    s16, s32, s64 = _word_views(src)
    _unpack_words(src, s16, s32, s64, 0, nw, bits, out[start : start + 8 * nw].view(np.uint64))
    if count & 7:
        _unpack_tail(packed, byte_offset + nw * bits, count & 7, bits, out, start + 8 * nw)


@kernel(parallel=True)
def _pack_par(codes, bits, out):
    """:func:`_pack_into` of all of ``codes`` in :data:`PAR_CHUNK` units (each starts on a byte)."""
    n = codes.shape[0]
    for u in prange((n + PAR_CHUNK - 1) // PAR_CHUNK):
        s = u * PAR_CHUNK
        e = min(s + PAR_CHUNK, n)
        _pack_into(codes, s, e - s, bits, out, (s * bits) >> 3)


@kernel
def _pack_all(codes, bits, out):
    _pack_into(codes, 0, codes.shape[0], bits, out, 0)


@kernel(parallel=True)
def _unpack_par(packed, bits, n, out):
    for u in prange((n + PAR_CHUNK - 1) // PAR_CHUNK):
        s = u * PAR_CHUNK
        e = min(s + PAR_CHUNK, n)
        _unpack_from(packed, (s * bits) >> 3, e - s, bits, out, s)


@kernel
def _unpack_all(packed, bits, n, out):
    _unpack_from(packed, 0, n, bits, out, 0)


@intrinsic
def _f32_bits(typingctx, x):
    """The IEEE bit pattern of a float32 as an int32 (a register bitcast, vectorizable)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, b):
    """The float32 whose IEEE bit pattern is the int32 ``b`` (inverse of :func:`_f32_bits`)."""
    if b != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _fma_f32(typingctx, a, b, c):
    """``a * b + c`` rounded once (``llvm.fma.f32``): the same bits whatever the compiler fuses or not."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(args[0], args[1], args[2])

    return types.float32(types.float32, types.float32, types.float32), codegen


@kernel
def _rand32_u32(key, c):
    """``random.rand32(key, c)`` for a uint32 counter ``c``, every step in 32-bit lanes."""
    return np.uint32(_lowbias32(np.uint32(np.uint32(np.uint32(c) ^ np.uint32(key)) + np.uint32(0x9E3779B9))))


@kernel
def _uniform01_u32(key, c):
    """``random.uniform01(key, c)`` (same bits) for a uint32 counter ``c``: 24 random bits in [0, 1)."""
    r = _rand32_u32(key, c)
    return np.float32(np.int32(r >> np.uint32(8))) * np.float32(1.0 / 16777216.0)


def pack_bits(codes, bits, out=None):
    """Pack uint8 ``codes`` at ``bits`` bits each (LSB-first); returns ``uint8[packed_size(n, bits)]``.

    Only the low ``bits`` bits of each code are stored.  ``out``, if given,
    must be a writeable contiguous uint8 array of at least that many bytes
    (only the first ``packed_size`` bytes are written).
    """
    bits = check_bits(bits)
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"expected codes to be a numpy array, found {type(codes).__name__}")
    if codes.dtype != np.uint8:
        raise TypeError(f"expected codes of dtype uint8, found {codes.dtype}")
    if codes.ndim != 1:
        raise ValueError(f"expected codes to be 1-D, found shape {codes.shape}")
    codes = np.ascontiguousarray(codes)
    n = codes.shape[0]
    size = (n * bits + 7) // 8
    out = out_array(out, size, np.uint8)
    config.run(n, _pack_all, _pack_par, codes, bits, out)
    return out if out.shape[0] == size else out[:size]


def unpack_bits(packed, bits, n, out=None):
    """Unpack ``n`` codes of ``bits`` bits from ``packed``; returns ``uint8[n]``."""
    bits = check_bits(bits)
    n = check_int(n, "n", 0)
    packed = check_packed(packed, (n * bits + 7) // 8)
    out = out_array(out, n, np.uint8)
    config.run(n, _unpack_all, _unpack_par, packed, bits, n, out)
    return out if out.shape[0] == n else out[:n]
