"""The index coding choice of sparse packets: ``encode`` writes the smaller of varint gaps and bitmap, a tie
going to varint, and ``decode`` accepts either coding whatever its size.
"""

import numpy as np
import pytest
from _header import BITMAP, HEADER_SIZE, header_fields, sparse_packet, varint

from gcomp import wire
from gcomp.compressors.base import Compressed

pytestmark = pytest.mark.usefixtures("no_pickle")


@pytest.mark.parametrize(
    "numel, indices, flags, index_len",
    [
        (0, [], 0, 0),
        (100, [], 0, 0),
        (8, [0], 0, 1),  # varint 1 byte == bitmap 1 byte: a tie goes to varint
        (16, [0, 1], 0, 2),  # tie again
        (16, [0, 1, 2], BITMAP, 2),  # varint 3 > bitmap 2
        (1000, [999], 0, 2),  # gap 999 -> 2 varint bytes
        (1 << 20, [0, (1 << 20) - 1], 0, 4),
        (64, list(range(0, 64, 2)), BITMAP, 8),
    ],
)
def test_index_coding_is_the_smaller_one_ties_varint(numel, indices, flags, index_len):
    idx = np.array(indices, np.int64)
    c = Compressed("topk", numel, "float32", {"indices": idx, "values": np.ones(len(idx), np.float32)}, count=len(idx))
    buf = wire.encode(c)
    h = header_fields(buf)
    assert (h["flags"], h["index_len"]) == (flags, index_len)
    section = buf[HEADER_SIZE:HEADER_SIZE + index_len]
    if flags & BITMAP:
        bits = np.zeros(numel, np.uint8)
        bits[idx] = 1
        assert section == np.packbits(bits, bitorder="little").tobytes()
    else:
        assert section == varint(np.diff([-1, *indices]) - 1)
    assert np.array_equal(wire.decode(buf).arrays["indices"], idx)


def test_decoder_accepts_the_non_canonical_coding_too():
    """Either coding decodes, whatever its size; re-encoding picks the canonical (smaller) one."""
    buf = sparse_packet(64, [5], bitmap=True)  # bitmap 8 bytes, varint would be 1
    d = wire.decode(buf)
    assert list(d.arrays["indices"]) == [5]
    assert header_fields(wire.encode(d))["flags"] == 0
