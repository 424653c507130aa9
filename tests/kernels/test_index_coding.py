"""gcomp.kernels.index_coding against plain-Python references, including hostile decoder input."""

import numba
import numpy as np
import pytest
from gcomp.kernels import index_coding as ic
from hypothesis import given
from hypothesis import strategies as st

# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------


def ref_varint(indices):
    """LEB128 of the gaps, built byte by byte in Python."""
    out = bytearray()
    prev = -1
    for i in indices:
        g = int(i) - prev - 1
        prev = int(i)
        while True:
            b = g & 0x7F
            g >>= 7
            if g:
                out.append(b | 0x80)
            else:
                out.append(b)
                break
    return bytes(out)


def ref_varint_decode(buf, count, n):
    """Strict Python decoder: a list of indices, or None for any invalid input."""
    buf = bytes(buf)
    p = 0
    prev = -1
    res = []
    for _ in range(count):
        g = 0
        shift = 0
        nbytes = 0
        while True:
            if p >= len(buf):
                return None
            b = buf[p]
            p += 1
            nbytes += 1
            if nbytes > 10:
                return None
            g |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if nbytes > 1 and b == 0:
                    return None  # non-canonical
                break
        if g >= 1 << 64:
            return None
        prev = prev + 1 + g
        if prev >= n:
            return None
        res.append(prev)
    if p != len(buf):
        return None
    return res


def ref_bitmap(indices, n):
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(indices, dtype=np.int64)] = True
    return np.packbits(mask, bitorder="little")


def sorted_unique(values):
    return np.array(sorted(set(values)), dtype=np.int64)


index_sets = st.sets(st.integers(0, 1 << 40), max_size=60).map(sorted_unique)


# ---------------------------------------------------------------------------
# bit intrinsics
# ---------------------------------------------------------------------------


@numba.njit
def _bits(x):
    return ic.ctz64(x), ic.clz64(x), ic.popcount64(x)


@given(st.integers(0, (1 << 64) - 1))
def test_bit_intrinsics(v):
    ctz, clz, pop = _bits(np.uint64(v))
    assert pop == bin(v).count("1")
    assert clz == 64 - v.bit_length()
    assert ctz == (64 if v == 0 else (v & -v).bit_length() - 1)


# ---------------------------------------------------------------------------
# varint
# ---------------------------------------------------------------------------


@given(index_sets)
def test_varint_matches_reference_and_roundtrips(idx):
    expected = ref_varint(idx)
    assert ic.varint_size(idx) == len(expected)
    buf = ic.varint_encode(idx)
    assert buf.dtype == np.uint8 and bytes(buf) == expected
    n = int(idx[-1]) + 1 if idx.size else 0
    np.testing.assert_array_equal(ic.varint_decode(buf, idx.size, n), idx)
    np.testing.assert_array_equal(ic.varint_decode(expected, idx.size, 1 << 41), idx)


def test_varint_random_large():
    rng = np.random.default_rng(0)
    for density in (0.001, 0.01, 0.1, 0.9):
        n = 200_003
        idx = np.flatnonzero(rng.random(n) < density).astype(np.int64)
        buf = ic.varint_encode(idx)
        assert bytes(buf) == ref_varint(idx)
        out = ic.varint_decode(buf, idx.size, n)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, idx)


def test_varint_degenerate():
    empty = np.zeros(0, dtype=np.int64)
    assert ic.varint_size(empty) == 0
    assert ic.varint_encode(empty).size == 0
    assert ic.varint_decode(b"", 0, 0).size == 0
    assert ic.varint_decode(np.zeros(0, np.uint8), 0, 5).size == 0
    one = np.array([0], dtype=np.int64)
    assert bytes(ic.varint_encode(one)) == b"\x00"
    np.testing.assert_array_equal(ic.varint_decode(b"\x00", 1, 1), one)
    every = np.arange(1000, dtype=np.int64)
    assert bytes(ic.varint_encode(every)) == b"\x00" * 1000
    np.testing.assert_array_equal(ic.varint_decode(b"\x00" * 1000, 1000, 1000), every)


def test_varint_huge_gaps():
    idx = np.array([0, (1 << 40) - 1, 1 << 40, (1 << 62) + 5, (1 << 63) - 1], dtype=np.int64)
    buf = ic.varint_encode(idx)
    assert bytes(buf) == ref_varint(idx)
    assert ic.varint_size(idx) == len(buf)
    # n is at most 2**63 - 1, so the largest index that decodes is 2**63 - 2
    head = idx[:-1]
    np.testing.assert_array_equal(ic.varint_decode(ic.varint_encode(head), 4, (1 << 62) + 6), head)
    with pytest.raises(ValueError, match="out of range"):
        ic.varint_decode(buf, 5, (1 << 63) - 1)
    single = np.array([(1 << 63) - 2], dtype=np.int64)
    np.testing.assert_array_equal(ic.varint_decode(ic.varint_encode(single), 1, (1 << 63) - 1), single)
    near = np.array([(1 << 40) - 3, (1 << 40) - 1], dtype=np.int64)
    np.testing.assert_array_equal(ic.varint_decode(ic.varint_encode(near), 2, 1 << 40), near)


def test_varint_uint_indices_and_out():
    idx = np.array([3, 9, 700], dtype=np.uint32)
    assert bytes(ic.varint_encode(idx)) == ref_varint(idx)
    out = np.full(10, 99, dtype=np.uint8)
    res = ic.varint_encode(idx, out=out)
    assert res.base is out or res is out or np.shares_memory(res, out)
    assert bytes(res) == ref_varint(idx)
    dec = np.empty(5, dtype=np.int64)
    res = ic.varint_decode(bytearray(ref_varint(idx)), 3, 701, out=dec)
    assert np.shares_memory(res, dec)
    np.testing.assert_array_equal(res, [3, 9, 700])
    with pytest.raises(ValueError, match="at least 3"):
        ic.varint_decode(ref_varint(idx), 3, 701, out=np.empty(2, np.int64))
    with pytest.raises(ValueError, match="int64"):
        ic.varint_decode(ref_varint(idx), 3, 701, out=np.empty(3, np.int32))


@pytest.mark.parametrize(
    "bad",
    [[3, 2], [1, 1], [0, 5, 5, 9], [-1], [4, -2], [-5, 0], [10, 20, 15]],
)
def test_encoders_reject_bad_indices(bad):
    idx = np.array(bad, dtype=np.int64)
    with pytest.raises(ValueError, match="expected"):
        ic.varint_encode(idx)
    with pytest.raises(ValueError, match="expected"):
        ic.varint_size(idx)
    with pytest.raises(ValueError, match="expected"):
        ic.bitmap_encode(idx, 100)
    with pytest.raises(ValueError, match="expected"):
        ic.best_index_coding(idx, 100)


def test_encoders_reject_bad_types():
    with pytest.raises(TypeError):
        ic.varint_encode([1, 2, 3])
    with pytest.raises((TypeError, ValueError)):
        ic.varint_encode(np.array([1.0, 2.0]))
    with pytest.raises(ValueError):
        ic.varint_encode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="2\\*\\*63"):
        ic.varint_encode(np.array([1 << 63], dtype=np.uint64))
    with pytest.raises(ValueError, match="expected every index in"):
        ic.bitmap_encode(np.array([0, 10]), 10)
    with pytest.raises(ValueError):
        ic.bitmap_encode(np.array([0]), -1)
    with pytest.raises(TypeError):
        ic.bitmap_encode(np.array([0]), 3.0)


# --- hostile varint input ----------------------------------------------------


def _sample_stream():
    idx = np.array([0, 1, 130, 20_000, 1 << 35, (1 << 35) + 200], dtype=np.int64)
    return idx, ref_varint(idx)


def test_varint_truncation_at_every_length():
    idx, buf = _sample_stream()
    for cut in range(len(buf)):
        with pytest.raises(ValueError, match="truncated"):
            ic.varint_decode(buf[:cut], idx.size, 1 << 40)


def test_varint_trailing_bytes():
    idx, buf = _sample_stream()
    for extra in (b"\x00", b"\x01", b"\x80", b"\xff\xff"):
        with pytest.raises(ValueError, match="trailing"):
            ic.varint_decode(buf + extra, idx.size, 1 << 40)
    # fewer indices requested than encoded: the rest is trailing
    with pytest.raises(ValueError, match="trailing"):
        ic.varint_decode(buf, idx.size - 1, 1 << 40)


def test_varint_too_long_and_overflow():
    with pytest.raises(ValueError, match="too long"):
        ic.varint_decode(b"\x80" * 10 + b"\x01", 1, 1 << 62)
    with pytest.raises(ValueError, match="too long"):
        ic.varint_decode(b"\xff" * 40, 1, 1 << 62)
    with pytest.raises(ValueError, match="too long"):
        ic.varint_decode(b"\xff" * 10, 1, 1 << 62)
    for last in (0x02, 0x03, 0x7F):
        with pytest.raises(ValueError, match="overflow"):
            ic.varint_decode(b"\xff" * 9 + bytes([last]), 1, (1 << 63) - 1)
    # exactly 2**64 - 1 and 2**63: representable gaps, but indices beyond any int64 n
    for buf in (b"\xff" * 9 + b"\x01", b"\x80" * 9 + b"\x01"):
        with pytest.raises(ValueError, match="out of range"):
            ic.varint_decode(buf, 1, (1 << 63) - 1)
    # a huge gap after a valid index must not wrap around into range
    buf = b"\x05" + b"\xff" * 9 + b"\x01"
    with pytest.raises(ValueError, match="out of range"):
        ic.varint_decode(buf, 2, (1 << 63) - 1)


def test_varint_non_canonical():
    for buf in (b"\x80\x00", b"\x81\x80\x00", b"\x80" * 9 + b"\x00"):
        with pytest.raises(ValueError, match="non-canonical"):
            ic.varint_decode(buf, 1, 1 << 62)


def test_varint_index_out_of_range():
    buf = ref_varint([5])
    np.testing.assert_array_equal(ic.varint_decode(buf, 1, 6), [5])
    with pytest.raises(ValueError, match="out of range"):
        ic.varint_decode(buf, 1, 5)
    with pytest.raises(ValueError, match="out of range"):
        ic.varint_decode(ref_varint([0, 3, 9]), 3, 9)
    with pytest.raises(ValueError, match="count <= n"):
        ic.varint_decode(b"\x00" * 4, 4, 3)
    with pytest.raises(ValueError, match="count <= n"):
        ic.varint_decode(b"\x00", 1, 0)


def test_varint_count_larger_than_buffer():
    with pytest.raises(ValueError, match="truncated"):
        ic.varint_decode(b"\x00" * 3, 4, 100)
    with pytest.raises(ValueError, match="truncated"):
        ic.varint_decode(b"", 1 << 60, (1 << 62))


def test_varint_decode_bad_arguments():
    with pytest.raises(TypeError):
        ic.varint_decode([0, 1], 2, 5)
    with pytest.raises(ValueError):
        ic.varint_decode(np.zeros(2, dtype=np.int8), 2, 5)
    with pytest.raises(ValueError):
        ic.varint_decode(b"\x00", -1, 5)
    with pytest.raises(ValueError):
        ic.varint_decode(b"\x00", 1, -5)
    with pytest.raises(TypeError):
        ic.varint_decode(b"\x00", 1.0, 5)


def _check_hostile_varint(buf, count, n):
    expected = ref_varint_decode(buf, count, n)
    if expected is None:
        with pytest.raises(ValueError):
            ic.varint_decode(buf, count, n)
    else:
        got = ic.varint_decode(buf, count, n)
        np.testing.assert_array_equal(got, expected)
        # canonical: every accepted byte string is the encoding of its result
        assert bytes(ic.varint_encode(got)) == bytes(buf)


def test_varint_flipped_bits():
    idx, buf = _sample_stream()
    for pos in range(len(buf) * 8):
        mutated = bytearray(buf)
        mutated[pos // 8] ^= 1 << (pos % 8)
        _check_hostile_varint(bytes(mutated), idx.size, 1 << 40)


@given(st.binary(max_size=40), st.integers(0, 12), st.sampled_from([0, 1, 100, 1 << 20, 1 << 40, (1 << 63) - 1]))
def test_varint_random_bytes(buf, count, n):
    if count > n or count > len(buf):
        with pytest.raises(ValueError):
            ic.varint_decode(buf, count, n)
        return
    _check_hostile_varint(buf, count, n)


# ---------------------------------------------------------------------------
# bitmap
# ---------------------------------------------------------------------------


@given(st.integers(0, 300).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, max(n - 1, 0)), max_size=n))))
def test_bitmap_matches_packbits(case):
    n, chosen = case
    idx = np.array(sorted(chosen), dtype=np.int64)
    assert ic.bitmap_size(n) == (n + 7) // 8
    buf = ic.bitmap_encode(idx, n)
    assert buf.dtype == np.uint8
    np.testing.assert_array_equal(buf, ref_bitmap(idx, n))
    np.testing.assert_array_equal(ic.bitmap_decode(buf, n), idx)
    np.testing.assert_array_equal(ic.bitmap_decode(bytes(buf), n, idx.size), idx)


@pytest.mark.parametrize("density", [0.0, 0.0005, 0.01, 0.1, 0.5, 0.97, 1.0])
@pytest.mark.parametrize("n", [1, 7, 64, 65, 100_003])
def test_bitmap_random(n, density):
    rng = np.random.default_rng(n)
    idx = np.flatnonzero(rng.random(n) < density).astype(np.int64)
    buf = ic.bitmap_encode(idx, n)
    np.testing.assert_array_equal(buf, ref_bitmap(idx, n))
    got = ic.bitmap_decode(buf, n)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, idx)
    np.testing.assert_array_equal(ic.bitmap_decode(buf, n, idx.size), idx)
    # an unaligned view of the same bytes decodes the same
    shifted = np.empty(buf.size + 1, dtype=np.uint8)
    shifted[1:] = buf
    np.testing.assert_array_equal(ic.bitmap_decode(shifted[1:], n, idx.size), idx)


def test_bitmap_degenerate():
    empty = np.zeros(0, dtype=np.int64)
    assert ic.bitmap_size(0) == 0
    assert ic.bitmap_encode(empty, 0).size == 0
    assert ic.bitmap_decode(b"", 0).size == 0
    assert ic.bitmap_decode(b"", 0, 0).size == 0
    assert bytes(ic.bitmap_encode(np.array([0]), 1)) == b"\x01"
    np.testing.assert_array_equal(ic.bitmap_decode(b"\x01", 1), [0])
    every = np.arange(1000, dtype=np.int64)
    buf = ic.bitmap_encode(every, 1000)
    np.testing.assert_array_equal(buf, np.full(125, 255, np.uint8))
    np.testing.assert_array_equal(ic.bitmap_decode(buf, 1000, 1000), every)


def test_bitmap_out_arguments():
    out = np.full(4, 0xAA, dtype=np.uint8)
    res = ic.bitmap_encode(np.array([1, 9]), 10, out=out)
    assert np.shares_memory(res, out) and res.size == 2
    np.testing.assert_array_equal(res, [2, 2])
    dec = np.full(5, -7, dtype=np.int64)
    res = ic.bitmap_decode(res, 10, out=dec)
    assert np.shares_memory(res, dec)
    np.testing.assert_array_equal(res, [1, 9])
    with pytest.raises(ValueError, match="at least 2"):
        ic.bitmap_decode(b"\x02\x02", 10, out=np.empty(1, np.int64))


def test_bitmap_wrong_length():
    for buf in (b"", b"\x00", b"\x00" * 3):
        with pytest.raises(ValueError, match="bytes"):
            ic.bitmap_decode(buf, 10)
    with pytest.raises(ValueError, match="bytes"):
        ic.bitmap_decode(b"\x00", 0)


def test_bitmap_padding_bits():
    for n in range(1, 17):
        if n % 8 == 0:
            continue
        for bit in range(n % 8, 8):
            buf = bytearray((n + 7) // 8)
            buf[-1] |= 1 << bit
            with pytest.raises(ValueError, match="padding"):
                ic.bitmap_decode(bytes(buf), n)
            with pytest.raises(ValueError, match="padding"):
                ic.bitmap_decode(bytes(buf), n, 1)


def test_bitmap_wrong_popcount():
    idx = np.array([0, 5, 63, 64, 100, 4000], dtype=np.int64)
    n = 4003
    buf = ic.bitmap_encode(idx, n)
    for count in (0, 1, 5, 7, 100):
        with pytest.raises(ValueError, match="popcount"):
            ic.bitmap_decode(buf, n, count)
    with pytest.raises(ValueError, match="popcount"):
        ic.bitmap_decode(buf, n, n + 1)
    with pytest.raises(ValueError, match="popcount"):
        ic.bitmap_decode(buf, n, 1 << 62)
    with pytest.raises(ValueError):
        ic.bitmap_decode(buf, n, -1)
    # a dense bitmap with a count just below: never writes past out
    full = ic.bitmap_encode(np.arange(n, dtype=np.int64), n)
    out = np.full(n, -1, dtype=np.int64)
    guard = out[: n - 1]
    with pytest.raises(ValueError, match="popcount"):
        ic.bitmap_decode(full, n, n - 1, out=guard)
    assert out[-1] == -1


@pytest.mark.parametrize("density", [0.05, 0.3, 0.7, 1.0])
def test_bitmap_decode_never_writes_past_out(density):
    rng = np.random.default_rng(int(density * 100))
    for n in (64, 200, 1000, 4099):
        bits = rng.random(n) < density
        buf = np.packbits(bits, bitorder="little")
        count = int(bits.sum())
        for cap in {count, max(count - 1, 0), max(count - 9, 0), max(count - 70, 0)}:
            backing = np.full(cap + 80, -12345, dtype=np.int64)
            if cap == count:
                got = ic.bitmap_decode(buf, n, count, out=backing[:cap])
                np.testing.assert_array_equal(got, np.flatnonzero(bits))
            else:
                with pytest.raises(ValueError, match="popcount"):
                    ic.bitmap_decode(buf, n, cap, out=backing[:cap])
            assert np.all(backing[cap:] == -12345), (n, cap)


def test_bitmap_flipped_bits():
    idx = np.array([0, 5, 63, 64, 100, 130], dtype=np.int64)
    n = 133
    buf = ic.bitmap_encode(idx, n)
    for pos in range(buf.size * 8):
        mutated = bytearray(buf)
        mutated[pos // 8] ^= 1 << (pos % 8)
        if pos >= n:
            with pytest.raises(ValueError, match="padding"):
                ic.bitmap_decode(bytes(mutated), n)
            continue
        with pytest.raises(ValueError, match="popcount"):
            ic.bitmap_decode(bytes(mutated), n, idx.size)
        expected = np.flatnonzero(np.unpackbits(np.frombuffer(bytes(mutated), np.uint8), bitorder="little")[:n])
        np.testing.assert_array_equal(ic.bitmap_decode(bytes(mutated), n), expected)


@given(st.binary(max_size=40), st.integers(0, 330), st.none() | st.integers(0, 400))
def test_bitmap_random_bytes(buf, n, count):
    ok_len = len(buf) == (n + 7) // 8
    bits = np.unpackbits(np.frombuffer(buf, np.uint8), bitorder="little")
    ok_pad = ok_len and not bits[n:].any()
    expected = np.flatnonzero(bits[:n])
    if not ok_pad or (count is not None and count != expected.size):
        with pytest.raises(ValueError):
            ic.bitmap_decode(buf, n, count)
    else:
        np.testing.assert_array_equal(ic.bitmap_decode(buf, n, count), expected)


# ---------------------------------------------------------------------------
# choice
# ---------------------------------------------------------------------------


@given(st.integers(0, 2000).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, max(n - 1, 0)), max_size=n))))
def test_best_index_coding(case):
    n, chosen = case
    idx = np.array(sorted(chosen), dtype=np.int64)
    vsize = len(ref_varint(idx))
    bsize = (n + 7) // 8
    expected = ("varint", vsize) if vsize <= bsize else ("bitmap", bsize)
    assert ic.best_index_coding(idx, n) == expected


def test_best_index_coding_edges():
    assert ic.best_index_coding(np.zeros(0, np.int64), 0) == ("varint", 0)
    assert ic.best_index_coding(np.array([0]), 8) == ("varint", 1)  # tie
    assert ic.best_index_coding(np.arange(64), 64) == ("bitmap", 8)
    assert ic.best_index_coding(np.array([(1 << 40) - 1]), 1 << 40) == ("varint", len(ref_varint([(1 << 40) - 1])))
    with pytest.raises(ValueError, match="expected every index in"):
        ic.best_index_coding(np.array([8]), 8)
