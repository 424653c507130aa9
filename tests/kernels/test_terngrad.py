"""TernGrad against a plain numpy reference, plus unbiasedness, error feedback and the non-finite policy."""

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
    assert_seeded,
    bernstein_tol,
    degenerate_vectors,
    encode_input_error_cases,
    nonfinite_buckets_input,
    random_residual,
    read_only,
    residual_identity_inputs,
    uniforms,
)
from gcomp.kernels.bitpack import packed_size, unpack_bits
from gcomp.kernels.terngrad import terngrad_decode, terngrad_encode
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# --- numpy reference ------------------------------------------------------------


def terngrad_encode_ref(x, bucket_size, seed, residual=None):
    """Returns (codes uint8[n] in {0: -1, 1: 0, 2: +1}, scales, v)."""
    x = np.asarray(x, dtype=F32)
    v = x if residual is None else (x + residual).astype(F32)
    n = x.size
    u = uniforms(seed, n)
    nb = -(-n // bucket_size)
    codes = np.zeros(n, np.uint8)
    scales = np.zeros(nb, F32)
    for b in range(nb):
        sl = slice(b * bucket_size, min((b + 1) * bucket_size, n))
        vb = v[sl]
        if not np.isfinite(vb).all():
            scales[b] = np.nan
            continue
        scale = np.max(np.abs(vb))
        scales[b] = scale
        if scale >= 2.0**-100:
            keep = u[sl] * scale < np.abs(vb)
        else:  # the kernel's form for tiny scales: k * scale < |v| * 2**24, k = u * 2**24
            keep = (u[sl] * F32(2**24)) * scale < np.abs(vb) * F32(2**24)
        codes[sl] = 1 + keep * np.where(vb >= 0, 1, -1)
    return codes, scales, v


def terngrad_decode_ref(codes, scales, bucket_size):
    sc = np.repeat(scales, bucket_size)[: codes.size]
    return (sc * (codes.astype(F32) - F32(1))).astype(F32)


def check_against_reference(x, bucket_size, seed, residual=None):
    n = np.asarray(x).size
    r_ref = None if residual is None else residual.copy()
    codes_ref, scales_ref, v = terngrad_encode_ref(x, bucket_size, seed, r_ref)
    packed, scales = terngrad_encode(x, bucket_size, seed, residual=residual)
    assert packed.dtype == np.uint8 and packed.shape == (packed_size(n, 2),)
    assert scales.dtype == F32 and scales.shape == (-(-n // bucket_size),)
    np.testing.assert_array_equal(scales, scales_ref)
    codes = unpack_bits(packed, 2, n)
    np.testing.assert_array_equal(codes, codes_ref)  # a product and a compare: no rounding ambiguity
    dec = terngrad_decode(packed, scales, bucket_size, n)
    np.testing.assert_array_equal(dec, terngrad_decode_ref(codes, scales, bucket_size))
    assert_residual_update(residual, v, dec)
    return codes, scales, dec


VECTORS = degenerate_vectors(huge=np.array([3.4e38, 1e38, -3.4e38, 3e38, 1, 2, 3, 4], F32))


# --- tests -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VECTORS))
@pytest.mark.parametrize("bucket_size", [8, 64, 4096])
def test_matches_reference(name, bucket_size):
    codes, scales, dec = check_against_reference(VECTORS[name], bucket_size, 3)
    assert (codes <= 2).all()
    check_against_reference(VECTORS[name], bucket_size, 3, residual=random_residual(codes.size, 1))


@given(
    x=hnp.arrays(np.float32, st.integers(0, 200), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
    bucket_size=st.sampled_from([8, 16, 24, 64]),
    seed=st.integers(0, 2**64 - 1),
)
def test_matches_reference_property(x, bucket_size, seed):
    check_against_reference(x, bucket_size, seed)
    check_against_reference(x, bucket_size, seed, residual=random_residual(x.size, seed % 1000))


def test_code_meaning_and_extremes():
    # the max-|x| entry always survives (u * scale < scale); zeros never do
    x = np.array([0, 4, -4, 0, -0.0, 4, 0, -4, 0], F32)
    for seed in range(5):
        packed, scales = terngrad_encode(x, 8, seed)
        np.testing.assert_array_equal(unpack_bits(packed, 2, 9), [1, 2, 0, 1, 1, 2, 1, 0, 1])
        np.testing.assert_array_equal(scales, [4, 0])
        np.testing.assert_array_equal(terngrad_decode(packed, scales, 8, 9), x)


def test_nonfinite_policy():
    x = nonfinite_buckets_input()
    packed, scales = terngrad_encode(x, 16, 1)
    r = np.zeros(64, F32)
    terngrad_encode(x, 16, 1, residual=r)
    assert_nonfinite_buckets(scales, unpack_bits(packed, 2, 64), terngrad_decode(packed, scales, 16, 64), r)


def test_deterministic_and_seeded():
    x = np.random.default_rng(0).standard_normal(5000).astype(F32)
    assert_seeded(lambda seed: terngrad_encode(x, 256, seed))


def test_global_rng_untouched_and_input_unmodified():
    x = np.random.default_rng(0).standard_normal(1000).astype(F32)
    assert_input_unmodified_and_rng_untouched(
        x, lambda x: terngrad_encode(x, 64, 9), lambda x: terngrad_encode(x, 64, 9, residual=np.zeros_like(x))
    )


def test_unbiased():
    """The mean decode over 3000 seeds is within a Bernstein bound of x, per element.

    Each decode is sign(x) * scale * Bernoulli(p), p = |x| / scale; the bound holds with
    probability 1 - 1e-10 per element, so a correct kernel fails this test (48 elements)
    with probability below 5e-9.
    """
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(48) * rng.uniform(0.01, 3, 48)).astype(F32)
    bucket, seeds = 16, 3000
    total = np.zeros(48, np.float64)
    for seed in range(seeds):
        packed, scales = terngrad_encode(x, bucket, seed)
        total += terngrad_decode(packed, scales, bucket, 48)
    mean = total / seeds
    sc = np.repeat(terngrad_encode(x, bucket, 0)[1], bucket).astype(np.float64)
    p = np.abs(x) / sc
    tol = bernstein_tol(sc, p, seeds) + 1e-6 * sc
    assert (np.abs(mean - x) <= tol).all(), np.max(np.abs(mean - x) / tol)


def test_residual_identity():
    x, r = residual_identity_inputs(3)
    r0 = r.copy()
    assert_residual_identity(x, r, lambda x, r: terngrad_decode(*terngrad_encode(x, 64, 5, residual=r), 64, x.size))
    check_against_reference(x, 64, 5, residual=r0)


def test_accumulate_and_out():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(300).astype(F32)
    packed, scales = terngrad_encode(x, 64, 1)
    base = rng.standard_normal(300).astype(F32)
    assert_accumulate_and_out(
        lambda **kw: terngrad_decode(packed, scales, 64, 300, **kw),
        lambda: terngrad_decode(read_only(packed), scales, 64, 300),
        300,
        base,
    )


def test_empty():
    packed, scales = terngrad_encode(np.zeros(0, F32), 8, 0)
    assert packed.size == scales.size == 0
    assert terngrad_decode(packed, scales, 8, 0).size == 0


def test_invalid_arguments():
    x = np.ones(16, F32)
    packed, scales = terngrad_encode(x, 8, 0)
    assert_raise_all(
        [
            (ValueError, "expected bucket_size to be a positive multiple of 8, found", lambda bs=bs: terngrad_encode(x, bs, 0))
            for bs in (12, 0, -8)
        ]
        + [(ValueError, "seed", lambda seed=seed: terngrad_encode(x, 8, seed)) for seed in (-1, 2**64)]
        + [(TypeError, "seed", lambda: terngrad_encode(x, 8, 1.5))]
        + encode_input_error_cases(lambda x, residual=None: terngrad_encode(x, 8, 0, residual=residual), np.int16)
        + [
            (ValueError, "expected scales to be 1-D with 2 entries", lambda: terngrad_decode(packed, scales[:1], 8, 16)),
            (ValueError, "expected packed to hold at least 4 bytes", lambda: terngrad_decode(packed[:3], scales, 8, 16)),
            (ValueError, "expected out when accumulate=True", lambda: terngrad_decode(packed, scales, 8, 16, accumulate=True)),
        ]
    )
