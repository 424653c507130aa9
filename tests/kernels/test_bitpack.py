"""Bit packing (1/2/4/8 bits, LSB-first) against a plain numpy reference, and the shared uniform draws."""

import numpy as np
import pytest
from gcomp.kernels import bitpack as bp
from gcomp.kernels import random as kr
from gcomp.kernels.bitpack import pack_bits, packed_size, unpack_bits
from gcomp.kernels.config import kernel
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def pack_ref(codes, bits):
    """Element i in bits [(i*bits) % 8, +bits) of byte (i*bits) // 8; high bits of a partial last byte zero."""
    codes = np.asarray(codes, dtype=np.uint8)
    per = 8 // bits
    n = codes.size
    padded = np.zeros(-(-n // per) * per, dtype=np.uint32)
    padded[:n] = codes & ((1 << bits) - 1)
    groups = padded.reshape(-1, per)
    shifts = (np.arange(per, dtype=np.uint32) * bits)[None, :]
    return (groups << shifts).sum(axis=1).astype(np.uint8)


def unpack_ref(packed, bits, n):
    per = 8 // bits
    b = np.asarray(packed, dtype=np.uint32)[: -(-n // per)]
    shifts = (np.arange(per, dtype=np.uint32) * bits)[None, :]
    return ((b[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:n].astype(np.uint8)


BITS = (1, 2, 4, 8)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4099])
def test_pack_unpack_match_reference(bits, n):
    rng = np.random.default_rng(n * 10 + bits)
    codes = rng.integers(0, 256, n).astype(np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8 and packed.shape == (packed_size(n, bits),)
    np.testing.assert_array_equal(packed, pack_ref(codes, bits))
    np.testing.assert_array_equal(unpack_bits(packed, bits, n), codes & ((1 << bits) - 1))
    np.testing.assert_array_equal(unpack_ref(packed, bits, n), codes & ((1 << bits) - 1))


@given(
    codes=hnp.arrays(np.uint8, st.integers(0, 300)),
    bits=st.sampled_from(BITS),
    lead=st.integers(0, 7),
)
def test_pack_roundtrip_property(codes, bits, lead):
    # An unaligned view (the codes start `lead` bytes into a buffer) packs the same.
    buf = np.zeros(codes.size + lead, dtype=np.uint8)
    buf[lead:] = codes
    packed = pack_bits(buf[lead:], bits)
    np.testing.assert_array_equal(packed, pack_ref(codes, bits))
    np.testing.assert_array_equal(unpack_bits(packed, bits, codes.size), codes & ((1 << bits) - 1))


def test_layout_is_lsb_first():
    np.testing.assert_array_equal(pack_bits(np.array([1, 0, 0, 0, 0, 0, 0, 1, 1], np.uint8), 1), [0x81, 0x01])
    np.testing.assert_array_equal(pack_bits(np.array([1, 2, 3, 0, 3], np.uint8), 2), [0b00111001, 0b11])
    np.testing.assert_array_equal(pack_bits(np.array([0xA, 0x5, 0xF], np.uint8), 4), [0x5A, 0x0F])
    np.testing.assert_array_equal(pack_bits(np.array([7, 200], np.uint8), 8), [7, 200])


@pytest.mark.parametrize("bits", BITS)
def test_only_low_bits_are_stored(bits):
    codes = np.full(13, 0xFF, np.uint8)
    packed = pack_bits(codes, bits)
    np.testing.assert_array_equal(unpack_bits(packed, bits, 13), np.full(13, (1 << bits) - 1))
    # the partial last byte's unused high bits are zero
    used = (13 * bits) % 8
    if used:
        assert packed[-1] >> used == 0


def test_packed_size():
    assert [packed_size(n, 1) for n in (0, 1, 8, 9)] == [0, 1, 1, 2]
    assert [packed_size(n, 2) for n in (0, 1, 4, 5)] == [0, 1, 1, 2]
    assert [packed_size(n, 4) for n in (0, 1, 2, 3)] == [0, 1, 1, 2]
    assert packed_size(10, 8) == 10
    assert packed_size(np.int64(16), 4) == 8


@pytest.mark.parametrize("bits", BITS)
def test_out_arguments(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, 37).astype(np.uint8)
    big = np.full(packed_size(37, bits) + 5, 0xEE, np.uint8)
    res = pack_bits(codes, bits, out=big)
    assert res.shape == (packed_size(37, bits),) and np.shares_memory(res, big)
    np.testing.assert_array_equal(res, pack_ref(codes, bits))
    assert (big[packed_size(37, bits) :] == 0xEE).all()
    dst = np.zeros(40, np.uint8)
    got = unpack_bits(big, bits, 37, out=dst)
    assert np.shares_memory(got, dst) and got.shape == (37,)
    np.testing.assert_array_equal(got, codes)


def test_read_only_packed_input():
    codes = np.arange(50, dtype=np.uint8) % 4
    packed = pack_bits(codes, 2)
    packed.setflags(write=False)
    np.testing.assert_array_equal(unpack_bits(packed, 2, 50), codes)


def test_invalid_arguments():
    codes = np.zeros(8, np.uint8)
    for bits in (0, 3, 5, 16, -1):
        with pytest.raises(ValueError, match="expected bits in"):
            pack_bits(codes, bits)
        with pytest.raises(ValueError, match="expected bits in"):
            packed_size(8, bits)
        with pytest.raises(ValueError, match="expected bits in"):
            unpack_bits(codes, bits, 8)
    for bits in (2.0, True, "2", None):
        with pytest.raises(TypeError, match="expected an integer bits"):
            pack_bits(codes, bits)
    with pytest.raises(TypeError, match="expected codes of dtype uint8, found int32"):
        pack_bits(np.zeros(8, np.int32), 2)
    with pytest.raises(TypeError, match="expected codes to be a numpy array, found list"):
        pack_bits([0, 1], 2)
    with pytest.raises(ValueError, match="expected codes to be 1-D"):
        pack_bits(np.zeros((2, 4), np.uint8), 2)
    with pytest.raises(ValueError, match="at least 3 elements"):
        pack_bits(np.zeros(12, np.uint8), 2, out=np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="expected out to be a writeable 1-D C-contiguous uint8"):
        pack_bits(codes, 2, out=np.zeros(8, np.int8))
    with pytest.raises(ValueError, match="expected packed to hold at least 3 bytes, found 2"):
        unpack_bits(np.zeros(2, np.uint8), 2, 12)
    with pytest.raises(TypeError, match="expected packed of dtype uint8"):
        unpack_bits(np.zeros(8, np.int64), 2, 12)
    with pytest.raises(ValueError, match="expected n >= 0"):
        unpack_bits(codes, 2, -1)
    with pytest.raises(ValueError, match="expected n >= 0"):
        packed_size(-1, 2)


@kernel
def _chunks_roundtrip(codes, bits, chunk, packed, cw, out):
    """Pack then unpack ``codes`` chunk by chunk through the helpers the quantizers use."""
    n = codes.shape[0]
    cb = cw.view(np.uint8)
    p16, p32, p64 = bp._word_views(packed)
    for cs in range(0, n, chunk):
        m = min(chunk, n - cs)
        for i in range(m):
            cb[i] = codes[cs + i]
        nw = m >> 3
        off = (cs * bits) >> 3
        bp._pack_words(cw, nw, bits, packed, p16, p32, p64, off)
        if m & 7:
            bp._pack_tail(cb, 8 * nw, m & 7, bits, packed, off + nw * bits)
    for cs in range(0, n, chunk):
        m = min(chunk, n - cs)
        nw = m >> 3
        off = (cs * bits) >> 3
        bp._unpack_words(packed, p16, p32, p64, off, nw, bits, cw)
        if m & 7:
            bp._unpack_tail(packed, off + nw * bits, m & 7, bits, cb, 8 * nw)
        for i in range(m):
            out[cs + i] = cb[i]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", [0, 5, 8, 61, 64, 200])
@pytest.mark.parametrize("chunk", [8, 24, 64])
def test_chunk_helpers(bits, n, chunk):
    rng = np.random.default_rng(n + chunk + bits)
    codes = rng.integers(0, 1 << bits, n).astype(np.uint8)
    packed = np.full(packed_size(n, bits), 0xAB, np.uint8)
    out = np.zeros(n, np.uint8)
    _chunks_roundtrip(codes, bits, chunk, packed, np.zeros(chunk // 8, np.uint64), out)
    np.testing.assert_array_equal(packed, pack_ref(codes, bits))
    np.testing.assert_array_equal(out, codes)


@pytest.mark.parametrize("bits", BITS)
def test_pack_into_offsets(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 256, 50).astype(np.uint8)
    out = np.full(40, 0x77, np.uint8)
    bp._pack_into(codes, 3, 21, bits, out, 5)
    size = packed_size(21, bits)
    np.testing.assert_array_equal(out[5 : 5 + size], pack_ref(codes[3:24], bits))
    assert (out[:5] == 0x77).all() and (out[5 + size :] == 0x77).all()
    back = np.full(60, 0x55, np.uint8)
    bp._unpack_from(out, 5, 21, bits, back, 7)
    np.testing.assert_array_equal(back[7:28], codes[3:24] & ((1 << bits) - 1))
    assert (back[:7] == 0x55).all() and (back[28:] == 0x55).all()


@kernel
def _draws(key, start, count, u, r):
    c = np.uint32(start & 0xFFFFFFFF)
    for j in range(count):
        u[j] = bp._uniform01_u32(key, c)
        r[j] = bp._rand32_u32(key, c)
        c = np.uint32(c + np.uint32(1))


@kernel
def _draws_ref(key, start, count, u, r):
    for j in range(count):
        u[j] = kr.uniform01(key, start + j)
        r[j] = kr.rand32(key, start + j)


@pytest.mark.parametrize("seed", [0, 1, 2**63 + 5, 2**64 - 1])
@pytest.mark.parametrize("start", [0, 12345, 2**32 - 100])
def test_uniform_draws_match_random_module(seed, start):
    """bitpack's 32-bit-lane draws are bit-identical to random.uniform01 / rand32 at the global index."""
    key = kr.seed_key32(np.uint64(seed))
    u, r = np.zeros(300, np.float32), np.zeros(300, np.uint32)
    u2, r2 = np.zeros(300, np.float32), np.zeros(300, np.uint32)
    _draws(key, start, 300, u, r)
    _draws_ref(key, start, 300, u2, r2)
    np.testing.assert_array_equal(r, r2)
    np.testing.assert_array_equal(u, u2)
    assert ((u >= 0) & (u < 1)).all()
