"""Scaled sign (EF-signSGD) against a plain numpy reference, plus error feedback and the non-finite policy."""

import math

import numpy as np
import pytest
from _shared import (
    F32,
    assert_accumulate_and_out,
    assert_input_unmodified_and_rng_untouched,
    assert_nonfinite_buckets,
    assert_raise_all,
    assert_residual_identity,
    assert_residual_update,
    degenerate_vectors,
    encode_input_error_cases,
    nonfinite_buckets_input,
    random_residual,
    read_only,
    residual_identity_inputs,
)
from gcomp.kernels.bitpack import packed_size, unpack_bits
from gcomp.kernels.sign import sign_decode, sign_encode
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def sign_encode_ref(x, bucket_size, residual=None):
    """Returns (bits uint8[n], scales, v); scales from the exact sum (math.fsum), rounded once to float32."""
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
        scales[b] = F32(math.fsum(np.abs(vb).astype(np.float64).tolist()) / vb.size)
        bits[sl] = vb >= 0
    return bits, scales, v


def assert_scales_within_one_ulp(scales, exact):
    """The kernel sums |v| in float64 in any order (fast-math reassociation), so its float32 scale may land one
    float32 ulp from the exactly rounded mean when the float64 sum falls next to a float32 rounding boundary
    (hypothesis found one near 1e16: 4.5704374e15 against 4.570437e15).  More than one ulp is a bug."""
    nan = np.isnan(exact)
    np.testing.assert_array_equal(np.isnan(scales), nan)
    np.testing.assert_array_max_ulp(scales[~nan], exact[~nan], maxulp=1)


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
    assert_scales_within_one_ulp(scales, scales_ref)
    bits = unpack_bits(packed, 1, n)
    np.testing.assert_array_equal(bits, bits_ref)
    dec = sign_decode(packed, scales, bucket_size, n)
    np.testing.assert_array_equal(dec, sign_decode_ref(bits, scales, bucket_size))
    assert_residual_update(residual, v, dec)
    return bits, scales, dec


VECTORS = degenerate_vectors(huge=np.array([3.4e38, 3.4e38, -3.4e38, 3.4e38, 1, 2, 3, 4], F32))


@pytest.mark.parametrize("name", sorted(VECTORS))
@pytest.mark.parametrize("bucket_size", [8, 64, 4096])
def test_matches_reference(name, bucket_size):
    check_against_reference(VECTORS[name], bucket_size)
    x = VECTORS[name]
    check_against_reference(x, bucket_size, residual=random_residual(x.size, 1))


@given(
    x=hnp.arrays(np.float32, st.integers(0, 200), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
    bucket_size=st.sampled_from([8, 16, 24, 64]),
)
def test_matches_reference_property(x, bucket_size):
    check_against_reference(x, bucket_size)
    check_against_reference(x, bucket_size, residual=random_residual(x.size, x.size))


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
    x = nonfinite_buckets_input()
    packed, scales = sign_encode(x, 16)
    r = np.zeros(64, F32)
    sign_encode(x, 16, residual=r)
    assert_nonfinite_buckets(scales, unpack_bits(packed, 1, 64), sign_decode(packed, scales, 16, 64), r)
    # large finite values do not overflow the float64 sum
    _, scales = sign_encode(np.full(64, 3.4e38, F32), 64)
    assert scales[0] == F32(3.4e38)


def test_input_unmodified_and_deterministic():
    x = np.random.default_rng(0).standard_normal(1000).astype(F32)
    assert_input_unmodified_and_rng_untouched(x, lambda x: sign_encode(x, 64), lambda x: sign_encode(x, 64, residual=np.zeros_like(x)))
    a = sign_encode(x, 64)
    b = sign_encode(x, 64, residual=np.zeros_like(x))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_residual_identity():
    x, r = residual_identity_inputs(3)
    assert_residual_identity(x, r, lambda x, r: sign_decode(*sign_encode(x, 64, residual=r), 64, x.size))


def test_accumulate_and_out():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(300).astype(F32)
    packed, scales = sign_encode(x, 64)
    base = rng.standard_normal(300).astype(F32)
    assert_accumulate_and_out(
        lambda **kw: sign_decode(packed, scales, 64, 300, **kw),
        lambda: sign_decode(read_only(packed), scales, 64, 300),
        300,
        base,
    )


def test_empty():
    packed, scales = sign_encode(np.zeros(0, F32), 8)
    assert packed.size == scales.size == 0
    assert sign_decode(packed, scales, 8, 0).size == 0


def test_invalid_arguments():
    x = np.ones(16, F32)
    for bs in (12, 0, -8):
        with pytest.raises(ValueError, match="expected bucket_size to be a positive multiple of 8, found"):
            sign_encode(x, bs)
    packed, scales = sign_encode(x, 8)
    assert_raise_all(
        encode_input_error_cases(lambda x, residual=None: sign_encode(x, 8, residual=residual), np.uint8, np.float16)
        + [
            (TypeError, "bucket_size", lambda: sign_encode(x, "8")),
            (ValueError, "writeable", lambda: sign_encode(x, 8, residual=read_only(np.zeros(16, F32)))),
            (ValueError, "expected scales to be 1-D with 2 entries", lambda: sign_decode(packed, scales[:1], 8, 16)),
            (ValueError, "expected packed to hold at least 2 bytes", lambda: sign_decode(packed[:1], scales, 8, 16)),
            (ValueError, "expected out when accumulate=True", lambda: sign_decode(packed, scales, 8, 16, accumulate=True)),
            (
                TypeError,
                "expected accumulate to be a bool",
                lambda: sign_decode(packed, scales, 8, 16, out=np.zeros(16, F32), accumulate=1),
            ),
        ]
    )
