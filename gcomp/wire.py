"""gcomp's versioned, validated byte format for compressed vectors (docs/wire-format.md).

``encode(c) -> bytes`` and ``decode(buf, expected_numel=None) -> Compressed``.
A packet is an 88-byte little-endian header followed by the payload:

======  =====  ===========================================================
offset  type   field
======  =====  ===========================================================
0       4s     magic ``b"GCMP"``
4       u8     major version (1)
5       u8     minor version (0)
6       u8     codec id (see ``CODECS``)
7       u8     flags: bit 0 zstd stage, bit 1 bitmap index coding
8       u8     dtype id of the original vector (0 f32, 1 f16, 2 bf16, 3 f64)
9       3x     reserved, zero
12      u64    numel
20      u64    count (selected entries of a sparse codec, else 0)
28      u64    step
36      u64    seed
44      4*u32  codec parameters p0..p3 (meaning per codec)
60      u64    index_len: bytes of the index section (sparse codecs)
68      u64    raw_len: payload bytes before the zstd stage
76      u64    payload_len: payload bytes that follow the header
84      u32    CRC-32 over the header (this field zero) and the payload
======  =====  ===========================================================

The raw payload is the index section (delta+varint or bitmap, whichever is
smaller) followed by the codec's arrays in a fixed order, each of a length the
header determines.  Decoding validates every field before allocating anything,
in a fixed order: length, magic, version, codec, dtypes and flags, sizes
(overflow-checked), exact total length, checksum, then the zstd stage and the
index range and order.  Each failure raises a subclass of
:class:`gcomp.errors.WireFormatError`.  No pickle, anywhere.
"""

import dataclasses
import struct
import zlib

import numpy as np

from .compressors.base import DTYPES, Compressed
from .errors import (
    ChecksumError,
    CodecError,
    IndexError_,
    MagicError,
    SizeError,
    TruncatedError,
    VersionError,
    WireFormatError,
)
from .kernels import index_coding

__all__ = ["encode", "decode", "peek", "Header", "CODECS", "register_codec", "HEADER_SIZE", "MAJOR", "MINOR", "MAX_NUMEL"]

MAGIC = b"GCMP"
MAJOR = 1
MINOR = 0
HEADER = struct.Struct("<4sBBBBB3xQQQQ4IQQQI")
HEADER_SIZE = HEADER.size
CRC_OFFSET = HEADER_SIZE - 4
MAX_NUMEL = 1 << 40
FLAG_ZSTD = 1
FLAG_BITMAP = 2
#: no valid zstd frame expands more than this (32482x measured on 64 MiB of zeros)
ZSTD_MAX_RATIO = 1 << 15
_KNOWN_FLAGS = FLAG_ZSTD | FLAG_BITMAP
assert HEADER_SIZE == 88


def _nb(numel, bucket):
    return (numel + bucket - 1) // bucket


def _packed(numel, bits):
    return (numel * bits + 7) // 8


@dataclasses.dataclass(frozen=True)
class Codec:
    """How one compressor's Compressed form maps onto the wire.

    ``param_names``: up to four Compressed.params entries stored as u32 p0..p3.
    ``arrays(numel, count, params)``: the (name, dtype, length) of each array in
    payload order (lengths computed from header fields only).  ``sparse``:
    an ``indices`` section precedes them; ``regenerate_indices``: the indices
    are not sent but rebuilt from (numel, count, seed).
    ``check_params(numel, count, params)``: raise SizeError/CodecError when invalid.
    """

    codec_id: int
    name: str
    param_names: tuple
    arrays: object
    check: object
    sparse: bool = False
    regenerate_indices: object = None


def _check_none(numel, count, p):
    if count:
        raise SizeError(f"expected count 0 for a dense codec, found {count}")


def _check_sparse(numel, count, p):
    if count > numel:
        raise SizeError(f"expected count <= numel ({numel}), found {count}")


def _check_bucket(p):
    b = p["bucket_size"]
    if b < 8 or b % 8:
        raise SizeError(f"expected bucket_size a positive multiple of 8, found {b}")


def _check_qsgd(numel, count, p):
    _check_none(numel, count, p)
    _check_bucket(p)
    if not 1 <= p["levels"] <= 127:
        raise SizeError(f"expected qsgd levels in [1, 127], found {p['levels']}")
    want = 2 if p["levels"] == 1 else 4 if p["levels"] <= 7 else 8
    if p["bits"] != want:
        raise SizeError(f"expected {want} code bits for {p['levels']} levels, found {p['bits']}")


def _check_uniform(numel, count, p):
    _check_none(numel, count, p)
    _check_bucket(p)
    if p["bits"] not in (1, 2, 4, 8):
        raise SizeError(f"expected uniform bits in (1, 2, 4, 8), found {p['bits']}")
    if p["mode"] not in (0, 1) or p["stochastic"] not in (0, 1) or (p["mode"] == 1 and p["bits"] == 1):
        raise SizeError(f"expected uniform mode 0/1 (abs-max needs bits >= 2) and stochastic 0/1, found {p['mode']}, {p['stochastic']}")


def _check_bucketed(numel, count, p):
    _check_none(numel, count, p)
    _check_bucket(p)


def _check_powersgd(numel, count, p):
    _check_none(numel, count, p)
    rows, cols, rank = p["rows"], p["cols"], p["rank"]
    from .compressors.powersgd import matrix_shape

    if (rows, cols) != matrix_shape(numel):
        raise SizeError(f"expected the matrix view {matrix_shape(numel)} of {numel} entries, found ({rows}, {cols})")
    if numel and not 1 <= rank <= min(rows, cols, 1024):
        raise SizeError(f"expected rank in [1, {min(rows, cols, 1024)}], found {rank}")
    if not numel and rank:
        raise SizeError(f"expected rank 0 for an empty vector, found {rank}")


def _randomk_indices(numel, count, seed):
    from .kernels.randomk import randomk_indices

    return randomk_indices(numel, count, seed)


_F32, _F16, _U8, _U16 = np.dtype("<f4"), np.dtype("<f2"), np.dtype("u1"), np.dtype("<u2")

CODECS = {}
_BY_ID = {}


def register_codec(codec: Codec):
    """Add a codec (user compressors take ids 128-254); ids and names must be unique."""
    if not 1 <= codec.codec_id <= 254:
        raise ValueError(f"expected a codec id in [1, 254], found {codec.codec_id}")
    if len(codec.param_names) > 4:
        raise ValueError(f"expected at most 4 codec parameters, found {len(codec.param_names)}")
    if codec.codec_id in _BY_ID or codec.name in CODECS:
        raise ValueError(f"codec id {codec.codec_id} or name {codec.name!r} is already registered")
    CODECS[codec.name] = codec
    _BY_ID[codec.codec_id] = codec
    return codec


def _sparse_values(n, c, p):
    return [("values", _F32, c)]


for _codec in (
    Codec(1, "none", (), lambda n, c, p: [("values", _F32, n)], _check_none),
    Codec(2, "fp16", (), lambda n, c, p: [("values", _F16, n)], _check_none),
    Codec(3, "bf16", (), lambda n, c, p: [("values", _U16, n)], _check_none),
    Codec(4, "topk", (), _sparse_values, _check_sparse, sparse=True),
    Codec(5, "dgc", (), _sparse_values, _check_sparse, sparse=True),
    Codec(6, "randomk", (), _sparse_values, _check_sparse, regenerate_indices=_randomk_indices),
    Codec(7, "threshold", (), _sparse_values, _check_sparse, sparse=True),
    Codec(8, "qsgd", ("levels", "bucket_size", "bits"),
          lambda n, c, p: [("codes", _U8, _packed(n, p["bits"])), ("norms", _F32, _nb(n, p["bucket_size"]))], _check_qsgd),
    Codec(9, "uniform", ("bits", "bucket_size", "mode", "stochastic"),
          lambda n, c, p: [("codes", _U8, _packed(n, p["bits"])), ("scales", _F32, _nb(n, p["bucket_size"])),
                           ("offsets", _F32, _nb(n, p["bucket_size"]))], _check_uniform),
    Codec(10, "sign", ("bucket_size",),
          lambda n, c, p: [("codes", _U8, _packed(n, 1)), ("scales", _F32, _nb(n, p["bucket_size"]))], _check_bucketed),
    Codec(11, "terngrad", ("bucket_size",),
          lambda n, c, p: [("codes", _U8, _packed(n, 2)), ("scales", _F32, _nb(n, p["bucket_size"]))], _check_bucketed),
    Codec(12, "natural", (), lambda n, c, p: [("exponents", _U8, n), ("signs", _U8, _packed(n, 1))], _check_none),
    Codec(13, "powersgd", ("rows", "cols", "rank"),
          lambda n, c, p: [("p", _F32, p["rows"] * p["rank"]), ("q", _F32, p["cols"] * p["rank"])], _check_powersgd),
):
    register_codec(_codec)


@dataclasses.dataclass(frozen=True)
class Header:
    """A decoded, validated header."""

    codec: Codec
    flags: int
    dtype: str
    numel: int
    count: int
    step: int
    seed: int
    params: dict
    index_len: int
    raw_len: int
    payload_len: int
    checksum: int


def _shape_of(codec, name, length, params):
    if codec.name == "powersgd":
        return (length // params["rank"], params["rank"]) if params["rank"] else (0, 0)
    return (length,)


def encode(c: Compressed, *, zstd: bool = False, zstd_level: int = 1) -> bytes:
    """The bytes of ``c``; with ``zstd=True`` a zstd stage is applied where it shrinks the payload."""
    if not isinstance(c, Compressed):
        raise TypeError(f"expected a Compressed, found {type(c).__name__}")
    codec = CODECS.get(c.codec)
    if codec is None:
        raise CodecError(f"no wire codec for compressor {c.codec!r}; known: {sorted(CODECS)} (see gcomp.wire.register_codec)")
    if c.dtype not in DTYPES:
        raise CodecError(f"expected dtype in {DTYPES}, found {c.dtype!r}")
    params = {name: int(c.params[name]) for name in codec.param_names}
    codec.check(c.numel, c.count, params)
    flags = 0
    sections = []
    index_len = 0
    if codec.sparse:
        idx = c.arrays["indices"]
        kind, nbytes = index_coding.best_index_coding(idx, c.numel)
        if kind == "bitmap":
            flags |= FLAG_BITMAP
            sections.append(index_coding.bitmap_encode(idx, c.numel))
        else:
            sections.append(index_coding.varint_encode(idx))
        index_len = nbytes
    for name, dtype, length in codec.arrays(c.numel, c.count, params):
        a = np.ascontiguousarray(c.arrays[name], dtype=dtype).reshape(-1)
        if a.shape[0] != length:
            raise SizeError(f"expected array {name!r} of {length} entries for codec {codec.name!r}, found {a.shape[0]}")
        sections.append(a)
    raw = b"".join(memoryview(s).cast("B") for s in sections)
    payload = raw
    if zstd and raw:
        import zstandard

        packed = zstandard.ZstdCompressor(level=zstd_level).compress(raw)
        if len(packed) < len(raw):
            payload = packed
            flags |= FLAG_ZSTD
    p = [params.get(name, 0) for name in codec.param_names] + [0] * (4 - len(codec.param_names))
    header = HEADER.pack(MAGIC, MAJOR, MINOR, codec.codec_id, flags, DTYPES.index(c.dtype), c.numel, c.count,
                         int(c.step), int(c.seed), *p, index_len, len(raw), len(payload), 0)
    crc = zlib.crc32(payload, zlib.crc32(header))
    return header[:CRC_OFFSET] + struct.pack("<I", crc) + payload


def _as_buffer(buf):
    if isinstance(buf, (bytes, bytearray)):
        return memoryview(buf)
    if isinstance(buf, memoryview):
        return buf.cast("B") if buf.format != "B" or buf.ndim != 1 else buf
    if isinstance(buf, np.ndarray):
        if buf.dtype != np.uint8 or buf.ndim != 1:
            raise TypeError(f"expected a 1-D uint8 array, found {buf.dtype} with shape {buf.shape}")
        return memoryview(np.ascontiguousarray(buf))
    raise TypeError(f"expected bytes, bytearray, memoryview or a uint8 array, found {type(buf).__name__}")


def peek(buf, expected_numel=None) -> Header:
    """Validate and return the header of ``buf`` (everything up to and including the checksum)."""
    mv = _as_buffer(buf)
    total = len(mv)
    if total < HEADER_SIZE:
        raise TruncatedError(f"expected at least {HEADER_SIZE} bytes for a gcomp header, found {total}")
    (magic, major, minor, codec_id, flags, dtype_id, numel, count, step, seed, p0, p1, p2, p3,
     index_len, raw_len, payload_len, crc) = HEADER.unpack_from(mv, 0)
    if magic != MAGIC:
        raise MagicError(f"expected magic {MAGIC!r}, found {bytes(magic)!r}: not a gcomp packet")
    if major != MAJOR or minor > MINOR:
        raise VersionError(f"expected wire version {MAJOR}.{MINOR} or older minor, found {major}.{minor}; upgrade gcomp to read it")
    codec = _BY_ID.get(codec_id)
    if codec is None:
        raise CodecError(f"expected a known codec id {sorted(_BY_ID)}, found {codec_id}")
    if dtype_id >= len(DTYPES):
        raise CodecError(f"expected a dtype id below {len(DTYPES)}, found {dtype_id}")
    if bytes(mv[9:12]) != b"\0\0\0":
        raise CodecError(f"expected zero reserved bytes, found {bytes(mv[9:12]).hex()}")
    if flags & ~_KNOWN_FLAGS:
        raise CodecError(f"expected flags within {_KNOWN_FLAGS:#x}, found {flags:#x}")
    if (flags & FLAG_BITMAP) and not codec.sparse:
        raise CodecError(f"expected no bitmap flag on dense codec {codec.name!r}")
    # Sizes, checked before anything is allocated.
    if numel > MAX_NUMEL:
        raise SizeError(f"expected numel <= {MAX_NUMEL}, found {numel}")
    if expected_numel is not None and numel != expected_numel:
        raise SizeError(f"expected numel {expected_numel} (the receiver's buffer), found {numel}")
    raw_p = (p0, p1, p2, p3)
    params = {name: raw_p[i] for i, name in enumerate(codec.param_names)}
    if any(raw_p[len(codec.param_names):]):
        raise CodecError(f"expected unused codec parameters to be zero, found {raw_p}")
    codec.check(numel, count, params)
    if codec.sparse:
        if flags & FLAG_BITMAP:
            want_index = (numel + 7) // 8
            if index_len != want_index:
                raise SizeError(f"expected a {want_index}-byte bitmap for numel {numel}, found index_len {index_len}")
        elif not count <= index_len <= 10 * count:
            raise SizeError(f"expected varint index_len in [{count}, {10 * count}] for count {count}, found {index_len}")
    elif index_len:
        raise SizeError(f"expected index_len 0 for codec {codec.name!r}, found {index_len}")
    fixed = sum(length * dtype.itemsize for _, dtype, length in codec.arrays(numel, count, params))
    if raw_len != index_len + fixed:
        raise SizeError(f"expected raw_len {index_len + fixed} for these sizes, found {raw_len}")
    if flags & FLAG_ZSTD:
        if not 0 < payload_len < raw_len:
            raise SizeError(f"expected a zstd payload shorter than raw_len {raw_len}, found {payload_len}")
        if raw_len > ZSTD_MAX_RATIO * payload_len:
            raise SizeError(f"expected raw_len at most {ZSTD_MAX_RATIO}x the zstd payload ({payload_len}), found {raw_len}")
    elif payload_len != raw_len:
        raise SizeError(f"expected payload_len == raw_len ({raw_len}) without zstd, found {payload_len}")
    if total != HEADER_SIZE + payload_len:
        raise TruncatedError(f"expected exactly {HEADER_SIZE + payload_len} bytes (header + payload), found {total}")
    check = zlib.crc32(mv[:CRC_OFFSET])
    check = zlib.crc32(b"\0\0\0\0", check)
    check = zlib.crc32(mv[HEADER_SIZE:], check)
    if check != crc:
        raise ChecksumError(f"expected CRC-32 {crc:#010x} from the header, computed {check:#010x}: the packet is corrupt")
    return Header(codec, flags, DTYPES[dtype_id], numel, count, step, seed, params, index_len, raw_len, payload_len, crc)


def _unzstd(payload: bytes, raw_len: int) -> bytes:
    """Decompress one zstd frame of exactly ``raw_len`` bytes; never allocates more than that."""
    import zstandard

    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as exc:
        raise CodecError(f"expected a zstd frame, found: {exc}") from None
    if params.content_size != raw_len:
        raise SizeError(f"expected a zstd frame stating {raw_len} content bytes, found {params.content_size}")
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        raw = dobj.decompress(payload)
    except zstandard.ZstdError as exc:
        raise CodecError(f"expected a valid zstd stage of {raw_len} bytes, found: {exc}") from None
    if not dobj.eof or dobj.unused_data:
        raise CodecError("expected exactly one complete zstd frame, found trailing or missing bytes")
    if len(raw) != raw_len:
        raise SizeError(f"expected the zstd stage to give {raw_len} bytes, found {len(raw)}")
    return raw


def decode(buf, expected_numel=None) -> Compressed:
    """Validate ``buf`` completely and return its :class:`Compressed` (arrays are read-only views where possible)."""
    h = peek(buf, expected_numel)
    mv = _as_buffer(buf).toreadonly()
    payload = mv[HEADER_SIZE:]
    if h.flags & FLAG_ZSTD:
        raw = memoryview(_unzstd(bytes(payload), h.raw_len))
    else:
        raw = payload
    codec = h.codec
    arrays = {}
    offset = 0
    if codec.sparse:
        section = np.frombuffer(raw[: h.index_len], dtype=np.uint8)
        try:
            if h.flags & FLAG_BITMAP:
                arrays["indices"] = index_coding.bitmap_decode(section, h.numel, count=h.count)
            else:
                arrays["indices"] = index_coding.varint_decode(section, h.count, h.numel)
        except ValueError as exc:
            raise IndexError_(f"invalid sparse indices: {exc}") from None
        offset = h.index_len
    for name, dtype, length in codec.arrays(h.numel, h.count, h.params):
        nbytes = length * dtype.itemsize
        a = np.frombuffer(raw[offset: offset + nbytes], dtype=dtype)
        arrays[name] = a.reshape(_shape_of(codec, name, length, h.params))
        offset += nbytes
    if offset != len(raw):  # cannot happen after peek(); kept as a guard
        raise WireFormatError(f"expected {offset} payload bytes, found {len(raw)}")
    if codec.regenerate_indices is not None:
        arrays["indices"] = codec.regenerate_indices(h.numel, h.count, h.seed)
    return Compressed(codec.name, h.numel, h.dtype, arrays, dict(h.params), count=h.count, step=h.step, seed=h.seed)
