"""Sparse index coding: ascending int64 indices as delta+varint or as a bitmap.

Two encodings of a strictly ascending set of indices in ``[0, n)``:

* **varint** -- gap ``g_i = idx_i - idx_{i-1} - 1`` (with ``idx_{-1} = -1``)
  written as unsigned LEB128: seven bits per byte, low group first, the high
  bit of a byte set when another byte follows.  A gap takes
  ``max(1, ceil(bits(g) / 7))`` bytes, at most 10 for 64 bits.
* **bitmap** -- ``ceil(n / 8)`` bytes, LSB-first: index ``i`` is bit ``i % 8``
  of byte ``i // 8`` (``np.packbits(..., bitorder="little")``).  Padding bits
  past ``n`` are zero.

:func:`best_index_coding` picks the smaller one (ties go to varint).

The decoders sit under a wire decoder, so they treat their input as hostile:
they never read or write out of bounds, never loop more than once per input
byte (or word), and reject -- with ``ValueError`` -- every byte string the
encoders would not have produced: truncation, a varint longer than 10 bytes,
a varint overflowing 64 bits, a non-canonical varint (a redundant trailing
zero group, e.g. ``80 00`` for 0), an index ``>= n``, trailing unused bytes,
a bitmap of the wrong length, padding bits set, or a popcount other than the
expected count.  Every valid encoding therefore has exactly one byte string.

The bit helpers :func:`ctz64`, :func:`clz64` and :func:`popcount64` (LLVM
intrinsics: ``tzcnt`` / ``lzcnt`` / ``popcnt`` on x86-64) are usable from
any kernel.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

from ._checks import check_int, out_array
from .config import kernel

__all__ = [
    "ctz64",
    "clz64",
    "popcount64",
    "varint_size",
    "varint_encode",
    "varint_decode",
    "bitmap_size",
    "bitmap_encode",
    "bitmap_decode",
    "best_index_coding",
]

_INT64_MAX = (1 << 63) - 1

# ---------------------------------------------------------------------------
# bit intrinsics
# ---------------------------------------------------------------------------


def _unary_bit_intrinsic(emit):
    def typer(typingctx, x):
        if not isinstance(x, types.Integer):
            return None
        sig = types.int64(x)

        def codegen(context, builder, signature, args):
            v = context.cast(builder, args[0], signature.args[0], types.uint64)
            return emit(builder, v)

        return sig, codegen

    return typer


def _emit_cttz(builder, v):
    return builder.cttz(v, ir.Constant(ir.IntType(1), 0))


def _emit_ctlz(builder, v):
    return builder.ctlz(v, ir.Constant(ir.IntType(1), 0))


def _emit_ctpop(builder, v):
    return builder.ctpop(v)


ctz64 = intrinsic(_unary_bit_intrinsic(_emit_cttz))
ctz64.__doc__ = "Trailing zero bits of an integer taken as uint64 (64 for 0), as int64."
clz64 = intrinsic(_unary_bit_intrinsic(_emit_ctlz))
clz64.__doc__ = "Leading zero bits of an integer taken as uint64 (64 for 0), as int64."
popcount64 = intrinsic(_unary_bit_intrinsic(_emit_ctpop))
popcount64.__doc__ = "Set bits of an integer taken as uint64, as int64."

# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------

# status codes shared by the validation and decoding kernels
OK = 0
NEGATIVE = 1  # an index < 0 (encoders)
NOT_ASCENDING = 2  # an index <= its predecessor (encoders)
OUT_OF_RANGE = 3  # an index >= n
TRUNCATED = 4  # the buffer ended inside the stream
TOO_LONG = 5  # a varint longer than 10 bytes
OVERFLOW = 6  # a varint whose value does not fit 64 bits
NON_CANONICAL = 7  # a varint with a redundant trailing zero group
TRAILING = 8  # bytes left after the last index


@kernel
def _check_ascending_size(indices, n):
    """Validate strictly ascending indices in [0, n) (n < 0: no upper bound).

    Returns ``(status, position, varint_bytes)``; ``varint_bytes`` is the
    LEB128 size of the gaps when the status is OK.
    """
    m = indices.shape[0]
    if m == 0:
        return OK, 0, 0
    first = indices[0]
    if first < 0:
        return NEGATIVE, 0, 0
    # A branch-free (vectorizable) pass accumulates a violation count and the
    # size; the first violation is located only when there is one.
    bad = 0
    size = (64 - clz64(first | 1) + 6) // 7
    for i in range(1, m):
        cur = indices[i]
        prev = indices[i - 1]
        bad += cur <= prev
        bits = 64 - clz64((cur - prev - 1) | 1)
        size += (bits + 6) // 7
    if bad:
        prev = np.int64(-1)
        for i in range(m):
            cur = indices[i]
            if cur <= prev:
                if cur < 0:
                    return NEGATIVE, i, 0
                return NOT_ASCENDING, i, 0
            prev = cur
    if n >= 0 and indices[m - 1] >= n:
        return OUT_OF_RANGE, m - 1, 0
    return OK, 0, size


@kernel
def _varint_encode(indices, out):
    """LEB128 gaps of validated ascending ``indices`` into ``out``; returns bytes written."""
    p = 0
    prev = np.int64(-1)
    for i in range(indices.shape[0]):
        cur = indices[i]
        g = np.uint64(cur - prev - 1)
        prev = cur
        while g >= np.uint64(0x80):
            out[p] = np.uint8((g & np.uint64(0x7F)) | np.uint64(0x80))
            g >>= np.uint64(7)
            p += 1
        out[p] = np.uint8(g)
        p += 1
    return p


@kernel
def _varint_decode(buf, count, n, out):
    """Decode ``count`` LEB128 gaps from ``buf`` into ``out`` (indices < n).

    Returns ``(status, item, byte_offset)``; on error ``item`` is the index
    being decoded and ``byte_offset`` the position reached.  Never reads past
    ``buf``, never writes past ``out[count - 1]``.
    """
    nb = buf.shape[0]
    un = np.uint64(n)
    p = 0
    prev = np.int64(-1)
    for i in range(count):
        if p >= nb:
            return TRUNCATED, i, p
        b = np.uint64(buf[p])
        p += 1
        if b < np.uint64(0x80):
            gap = b
        else:
            gap = b & np.uint64(0x7F)
            shift = np.uint64(7)
            while True:
                if p >= nb:
                    return TRUNCATED, i, p
                b = np.uint64(buf[p])
                p += 1
                if shift == np.uint64(63):
                    # tenth byte: one payload bit left and no continuation allowed
                    if b >= np.uint64(0x80):
                        return TOO_LONG, i, p
                    if b > np.uint64(1):
                        return OVERFLOW, i, p
                gap |= (b & np.uint64(0x7F)) << shift
                if b < np.uint64(0x80):
                    if b == np.uint64(0):
                        return NON_CANONICAL, i, p
                    break
                shift += np.uint64(7)
        # prev + 1 <= n here, so the subtraction cannot wrap
        if gap >= un - np.uint64(prev + 1):
            return OUT_OF_RANGE, i, p
        prev = prev + np.int64(1) + np.int64(gap)
        out[i] = prev
    if p != nb:
        return TRAILING, count, p
    return OK, count, p


@kernel
def _load64(buf, j):
    """Little-endian uint64 from ``buf[j:j+8]`` (LLVM fuses this into one load)."""
    return (
        np.uint64(buf[j])
        | (np.uint64(buf[j + 1]) << np.uint64(8))
        | (np.uint64(buf[j + 2]) << np.uint64(16))
        | (np.uint64(buf[j + 3]) << np.uint64(24))
        | (np.uint64(buf[j + 4]) << np.uint64(32))
        | (np.uint64(buf[j + 5]) << np.uint64(40))
        | (np.uint64(buf[j + 6]) << np.uint64(48))
        | (np.uint64(buf[j + 7]) << np.uint64(56))
    )


@kernel
def _bitmap_popcount(buf):
    """Number of set bits in ``buf``."""
    nb = buf.shape[0]
    nw = nb >> 3
    c = 0
    for w in range(nw):
        c += popcount64(_load64(buf, w << 3))
    for j in range(nw << 3, nb):
        c += popcount64(buf[j])
    return c


@kernel
def _bitmap_encode(indices, nbytes, out):
    """Zero ``out[:nbytes]`` and set bit ``i`` for each validated index ``i``."""
    for j in range(nbytes):
        out[j] = 0
    for t in range(indices.shape[0]):
        i = indices[t]
        out[i >> 3] |= np.uint8(1 << (i & 7))


@kernel
def _bitmap_decode(buf, out):
    """Ascending set-bit positions of ``buf`` into ``out``, writing at most ``out.shape[0]``.

    Returns the number of set bits found (which may exceed ``out.shape[0]``:
    the caller compares it with the expected count).  Away from the end of
    ``out`` a word writes 1, 4 or 8 entries unconditionally (entries past its
    set bits are overwritten by the next word), so a word costs a popcount
    and a couple of well-predicted branches, not a mispredicted loop exit.
    Positions are unsigned (no negative-index wraparound code).
    """
    nb = buf.shape[0]
    cap = np.uint64(out.shape[0])
    nw = nb >> 3
    one = np.uint64(1)
    c = np.uint64(0)
    for wi in range(nw):
        w = _load64(buf, wi << 3)
        base = np.int64(wi) << 6
        cnt = np.uint64(popcount64(w))
        if c + np.uint64(64) <= cap:
            out[c] = base + ctz64(w)
            if cnt > one:
                w &= w - one
                out[c + np.uint64(1)] = base + ctz64(w)
                w &= w - one
                out[c + np.uint64(2)] = base + ctz64(w)
                w &= w - one
                out[c + np.uint64(3)] = base + ctz64(w)
                if cnt > np.uint64(4):
                    w &= w - one
                    out[c + np.uint64(4)] = base + ctz64(w)
                    w &= w - one
                    out[c + np.uint64(5)] = base + ctz64(w)
                    w &= w - one
                    out[c + np.uint64(6)] = base + ctz64(w)
                    w &= w - one
                    out[c + np.uint64(7)] = base + ctz64(w)
                    if cnt > np.uint64(8):
                        w &= w - one
                        j = c + np.uint64(8)
                        while w != np.uint64(0):
                            out[j] = base + ctz64(w)
                            w &= w - one
                            j += one
            c += cnt
        else:
            while w != np.uint64(0):
                if c < cap:
                    out[c] = base + ctz64(w)
                c += one
                w &= w - one
    for j in range(nw << 3, nb):
        b = np.uint64(buf[j])
        base = np.int64(j) << 3
        while b != np.uint64(0):
            if c < cap:
                out[c] = base + ctz64(b)
            c += one
            b &= b - one
    return np.int64(c)


# ---------------------------------------------------------------------------
# wrappers
# ---------------------------------------------------------------------------


_I64 = np.dtype(np.int64)


def _as_indices(indices, name="indices"):
    if type(indices) is np.ndarray and indices.dtype is _I64 and indices.ndim == 1 and indices.flags.c_contiguous:
        return indices  # the common case: already what the kernels take
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"expected {name} to be a numpy array, found {type(indices).__name__}")
    if indices.ndim != 1 or indices.dtype.kind not in "iu":
        raise ValueError(f"expected {name} to be a 1-D integer array, found ndim={indices.ndim} dtype={indices.dtype}")
    if indices.dtype.kind == "u" and indices.size and int(indices.max()) > _INT64_MAX:
        raise ValueError(f"expected every index in [0, 2**63), found {int(indices.max())}")
    return np.ascontiguousarray(indices, dtype=np.int64)


def _as_bytes(buf, name="buf"):
    if isinstance(buf, (bytes, bytearray, memoryview)):
        return np.frombuffer(buf, dtype=np.uint8)
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"expected {name} to be a uint8 numpy array or bytes-like, found {type(buf).__name__}")
    if buf.ndim != 1 or buf.dtype != np.uint8:
        raise ValueError(f"expected {name} to be a 1-D uint8 array, found ndim={buf.ndim} dtype={buf.dtype}")
    return np.ascontiguousarray(buf)


def _check_n(n):
    return check_int(n, "n", 0, _INT64_MAX)


def _validated(indices, n):
    """Validate encoder input; returns (int64 indices, varint size)."""
    idx = _as_indices(indices)
    status, pos, size = _check_ascending_size(idx, -1 if n is None else n)
    if status == OK:
        return idx, int(size)
    v = int(idx[pos])
    if status == NEGATIVE:
        raise ValueError(f"expected non-negative indices, found indices[{pos}] = {v}")
    if status == NOT_ASCENDING:
        raise ValueError(
            f"expected strictly ascending indices (sorted, no duplicates), "
            f"found indices[{pos}] = {v} after indices[{pos - 1}] = {int(idx[pos - 1])}"
        )
    raise ValueError(f"expected every index in [0, {n}), found indices[{pos}] = {v}")


def varint_size(indices):
    """Exact size in bytes of :func:`varint_encode` ``(indices)``.

    ``indices`` must be strictly ascending and non-negative (ValueError otherwise).
    """
    return _validated(indices, None)[1]


def varint_encode(indices, out=None):
    """Delta + LEB128 encoding of strictly ascending non-negative ``indices``.

    Returns a uint8 array of exactly :func:`varint_size` bytes (a view of
    ``out`` when given; ``out`` may be larger).
    """
    idx, size = _validated(indices, None)
    out = out_array(out, size, np.uint8)
    written = _varint_encode(idx, out)
    assert written == size
    return out[:size]


def varint_decode(buf, count, n, out=None):
    """Decode ``count`` indices in ``[0, n)`` from a :func:`varint_encode` byte string.

    ``buf`` is a uint8 array or bytes-like object and must be consumed
    exactly.  Raises ValueError for truncated input, a varint longer than 10
    bytes, one overflowing 64 bits, a non-canonical varint, an index >= n, or
    trailing bytes.  Returns int64 ascending indices (a view of ``out`` when given).
    """
    data = _as_bytes(buf)
    n = _check_n(n)
    count = check_int(count, "count", 0)
    if count > n:
        raise ValueError(f"expected count <= n = {n} (indices are unique and below n), found count = {count}")
    if count > data.shape[0]:
        raise ValueError(f"truncated varint stream: expected at least {count} bytes for {count} indices, found {data.shape[0]}")
    return _varint_decode_run(data, count, n, out_array(out, count, np.int64))


def _varint_decode_run(data, count, n, out):
    """The kernel and its error messages; ``data`` a contiguous uint8 array, ``0 <= count <= min(n, data.size)``
    and ``out`` an int64 array of at least ``count`` entries (checked by the caller: :func:`varint_decode`,
    or the wire decoder after its header checks)."""
    status, item, pos = _varint_decode(data, count, n, out)
    if status == OK:
        return out[:count]
    pos = int(pos)
    if status == TRUNCATED:
        msg = f"truncated varint stream: expected {count} indices, found the input ended at byte {pos} inside index {item}"
    elif status == TOO_LONG:
        msg = f"varint too long: expected at most 10 bytes per varint, found a longer one for index {item} ending at byte {pos}"
    elif status == OVERFLOW:
        msg = f"varint overflow: expected a gap below 2**64, found a larger one for index {item} at byte {pos - 1}"
    elif status == NON_CANONICAL:
        msg = f"non-canonical varint: expected no redundant trailing zero group, found one for index {item} at byte {pos - 1}"
    elif status == OUT_OF_RANGE:
        msg = f"index out of range: expected every index < n = {n}, found index {item} >= n (gap ending at byte {pos})"
    elif status == TRAILING:
        msg = f"trailing bytes: expected {pos} bytes for {count} indices, found {data.shape[0]}"
    else:  # pragma: no cover - kernel statuses are exhaustive
        msg = f"varint decoding failed with status {status}"
    raise ValueError(msg)


def bitmap_size(n):
    """Size in bytes of the bitmap of ``n`` positions: ``ceil(n / 8)``."""
    n = _check_n(n)
    return (n + 7) >> 3


def bitmap_encode(indices, n, out=None):
    """Bitmap (LSB-first) of strictly ascending ``indices`` in ``[0, n)``.

    Returns a uint8 array of :func:`bitmap_size` ``(n)`` bytes (a view of ``out`` when given).
    """
    n = _check_n(n)
    idx, _ = _validated(indices, n)
    nbytes = (n + 7) >> 3
    out = out_array(out, nbytes, np.uint8)
    _bitmap_encode(idx, nbytes, out)
    return out[:nbytes]


def bitmap_decode(buf, n, count=None, out=None):
    """Ascending int64 indices of the set bits of a :func:`bitmap_encode` bitmap of ``n`` positions.

    Raises ValueError when ``buf`` is not exactly ``ceil(n / 8)`` bytes, when
    padding bits past ``n`` are set, or when ``count`` is given and differs
    from the number of set bits.
    """
    data = _as_bytes(buf)
    n = _check_n(n)
    nbytes = (n + 7) >> 3
    if data.shape[0] != nbytes:
        raise ValueError(f"expected a bitmap of ceil({n} / 8) = {nbytes} bytes, found {data.shape[0]}")
    return _bitmap_decode_run(data, n, count, out)


def _bitmap_decode_run(data, n, count, out=None):
    """The checks past the length, and the kernel; ``data`` a contiguous uint8 array of exactly ``ceil(n / 8)``
    bytes and ``n`` a checked int (by the caller: :func:`bitmap_decode`, or the wire decoder after its header checks)."""
    nbytes = data.shape[0]
    if n & 7 and int(data[nbytes - 1]) >> (n & 7):
        raise ValueError(
            f"expected the {8 - (n & 7)} padding bits past n = {n} to be zero, found last byte {int(data[nbytes - 1]):#04x}"
        )
    if count is None:
        count = int(_bitmap_popcount(data))
    else:
        count = check_int(count, "count", 0)
        if count > n:
            raise ValueError(f"bitmap popcount mismatch: expected count <= n = {n}, found count = {count}")
    out = out_array(out, count, np.int64)
    found = int(_bitmap_decode(data, out[:count]))
    if found != count:
        raise ValueError(f"bitmap popcount mismatch: expected {count} set bits, found {found}")
    return out[:count]


def best_index_coding(indices, n):
    """``("varint", nbytes)`` or ``("bitmap", nbytes)``, whichever is smaller (ties: varint).

    ``indices`` must be strictly ascending in ``[0, n)``.
    """
    _, kind, nbytes = _best(indices, n)
    return kind, nbytes


def _best(indices, n):
    """``(int64 indices, kind, nbytes)`` of :func:`best_index_coding`, validating the indices once: the wire
    encoder passes the indices to :func:`_write_index` next."""
    n = _check_n(n)
    idx, vsize = _validated(indices, n)
    bsize = (n + 7) >> 3
    if vsize <= bsize:
        return idx, "varint", vsize
    return idx, "bitmap", bsize


def _write_index(idx, kind, nbytes, out):
    """Write the section :func:`_best` chose into the uint8 array ``out`` of ``nbytes`` bytes (no checks:
    ``idx`` and ``nbytes`` come from :func:`_best` on the same indices)."""
    if kind == "varint":
        _varint_encode(idx, out)
    else:
        _bitmap_encode(idx, nbytes, out)
