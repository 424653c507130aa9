"""float32 <-> float16 and bfloat16 casts: the kernels of the ``fp16`` and ``bf16`` compressors.

numpy's ``astype(np.float16)`` runs a scalar routine per element (about 0.5
GB/s here, 90 microseconds for 1e4 elements); these kernels do the same
integer rounding on the bit patterns in a vectorizable loop.  They give the
same bits as numpy for every input, on every machine and thread count:

* float32 -> float16: round to nearest, ties to even; magnitudes from 65520
  on become +-Inf; float16 subnormals are rounded the same way; the sign of
  zero is kept; NaN stays NaN with the top 10 payload bits kept (a payload
  that would vanish becomes 1, as numpy does).  No overflow warning is raised.
* float16 -> float32: exact (every float16 value is a float32 value); NaN
  payloads are kept.
* float32 -> bfloat16: round to nearest even on the top 16 bits; every NaN
  becomes the quiet NaN ``0x7FC0`` (the ``bf16`` wire format's rule).
* bfloat16 -> float32: exact (a shift).

Vectors of at least :data:`gcomp.kernels.config.PARALLEL_MIN` entries run on
Numba's threads when there are several (elementwise, so the result cannot
depend on the thread count).
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from . import config
from ._checks import out_array
from ._units import chunk_count
from .config import PAR_CHUNK, kernel

__all__ = ["to_float16", "from_float16", "add_float16", "to_bfloat16_bits", "from_bfloat16_bits", "add_bfloat16_bits"]


# ---------------------------------------------------------------------------
# kernels (integer arithmetic in int64, selects instead of branches: LLVM vectorizes them)
# ---------------------------------------------------------------------------


@intrinsic
def _as_f32(typingctx, u):
    """The float32 whose bit pattern is the uint32 ``u`` (a bitcast, no conversion)."""
    if u != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(u), codegen


@intrinsic
def _as_u32(typingctx, f):
    """The bit pattern (uint32) of the float32 ``f``."""
    if f != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(f), codegen


@kernel
def _f16_bits(f):
    """The float16 bit pattern of the float32 bit pattern ``f`` (numpy's rounding; module docstring)."""
    f = np.int64(f)
    sign = (f >> 16) & 0x8000
    a = f & 0x7FFFFFFF
    # normal float16 (2**-14 <= |x| < 65520): rebias the exponent, round the 13 dropped bits to even
    n = (a - 0x38000000) >> 13
    n += (a & 0x1FFF) + (n & 1) > 0x1000
    # float16 subnormal or zero (|x| < 2**-14): mant * 2**(e - 126) rounded to an integer, ties to even
    e = a >> 23
    s = min(max(126 - e, 0), 25)
    mant = (a & 0x7FFFFF) | 0x800000
    q = mant >> s
    halfbit = ((mant << 1) >> s) & 1
    sticky = mant & ((1 << max(s - 1, 0)) - 1)
    q += halfbit & ((sticky != 0) | (q & 1))
    # NaN: quiet bit not forced, the top 10 payload bits kept, never all zero
    p = (a & 0x7FFFFF) >> 13
    r = n
    r = q if a < 0x38800000 else r
    r = 0x7C00 if a >= 0x477FF000 else r
    r = (0x7C00 | p | (p == 0)) if a > 0x7F800000 else r
    return np.uint16(sign | r)


@kernel
def _to_f16(bits, out):
    for i in range(bits.shape[0]):
        out[i] = _f16_bits(bits[i])


@kernel(parallel=True)
def _to_f16_par(bits, out):
    n = bits.shape[0]
    for u in prange(chunk_count(n)):
        s = u * PAR_CHUNK
        _to_f16(bits[s: min(n, s + PAR_CHUNK)], out[s: min(n, s + PAR_CHUNK)])


@kernel
def _f16_value(h):
    """The float32 value of the float16 bit pattern ``h`` (exact)."""
    h = np.int64(h)
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    r = ((e + 112) << 23) | (m << 13)
    r = (0x7F800000 | (m << 13)) if e == 31 else r
    r = np.int64(_as_u32(np.float32(m) * np.float32(2.0**-24))) if e == 0 else r
    return _as_f32(np.uint32(sign | r))


@kernel
def _from_f16(h, out):
    for i in range(h.shape[0]):
        out[i] = _f16_value(h[i])


@kernel(parallel=True)
def _from_f16_par(h, out):
    n = h.shape[0]
    for u in prange(chunk_count(n)):
        s = u * PAR_CHUNK
        _from_f16(h[s: min(n, s + PAR_CHUNK)], out[s: min(n, s + PAR_CHUNK)])


@kernel
def _add_f16(h, acc):
    """``acc += float32(h)`` (exact conversion, one float32 add per element)."""
    for i in range(h.shape[0]):
        acc[i] += _f16_value(h[i])


@kernel(parallel=True)
def _add_f16_par(h, acc):
    n = h.shape[0]
    for u in prange(chunk_count(n)):
        s = u * PAR_CHUNK
        _add_f16(h[s: min(n, s + PAR_CHUNK)], acc[s: min(n, s + PAR_CHUNK)])


@kernel
def _to_bf16(bits, out):
    for i in range(bits.shape[0]):
        f = bits[i]
        r = (f + (((f >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF))) >> np.uint32(16)
        if (f & np.uint32(0x7FFFFFFF)) > 0x7F800000:
            r = np.uint32(0x7FC0)
        out[i] = np.uint16(r)


@kernel(parallel=True)
def _to_bf16_par(bits, out):
    n = bits.shape[0]
    for u in prange(chunk_count(n)):
        s = u * PAR_CHUNK
        _to_bf16(bits[s: min(n, s + PAR_CHUNK)], out[s: min(n, s + PAR_CHUNK)])


@kernel
def _from_bf16(b, out):
    for i in range(b.shape[0]):
        out[i] = np.uint32(b[i]) << np.uint32(16)


@kernel(parallel=True)
def _from_bf16_par(b, out):
    n = b.shape[0]
    for u in prange(chunk_count(n)):
        s = u * PAR_CHUNK
        _from_bf16(b[s: min(n, s + PAR_CHUNK)], out[s: min(n, s + PAR_CHUNK)])


@kernel
def _add_bf16(b, acc):
    """``acc += float32(b)`` (exact conversion, one float32 add per element)."""
    for i in range(b.shape[0]):
        acc[i] += _as_f32(np.uint32(np.uint32(b[i]) << np.uint32(16)))


@kernel(parallel=True)
def _add_bf16_par(b, acc):
    n = b.shape[0]
    for u in prange(chunk_count(n)):
        s = u * PAR_CHUNK
        _add_bf16(b[s: min(n, s + PAR_CHUNK)], acc[s: min(n, s + PAR_CHUNK)])


# ---------------------------------------------------------------------------
# wrappers
# ---------------------------------------------------------------------------

_F32 = np.dtype(np.float32)


def _f32_input(x):
    if type(x) is not np.ndarray or x.dtype is not _F32 or x.ndim != 1 or not x.flags.c_contiguous:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"expected x to be a numpy array, found {type(x).__name__}")
        raise ValueError(f"expected x to be a 1-D C-contiguous float32 array, found ndim={x.ndim} dtype={x.dtype} "
                         f"contiguous={x.flags.c_contiguous}")
    return x


def _u16_input(h, name, dtypes):
    if not isinstance(h, np.ndarray):
        raise TypeError(f"expected {name} to be a numpy array, found {type(h).__name__}")
    if h.dtype not in dtypes or h.ndim != 1:
        raise ValueError(f"expected {name} to be a 1-D array of dtype {' or '.join(np.dtype(d).name for d in dtypes)}, "
                         f"found ndim={h.ndim} dtype={h.dtype}")
    return np.ascontiguousarray(h).view(np.uint16)


def _exact(out, n):
    return out if out.shape[0] == n else out[:n]


def to_float16(x, out=None):
    """float32 -> float16 (numpy's rounding, bit for bit; module docstring). Returns a float16 array."""
    x = _f32_input(x)
    n = x.shape[0]
    out = _exact(out_array(out, n, np.float16), n)
    config.run(n, _to_f16, _to_f16_par, x.view(np.uint32), out.view(np.uint16))
    return out


def from_float16(h, out=None):
    """float16 (or its uint16 bit patterns) -> float32, exactly. Returns ``out`` or a new array."""
    h = _u16_input(h, "h", (np.float16, np.uint16))
    n = h.shape[0]
    out = _exact(out_array(out, n, np.float32), n)
    config.run(n, _from_f16, _from_f16_par, h, out)
    return out


def add_float16(h, acc):
    """``acc += float32(h)`` in place (exact conversion, one float32 add per element); returns ``acc``."""
    h = _u16_input(h, "h", (np.float16, np.uint16))
    _check_acc(acc, h.shape[0])
    config.run(h.shape[0], _add_f16, _add_f16_par, h, acc)
    return acc


def _check_acc(acc, n):
    if type(acc) is not np.ndarray or acc.dtype is not _F32 or acc.ndim != 1 or not acc.flags.c_contiguous \
            or not acc.flags.writeable or acc.shape[0] != n:
        raise ValueError(f"expected acc to be a writeable 1-D C-contiguous float32 array of {n} entries, "
                         f"found {getattr(acc, 'dtype', type(acc).__name__)} {getattr(acc, 'shape', '')}")


def to_bfloat16_bits(x, out=None):
    """float32 -> bfloat16 bit patterns (uint16): round to nearest even; every NaN becomes ``0x7FC0``."""
    x = _f32_input(x)
    n = x.shape[0]
    out = _exact(out_array(out, n, np.uint16), n)
    config.run(n, _to_bf16, _to_bf16_par, x.view(np.uint32), out)
    return out


def from_bfloat16_bits(b, out=None):
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    b = _u16_input(b, "b", (np.uint16,))
    n = b.shape[0]
    out = _exact(out_array(out, n, np.float32), n)
    config.run(n, _from_bf16, _from_bf16_par, b, out.view(np.uint32))
    return out


def add_bfloat16_bits(b, acc):
    """``acc += float32(b)`` in place for bfloat16 bit patterns ``b`` (exact conversion, one float32 add per
    element: the bits of ``acc += from_bfloat16_bits(b)``, without the dense temporary); returns ``acc``."""
    b = _u16_input(b, "b", (np.uint16,))
    _check_acc(acc, b.shape[0])
    config.run(b.shape[0], _add_bf16, _add_bf16_par, b, acc)
    return acc
