"""Fuzzing ``gcomp.wire.decode`` with hypothesis: random bytes, mutations of valid packets, and hostile
headers and index sections with a recomputed CRC-32 either decode to a valid packet or raise
``WireFormatError``; where the CRC is valid, gcomp.wire accepts exactly what the reference decoder accepts.
"""

import numpy as np
import pytest
from _header import HEADER_SIZE, U64, header_fields, make_packet, sparse_packet
from _packets import assert_valid, samples
from hypothesis import given
from hypothesis import strategies as st
from reference_decoder import _assert_same, _ref_or_none

from gcomp import wire
from gcomp.errors import WireFormatError

pytestmark = pytest.mark.usefixtures("no_pickle")


def _decode_or_wire_error(buf, expected_numel=None):
    try:
        c = wire.decode(buf, expected_numel=expected_numel)
    except WireFormatError:
        return None
    assert_valid(c)
    return c


@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    _decode_or_wire_error(data)


@given(st.binary(max_size=300), st.sampled_from([b"GCMP\x01\x00", b"GCMP\x01\x00\x01\x00\x00\0\0\0", b"GCMP"]))
def test_fuzz_random_bytes_after_a_valid_prefix(data, prefix):
    _decode_or_wire_error(prefix + data)


@st.composite
def mutated(draw):
    buf = bytearray(draw(st.sampled_from(sorted(samples().items())))[1])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate", "swap"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del buf[pos:pos + draw(st.integers(1, 16))]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "truncate":
            del buf[pos:]
        elif op == "swap" and len(buf) > 1:
            other = draw(st.integers(0, len(buf) - 1))
            buf[pos], buf[other] = buf[other], buf[pos]
    return bytes(buf)


@given(mutated())
def test_fuzz_mutations_of_valid_packets(buf):
    _decode_or_wire_error(buf)


_INTERESTING = [0, 1, 2, 3, 4, 7, 8, 12, 63, 64, 65, 127, 128, 255, 256, 1000, 2**31, 2**32 - 1, 2**32, 2**40,
                2**40 + 1, 2**63, U64]
_WIDTH = {"major": 8, "minor": 8, "codec": 8, "flags": 8, "dtype": 8, "p0": 32, "p1": 32, "p2": 32, "p3": 32}


@st.composite
def recrc_mutated(draw):
    """A valid packet with header fields and/or payload bytes changed, then the CRC recomputed."""
    buf = draw(st.sampled_from(sorted(samples().items())))[1]
    f = header_fields(buf)
    payload = bytearray(buf[HEADER_SIZE:])
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(["major", "minor", "codec", "flags", "dtype", "numel", "count", "seed", "p0", "p1",
                                      "p2", "p3", "index_len", "raw_len", "payload_len", "payload"]))
        if field == "payload":
            if payload:
                payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
            continue
        bits = _WIDTH.get(field, 64)
        how = draw(st.sampled_from(["interesting", "delta", "random"]))
        if how == "interesting":
            value = draw(st.sampled_from(_INTERESTING))
        elif how == "delta":
            value = f[field] + draw(st.integers(-9, 9))
        else:
            value = draw(st.integers(0, (1 << bits) - 1))
        f[field] = value % (1 << bits)
    return make_packet(f, bytes(payload))


@given(recrc_mutated())
def test_fuzz_hostile_headers_with_valid_crc(buf):
    c = _decode_or_wire_error(buf)
    ref = _ref_or_none(buf)
    assert (c is None) == (ref is None), f"gcomp.wire {'rejected' if c is None else 'accepted'} a packet the spec " \
                                         f"{'accepts' if c is None else 'rejects'}"
    if c is not None:
        _assert_same(c, ref)


@given(numel=st.integers(0, 300), count=st.integers(0, 40), bitmap=st.booleans(), data=st.data())
def test_fuzz_index_sections_with_valid_crc(numel, count, bitmap, data):
    if bitmap:
        section = data.draw(st.binary(min_size=(numel + 7) // 8, max_size=(numel + 7) // 8))
    else:
        section = data.draw(st.lists(st.sampled_from([0x00, 0x01, 0x05, 0x7F, 0x80, 0x81, 0xFF]), min_size=count,
                                     max_size=max(count, min(10 * count, count + 12))).map(bytes))
    buf = sparse_packet(numel, index_bytes=section, count=count, bitmap=bitmap)
    c = _decode_or_wire_error(buf)
    ref = _ref_or_none(buf)
    assert (c is None) == (ref is None)
    if c is not None:
        _assert_same(c, ref)
        assert np.all(np.diff(c.arrays["indices"]) > 0)


@given(index=st.lists(st.integers(0, 10**6), max_size=30, unique=True), bitmap=st.booleans())
def test_fuzz_any_valid_index_set_round_trips_by_hand(index, bitmap):
    index = sorted(index)
    numel = (index[-1] + 1 + len(index)) if index else 5
    if bitmap and numel > 20000:
        numel = 20000
        index = [i for i in index if i < numel]
    d = wire.decode(sparse_packet(numel, index, bitmap=bitmap))
    assert list(d.arrays["indices"]) == index
