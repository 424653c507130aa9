"""Hostile headers with a valid CRC-32: bad magic, versions, codecs, dtypes, flags, reserved bytes,
parameters and sizes raise the documented error (from ``decode`` and ``peek``), checks run in the documented
order, and ``expected_numel`` is enforced.
"""

import struct
import zlib

import pytest
from _header import BITMAP, CODEC_IDS, HEADER_SIZE, U64, ZSTD, header_fields, make_packet, rewrite, sparse_packet
from _packets import _base

from gcomp import wire
from gcomp.errors import ChecksumError, CodecError, IndexError_, MagicError, SizeError, TruncatedError, VersionError

pytestmark = pytest.mark.usefixtures("no_pickle")


ZSTD_STAGE = (CodecError, SizeError)

HOSTILE = [
    # (id, base sample, header changes, payload (None: keep), reserved (None: keep), error, message fragment)
    ("magic-lower", "none", {"magic": b"gcmp"}, None, None, MagicError, "magic"),
    ("magic-zero", "none", {"magic": b"\0\0\0\0"}, None, None, MagicError, "magic"),
    ("magic-pickle", "none", {"magic": b"\x80\x04\x95\x00"}, None, None, MagicError, "magic"),
    ("major-0", "none", {"major": 0}, None, None, VersionError, "version"),
    ("major-2", "none", {"major": 2}, None, None, VersionError, "version"),
    ("major-255", "none", {"major": 255}, None, None, VersionError, "version"),
    ("minor-1", "none", {"minor": 1}, None, None, VersionError, "version"),
    ("minor-255", "none", {"minor": 255}, None, None, VersionError, "version"),
    ("codec-0", "none", {"codec": 0}, None, None, CodecError, "codec"),
    ("codec-14", "none", {"codec": 14}, None, None, CodecError, "codec"),
    ("codec-127", "none", {"codec": 127}, None, None, CodecError, "codec"),
    ("codec-128", "none", {"codec": 128}, None, None, CodecError, "codec"),
    ("codec-255", "none", {"codec": 255}, None, None, CodecError, "codec"),
    ("dtype-4", "none", {"dtype": 4}, None, None, CodecError, "dtype"),
    ("dtype-255", "none", {"dtype": 255}, None, None, CodecError, "dtype"),
    ("reserved-0", "none", {}, None, b"\x01\0\0", CodecError, "reserved"),
    ("reserved-1", "none", {}, None, b"\0\x80\0", CodecError, "reserved"),
    ("reserved-2", "none", {}, None, b"\0\0\xff", CodecError, "reserved"),
    ("flag-4", "none", {"flags": 4}, None, None, CodecError, "flags"),
    ("flag-8", "topk", {"flags": 8}, None, None, CodecError, "flags"),
    ("flag-80", "none", {"flags": 0x80}, None, None, CodecError, "flags"),
    ("flag-ff", "topk", {"flags": 0xFF}, None, None, CodecError, "flags"),
    ("bitmap-on-none", "none", {"flags": BITMAP}, None, None, CodecError, "bitmap"),
    ("bitmap-on-qsgd", "qsgd", {"flags": BITMAP}, None, None, CodecError, "bitmap"),
    ("bitmap-on-powersgd", "powersgd", {"flags": BITMAP}, None, None, CodecError, "bitmap"),
    ("bitmap-on-randomk", "randomk", {"flags": BITMAP}, None, None, CodecError, "bitmap"),
    ("bitmap-zstd-on-natural", "natural", {"flags": BITMAP | ZSTD}, None, None, CodecError, "bitmap"),
    ("numel-2**63", "none", {"numel": 1 << 63}, None, None, SizeError, "numel"),
    ("numel-2**64-1", "none", {"numel": U64}, None, None, SizeError, "numel"),
    ("numel-2**40+1", "none", {"numel": (1 << 40) + 1}, None, None, SizeError, "numel"),
    ("numel-2**40-inconsistent", "none", {"numel": 1 << 40}, None, None, SizeError, "raw_len"),
    ("numel+1", "none", {"numel": 65}, None, None, SizeError, "raw_len"),
    ("numel-1", "none", {"numel": 63}, None, None, SizeError, "raw_len"),
    ("count-on-dense", "none", {"count": 1}, None, None, SizeError, "count"),
    ("count-on-qsgd", "qsgd", {"count": 3}, None, None, SizeError, "count"),
    ("count>numel-topk", "topk", {"count": 65}, None, None, SizeError, "count"),
    ("count>numel-randomk", "randomk", {"count": 65}, None, None, SizeError, "count"),
    ("count-2**64-1", "topk", {"count": U64}, None, None, SizeError, "count"),
    ("unused-param-none", "none", {"p0": 1}, None, None, CodecError, "param"),
    ("unused-param-sign", "sign", {"p1": 1}, None, None, CodecError, "param"),
    ("unused-param-qsgd", "qsgd", {"p3": 7}, None, None, CodecError, "param"),
    ("unused-param-powersgd", "powersgd", {"p3": 1}, None, None, CodecError, "param"),
    ("qsgd-bits-3", "qsgd", {"p2": 3}, None, None, SizeError, "bits"),
    ("qsgd-bits-8-for-4-levels", "qsgd", {"p2": 8}, None, None, SizeError, "bits"),
    ("qsgd-levels-0", "qsgd", {"p0": 0}, None, None, SizeError, "levels"),
    ("qsgd-levels-128", "qsgd", {"p0": 128}, None, None, SizeError, "levels"),
    ("qsgd-levels-2**32-1", "qsgd", {"p0": 2**32 - 1}, None, None, SizeError, "levels"),
    ("qsgd-bucket-12", "qsgd", {"p1": 12}, None, None, SizeError, "bucket"),
    ("qsgd-bucket-0", "qsgd", {"p1": 0}, None, None, SizeError, "bucket"),
    ("qsgd-bucket-other", "qsgd", {"p1": 8}, None, None, SizeError, "raw_len"),
    ("uniform-bits-3", "uniform", {"p0": 3}, None, None, SizeError, "bits"),
    ("uniform-bits-0", "uniform", {"p0": 0}, None, None, SizeError, "bits"),
    ("uniform-bucket-12", "uniform", {"p1": 12}, None, None, SizeError, "bucket"),
    ("uniform-mode-2", "uniform", {"p2": 2}, None, None, SizeError, "mode"),
    ("uniform-stochastic-2", "uniform", {"p3": 2}, None, None, SizeError, "stochastic"),
    ("uniform-absmax-1bit", "uniform_b1", {"p2": 1}, None, None, SizeError, "abs-max"),
    ("sign-bucket-12", "sign", {"p0": 12}, None, None, SizeError, "bucket"),
    ("sign-bucket-4", "sign", {"p0": 4}, None, None, SizeError, "bucket"),
    ("terngrad-bucket-12", "terngrad", {"p0": 12}, None, None, SizeError, "bucket"),
    ("terngrad-bucket-2**32-4", "terngrad", {"p0": 2**32 - 4}, None, None, SizeError, "bucket"),
    ("powersgd-rank>min", "powersgd", {"p2": 9}, None, None, SizeError, "rank"),
    ("powersgd-rank-0", "powersgd", {"p2": 0}, None, None, SizeError, "rank"),
    ("powersgd-rank-2**32-1", "powersgd", {"p2": 2**32 - 1}, None, None, SizeError, "rank"),
    ("powersgd-rows", "powersgd", {"p0": 4, "p1": 16}, None, None, SizeError, "matrix"),
    ("powersgd-empty-rank", "powersgd_empty", {"p2": 1}, None, None, SizeError, "rank"),
    ("index_len-on-dense", "none", {"index_len": 4}, None, None, SizeError, "index_len"),
    ("index_len-on-randomk", "randomk", {"index_len": 6}, None, None, SizeError, "index_len"),
    ("index_len<count", "topk", {"index_len": 2}, None, None, SizeError, "index_len"),
    ("index_len>10count", "topk", {"index_len": 41}, None, None, SizeError, "index_len"),
    ("index_len-2**64-1", "topk", {"index_len": U64}, None, None, SizeError, "index_len"),
    ("bitmap-index_len", "topk_bitmap", {"index_len": 9}, None, None, SizeError, "bitmap"),
    ("bitmap-index_len-2**64-1", "topk_bitmap", {"index_len": U64}, None, None, SizeError, "bitmap"),
    ("raw_len+1", "none", {"raw_len": 257}, None, None, SizeError, "raw_len"),
    ("raw_len-1", "none", {"raw_len": 255}, None, None, SizeError, "raw_len"),
    ("raw_len-2**64-1", "none", {"raw_len": U64}, None, None, SizeError, "raw_len"),
    ("payload_len-2**64-1", "none", {"payload_len": U64}, None, None, SizeError, "payload_len"),
    ("payload_len!=raw_len", "none", {"payload_len": 255}, None, None, SizeError, "payload_len"),
    ("payload_len-0", "qsgd", {"payload_len": 0}, b"", None, SizeError, "payload_len"),
    ("zstd-payload_len==raw_len", "none", {"flags": ZSTD}, None, None, SizeError, "zstd"),
    ("zstd-payload_len>raw_len", "none_zstd", {"payload_len": 4 * 300 + 1}, None, None, SizeError, "zstd"),
    ("zstd-payload_len-0", "none_zstd", {"payload_len": 0}, b"", None, SizeError, "zstd"),
    ("consistent-but-longer", "none", {"numel": 65, "raw_len": 260, "payload_len": 260}, None, None, TruncatedError,
     "exactly"),
    ("consistent-but-shorter", "none", {"numel": 63, "raw_len": 252, "payload_len": 252}, None, None, TruncatedError,
     "exactly"),
    ("huge-consistent", "none", {"numel": 1 << 40, "raw_len": 4 << 40, "payload_len": 4 << 40}, None, None,
     TruncatedError, "exactly"),
    # the zstd stage itself (decode only): an invalid frame is a CodecError, one of the wrong size a SizeError
    ("zstd-garbage", "none", {"flags": ZSTD, "payload_len": 50}, b"\x28\xb5\x2f\xfd" + bytes(range(46)), None,
     ZSTD_STAGE, "zstd"),
    ("zstd-not-a-frame", "none", {"flags": ZSTD, "payload_len": 200}, bytes(200), None, ZSTD_STAGE, "zstd"),
    ("zstd-bitmap-garbage", "topk_bitmap", {"flags": ZSTD | BITMAP, "payload_len": 64}, bytes(range(64)), None,
     ZSTD_STAGE, "zstd"),
]


def _hostile_cases():
    return [pytest.param(*case[1:], id=case[0]) for case in HOSTILE]


@pytest.mark.parametrize("base, changes, payload, reserved, error, fragment", _hostile_cases())
def test_hostile_header_with_valid_crc(base, changes, payload, reserved, error, fragment):
    buf = rewrite(_base(base), payload, reserved=reserved, **changes)
    assert zlib.crc32(buf[HEADER_SIZE:], zlib.crc32(buf[:84] + b"\0\0\0\0")) == header_fields(buf)["crc"]
    with pytest.raises(error) as info:
        wire.decode(buf)
    assert fragment.lower() in str(info.value).lower()
    if error is ZSTD_STAGE:  # the zstd stage is decode's job: peek accepts the header
        assert wire.peek(buf).flags & ZSTD
    else:  # peek stops at the same point
        with pytest.raises(error):
            wire.peek(buf)


def test_unknown_dtype_codec_and_flags_for_every_value():
    base = _base("none")
    known = set(CODEC_IDS.values()) | {c.codec_id for c in wire.CODECS.values()}
    for cid in range(256):
        if cid not in known:
            with pytest.raises(CodecError):
                wire.decode(rewrite(base, codec=cid))
    for dtype in range(4, 256):
        with pytest.raises(CodecError):
            wire.decode(rewrite(base, dtype=dtype))
    for flags in range(4, 256):
        with pytest.raises(CodecError):
            wire.decode(rewrite(_base("topk"), flags=flags))
    for major in range(256):
        if major != 1:
            with pytest.raises(VersionError):
                wire.decode(rewrite(base, major=major))
    for minor in range(1, 256):
        with pytest.raises(VersionError):
            wire.decode(rewrite(base, minor=minor))


def test_minor_versions_only_grow(monkeypatch):
    """A reader of minor m reads minors <= m and refuses newer ones (simulated 1.2 reader)."""
    monkeypatch.setattr(wire, "MINOR", 2)
    base = _base("none")
    for minor in (0, 1, 2):
        assert wire.decode(rewrite(base, minor=minor)).numel == 64
    for minor in (3, 255):
        with pytest.raises(VersionError):
            wire.decode(rewrite(base, minor=minor))


@pytest.mark.parametrize(
    "faults, error",
    [
        ({"magic": b"XXXX", "major": 9}, MagicError),
        ({"major": 9, "codec": 254}, VersionError),
        ({"codec": 254, "numel": U64}, CodecError),
        ({"dtype": 9, "numel": U64}, CodecError),
        ({"flags": 0x40, "numel": U64}, CodecError),
        ({"numel": U64, "payload_len": 1}, SizeError),
        ({"payload_len": 1000, "crc": 1}, SizeError),  # a size mismatch is found before the checksum
    ],
)
def test_validation_order(faults, error):
    faults = dict(faults)
    crc = faults.pop("crc", None)
    f = header_fields(_base("none"))
    f.update(faults)
    buf = make_packet(f, _base("none")[HEADER_SIZE:], crc=crc)
    with pytest.raises(error):
        wire.decode(buf)


def test_truncation_is_found_before_the_checksum_and_checksum_before_indices():
    buf = sparse_packet(100, [3, 7, 50])
    bad_crc = buf[:84] + struct.pack("<I", header_fields(buf)["crc"] ^ 1) + buf[HEADER_SIZE:]
    with pytest.raises(TruncatedError):
        wire.decode(bad_crc[:-1])
    bad_index = rewrite(buf, b"\x80\x00\x00" + buf[HEADER_SIZE + 3:])  # non-canonical first varint, CRC valid
    with pytest.raises(IndexError_):
        wire.decode(bad_index)
    corrupt = bytearray(bad_index)
    corrupt[HEADER_SIZE] ^= 0x01  # now the CRC does not match either: ChecksumError wins
    with pytest.raises(ChecksumError):
        wire.decode(bytes(corrupt))


def test_expected_numel():
    buf = _base("topk")
    assert wire.decode(buf, expected_numel=64).numel == 64
    for wrong in (0, 63, 65, 1 << 40):
        with pytest.raises(SizeError, match="expected numel"):
            wire.decode(buf, expected_numel=wrong)
        with pytest.raises(SizeError):
            wire.peek(buf, expected_numel=wrong)
    # checked before the payload sizes and the checksum
    with pytest.raises(SizeError, match="expected numel"):
        wire.decode(rewrite(buf, numel=1 << 40), expected_numel=64)
