"""Natural compression (stochastic rounding to powers of two) against a plain numpy reference,
plus unbiasedness, subnormals, error feedback and the non-finite policy."""

import numpy as np
import pytest
from _shared import F32, assert_input_unmodified_and_rng_untouched, bernstein_tol, rand32s
from gcomp.kernels.bitpack import packed_size, unpack_bits
from gcomp.kernels.natural import natural_decode, natural_encode
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

U32 = np.uint32


# --- numpy reference ------------------------------------------------------------


def natural_encode_ref(x, seed, residual=None):
    """Returns (exponents uint8[n], sign bits uint8[n], v)."""
    x = np.asarray(x, dtype=F32)
    v = x if residual is None else (x + residual).astype(F32)
    b = v.view(U32)
    e = (b >> U32(23)) & U32(0xFF)
    m = b & U32(0x7FFFFF)
    up = (rand32s(seed, v.size) >> U32(8)) < (m << U32(1))  # uniform01 < m / 2**23
    e2 = np.minimum(e + up, 255).astype(np.uint8)
    return e2, (b >> U32(31)).astype(np.uint8), v


def natural_decode_ref(exponents, sign_bits):
    e = exponents.astype(U32)
    bits = (sign_bits.astype(U32) << U32(31)) | (e << U32(23)) | np.where(e == 255, U32(0x400000), U32(0))
    return bits.view(F32)


def same_bits(a, b):
    return np.array_equal(np.asarray(a, F32).view(U32), np.asarray(b, F32).view(U32))


def check_against_reference(x, seed, residual=None):
    n = np.asarray(x).size
    r_ref = None if residual is None else residual.copy()
    e_ref, s_ref, v = natural_encode_ref(x, seed, r_ref)
    exps, signs = natural_encode(x, seed, residual=residual)
    assert exps.dtype == np.uint8 and exps.shape == (n,)
    assert signs.dtype == np.uint8 and signs.shape == (packed_size(n, 1),)
    np.testing.assert_array_equal(exps, e_ref)  # integer arithmetic throughout: exact
    np.testing.assert_array_equal(unpack_bits(signs, 1, n), s_ref)
    dec = natural_decode(exps, signs, n)
    assert same_bits(dec, natural_decode_ref(e_ref, s_ref))
    if residual is not None:
        assert same_bits(residual, (v - dec).astype(F32))
    return exps, signs, dec


def degenerate_vectors():
    rng = np.random.default_rng(7)
    return {
        "n0": np.zeros(0, F32),
        "n1": np.array([-3.0], F32),
        "zeros": np.zeros(100, F32),
        "signed_zeros": np.array([0.0, -0.0] * 8, F32),
        "powers_of_two": np.array([1, -2, 0.5, 2.0**-126, 2.0**127, -(2.0**-100), 4, 8, 1024], F32),
        "constant": np.full(77, -2.5, F32),
        "fp16_extremes": np.array([65504, -65504, 6e-8, -6e-8, 6.1e-5, 0, 1, -1, 65504, 3], np.float16),
        "subnormal": np.array([1e-40, -1e-45, 5e-39, 1.1e-38, -2e-42, 1e-44], F32),
        "huge": np.array([3.4e38, -3.4e38, 2.0**127 * 1.5, 1.7e38], F32),
        "normal": rng.standard_normal(3001).astype(F32),
        "heavy": rng.standard_cauchy(3001).astype(F32),
        "float64": rng.standard_normal(300),
    }


VECTORS = degenerate_vectors()


# --- tests -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VECTORS))
@pytest.mark.parametrize("seed", [0, 2**64 - 1])
def test_matches_reference(name, seed):
    x = VECTORS[name]
    check_against_reference(x, seed)
    r = np.random.default_rng(1).standard_normal(np.asarray(x).size).astype(F32)
    check_against_reference(x, seed, residual=r)


@given(
    x=hnp.arrays(np.float32, st.integers(0, 5000), elements=st.floats(width=32)),
    seed=st.integers(0, 2**64 - 1),
)
def test_matches_reference_property(x, seed):
    check_against_reference(x, seed)


@given(
    x=hnp.arrays(np.float32, st.integers(0, 300), elements=st.floats(-(2.0**100), 2.0**100, width=32)),
    seed=st.integers(0, 2**64 - 1),
)
def test_residual_matches_reference_property(x, seed):
    r = np.random.default_rng(seed % 1000).standard_normal(x.size).astype(F32)
    check_against_reference(x, seed, residual=r)


def test_powers_of_two_and_zero_are_exact():
    x = VECTORS["powers_of_two"]
    for seed in range(5):
        exps, signs = natural_encode(x, seed)
        assert same_bits(natural_decode(exps, signs, x.size), x)
    z = np.array([0.0, -0.0], F32)
    exps, signs = natural_encode(z, 1)
    np.testing.assert_array_equal(exps, [0, 0])
    assert same_bits(natural_decode(exps, signs, 2), z)  # -0.0 keeps its sign bit


def test_decoded_values_are_neighbouring_powers_of_two():
    x = VECTORS["normal"]
    exps, signs = natural_encode(x, 3)
    dec = natural_decode(exps, signs, x.size)
    lo = np.exp2(np.floor(np.log2(np.abs(x).astype(np.float64))))
    a = np.abs(dec).astype(np.float64)
    assert ((a == lo) | (a == 2 * lo)).all()
    assert (np.signbit(dec) == np.signbit(x)).all()


def test_nonfinite_policy():
    x = np.array([np.nan, np.inf, -np.inf, 1.0, -np.nan, 3.4e38, 2.0**127, -1.0], F32)
    exps, signs = natural_encode(x, 4)
    assert (exps[:3] == 255).all() and exps[4] == 255
    dec = natural_decode(exps, signs, x.size)
    assert np.isnan(dec[[0, 1, 2, 4]]).all()
    assert dec[3] == 1 and dec[6] == 2.0**127 and dec[7] == -1
    # 1.5 * 2**127 rounds up past FLT_MAX (to NaN) with probability 1/2, else down to 2**127
    x = np.full(4096, 1.5 * 2.0**127, F32)
    dec = natural_decode(*natural_encode(x, 0), x.size)
    nan_frac = np.isnan(dec).mean()
    assert 0.4 < nan_frac < 0.6 and (dec[~np.isnan(dec)] == 2.0**127).all()
    r = np.zeros(8, F32)
    natural_encode(np.array([np.nan, 1, np.inf, 2, 3, 4, 5, 6], F32), 0, residual=r)
    assert np.isnan(r[[0, 2]]).all() and np.isfinite(r[[1, 3, 4, 5, 6, 7]]).all()


@pytest.mark.parametrize("scale", [1.0, 1e-40])
def test_unbiased(scale):
    """The mean decode over 4000 seeds is within a Bernstein bound of x, per element (normal and subnormal x).

    |x| in [2^e, 2^(e+1)) decodes to 2^e or 2^(e+1) with P(up) = p = |x| / 2^e - 1 (a
    subnormal to 0 or 2^-126); the bound holds with probability 1 - 1e-10 per element, so a
    correct kernel fails this test (40 elements) with probability below 4e-9.
    """
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(40) * scale).astype(F32)
    seeds = 4000
    total = np.zeros(40, np.float64)
    for seed in range(seeds):
        total += natural_decode(*natural_encode(x, seed), 40)
    mean = total / seeds
    a = np.abs(x).astype(np.float64)
    lo = np.where(a < 2.0**-126, 0.0, np.exp2(np.floor(np.log2(np.maximum(a, 1e-300)))))
    step = np.where(a < 2.0**-126, 2.0**-126, lo)
    p = (a - lo) / step
    tol = bernstein_tol(step, p, seeds) + 1e-12 * step
    assert (np.abs(mean - x) <= tol).all(), np.max(np.abs(mean - x) / tol)


def test_deterministic_seeded_and_untouched():
    x = VECTORS["normal"]
    assert_input_unmodified_and_rng_untouched(
        x, lambda x: natural_encode(x, 123), lambda x: natural_encode(x, 5, residual=np.zeros_like(x))
    )
    a = natural_encode(x, 123)
    b = natural_encode(x, 123)
    c = natural_encode(x, 124)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(a[1], c[1])  # signs do not depend on the seed


def test_residual_identity():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(1003).astype(F32)
    r = (0.3 * rng.standard_normal(1003)).astype(F32)
    v = x + r
    exps, signs = natural_encode(x, 5, residual=r)
    dec = natural_decode(exps, signs, 1003)
    err = np.abs(dec.astype(np.float64) + r - v)
    assert (err <= 2 * np.finfo(F32).eps * np.maximum(np.abs(v), np.abs(dec))).all()


def test_accumulate_and_out():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(3000).astype(F32)
    exps, signs = natural_encode(x, 1)
    dec = natural_decode(exps, signs, 3000)
    base = rng.standard_normal(3000).astype(F32)
    acc = base.copy()
    got = natural_decode(exps, signs, 3000, out=acc, accumulate=True)
    assert got is acc
    np.testing.assert_array_equal(acc, base + dec)
    out = np.full(3010, 9.0, F32)
    got = natural_decode(exps, signs, 3000, out=out)
    np.testing.assert_array_equal(got, dec)
    assert np.shares_memory(got, out) and (out[3000:] == 9.0).all()
    exps.setflags(write=False)
    signs.setflags(write=False)
    np.testing.assert_array_equal(natural_decode(exps, signs, 3000), dec)


def test_empty():
    exps, signs = natural_encode(np.zeros(0, F32), 0)
    assert exps.size == signs.size == 0
    assert natural_decode(exps, signs, 0).size == 0


def test_invalid_arguments():
    x = np.ones(16, F32)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            natural_encode(x, seed)
    with pytest.raises(TypeError, match="seed"):
        natural_encode(x, None)
    with pytest.raises(TypeError, match="expected x of dtype float16, float32 or float64, found int64"):
        natural_encode(np.ones(16, np.int64), 0)
    with pytest.raises(ValueError, match="1-D"):
        natural_encode(np.ones((4, 4), F32), 0)
    with pytest.raises(TypeError, match="numpy array"):
        natural_encode(1.0, 0)
    with pytest.raises(TypeError, match="residual of dtype float32"):
        natural_encode(x, 0, residual=np.zeros(16))
    with pytest.raises(ValueError, match="residual of length 16"):
        natural_encode(x, 0, residual=np.zeros(8, F32))
    exps, signs = natural_encode(x, 0)
    with pytest.raises(ValueError, match="expected exponents to hold at least 16"):
        natural_decode(exps[:15], signs, 16)
    with pytest.raises(TypeError, match="expected exponents of dtype uint8"):
        natural_decode(exps.astype(np.int16), signs, 16)
    with pytest.raises(ValueError, match="expected signs to hold at least 2 bytes"):
        natural_decode(exps, signs[:1], 16)
    with pytest.raises(ValueError, match="expected out when accumulate=True"):
        natural_decode(exps, signs, 16, accumulate=True)
