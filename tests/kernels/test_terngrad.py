"""TernGrad against a plain numpy reference, plus unbiasedness, error feedback and the non-finite policy."""

import numpy as np
import pytest
from gcomp.kernels.bitpack import packed_size, unpack_bits
from gcomp.kernels.random import seed_key32
from gcomp.kernels.terngrad import terngrad_decode, terngrad_encode
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

F32 = np.float32
EPS = np.finfo(F32).eps


# --- numpy reference ------------------------------------------------------------


def lowbias32(x):
    x = np.asarray(x, dtype=np.uint32).copy()
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def uniforms(seed, n):
    """uniform01(seed_key32(seed), i) for i in range(n), vectorized."""
    key = np.uint32(seed_key32(np.uint64(seed)))
    r = lowbias32(lowbias32(np.arange(n, dtype=np.uint64).astype(np.uint32)) ^ key)
    return (r >> np.uint32(8)).astype(F32) * F32(1.0 / 16777216.0)


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


def bernstein_tol(step, p, trials, delta=1e-10):
    """A bound on |mean - expectation| for ``trials`` independent draws of ``step * Bernoulli(p)``.

    Bernstein's inequality: it holds with probability at least ``1 - delta`` for every p,
    including p near 0 or 1 where a normal approximation would be far too optimistic.
    """
    log_term = np.log(2 / delta)
    return step * (np.sqrt(2 * p * (1 - p) * log_term / trials) + 2 * log_term / (3 * trials))


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
    if residual is not None:
        np.testing.assert_array_equal(residual, (v - dec).astype(F32))
    return codes, scales, dec


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
        "huge": np.array([3.4e38, 1e38, -3.4e38, 3e38, 1, 2, 3, 4], F32),
        "normal": rng.standard_normal(3000).astype(F32),
        "heavy": rng.standard_cauchy(3000).astype(F32),
        "float64": rng.standard_normal(300),
    }


VECTORS = degenerate_vectors()


# --- tests -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VECTORS))
@pytest.mark.parametrize("bucket_size", [8, 64, 4096])
def test_matches_reference(name, bucket_size):
    codes, scales, dec = check_against_reference(VECTORS[name], bucket_size, 3)
    assert (codes <= 2).all()
    r = np.random.default_rng(1).standard_normal(codes.size).astype(F32)
    check_against_reference(VECTORS[name], bucket_size, 3, residual=r)


@given(
    x=hnp.arrays(np.float32, st.integers(0, 200), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
    bucket_size=st.sampled_from([8, 16, 24, 64]),
    seed=st.integers(0, 2**64 - 1),
)
def test_matches_reference_property(x, bucket_size, seed):
    check_against_reference(x, bucket_size, seed)
    r = np.random.default_rng(seed % 1000).standard_normal(x.size).astype(F32)
    check_against_reference(x, bucket_size, seed, residual=r)


def test_code_meaning_and_extremes():
    # the max-|x| entry always survives (u * scale < scale); zeros never do
    x = np.array([0, 4, -4, 0, -0.0, 4, 0, -4, 0], F32)
    for seed in range(5):
        packed, scales = terngrad_encode(x, 8, seed)
        np.testing.assert_array_equal(unpack_bits(packed, 2, 9), [1, 2, 0, 1, 1, 2, 1, 0, 1])
        np.testing.assert_array_equal(scales, [4, 0])
        np.testing.assert_array_equal(terngrad_decode(packed, scales, 8, 9), x)


def test_nonfinite_policy():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(64).astype(F32)
    x[3] = np.nan
    x[20] = np.inf
    x[45] = -np.inf
    packed, scales = terngrad_encode(x, 16, 1)
    assert np.isnan(scales[:3]).all() and np.isfinite(scales[3])
    assert (unpack_bits(packed, 2, 64)[:48] == 0).all()
    dec = terngrad_decode(packed, scales, 16, 64)
    assert np.isnan(dec[:48]).all() and np.isfinite(dec[48:]).all()
    r = np.zeros(64, F32)
    terngrad_encode(x, 16, 1, residual=r)
    assert np.isnan(r[:48]).all() and np.isfinite(r[48:]).all()


def test_deterministic_and_seeded():
    x = np.random.default_rng(0).standard_normal(5000).astype(F32)
    a = terngrad_encode(x, 256, 123)
    b = terngrad_encode(x, 256, 123)
    c = terngrad_encode(x, 256, 124)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(a[1], c[1])


def test_global_rng_untouched_and_input_unmodified():
    x = np.random.default_rng(0).standard_normal(1000).astype(F32)
    x0 = x.copy()
    state = np.random.get_state()
    terngrad_encode(x, 64, 9)
    terngrad_encode(x, 64, 9, residual=np.zeros_like(x))
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    np.testing.assert_array_equal(x, x0)


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
    rng = np.random.default_rng(3)
    x = rng.standard_normal(1003).astype(F32)
    r = (0.3 * rng.standard_normal(1003)).astype(F32)
    v = x + r
    r0 = r.copy()
    packed, scales = terngrad_encode(x, 64, 5, residual=r)
    dec = terngrad_decode(packed, scales, 64, 1003)
    err = np.abs(dec.astype(np.float64) + r - v)
    assert (err <= 2 * EPS * np.maximum(np.abs(v), np.abs(dec))).all()
    check_against_reference(x, 64, 5, residual=r0)


def test_accumulate_and_out():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(300).astype(F32)
    packed, scales = terngrad_encode(x, 64, 1)
    dec = terngrad_decode(packed, scales, 64, 300)
    base = rng.standard_normal(300).astype(F32)
    acc = base.copy()
    got = terngrad_decode(packed, scales, 64, 300, out=acc, accumulate=True)
    assert got is acc
    np.testing.assert_array_equal(acc, base + dec)
    out = np.full(310, 9.0, F32)
    got = terngrad_decode(packed, scales, 64, 300, out=out)
    np.testing.assert_array_equal(got, dec)
    assert np.shares_memory(got, out) and (out[300:] == 9.0).all()
    ro = packed.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(terngrad_decode(ro, scales, 64, 300), dec)


def test_empty():
    packed, scales = terngrad_encode(np.zeros(0, F32), 8, 0)
    assert packed.size == scales.size == 0
    assert terngrad_decode(packed, scales, 8, 0).size == 0


def test_invalid_arguments():
    x = np.ones(16, F32)
    for bs in (12, 0, -8):
        with pytest.raises(ValueError, match="expected bucket_size to be a positive multiple of 8, found"):
            terngrad_encode(x, bs, 0)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            terngrad_encode(x, 8, seed)
    with pytest.raises(TypeError, match="seed"):
        terngrad_encode(x, 8, 1.5)
    with pytest.raises(TypeError, match="expected x of dtype float16, float32 or float64, found int16"):
        terngrad_encode(np.ones(16, np.int16), 8, 0)
    with pytest.raises(ValueError, match="1-D"):
        terngrad_encode(np.ones((4, 4), F32), 8, 0)
    with pytest.raises(TypeError, match="residual of dtype float32"):
        terngrad_encode(x, 8, 0, residual=np.zeros(16))
    with pytest.raises(ValueError, match="residual of length 16"):
        terngrad_encode(x, 8, 0, residual=np.zeros(8, F32))
    packed, scales = terngrad_encode(x, 8, 0)
    with pytest.raises(ValueError, match="expected scales to be 1-D with 2 entries"):
        terngrad_decode(packed, scales[:1], 8, 16)
    with pytest.raises(ValueError, match="expected packed to hold at least 4 bytes"):
        terngrad_decode(packed[:3], scales, 8, 16)
    with pytest.raises(ValueError, match="expected out when accumulate=True"):
        terngrad_decode(packed, scales, 8, 16, accumulate=True)
