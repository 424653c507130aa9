"""gcomp's versioned, validated byte format for compressed vectors (docs/wire-format.md).

``encode(c) -> bytes`` and ``decode(buf, expected_numel=None) -> Compressed``.
A packet is an 88-byte little-endian header followed by the payload:

======  =====  ===========================================================
offset  type   field
======  =====  ===========================================================
0       4s     magic ``b"GCMP"``
4       u8     major version (1)
5       u8     minor version (the codec's ``since``: the lowest that can express the packet)
6       u8     codec id (each compressor's ``codec``; see ``CODECS``)
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

Packet-backed forms.  A dense compressor (qsgd, uniform, natural, sign,
terngrad, fp16, bf16, none) compressing a vector of at least
:data:`FRAME_MIN` entries (2**16) asks for a frame: one uint8 buffer laid out
``[room][88-byte header][payload]`` (``room``: :data:`FRAME_ROOM` free bytes
or up to 7 more, so each array is aligned to its item size), with numpy views
of the payload's arrays at their offsets, and its kernel writes the codes
there.  The form remembers the buffer (``Compressed.frame``);
:func:`encode_array` without zstd and with ``reserve <= FRAME_ROOM`` then
writes the header and CRC in place and returns the buffer from
``room - reserve``: what every collective sends, with no payload copy.  The
bytes are exactly those of the copying path
(the format does not change); a form whose arrays were replaced, a second
:func:`encode_array` of the same form, zstd, and :func:`encode` (bytes) take
the copying path.  Smaller vectors keep fresh arrays (a frame's set-up would
add to their fixed cost).  ``GCOMP_WIRE_FRAMES=0`` (read at import) or
``gcomp.wire.FRAMES = False`` turns frames off.
"""

import dataclasses
import os
import struct
import zlib
from collections.abc import Mapping

import numpy as np

from . import compressors
from .compressors import base as _base
from .compressors import codec as codec_module
from .compressors.base import DTYPES, Compressed
from .compressors.codec import Codec
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

__all__ = ["encode", "encode_array", "decode", "peek", "Header", "CODECS", "HEADER_SIZE", "MAJOR", "MINOR", "MAX_NUMEL",
           "FRAME_MIN", "FRAME_ROOM", "FRAMES"]

MAGIC = b"GCMP"
#: the wire format's major version, written in every header; a packet of another major version raises VersionError
MAJOR = 1
#: the highest minor version this gcomp writes (a packet carries the lowest minor version that can express it)
MINOR = codec_module.MINOR
HEADER = struct.Struct("<4sBBBBB3xQQQQ4IQQQI")
#: the same header with the reserved bytes as a field, for the decoder (one unpack checks them too)
_HEADER_IN = struct.Struct("<4sBBBBB3sQQQQ4IQQQI")
#: bytes of the header that starts every packet (88)
HEADER_SIZE = HEADER.size
CRC_OFFSET = HEADER_SIZE - 4
_CRC = struct.Struct("<I")
#: the largest ``numel`` a header may declare (2**40); larger raises SizeError before anything is allocated
MAX_NUMEL = 1 << 40
FLAG_ZSTD = 1
FLAG_BITMAP = 2
#: no valid zstd frame expands more than this (32482x measured on 64 MiB of zeros)
ZSTD_MAX_RATIO = 1 << 15
_KNOWN_FLAGS = FLAG_ZSTD | FLAG_BITMAP
assert HEADER_SIZE == 88


class _CodecTable(Mapping):
    """Read-only ``{compressor name: Codec}`` of every registered compressor that has one.

    The codecs live with their compressors (``Compressor.codec``); this view
    follows the registry, so a compressor registered later appears here.
    """

    def __getitem__(self, name):
        compressors.load_plugins()
        cls = compressors.REGISTRY.get(name)
        if cls is None or cls.codec is None:
            raise KeyError(name)
        return cls.codec

    def __iter__(self):
        compressors.load_plugins()
        return (name for name, cls in compressors.REGISTRY.items() if cls.codec is not None)

    def __len__(self):
        return sum(1 for _ in self)


#: read-only ``{compressor name: Codec}`` of every registered compressor that has a wire codec; follows the registry
CODECS = _CodecTable()

#: (id(codec), numel, count, codec parameters) -> _Layout, for sizes that passed ``codec.validate``;
#: a packet of a size seen before skips the codec's checks and the array layout (a call's fixed cost)
_LAYOUTS = {}
#: at most this many entries (then the table starts afresh: hostile headers cannot grow it)
_LAYOUTS_MAX = 1024


class _Layout:
    """What a (codec, numel, count, params) fixes: the arrays in payload order, their bytes, the header's p0..p3."""

    __slots__ = ("codec", "params", "arrays", "fixed", "p4", "frame")

    def __init__(self, codec, numel, count, ptuple):
        params = dict(zip(codec.params, ptuple, strict=True))
        codec.validate(numel, count, params)
        self.codec = codec  # held, so the id in the key stays this codec's
        self.params = params
        arrays = []
        for name, dtype, length in codec.arrays(numel, count, params):
            dtype = np.dtype(dtype)
            shape = codec.array_shape(name, length, params)
            arrays.append((name, dtype, length, length * dtype.itemsize, None if tuple(shape) == (length,) else shape))
        self.arrays = tuple(arrays)
        self.fixed = sum(a[3] for a in arrays)
        self.p4 = tuple(params[name] for name in codec.params) + (0,) * (4 - len(codec.params))
        self.frame = None  # (room, [(offset in the buffer, dtype, shape)]) once a frame of this layout was made


def _layout(codec, numel, count, ptuple):
    """The validated layout of these sizes (``codec.validate`` runs on a miss and raises SizeError)."""
    key = (id(codec), numel, count, ptuple)
    hit = _LAYOUTS.get(key)
    if hit is not None and hit.codec is codec:
        return hit
    hit = _Layout(codec, numel, count, ptuple)
    if len(_LAYOUTS) >= _LAYOUTS_MAX:
        _LAYOUTS.clear()
    _LAYOUTS[key] = hit
    return hit


#: bytes left free before the header of a packet-backed form's buffer, at least: every collective's prefix fits
#: (gcomp.collectives.sequence.PREFIX_SIZE 8, gcomp.decentralized.packets.PREFIX_SIZE 32).  A frame leaves up to 7
#: more, so that each payload array sits at a multiple of its item size (float32 norms after an odd number of code
#: bytes too): the kernels then see arrays of the types a fresh allocation has, and compile nothing new.
#: :func:`encode_array` with ``reserve`` at most this returns the form's own buffer; a larger reserve copies.
FRAME_ROOM = 32
#: vectors of at least this many entries are compressed into packet-backed forms (the compressors' threshold)
FRAME_MIN = _base.FRAME_MIN
#: whether compressors make packet-backed forms (``GCOMP_WIRE_FRAMES=0`` in the environment turns them off at
#: import; tests set this flag to compare against the copying path): the packet bytes are the same either way
FRAMES = os.environ.get("GCOMP_WIRE_FRAMES", "1").strip().lower() not in ("0", "false", "no", "off", "")


def _no_frame():
    return None


class _Frame:
    """A packet-backed form's buffer: ``[room free bytes][88-byte header][payload]`` (``room`` from FRAME_ROOM to
    FRAME_ROOM + 7), and ``views``, the payload's arrays (numpy views at their layout offsets, in codec order) that
    the compressor's kernel writes.

    :func:`encode_array` completes it in place once (``used``); a later call, or a form whose arrays are no longer
    these very views, takes the copying path.  ``dataclasses.replace``, a deep copy or a pickle of the form drops
    its frame (the copied arrays are no views of a copied buffer).
    """

    __slots__ = ("buf", "room", "views", "used")

    def __init__(self, buf, room, views):
        self.buf, self.room, self.views, self.used = buf, room, views, False

    def __deepcopy__(self, memo):
        return None

    def __reduce__(self):
        return _no_frame, ()


def _new_frame(codec, numel, ptuple):
    """A fresh frame for a dense codec's form of ``numel`` entries with these codec parameters (``codec.params``
    order), or None where frames are off (:data:`FRAMES`) or the codec is sparse (its index section's length
    depends on the data).  The caller's parameters are valid (a compressor's own), so a SizeError cannot happen."""
    if not FRAMES or codec.sparse:
        return None
    layout = _layout(codec, numel, 0, ptuple)
    spec = layout.frame
    if spec is None:
        spec = layout.frame = _frame_spec(layout)
    room, arrays = spec
    buf = np.empty(room + HEADER_SIZE + layout.fixed, np.uint8)
    views = _views(buf, arrays)
    for v in views:
        if not v.flags.aligned:  # an allocator that is not 8-aligned (numpy's is, at least): align by the address
            return _frame_aligned(layout)
    return _Frame(buf, room, views)


def _frame_spec(layout, addr=0):
    """``(room, [(offset in the buffer, dtype, shape)])`` of a frame of ``layout`` in a buffer at address ``addr``:
    the smallest room from FRAME_ROOM that puts every array at a multiple of its item size (else FRAME_ROOM)."""
    offsets, pos = [], HEADER_SIZE
    for _, dtype, length, nbytes, shape in layout.arrays:
        offsets.append((pos, dtype, (length,) if shape is None else tuple(shape)))
        pos += nbytes
    room = next((r for r in range(FRAME_ROOM, FRAME_ROOM + 8)
                 if all((addr + r + o) % dtype.itemsize == 0 for o, dtype, _ in offsets)), FRAME_ROOM)
    return room, [(room + o, dtype, shape) for o, dtype, shape in offsets]


def _frame_aligned(layout):
    """A frame of ``layout`` aligned by its buffer's address (the rare path of :func:`_new_frame`)."""
    raw = np.empty(FRAME_ROOM + 7 + HEADER_SIZE + layout.fixed, np.uint8)
    room, arrays = _frame_spec(layout, raw.ctypes.data)
    buf = raw[:room + HEADER_SIZE + layout.fixed]
    return _Frame(buf, room, _views(buf, arrays))


def _views(buf, arrays):
    """The payload arrays of a frame: numpy views of ``buf`` at ``[(offset, dtype, shape)]``."""
    return tuple([np.ndarray(shape, dtype, buf, offset) for offset, dtype, shape in arrays])


_base._frame_maker = _new_frame


def _codec_for(name):
    cls = compressors.REGISTRY.get(name)
    if cls is None or cls.codec is None:
        raise CodecError(f"no wire codec for compressor {name!r}; known: {sorted(CODECS)} "
                         "(a compressor gets one by declaring `codec = gcomp.compressors.Codec(...)` and registering)")
    return cls.codec


@dataclasses.dataclass(frozen=True)
class Header:
    """A decoded, validated header: what :func:`peek` returns.

    Parameters
    ----------
    codec : gcomp.compressors.Codec
        The codec of the packet's compressor.
    flags : int
        Bit 0: zstd stage; bit 1: bitmap index coding.
    dtype : str
        The dtype name of the original vector.
    numel : int
        Elements of the dense vector.
    count : int
        Selected entries of a sparse codec, else 0.
    step : int
        The step the packet was compressed at.
    seed : int
        The 64-bit seed of its randomness.
    params : dict
        The codec parameters, by name.
    index_len : int
        Bytes of the index section.
    raw_len : int
        Payload bytes before the zstd stage.
    payload_len : int
        Payload bytes after the header.
    checksum : int
        The CRC-32 of the header and the payload.

    Examples
    --------
    >>> import numpy as np
    >>> import gcomp
    >>> from gcomp import wire
    >>> packet = wire.encode(gcomp.compressor("topk:ratio=0.25").compress(np.arange(8, dtype=np.float32)))
    >>> h = wire.peek(packet)
    >>> h.codec.name, h.numel, h.count, h.dtype, wire.HEADER_SIZE + h.payload_len == len(packet)
    ('topk', 8, 2, 'float32', True)
    """

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


def encode(c: Compressed, *, zstd: bool = False, zstd_level: int = 1) -> bytes:
    """The bytes of ``c``; with ``zstd=True`` a zstd stage is applied where it shrinks the payload.

    Parameters
    ----------
    c : gcomp.Compressed
        A compressed form of a compressor that has a wire codec.
    zstd : bool, optional
        Try a zstd stage on the payload; kept only where it makes the packet smaller.
    zstd_level : int, optional
        The zstd compression level.

    Returns
    -------
    bytes
        An 88-byte header followed by the payload (docs/wire-format.md).

    Raises
    ------
    gcomp.errors.CodecError
        The compressor has no wire codec, or the dtype is unknown.
    gcomp.errors.SizeError
        An array of ``c`` does not have the length its codec prescribes.

    Examples
    --------
    >>> import numpy as np
    >>> import gcomp
    >>> from gcomp import wire
    >>> x = np.array([0.5, -3.0, 0.25, 2.0, 0.0, 1.0, -0.5, 0.1], np.float32)
    >>> packet = wire.encode(gcomp.compressor("topk:ratio=0.25").compress(x))
    >>> packet[:4], len(packet)
    (b'GCMP', 97)
    """
    if zstd:
        return encode_array(c, zstd=zstd, zstd_level=zstd_level).tobytes()
    # Without zstd: the header and the payload pieces joined once into the bytes returned (encode_array's
    # buffer and its .tobytes() copy cost a fixed microsecond or so on small packets); the same bytes.
    codec, dtype_id, layout, flags, idx, index_kind, index_len, arrays = _prepare(c)
    header = bytearray(HEADER_SIZE)
    raw_len = index_len + layout.fixed
    _write_header(header, 0, c, codec, flags, dtype_id, layout, index_len, raw_len, raw_len)
    crc = zlib.crc32(header)  # header (CRC field zero), then the payload
    parts = [header]
    if index_kind is not None:
        section = np.empty(index_len, np.uint8)
        index_coding._write_index(idx, index_kind, index_len, section)
        crc = zlib.crc32(section, crc)
        parts.append(section)
    for a in arrays:
        crc = zlib.crc32(a, crc)
        parts.append(a)
    _CRC.pack_into(header, CRC_OFFSET, crc)
    return b"".join(parts)


def _prepare(c):
    """The checks and lookups :func:`encode` and :func:`encode_array` share: ``(codec, dtype id, layout, flags,
    int64 indices or None, index kind or None, index section bytes, the arrays to send in order)``."""
    if type(c) is not Compressed and not isinstance(c, Compressed):
        raise TypeError(f"expected a Compressed, found {type(c).__name__}")
    cls = compressors.REGISTRY.get(c.codec)
    codec = None if cls is None else cls.codec
    if codec is None:
        codec = _codec_for(c.codec)  # raises CodecError
    dtype_id = _DTYPE_IDS.get(c.dtype) if type(c.dtype) is str else None
    if dtype_id is None:
        raise CodecError(f"expected dtype in {DTYPES}, found {c.dtype!r}")
    ptuple = tuple([int(c.params[name]) for name in codec.params]) if codec.params else ()
    layout = _layout(codec, c.numel, c.count, ptuple)
    flags = 0
    idx, index_kind, index_len = None, None, 0
    if codec.sparse:
        idx, index_kind, index_len = index_coding._best(c.arrays["indices"], c.numel)  # validated once
        if index_kind == "bitmap":
            flags |= FLAG_BITMAP
    arrays = []
    for name, dtype, length, _, _ in layout.arrays:
        a = c.arrays[name]
        # a C-contiguous array of any shape is sent as it is (its bytes are those of its reshape(-1)), but an empty
        # one of several dimensions is flattened (a memoryview cannot cast a shape with a zero)
        if type(a) is not np.ndarray or a.dtype is not dtype or not a.flags.c_contiguous or (a.ndim != 1 and not a.size):
            a = np.ascontiguousarray(a, dtype=dtype).reshape(-1)
        if a.size != length:
            raise SizeError(f"expected array {name!r} of {length} entries for codec {codec.name!r}, found {a.size}")
        arrays.append(a)
    return codec, dtype_id, layout, flags, idx, index_kind, index_len, arrays


def encode_array(c: Compressed, *, reserve: int = 0, zstd: bool = False, zstd_level: int = 1) -> np.ndarray:
    """:func:`encode` into one fresh uint8 array, written once; the packet starts at offset ``reserve``.

    The first ``reserve`` bytes are left for the caller (uninitialised): the
    collectives put a sequence prefix there, so a packet is never copied to be
    framed.  Without zstd the index section and the arrays are written straight
    into place.

    A packet-backed form (a dense compressor's form of at least
    :data:`FRAME_MIN` entries, whose kernel wrote its arrays into a packet
    buffer: ``c.frame``) is not copied at all: without zstd, with ``reserve``
    at most :data:`FRAME_ROOM`, and while its arrays are still the very views
    of that buffer, the header is written in place and the buffer returned
    (from ``reserve`` bytes before the header).  The packet then shares
    memory with ``c.arrays``.  That happens once per form; a second call, or a
    form whose arrays were replaced, takes the copying path.  The bytes are the
    same.

    Parameters
    ----------
    c : gcomp.Compressed
        A compressed form of a compressor that has a wire codec.
    reserve : int, optional
        Bytes left free (uninitialised) before the packet.
    zstd : bool, optional
        Try a zstd stage on the payload, as in :func:`encode`.
    zstd_level : int, optional
        The zstd compression level.

    Returns
    -------
    numpy.ndarray
        uint8, ``reserve`` bytes followed by the packet (a fresh array, or a packet-backed form's own buffer).

    Examples
    --------
    >>> import numpy as np
    >>> import gcomp
    >>> from gcomp import wire
    >>> c = gcomp.compressor("topk:ratio=0.25").compress(np.arange(8, dtype=np.float32))
    >>> framed = wire.encode_array(c, reserve=8)
    >>> len(framed) == 8 + len(wire.encode(c)), bytes(framed[8:12])
    (True, b'GCMP')
    """
    if type(c) is not Compressed and not isinstance(c, Compressed):
        raise TypeError(f"expected a Compressed, found {type(c).__name__}")
    if reserve.__class__ is not int and (isinstance(reserve, bool) or not isinstance(reserve, int)) or reserve < 0:
        raise ValueError(f"expected reserve a non-negative int, found {reserve!r}")
    codec, dtype_id, layout, flags, idx, index_kind, index_len, arrays = _prepare(c)
    raw_len = index_len + layout.fixed
    frame = c.frame
    if frame is not None and not (zstd or index_len) and reserve <= FRAME_ROOM and not frame.used \
            and _framed(frame, arrays):
        # a packet-backed form: its arrays already sit in the payload; write the header in place, no copy
        frame.used = True
        out, room = frame.buf, frame.room
        _write_header(out, room, c, codec, flags, dtype_id, layout, index_len, raw_len, raw_len)
        _seal(out, room)
        return out[room - reserve:]
    start = reserve + HEADER_SIZE
    out = np.empty(start + raw_len, np.uint8)
    pos = start + index_len
    if index_kind is not None:
        index_coding._write_index(idx, index_kind, index_len, out[start:pos])
    if arrays:
        dst = memoryview(out)  # a memoryview copy: a third of numpy's slice assignment on small arrays
        for a in arrays:
            end = pos + a.nbytes
            dst[pos:end] = memoryview(a).cast("B")
            pos = end
    payload_len = raw_len
    if zstd and raw_len:
        import zstandard

        packed = zstandard.ZstdCompressor(level=zstd_level).compress(out[start:])
        if len(packed) < raw_len:
            payload_len = len(packed)
            flags |= FLAG_ZSTD
            out = np.concatenate([out[:start], np.frombuffer(packed, np.uint8)])
    _write_header(out, reserve, c, codec, flags, dtype_id, layout, index_len, raw_len, payload_len)
    _seal(out, reserve)
    return out


def _write_header(buf, at, c, codec, flags, dtype_id, layout, index_len, raw_len, payload_len):
    """The 88-byte header of ``c``'s packet at ``buf[at:]``, its CRC field zero (the CRC is taken over it so)."""
    HEADER.pack_into(buf, at, MAGIC, MAJOR, codec.since, codec.codec_id, flags, dtype_id, c.numel, c.count,
                     int(c.step), int(c.seed), *layout.p4, index_len, raw_len, payload_len, 0)


def _seal(out, at):
    """Write the CRC-32 of the packet ``out[at:]`` (header with its CRC field zero, then the payload) into it."""
    _CRC.pack_into(out, at + CRC_OFFSET, zlib.crc32(out[at:] if at else out))


def _framed(frame, arrays):
    """Whether ``arrays`` (what :func:`_prepare` would send, in payload order, each checked to have its layout's
    length) are still the very views of ``frame``: then the payload in the frame is the packet's payload (no index
    section: frames are dense codecs only).  A replaced or converted array fails the identity test."""
    views = frame.views
    if len(views) != len(arrays) or frame.buf.shape[0] != frame.room + HEADER_SIZE + sum(a.nbytes for a in arrays):
        return False
    for a, v in zip(arrays, views, strict=True):
        if a is not v:
            return False
    return True


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
    """Validate and return the header of ``buf`` (everything up to and including the checksum).

    The magic and the major version come first; the rest of the header is read
    by the reader of that major version (``_READERS``), so a later major
    version can be added while version 1 packets keep decoding.

    Parameters
    ----------
    buf : bytes or bytearray or memoryview or numpy.ndarray
        A whole packet (a 1-D uint8 array for numpy).
    expected_numel : int, optional
        The size the receiver expects; another ``numel`` raises SizeError.

    Returns
    -------
    Header

    Raises
    ------
    gcomp.errors.WireFormatError
        A subclass naming the first field that fails (truncated, magic,
        version, codec, size, checksum).

    Examples
    --------
    >>> import numpy as np
    >>> import gcomp
    >>> from gcomp import wire
    >>> packet = wire.encode(gcomp.compressor("fp16").compress(np.ones(4, np.float32)))
    >>> wire.peek(packet).codec.name
    'fp16'
    """
    mv = _as_buffer(buf)
    total = len(mv)
    if total >= HEADER_SIZE and mv[4] == MAJOR:  # the common case; _peek_v1 checks the magic first
        return _peek_v1(mv, total, expected_numel)
    if total < 5:
        raise TruncatedError(f"expected at least {HEADER_SIZE} bytes for a gcomp header, found {total}")
    if bytes(mv[:4]) != MAGIC:
        raise MagicError(f"expected magic {MAGIC!r}, found {bytes(mv[:4])!r}: not a gcomp packet")
    reader = _READERS.get(mv[4])
    if reader is None:
        raise VersionError(f"expected wire major version in {sorted(_READERS)}, found {mv[4]}; upgrade gcomp to read it")
    return reader(mv, total, expected_numel)


def _peek_v1(mv, total, expected_numel):
    (codec, flags, dtype_id, numel, count, step, seed, layout, index_len, raw_len, payload_len,
     crc) = _read_v1(mv, total, expected_numel)
    return Header(codec, flags, DTYPES[dtype_id], numel, count, step, seed, dict(layout.params), index_len, raw_len,
                  payload_len, crc)


def _read_v1(mv, total, expected_numel):
    """The checks of a version-1 header (module docstring); returns its fields and the validated layout.

    A header whose fields other than step, seed and checksum equal those of a header that passed every
    header-only check before (``_HEADERS``, same codec class still registered under its id) skips those
    checks: they depend on nothing else.  The magic, ``expected_numel``, the total length and the checksum
    are checked on every packet, in the documented order.
    """
    if total < HEADER_SIZE:
        raise TruncatedError(f"expected at least {HEADER_SIZE} bytes for a gcomp header, found {total}")
    fields = _HEADER_IN.unpack_from(mv, 0)
    hit = _HEADERS.get(fields[2:9] + fields[11:18])
    if hit is not None and fields[0] == MAGIC and _BY_CODEC_ID.get(fields[3]) is hit[0] and hit[0].codec is hit[1]:
        codec, layout = hit[1], hit[2]
        numel, payload_len, crc = fields[7], fields[17], fields[18]
        if expected_numel is not None and numel != expected_numel:
            raise SizeError(f"expected numel {expected_numel} (the receiver's buffer), found {numel}")
        _check_length_and_crc(mv, total, payload_len, crc)
        return (codec, fields[4], fields[5], numel, fields[8], fields[9], fields[10], layout, fields[15], fields[16],
                payload_len, crc)
    return _read_v1_checked(mv, total, expected_numel, fields)


def _read_v1_checked(mv, total, expected_numel, fields):
    """:func:`_read_v1` with every check, in the documented order; a header that passes the header-only
    checks enters ``_HEADERS``."""
    (magic, major, minor, codec_id, flags, dtype_id, reserved, numel, count, step, seed, p0, p1, p2, p3,
     index_len, raw_len, payload_len, crc) = fields
    if magic != MAGIC:
        raise MagicError(f"expected magic {MAGIC!r}, found {bytes(magic)!r}: not a gcomp packet")
    if minor > MINOR:
        raise VersionError(f"expected wire version {MAJOR}.{MINOR} or older minor, found {major}.{minor}; upgrade gcomp to read it")
    cls = compressors.codec_by_id(codec_id)
    if cls is None:
        raise CodecError(f"expected a known codec id {compressors.codec_ids()}, found {codec_id}")
    codec = cls.codec
    if minor < codec.since:
        raise VersionError(f"expected wire version {MAJOR}.{codec.since} or later for codec {codec.name!r}, found {major}.{minor}")
    if dtype_id >= len(DTYPES):
        raise CodecError(f"expected a dtype id below {len(DTYPES)}, found {dtype_id}")
    if reserved != b"\0\0\0":
        raise CodecError(f"expected zero reserved bytes, found {reserved.hex()}")
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
    used = len(codec.params)
    if any(raw_p[used:]):
        raise CodecError(f"expected unused codec parameters to be zero, found {raw_p}")
    layout = _layout(codec, numel, count, raw_p[:used])  # the codec's checks run on sizes not seen before
    if codec.sparse:
        if flags & FLAG_BITMAP:
            want_index = (numel + 7) // 8
            if index_len != want_index:
                raise SizeError(f"expected a {want_index}-byte bitmap for numel {numel}, found index_len {index_len}")
        elif not count <= index_len <= 10 * count:
            raise SizeError(f"expected varint index_len in [{count}, {10 * count}] for count {count}, found {index_len}")
    elif index_len:
        raise SizeError(f"expected index_len 0 for codec {codec.name!r}, found {index_len}")
    fixed = layout.fixed
    if raw_len != index_len + fixed:
        raise SizeError(f"expected raw_len {index_len + fixed} for these sizes, found {raw_len}")
    if flags & FLAG_ZSTD:
        if not 0 < payload_len < raw_len:
            raise SizeError(f"expected a zstd payload shorter than raw_len {raw_len}, found {payload_len}")
        if raw_len > ZSTD_MAX_RATIO * payload_len:
            raise SizeError(f"expected raw_len at most {ZSTD_MAX_RATIO}x the zstd payload ({payload_len}), found {raw_len}")
    elif payload_len != raw_len:
        raise SizeError(f"expected payload_len == raw_len ({raw_len}) without zstd, found {payload_len}")
    # every header-only check passed (expected_numel aside, which is checked on every packet)
    if len(_HEADERS) >= _LAYOUTS_MAX:
        _HEADERS.clear()
    _HEADERS[fields[2:9] + fields[11:18]] = (cls, codec, layout)
    _check_length_and_crc(mv, total, payload_len, crc)
    return codec, flags, dtype_id, numel, count, step, seed, layout, index_len, raw_len, payload_len, crc


def _check_length_and_crc(mv, total, payload_len, crc):
    """The last checks of every packet, cached header or not: exactly header + payload bytes, then the CRC-32 of
    the header (its CRC field read as zero) and the payload."""
    if total != HEADER_SIZE + payload_len:
        raise TruncatedError(f"expected exactly {HEADER_SIZE + payload_len} bytes (header + payload), found {total}")
    check = zlib.crc32(mv[HEADER_SIZE:], zlib.crc32(_ZERO_CRC, zlib.crc32(mv[:CRC_OFFSET])))
    if check != crc:
        raise ChecksumError(f"expected CRC-32 {crc:#010x} from the header, computed {check:#010x}: the packet is corrupt")


_ZERO_CRC = b"\0\0\0\0"

#: header fields (minor .. count, p0 .. payload_len: all but magic, major, step, seed and checksum) of headers that
#: passed every header-only check -> (codec class, codec, layout); at most ``_LAYOUTS_MAX`` entries, then it
#: starts afresh (only valid headers enter, and hostile ones cannot grow it past that)
_HEADERS = {}
#: codec id -> registered class (the registry's own table: a re-registered id no longer matches a cached entry)
_BY_CODEC_ID = compressors._BY_CODEC_ID
#: dtype name -> the header's dtype id
_DTYPE_IDS = {name: i for i, name in enumerate(DTYPES)}

#: major version -> header reader
_READERS = {MAJOR: _peek_v1}


def _unzstd(payload: bytes, raw_len: int) -> bytes:
    """Decompress one zstd frame of exactly ``raw_len`` bytes; never allocates more than that."""
    import zstandard

    if len(payload) >= 4 and int.from_bytes(payload[:4], "little") & 0xFFFFFFF0 == 0x184D2A50:
        raise CodecError("expected a regular zstd frame, found a skippable frame (docs/wire-format.md, section 5)")
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
    """Validate ``buf`` completely and return its :class:`~gcomp.Compressed` (arrays are read-only views where possible).

    Every field is checked before anything is allocated; see the module
    docstring for the order.

    Parameters
    ----------
    buf : bytes or bytearray or memoryview or numpy.ndarray
        A whole packet (a 1-D uint8 array for numpy).
    expected_numel : int, optional
        The size the receiver expects; another ``numel`` raises SizeError.

    Returns
    -------
    gcomp.Compressed
        Its ``kind`` is ``"numpy"``: the packet carries the dtype, not the kind.

    Raises
    ------
    gcomp.errors.WireFormatError
        A subclass naming what failed: TruncatedError, MagicError, VersionError,
        CodecError, SizeError, ChecksumError or ``IndexError_``.

    Examples
    --------
    >>> import numpy as np
    >>> import gcomp
    >>> from gcomp import wire
    >>> topk = gcomp.compressor("topk:ratio=0.25")
    >>> packet = wire.encode(topk.compress(np.array([0.5, -3.0, 0.25, 2.0, 0.0, 1.0, -0.5, 0.1], np.float32)))
    >>> topk.decompress(wire.decode(packet, expected_numel=8)).tolist()
    [0.0, -3.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    >>> wire.decode(packet[:-1])
    Traceback (most recent call last):
        ...
    gcomp.errors.TruncatedError: expected exactly 97 bytes (header + payload), found 96
    """
    mv = _as_buffer(buf)
    total = len(mv)
    if total < HEADER_SIZE or mv[4] != MAJOR:
        h = peek(buf, expected_numel)  # raises, or reads another major version (none yet)
        layout = _layout(h.codec, h.numel, h.count, tuple(h.params[name] for name in h.codec.params))
        codec, flags, dtype_id, numel, count, step, seed, index_len, raw_len = (
            h.codec, h.flags, DTYPES.index(h.dtype), h.numel, h.count, h.step, h.seed, h.index_len, h.raw_len)
    else:
        (codec, flags, dtype_id, numel, count, step, seed, layout, index_len, raw_len, _,
         _) = _read_v1(mv, total, expected_numel)
    raw = mv if mv.readonly else mv.toreadonly()  # the arrays are read-only views of the packet
    base = HEADER_SIZE  # where the raw payload starts in raw
    if flags & FLAG_ZSTD:
        raw, base = _unzstd(bytes(raw[HEADER_SIZE:]), raw_len), 0
    arrays = {}
    offset = base
    if codec.sparse:
        section = np.frombuffer(raw, np.uint8, index_len, base)
        try:  # the header checks gave count <= numel, and index_len = ceil(numel / 8) or >= count
            if flags & FLAG_BITMAP:
                arrays["indices"] = index_coding._bitmap_decode_run(section, numel, count)
            else:
                arrays["indices"] = index_coding._varint_decode_run(section, count, numel, np.empty(count, np.int64))
        except ValueError as exc:
            raise IndexError_(f"invalid sparse indices: {exc}") from None
        offset += index_len
    for name, dtype, length, nbytes, shape in layout.arrays:
        a = np.frombuffer(raw, dtype, length, offset)
        arrays[name] = a if shape is None else a.reshape(shape)
        offset += nbytes
    if offset != len(raw):  # cannot happen after the header checks; kept as a guard
        raise WireFormatError(f"expected {offset - base} payload bytes, found {len(raw) - base}")
    if codec.regenerate_indices is not None:
        arrays["indices"] = codec.regenerate_indices(numel, count, seed)
    return Compressed(codec.name, numel, DTYPES[dtype_id], arrays, dict(layout.params), count=count, step=step, seed=seed)
