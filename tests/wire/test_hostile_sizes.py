"""Hostile sizes: headers claiming 2**40 entries or more are refused before anything big is allocated, and
legitimate packets for huge sparse vectors decode allocating only what they carry.
"""

import pytest
from _header import BITMAP, U64, ZSTD, fields_for, make_packet, sparse_packet
from _packets import LIMIT, _peak_during, assert_valid

from gcomp import wire
from gcomp.errors import WireFormatError

pytestmark = pytest.mark.usefixtures("no_pickle")


HUGE = 1 << 40


def _huge_cases():
    garbage = b"\x28\xb5\x2f\xfd" + bytes(range(60))
    return [
        ("none-2**40-short", make_packet(fields_for("none", HUGE, raw_len=4 * HUGE, payload_len=16), bytes(16))),
        ("none-2**40-consistent-sizes", make_packet(fields_for("none", HUGE, raw_len=4 * HUGE), bytes(16))),
        ("none-2**63", make_packet(fields_for("none", 1 << 63, raw_len=4 << 63 & U64), bytes(16))),
        ("natural-2**40", make_packet(fields_for("natural", HUGE, raw_len=HUGE + HUGE // 8), bytes(16))),
        ("topk-bitmap-2**40", make_packet(fields_for("topk", HUGE, HUGE, flags=BITMAP, index_len=HUGE // 8,
                                                     raw_len=HUGE // 8 + 4 * HUGE), bytes(16))),
        ("topk-varint-2**40", make_packet(fields_for("topk", HUGE, HUGE, index_len=HUGE, raw_len=5 * HUGE), bytes(16))),
        ("randomk-2**40", make_packet(fields_for("randomk", HUGE, HUGE, raw_len=4 * HUGE), bytes(16))),
        ("powersgd-2**40", make_packet(fields_for("powersgd", HUGE, p=(1 << 20, 1 << 20, 1024, 0),
                                                  raw_len=4 * 1024 * (2 << 20)), bytes(16))),
        ("qsgd-2**40", make_packet(fields_for("qsgd", HUGE, p=(127, 8, 8, 0), raw_len=HUGE + 4 * HUGE // 8), bytes(16))),
        ("none-2**40-zstd-garbage", make_packet(fields_for("none", HUGE, flags=ZSTD, raw_len=4 * HUGE,
                                                           payload_len=len(garbage)), garbage)),
        ("randomk-2**40-zstd-garbage", make_packet(fields_for("randomk", HUGE, HUGE, flags=ZSTD, raw_len=4 * HUGE,
                                                              payload_len=len(garbage)), garbage)),
        ("topk-2**40-bitmap-zstd-garbage", make_packet(fields_for("topk", HUGE, 5, flags=ZSTD | BITMAP, index_len=HUGE // 8,
                                                                  raw_len=HUGE // 8 + 20, payload_len=len(garbage)),
                                                       garbage)),
    ]


@pytest.mark.parametrize("buf", [pytest.param(b, id=i) for i, b in _huge_cases()])
def test_hostile_sizes_raise_before_allocating(buf):
    def run():
        with pytest.raises(WireFormatError):
            wire.decode(buf)

    peak = _peak_during(run)
    assert peak < LIMIT, f"decoding a {len(buf)}-byte packet allocated {peak} bytes before failing"


def test_valid_packets_for_huge_vectors_allocate_only_what_they_carry():
    """A 2**40-entry top-1 or random-1 vector is a legitimate 100-byte packet; decoding it stays small."""
    topk = sparse_packet(HUGE, [HUGE - 5, HUGE - 1])
    randomk = make_packet(fields_for("randomk", HUGE, 3, seed=99, raw_len=12), bytes(12))
    for buf in (topk, randomk):
        out = {}
        peak = _peak_during(lambda b=buf, o=out: o.setdefault("c", wire.decode(b)))
        c = out["c"]
        assert peak < LIMIT
        assert c.numel == HUGE and c.count == len(c.arrays["indices"])
        assert_valid(c, decompress=False)
        assert c.arrays["indices"][-1] < HUGE
