"""The packet layout of docs/wire-format.md, section 1, and hand-built packets with a valid CRC-32.

``make_packet`` / ``rewrite`` rebuild packets with a *valid* CRC-32 so that the
hostile-header tests exercise the field validation, not the checksum.  This
module is written from the specification alone: it imports nothing from gcomp,
so the reference decoder (reference_decoder.py) can use it and stay independent
of ``gcomp.wire``.
"""

import struct
import zlib

import numpy as np

# ---------------------------------------------------------------------------
# header helpers (the layout of docs/wire-format.md, section 1)
# ---------------------------------------------------------------------------

HEADER = struct.Struct("<4sBBBBB3xQQQQ4IQQQI")
HEADER_SIZE = 88
FIELDS = ("magic", "major", "minor", "codec", "flags", "dtype", "numel", "count", "step", "seed",
          "p0", "p1", "p2", "p3", "index_len", "raw_len", "payload_len", "crc")
CODEC_IDS = {"none": 1, "fp16": 2, "bf16": 3, "topk": 4, "dgc": 5, "randomk": 6, "threshold": 7, "qsgd": 8,
             "uniform": 9, "sign": 10, "terngrad": 11, "natural": 12, "powersgd": 13}
U64 = (1 << 64) - 1
ZSTD, BITMAP = 1, 2


def header_fields(buf):
    return dict(zip(FIELDS, HEADER.unpack_from(bytes(buf[:HEADER_SIZE]), 0), strict=True))


def make_packet(fields, payload=b"", *, reserved=b"\0\0\0", crc=None):
    """Header + payload with a valid CRC-32 (over the header with the CRC field zero, then the payload)."""
    values = [fields[name] for name in FIELDS[:-1]] + [0]
    head = bytearray(HEADER.pack(*values))
    head[9:12] = reserved
    if crc is None:
        crc = zlib.crc32(payload, zlib.crc32(bytes(head)))
    head[84:88] = struct.pack("<I", crc)
    return bytes(head) + bytes(payload)


def rewrite(buf, payload=None, *, reserved=None, **changes):
    """``buf`` with header fields / payload / reserved bytes replaced and the CRC recomputed."""
    fields = header_fields(buf)
    fields.update(changes)
    payload = bytes(buf[HEADER_SIZE:]) if payload is None else payload
    return make_packet(fields, payload, reserved=bytes(buf[9:12]) if reserved is None else reserved)


def fields_for(codec, numel=0, count=0, *, flags=0, dtype=0, step=0, seed=0, p=(0, 0, 0, 0), index_len=0,
               raw_len=0, payload_len=None):
    return dict(magic=b"GCMP", major=1, minor=0, codec=CODEC_IDS.get(codec, codec), flags=flags, dtype=dtype,
                numel=numel, count=count, step=step, seed=seed, p0=p[0], p1=p[1], p2=p[2], p3=p[3],
                index_len=index_len, raw_len=raw_len, payload_len=raw_len if payload_len is None else payload_len, crc=0)


def varint(values):
    out = bytearray()
    for g in values:
        g = int(g)
        while True:
            b = g & 0x7F
            g >>= 7
            out.append(b | (0x80 if g else 0))
            if not g:
                break
    return bytes(out)


def sparse_packet(numel, indices=None, index_bytes=None, *, count=None, bitmap=False, codec="topk", values=None):
    """A topk/dgc/threshold packet with the given index section (encoded here, or raw bytes), valid CRC."""
    if index_bytes is None:
        idx = list(indices)
        if bitmap:
            bits = np.zeros((numel + 7) // 8 * 8, np.uint8)
            bits[idx] = 1
            index_bytes = np.packbits(bits, bitorder="little").tobytes()
        else:
            index_bytes = varint(np.diff([-1, *idx]) - 1)
        count = len(idx) if count is None else count
    vals = np.arange(count, dtype="<f4").tobytes() if values is None else values
    raw = index_bytes + vals
    f = fields_for(codec, numel, count, flags=BITMAP if bitmap else 0, index_len=len(index_bytes), raw_len=len(raw))
    return make_packet(f, raw)


def frame_with_content_size(content_size, data):
    """A zstd frame (one raw block holding ``data``) whose header *claims* ``content_size``."""
    return (b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", content_size)
            + struct.pack("<I", (len(data) << 3) | 1)[:3] + data)
