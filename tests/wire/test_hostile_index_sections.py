"""Sparse index sections with a valid CRC-32: out-of-range, overlong, non-canonical, truncated or trailing
varints and bitmaps with a wrong length, popcount or padding are refused for every sparse codec, and valid
hand-built sections decode.
"""

import pytest
from _header import CODEC_IDS, U64, rewrite, sparse_packet, varint
from _packets import assert_valid

from gcomp import wire
from gcomp.errors import IndexError_, SizeError

pytestmark = pytest.mark.usefixtures("no_pickle")


@pytest.mark.parametrize(
    "numel, index_bytes, count, bitmap, error",
    [
        (10, varint([10]), 1, False, IndexError_),  # index == numel
        (10, varint([3, 6]), 2, False, IndexError_),  # second index 3 + 1 + 6 = 10 == numel
        (1 << 40, varint([(1 << 40) - 1, 0]), 2, False, IndexError_),  # idx >= numel at 2**40
        (1 << 40, varint([U64, 0]), 2, False, IndexError_),  # a gap of 2**64 - 1
        (100, b"\x80" * 10 + b"\x01" + b"\x00", 2, False, IndexError_),  # an 11-byte varint
        (100, b"\x80" * 9 + b"\x02" + b"\x00", 2, False, IndexError_),  # 10th byte > 1: over 64 bits
        (100, b"\xff" * 10 + b"\x00", 2, False, IndexError_),  # too long, continuation on the 10th byte
        (100, b"\x80\x00", 1, False, IndexError_),  # non-canonical 0
        (100, b"\x85\x80\x00", 1, False, IndexError_),  # non-canonical 5
        (100, b"\x00\x00", 1, False, IndexError_),  # trailing byte after the last varint
        (100, b"\x00" * 5, 3, False, IndexError_),  # two trailing bytes
        (100, b"\x80", 1, False, IndexError_),  # truncated varint
        (100, b"\x00\x80", 2, False, IndexError_),  # truncated second varint
        (100, b"\x80\x80", 2, False, IndexError_),  # truncated, never terminates
        (16, b"\x0f\x00", 3, True, IndexError_),  # bitmap popcount 4 != 3
        (16, b"\x03\x00", 3, True, IndexError_),  # bitmap popcount 2 != 3
        (16, b"\x00\x00", 1, True, IndexError_),  # empty bitmap, count 1
        (10, b"\x01\x04", 2, True, IndexError_),  # padding bit 10 set (popcount matches)
        (10, b"\x01\x80", 2, True, IndexError_),  # padding bit 15 set
        (10, b"\x01\x02", 3, True, IndexError_),  # count 3, two bits
        (10, b"\xff\x03\x00", 10, True, SizeError),  # bitmap one byte too long
        (10, b"\xff", 8, True, SizeError),  # bitmap one byte too short
        (4, b"\x0f", 5, True, SizeError),  # count > numel
        (0, b"", 1, False, SizeError),  # count > numel = 0
        (5, b"\x00" * 11, 1, False, SizeError),  # index_len > 10 * count
    ],
)
def test_hostile_index_section(numel, index_bytes, count, bitmap, error):
    buf = sparse_packet(numel, index_bytes=index_bytes, count=count, bitmap=bitmap)
    with pytest.raises(error):
        wire.decode(buf)
    for codec in ("dgc", "threshold"):
        with pytest.raises(error):
            wire.decode(rewrite(buf, codec=CODEC_IDS[codec]))


@pytest.mark.parametrize("bitmap", [False, True])
def test_valid_hand_built_index_sections(bitmap):
    for numel, idx in ((1, [0]), (8, [7]), (9, [8]), (100, [0, 1, 2, 99]), (1000, list(range(0, 1000, 3)))):
        d = wire.decode(sparse_packet(numel, idx, bitmap=bitmap))
        assert list(d.arrays["indices"]) == idx
        assert_valid(d)
    # varint: the largest index a 2**40 vector can carry, and a 10-byte varint for a gap >= 2**63 is refused as >= numel
    d = wire.decode(sparse_packet(1 << 40, [(1 << 40) - 1]))
    assert list(d.arrays["indices"]) == [(1 << 40) - 1]
