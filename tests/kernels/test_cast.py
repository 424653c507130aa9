"""The float16 / bfloat16 cast kernels against numpy (and the bf16 rule) on every float16 and chosen float32 patterns."""

import warnings

import numpy as np
import pytest
from gcomp.kernels import cast, config

#: float32 bit patterns at every rounding edge: zeros, the float16 subnormal and overflow borders, ties, Inf, NaNs
EDGES = np.array([0x00000000, 0x80000000, 0x00000001, 0x33000000, 0x33000001, 0x337FFFFF, 0x33800000, 0x387FC000,
                  0x387FE000, 0x387FF000, 0x38800000, 0x3F801000, 0x3F803000, 0x3F801001, 0x477FE000, 0x477FEFFF,
                  0x477FF000, 0x47800000, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7F800001, 0x7F802000, 0x7FC00000,
                  0xFFFFFFFF, 0x7F7F8000, 0x3F808000, 0x3F818000], np.uint32)


def _patterns(n, seed):
    rng = np.random.default_rng(seed)
    # every exponent, random mantissas with the 14 low bits often at rounding ties
    e = rng.integers(0, 256, n, dtype=np.uint32)
    m = rng.integers(0, 1 << 23, n, dtype=np.uint32)
    tie = rng.random(n) < 0.25
    m[tie] = (m[tie] & ~np.uint32(0x1FFF)) | np.uint32(0x1000)
    sign = rng.integers(0, 2, n, dtype=np.uint32) << np.uint32(31)
    return np.concatenate([EDGES, sign | (e << np.uint32(23)) | m])


def _numpy_f16(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return x.astype(np.float16)


def _numpy_bf16(x):
    bits = x.view(np.uint32)
    out = ((bits + (((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF))) >> np.uint32(16)).astype(np.uint16)
    out[np.isnan(x)] = 0x7FC0
    return out


@pytest.fixture(params=["serial", "parallel"])
def path(request, monkeypatch):
    monkeypatch.setattr(config, "_force", request.param)
    return request.param


@pytest.mark.parametrize("seed", [0, 1])
def test_float32_to_float16_is_numpys_rounding_bit_for_bit(path, seed):
    x = _patterns(1 << 18, seed).view(np.float32)
    np.testing.assert_array_equal(cast.to_float16(x).view(np.uint16), _numpy_f16(x).view(np.uint16))


def test_float16_to_float32_is_exact_for_every_float16(path):
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    want = h.view(np.float16).astype(np.float32).view(np.uint32)
    np.testing.assert_array_equal(cast.from_float16(h).view(np.uint32), want)
    np.testing.assert_array_equal(cast.from_float16(h.view(np.float16)).view(np.uint32), want)


def test_add_float16_adds_the_exact_values(path):
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    acc = np.random.default_rng(3).standard_normal(1 << 16).astype(np.float32)
    want = acc + h.view(np.float16).astype(np.float32)
    got = cast.add_float16(h, acc.copy())
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_add_bfloat16_bits_adds_the_exact_values(path):
    """Every bfloat16 pattern (NaN and Inf included) added into an accumulator: the bits of acc += from_bfloat16_bits."""
    b = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    acc = np.random.default_rng(4).standard_normal(1 << 16).astype(np.float32)
    want = acc + cast.from_bfloat16_bits(b)
    got = cast.add_bfloat16_bits(b, acc.copy())
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    with pytest.raises(ValueError, match="acc"):
        cast.add_bfloat16_bits(b, np.zeros(10, np.float32))


@pytest.mark.parametrize("seed", [0, 1])
def test_bfloat16_round_trip_follows_the_wire_rule(path, seed):
    x = _patterns(1 << 18, seed).view(np.float32)
    bits = cast.to_bfloat16_bits(x)
    np.testing.assert_array_equal(bits, _numpy_bf16(x))
    b = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    np.testing.assert_array_equal(cast.from_bfloat16_bits(b).view(np.uint32), b.astype(np.uint32) << np.uint32(16))


def test_out_arrays_and_refusals():
    x = np.linspace(-3, 3, 100, dtype=np.float32)
    out = np.empty(100, np.float16)
    assert cast.to_float16(x, out=out) is out
    back = np.empty(100, np.float32)
    assert cast.from_float16(out, out=back) is back
    np.testing.assert_array_equal(back, x.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="float32"):
        cast.to_float16(x.astype(np.float64))
    with pytest.raises(TypeError, match="numpy array"):
        cast.to_float16([1.0])
    with pytest.raises(ValueError, match="float16 or uint16"):
        cast.from_float16(x)
    with pytest.raises(ValueError, match="acc"):
        cast.add_float16(out, np.zeros(99, np.float32))
    with pytest.raises(ValueError, match="at least 100"):
        cast.to_float16(x, out=np.empty(10, np.float16))
    assert cast.to_float16(np.empty(0, np.float32)).shape == (0,)
