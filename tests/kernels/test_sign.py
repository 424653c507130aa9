"""Scaled sign (EF-signSGD) against a plain numpy reference, plus error feedback and the non-finite policy."""

import numpy as np
import pytest
from gcomp.kernels.bitpack import packed_size, unpack_bits
from gcomp.kernels.sign import sign_decode, sign_encode
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

F32 = np.float32
EPS = np.finfo(F32).eps


def sign_encode_ref(x, bucket_size, residual=None):
    """Returns (bits uint8[n], scales, v)."""
    x = np.asarray(x, dtype=F32)
    v = x if residual is None else (x + residual).astype(F32)
    n = x.size
    nb = -(-n // bucket_size)
    bits = np.zeros(n, np.uint8)
    scales = np.zeros(nb, F32)
    for b in range(nb):
        sl = slice(b * bucket_size, min((b + 1) * bucket_size, n))
        vb = v[sl]
        if not np.isfinite(vb).all():
            scales[b] = np.nan
            continue
        scales[b] = F32(np.sum(np.abs(vb).astype(np.float64)) / vb.size)
        bits[sl] = vb >= 0
    return bits, scales, v


def sign_decode_ref(bits, scales, bucket_size):
    sc = np.repeat(scales, bucket_size)[: bits.size]
    return np.where(bits == 1, sc, -sc).astype(F32)


def check_against_reference(x, bucket_size, residual=None):
    n = np.asarray(x).size
    r_ref = None if residual is None else residual.copy()
    bits_ref, scales_ref, v = sign_encode_ref(x, bucket_size, r_ref)
    packed, scales = sign_encode(x, bucket_size, residual=residual)
    assert packed.dtype == np.uint8 and packed.shape == (packed_size(n, 1),)
    assert scales.dtype == F32 and scales.shape == (-(-n // bucket_size),)
    np.testing.assert_array_equal(scales, scales_ref)
    bits = unpack_bits(packed, 1, n)
    np.testing.assert_array_equal(bits, bits_ref)
    dec = sign_decode(packed, scales, bucket_size, n)
    np.testing.assert_array_equal(dec, sign_decode_ref(bits, scales, bucket_size))
    if residual is not None:
        np.testing.assert_array_equal(residual, (v - dec).astype(F32))
    return bits, scales, dec


def degenerate_vectors():
    rng = np.random.default_rng(7)
    return {
        "n0": np.zeros(0, F32),
        "n1": np.array([-3.0], F32),
        "zeros": np.zeros(100, F32),
        "signed_zeros": np.array([0.0, -0.0] * 8, F32),
        "constant": np.full(77, -2.5, F32),
        "ties": rng.integers(-3, 4, 500).astype(F32),
        "fp16_extremes": np.array([65504, -65504, 6e-8, -6e-8, 6.1e-5, 0, 1, -1, 65504, 3], np.float16),
        "tiny": np.array([1e-38, -3e-39, 1e-44, 0, 2e-39, -1e-45, 5e-39, 1e-40], F32),
        "huge": np.array([3.4e38, 3.4e38, -3.4e38, 3.4e38, 1, 2, 3, 4], F32),
        "normal": rng.standard_normal(3000).astype(F32),
        "heavy": rng.standard_cauchy(3000).astype(F32),
        "float64": rng.standard_normal(300),
    }


VECTORS = degenerate_vectors()


@pytest.mark.parametrize("name", sorted(VECTORS))
@pytest.mark.parametrize("bucket_size", [8, 64, 4096])
def test_matches_reference(name, bucket_size):
    check_against_reference(VECTORS[name], bucket_size)
    x = VECTORS[name]
    r = np.random.default_rng(1).standard_normal(x.size).astype(F32)
    check_against_reference(x, bucket_size, residual=r)


@given(
    x=hnp.arrays(np.float32, st.integers(0, 200), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
    bucket_size=st.sampled_from([8, 16, 24, 64]),
)
def test_matches_reference_property(x, bucket_size):
    check_against_reference(x, bucket_size)
    r = np.random.default_rng(x.size).standard_normal(x.size).astype(F32)
    check_against_reference(x, bucket_size, residual=r)


def test_layout_and_zero_sign():
    x = np.array([1, -1, 0.0, -0.0, 2, -2, 3, -3, 5], F32)
    packed, scales = sign_encode(x, 8)
    np.testing.assert_array_equal(unpack_bits(packed, 1, 9), [1, 0, 1, 1, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(packed, [0b01011101, 0b1])
    np.testing.assert_array_equal(scales, [1.5, 5])
    np.testing.assert_array_equal(sign_decode(packed, scales, 8, 9), [1.5, -1.5, 1.5, 1.5, 1.5, -1.5, 1.5, -1.5, 5])


def test_preserves_l1_norm_per_bucket():
    x = np.random.default_rng(4).standard_normal(960).astype(F32)
    packed, scales = sign_encode(x, 96)
    dec = sign_decode(packed, scales, 96, 960)
    np.testing.assert_allclose(np.abs(dec).reshape(10, 96).sum(1), np.abs(x).reshape(10, 96).sum(1), rtol=1e-5)
    assert (np.sign(dec) == np.where(x >= 0, 1, -1)).all()


def test_nonfinite_policy():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(64).astype(F32)
    x[3] = np.nan
    x[20] = np.inf
    x[45] = -np.inf
    packed, scales = sign_encode(x, 16)
    assert np.isnan(scales[:3]).all() and np.isfinite(scales[3])
    assert (unpack_bits(packed, 1, 64)[:48] == 0).all()
    dec = sign_decode(packed, scales, 16, 64)
    assert np.isnan(dec[:48]).all() and np.isfinite(dec[48:]).all()
    r = np.zeros(64, F32)
    sign_encode(x, 16, residual=r)
    assert np.isnan(r[:48]).all() and np.isfinite(r[48:]).all()
    # large finite values do not overflow the float64 sum
    _, scales = sign_encode(np.full(64, 3.4e38, F32), 64)
    assert scales[0] == F32(3.4e38)


def test_input_unmodified_and_deterministic():
    x = np.random.default_rng(0).standard_normal(1000).astype(F32)
    x0 = x.copy()
    a = sign_encode(x, 64)
    b = sign_encode(x, 64, residual=np.zeros_like(x))
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_residual_identity():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(1003).astype(F32)
    r = (0.3 * rng.standard_normal(1003)).astype(F32)
    v = x + r
    packed, scales = sign_encode(x, 64, residual=r)
    dec = sign_decode(packed, scales, 64, 1003)
    err = np.abs(dec.astype(np.float64) + r - v)
    assert (err <= 2 * EPS * np.maximum(np.abs(v), np.abs(dec))).all()


def test_accumulate_and_out():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(300).astype(F32)
    packed, scales = sign_encode(x, 64)
    dec = sign_decode(packed, scales, 64, 300)
    base = rng.standard_normal(300).astype(F32)
    acc = base.copy()
    got = sign_decode(packed, scales, 64, 300, out=acc, accumulate=True)
    assert got is acc
    np.testing.assert_array_equal(acc, base + dec)
    out = np.full(310, 9.0, F32)
    got = sign_decode(packed, scales, 64, 300, out=out)
    np.testing.assert_array_equal(got, dec)
    assert np.shares_memory(got, out) and (out[300:] == 9.0).all()
    ro = packed.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(sign_decode(ro, scales, 64, 300), dec)


def test_empty():
    packed, scales = sign_encode(np.zeros(0, F32), 8)
    assert packed.size == scales.size == 0
    assert sign_decode(packed, scales, 8, 0).size == 0


def test_invalid_arguments():
    x = np.ones(16, F32)
    for bs in (12, 0, -8):
        with pytest.raises(ValueError, match="expected bucket_size to be a positive multiple of 8, found"):
            sign_encode(x, bs)
    with pytest.raises(TypeError, match="bucket_size"):
        sign_encode(x, "8")
    with pytest.raises(TypeError, match="expected x of dtype float16, float32 or float64, found uint8"):
        sign_encode(np.ones(16, np.uint8), 8)
    with pytest.raises(ValueError, match="1-D"):
        sign_encode(np.ones((4, 4), F32), 8)
    with pytest.raises(TypeError, match="residual of dtype float32"):
        sign_encode(x, 8, residual=np.zeros(16, np.float16))
    with pytest.raises(ValueError, match="residual of length 16"):
        sign_encode(x, 8, residual=np.zeros(8, F32))
    ro = np.zeros(16, F32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        sign_encode(x, 8, residual=ro)
    packed, scales = sign_encode(x, 8)
    with pytest.raises(ValueError, match="expected scales to be 1-D with 2 entries"):
        sign_decode(packed, scales[:1], 8, 16)
    with pytest.raises(ValueError, match="expected packed to hold at least 2 bytes"):
        sign_decode(packed[:1], scales, 8, 16)
    with pytest.raises(ValueError, match="expected out when accumulate=True"):
        sign_decode(packed, scales, 8, 16, accumulate=True)
    with pytest.raises(TypeError, match="expected accumulate to be a bool"):
        sign_decode(packed, scales, 8, 16, out=np.zeros(16, F32), accumulate=1)
