"""QSGD quantization against a plain numpy reference, plus unbiasedness, error feedback and the non-finite policy."""

import numpy as np
import pytest
from _shared import (
    F32,
    assert_input_unmodified_and_rng_untouched,
    assert_residual_update,
    assert_seeded,
    bernstein_tol,
    degenerate_vectors,
    random_residual,
    uniforms,
)
from gcomp.kernels.bitpack import packed_size, unpack_bits
from gcomp.kernels.qsgd import qsgd_code_bits, qsgd_decode, qsgd_encode
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# --- numpy reference ------------------------------------------------------------


def qsgd_encode_ref(x, levels, bucket_size, seed, residual=None):
    """Returns (codes uint8[n], norms, v, new_residual)."""
    x = np.asarray(x, dtype=F32)
    v = x if residual is None else (x + residual).astype(F32)
    n = x.size
    u = uniforms(seed, n)
    codes = np.zeros(n, np.uint8)
    nb = -(-n // bucket_size)
    norms = np.zeros(nb, F32)
    lv = F32(levels)
    for b in range(nb):
        sl = slice(b * bucket_size, min((b + 1) * bucket_size, n))
        vb = v[sl]
        norm = F32(np.sqrt(np.sum(vb.astype(np.float64) ** 2)))
        if not np.isfinite(norm):
            norms[b] = np.nan
            continue
        norms[b] = norm
        with np.errstate(over="ignore"):
            inv = lv / norm if norm > 0 else F32(0)
        if np.isfinite(inv):
            a = np.abs(vb) * inv
            lvv = lv
        else:  # tiny norm: float64 path
            a = np.abs(vb).astype(np.float64) * (float(levels) / float(norm))
            lvv = float(levels)
        fl = np.floor(a)
        lev = np.minimum(fl + (u[sl] < a - fl), lvv)
        codes[sl] = np.where(vb >= 0, lvv + lev, lvv - lev).astype(np.uint8)
    dec = qsgd_decode_ref(codes, norms, levels, bucket_size)
    new_r = None if residual is None else (v - dec).astype(F32)
    return codes, norms, v, new_r


def qsgd_decode_ref(codes, norms, levels, bucket_size):
    n = codes.size
    sc = np.repeat((norms * (F32(1) / F32(levels))).astype(F32), bucket_size)[:n]
    return (sc * (codes.astype(F32) - F32(levels))).astype(F32)


# --- helpers ---------------------------------------------------------------------


def codes_of(packed, levels, n):
    return unpack_bits(packed, qsgd_code_bits(levels), n)


def assert_codes_match(got, want, levels):
    """Equal, except (at most 1 in 10^4, and by one level) where float rounding of l = |v| levels / norm
    may differ between the kernel (possibly fused multiply-add) and numpy."""
    diff = got.astype(np.int64) - want.astype(np.int64)
    bad = np.flatnonzero(diff)
    assert bad.size <= max(1, got.size // 10_000), f"{bad.size} codes differ, first at {bad[:5]}"
    assert (np.abs(diff[bad]) == 1).all()


def check_against_reference(x, levels, bucket_size, seed, residual=None):
    x32 = np.asarray(x, dtype=F32)
    n = x32.size
    r_ref = None if residual is None else residual.copy()
    codes_ref, norms_ref, v, new_r = qsgd_encode_ref(x32, levels, bucket_size, seed, r_ref)
    packed, norms = qsgd_encode(x, levels, bucket_size, seed, residual=residual)
    assert packed.dtype == np.uint8 and packed.shape == (packed_size(n, qsgd_code_bits(levels)),)
    assert norms.dtype == F32 and norms.shape == (-(-n // bucket_size),)
    np.testing.assert_array_equal(norms, norms_ref)
    codes = codes_of(packed, levels, n)
    assert_codes_match(codes, codes_ref, levels)
    dec = qsgd_decode(packed, norms, levels, bucket_size, n)
    np.testing.assert_array_equal(dec, qsgd_decode_ref(codes, norms, levels, bucket_size))
    assert_residual_update(residual, v, dec)
    return codes, norms, dec


VECTORS = degenerate_vectors(one_hot=np.eye(1, 40, 17, dtype=F32)[0])


# --- tests -----------------------------------------------------------------------


def test_code_bits():
    assert [qsgd_code_bits(s) for s in (1, 2, 7, 8, 127)] == [2, 4, 4, 8, 8]


@pytest.mark.parametrize("name", sorted(VECTORS))
@pytest.mark.parametrize("levels", [1, 4, 7, 127])
@pytest.mark.parametrize("bucket_size", [8, 64, 4096])
def test_matches_reference(name, levels, bucket_size):
    codes, norms, dec = check_against_reference(VECTORS[name], levels, bucket_size, seed=11)
    assert ((codes >= 0) & (codes <= 2 * levels)).all()
    assert np.isfinite(dec).all()


@given(
    x=hnp.arrays(np.float32, st.integers(0, 200), elements=st.floats(-1e6, 1e6, width=32)),
    levels=st.integers(1, 127),
    bucket_size=st.sampled_from([8, 16, 24, 64]),
    seed=st.integers(0, 2**64 - 1),
)
def test_matches_reference_property(x, levels, bucket_size, seed):
    check_against_reference(x, levels, bucket_size, seed)
    check_against_reference(x, levels, bucket_size, seed, residual=random_residual(x.size, seed % 1000))


def test_zero_bucket_codes_are_levels():
    x = np.concatenate([np.zeros(16, F32), np.ones(16, F32)])
    packed, norms = qsgd_encode(x, 3, 16, 0)
    assert norms[0] == 0 and norms[1] == 4
    np.testing.assert_array_equal(codes_of(packed, 3, 32)[:16], 3)
    dec = qsgd_decode(packed, norms, 3, 16, 32)
    assert (dec[:16] == 0).all()


def test_partial_last_bucket():
    x = np.random.default_rng(3).standard_normal(8 * 5 + 3).astype(F32)
    codes, norms, _ = check_against_reference(x, 5, 8, seed=2)
    assert norms.size == 6
    assert norms[-1] == F32(np.sqrt(np.sum(x[-3:].astype(np.float64) ** 2)))


def test_single_bucket_extreme_value_is_exact():
    # |x| == norm gives l == levels exactly: no randomness for the only non-zero entry.
    x = np.zeros(24, F32)
    x[5] = -7.5
    for seed in range(5):
        packed, norms = qsgd_encode(x, 9, 24, seed)
        dec = qsgd_decode(packed, norms, 9, 24, 24)
        np.testing.assert_array_equal(dec, x)


def test_nonfinite_policy():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(64).astype(F32)
    x[3] = np.nan  # bucket 0
    x[20] = np.inf  # bucket 1
    x[45] = -np.inf  # bucket 2; bucket 3 stays finite
    packed, norms = qsgd_encode(x, 4, 16, 1)
    assert np.isnan(norms[:3]).all() and np.isfinite(norms[3])
    codes = codes_of(packed, 4, 64)
    assert (codes[:48] == 0).all()
    dec = qsgd_decode(packed, norms, 4, 16, 64)
    assert np.isnan(dec[:48]).all() and np.isfinite(dec[48:]).all()
    # residual: NaN exactly in the non-finite buckets (IEEE v - NaN), finite elsewhere
    r = np.zeros(64, F32)
    qsgd_encode(x, 4, 16, 1, residual=r)
    assert np.isnan(r[:48]).all() and np.isfinite(r[48:]).all()
    # a finite bucket whose norm overflows float32 is treated as non-finite
    big = np.full(16, 3e38, F32)
    _, norms = qsgd_encode(big, 4, 16, 1)
    assert np.isnan(norms[0])


def test_nonfinite_float16_input():
    x = np.array([1, 2, np.inf, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8], np.float16)
    packed, norms = qsgd_encode(x, 2, 8, 3)
    dec = qsgd_decode(packed, norms, 2, 8, 16)
    assert np.isnan(dec[:8]).all() and np.isfinite(dec[8:]).all()


def test_deterministic_and_seeded():
    x = np.random.default_rng(0).standard_normal(5000).astype(F32)
    assert_seeded(lambda seed: qsgd_encode(x, 4, 256, seed))  # norms do not depend on the seed


def test_global_rng_untouched_and_input_unmodified():
    x = np.random.default_rng(0).standard_normal(1000).astype(F32)
    assert_input_unmodified_and_rng_untouched(
        x, lambda x: qsgd_encode(x, 4, 64, 9), lambda x: qsgd_encode(x, 4, 64, 9, residual=np.zeros_like(x))
    )


def test_codes_use_global_indices():
    """The draw for element i is uniform01(key, i), whatever the bucketing.

    Four copies of an 8-block make 32-buckets with twice the 8-bucket norm (exactly: the
    values are dyadic), so 6 levels on 32-buckets give the same l = |x| levels / norm,
    hence the same levels, as 3 levels on 8-buckets.
    """
    block = np.array([0.5, -0.25, 0.75, 0.125, -1.0, 0.375, -0.625, 0.25], F32)
    x = np.tile(block, 64)
    p8, n8 = qsgd_encode(x, 3, 8, 77)
    p32, n32 = qsgd_encode(x, 6, 32, 77)
    np.testing.assert_array_equal(np.repeat(n32, 4), 2 * n8)
    lev8 = codes_of(p8, 3, x.size).astype(int) - 3
    lev32 = codes_of(p32, 6, x.size).astype(int) - 6
    np.testing.assert_array_equal(lev8, lev32)
    assert len(np.unique(lev8.reshape(64, 8), axis=0)) > 1  # the draws do differ between copies


@pytest.mark.parametrize("levels", [1, 3, 127])
def test_unbiased(levels):
    """The mean decode over 3000 seeds is within a Bernstein bound of x, per element.

    Each decode is (norm/levels) * (floor(l) + Bernoulli(p)) with p = frac(|x| levels / norm);
    the bound holds with probability 1 - 1e-10 per element, so a correct kernel fails this
    test (48 elements) with probability below 5e-9.
    """
    rng = np.random.default_rng(levels)
    x = (rng.standard_normal(48) * rng.uniform(0.01, 3, 48)).astype(F32)
    x[7] = 0.0
    bucket = 16
    seeds = 3000
    total = np.zeros(48, np.float64)
    for seed in range(seeds):
        packed, norms = qsgd_encode(x, levels, bucket, seed)
        total += qsgd_decode(packed, norms, levels, bucket, 48)
    mean = total / seeds
    norms = np.repeat(qsgd_encode(x, levels, bucket, 0)[1], bucket).astype(np.float64)
    ell = np.abs(x) * levels / norms
    p = ell - np.floor(ell)
    tol = bernstein_tol(norms / levels, p, seeds) + 1e-6 * norms
    assert (np.abs(mean - x) <= tol).all(), np.max(np.abs(mean - x) / tol)


@pytest.mark.parametrize("levels", [1, 8])
def test_residual_identity(levels):
    rng = np.random.default_rng(levels)
    x = rng.standard_normal(1003).astype(F32)
    r = (0.3 * rng.standard_normal(1003)).astype(F32)
    v = x + r
    r0 = r.copy()
    packed, norms = qsgd_encode(x, levels, 64, 5, residual=r)
    dec = qsgd_decode(packed, norms, levels, 64, 1003)
    err = np.abs(dec.astype(np.float64) + r - v)
    assert (err <= 2 * np.finfo(F32).eps * np.maximum(np.abs(v), np.abs(dec))).all()
    # and the residual matches the reference exactly
    check_against_reference(x, levels, 64, 5, residual=r0)


def test_accumulate_and_out():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(300).astype(F32)
    packed, norms = qsgd_encode(x, 4, 64, 1)
    dec = qsgd_decode(packed, norms, 4, 64, 300)
    base = rng.standard_normal(300).astype(F32)
    acc = base.copy()
    got = qsgd_decode(packed, norms, 4, 64, 300, out=acc, accumulate=True)
    assert got is acc
    np.testing.assert_array_equal(acc, base + dec)
    out = np.full(310, 9.0, F32)
    got = qsgd_decode(packed, norms, 4, 64, 300, out=out)
    np.testing.assert_array_equal(got, dec)
    assert np.shares_memory(got, out) and (out[300:] == 9.0).all()
    ro = packed.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(qsgd_decode(ro, norms, 4, 64, 300), dec)


def test_empty():
    packed, norms = qsgd_encode(np.zeros(0, F32), 4, 8, 0)
    assert packed.size == 0 and norms.size == 0
    assert qsgd_decode(packed, norms, 4, 8, 0).size == 0
    r = np.zeros(0, F32)
    qsgd_encode(np.zeros(0, np.float16), 4, 8, 0, residual=r)


def test_invalid_arguments():
    x = np.ones(16, F32)
    for levels in (0, 128, -1):
        with pytest.raises(ValueError, match="levels"):
            qsgd_encode(x, levels, 8, 0)
    with pytest.raises(TypeError, match="levels"):
        qsgd_encode(x, 2.5, 8, 0)
    for bs in (12, 0, -8, 4):
        with pytest.raises(ValueError, match="expected bucket_size to be a positive multiple of 8, found"):
            qsgd_encode(x, 4, bs, 0)
    with pytest.raises(TypeError, match="bucket_size"):
        qsgd_encode(x, 4, 8.0, 0)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            qsgd_encode(x, 4, 8, seed)
    with pytest.raises(TypeError, match="expected x of dtype float16, float32 or float64, found int64"):
        qsgd_encode(np.ones(16, np.int64), 4, 8, 0)
    with pytest.raises(ValueError, match="1-D"):
        qsgd_encode(np.ones((4, 4), F32), 4, 8, 0)
    with pytest.raises(TypeError, match="numpy array"):
        qsgd_encode([1.0, 2.0], 4, 8, 0)
    with pytest.raises(TypeError, match="residual of dtype float32"):
        qsgd_encode(x, 4, 8, 0, residual=np.zeros(16))
    with pytest.raises(ValueError, match="residual of length 16"):
        qsgd_encode(x, 4, 8, 0, residual=np.zeros(15, F32))
    with pytest.raises(ValueError, match="writeable 1-D C-contiguous"):
        qsgd_encode(x, 4, 8, 0, residual=np.zeros(32, F32)[::2])
    packed, norms = qsgd_encode(x, 4, 8, 0)
    with pytest.raises(ValueError, match="expected norms to be 1-D with 2 entries"):
        qsgd_decode(packed, norms[:1], 4, 8, 16)
    with pytest.raises(ValueError, match="expected packed to hold at least 8 bytes"):
        qsgd_decode(packed[:7], norms, 4, 8, 16)
    with pytest.raises(ValueError, match="expected out when accumulate=True"):
        qsgd_decode(packed, norms, 4, 8, 16, accumulate=True)
    with pytest.raises(ValueError, match="expected out to be a writeable 1-D C-contiguous float32"):
        qsgd_decode(packed, norms, 4, 8, 16, out=np.zeros(16))
    with pytest.raises(ValueError, match="at least 16 elements"):
        qsgd_decode(packed, norms, 4, 8, 16, out=np.zeros(15, F32))
