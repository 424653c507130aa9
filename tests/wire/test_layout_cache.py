"""The wire layout cache (gcomp.wire._LAYOUTS) is only a shortcut: it holds sizes a codec accepted, never
admits what the codec's check refuses, stays bounded under a stream of distinct headers, and changes no byte.
"""

import numpy as np
import pytest
from _header import fields_for, make_packet

import gcomp
from gcomp import wire
from gcomp.errors import SizeError

pytestmark = pytest.mark.usefixtures("no_pickle")


def test_a_refused_parameter_is_refused_again_after_valid_packets_of_the_same_size():
    q = gcomp.compressor("qsgd:levels=4,bucket_size=512")
    x = np.linspace(-1.0, 1.0, 1000, dtype=np.float32)
    good = wire.encode(q.compress(x))
    assert wire.decode(good, expected_numel=1000).numel == 1000  # its layout is now cached
    # the same numel with 3 code bits, which no qsgd encoder writes for 4 levels: refused, twice
    raw_len = (1000 * 3 + 7) // 8 + 4 * 2
    bad = make_packet(fields_for("qsgd", 1000, p=(4, 512, 3, 0), raw_len=raw_len), bytes(raw_len))
    for _ in range(2):
        with pytest.raises(SizeError, match="code bits"):
            wire.decode(bad)
    assert wire.decode(good).params == {"levels": 4, "bucket_size": 512, "bits": 4}


def test_the_cache_stays_bounded_and_the_bytes_stay_the_same():
    f = gcomp.compressor("fp16")
    first = wire.encode(f.compress(np.arange(7, dtype=np.float32)))
    for n in range(1, wire._LAYOUTS_MAX + 50):  # more distinct sizes than the table holds
        packet = wire.encode(f.compress(np.ones(n, np.float32)))
        assert wire.decode(packet, expected_numel=n).numel == n
        assert len(wire._LAYOUTS) <= wire._LAYOUTS_MAX
    assert wire.encode(f.compress(np.arange(7, dtype=np.float32))) == first


def test_a_cached_header_still_checks_magic_size_length_and_checksum():
    """A header seen before skips only the header-only checks: what varies per packet is checked every time."""
    from gcomp.errors import ChecksumError, MagicError, TruncatedError

    t = gcomp.compressor("topk:ratio=0.1")
    x = np.linspace(-1.0, 1.0, 200, dtype=np.float32)
    good = wire.encode(t.compress(x))
    wire.decode(good)  # its header fields are now in wire._HEADERS
    assert len(wire._HEADERS) >= 1
    flipped = bytearray(good)
    flipped[-1] ^= 1  # payload byte: same header fields, wrong checksum
    with pytest.raises(ChecksumError):
        wire.decode(bytes(flipped))
    with pytest.raises(MagicError):
        wire.decode(b"XCMP" + good[4:])
    with pytest.raises(SizeError, match="receiver"):
        wire.decode(good, expected_numel=201)
    with pytest.raises(TruncatedError):
        wire.decode(good + b"\0")
    assert np.array_equal(t.decompress(wire.decode(good)), t.decompress(t.compress(x)))


def test_the_header_cache_stays_bounded_and_holds_only_valid_headers():
    f = gcomp.compressor("fp16")
    for n in range(1, wire._LAYOUTS_MAX + 50):
        wire.decode(wire.encode(f.compress(np.ones(n, np.float32))), expected_numel=n)
        assert len(wire._HEADERS) <= wire._LAYOUTS_MAX
    before = len(wire._HEADERS)
    raw_len = (1000 * 3 + 7) // 8 + 4 * 2
    bad = make_packet(fields_for("qsgd", 1000, p=(4, 512, 3, 0), raw_len=raw_len), bytes(raw_len))
    with pytest.raises(SizeError, match="code bits"):
        wire.decode(bad)
    assert len(wire._HEADERS) == before  # a refused header never enters
