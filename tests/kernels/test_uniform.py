"""Uniform (max-min / abs-max) quantization against a plain numpy reference, plus unbiasedness,
error feedback, degenerate buckets and the non-finite policy."""

import numpy as np
import pytest
from _shared import (
    EPS,
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
from gcomp.kernels.uniform import uniform_decode, uniform_encode
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# --- numpy reference ------------------------------------------------------------


def uniform_encode_ref(x, bits, bucket_size, mode, rounding, seed, residual=None):
    """Returns (codes uint8[n], scales, offsets, v)."""
    x = np.asarray(x, dtype=F32)
    v = x if residual is None else (x + residual).astype(F32)
    n = x.size
    u = uniforms(seed, n)
    h = (1 << (bits - 1)) - 1
    qtop = 2 * h if mode == "absmax" else (1 << bits) - 1
    nb = -(-n // bucket_size)
    codes = np.zeros(n, np.uint8)
    scales = np.zeros(nb, F32)
    offsets = np.zeros(nb, F32)
    for b in range(nb):
        sl = slice(b * bucket_size, min((b + 1) * bucket_size, n))
        vb = v[sl]
        if not np.isfinite(vb).all():
            scales[b] = offsets[b] = np.nan
            continue
        with np.errstate(over="ignore"):
            if mode == "absmax":
                scale = F32(float(np.max(np.abs(vb))) * (1.0 / h))
                offset = -(scale * F32(h))
            else:
                scale = F32((float(vb.max()) - float(vb.min())) * (1.0 / qtop))
                offset = vb.min()
            if not np.isfinite(scale):
                scales[b] = offsets[b] = np.nan
                continue
            scales[b], offsets[b] = scale, offset
            inv = F32(1) / scale if scale > 0 else F32(0)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(inv):
                t = (vb - offset) * inv
                top = F32(qtop)
            else:  # 1/scale overflows float32: float64 path
                t = (vb.astype(np.float64) - float(offset)) * (1.0 / float(scale))
                top = float(qtop)
            if rounding == "nearest":
                q = np.rint(t)
            else:
                fl = np.floor(t)
                q = fl + (u[sl] < t - fl)  # t = +inf (overflowed v - offset): inf - inf, compares False
            codes[sl] = np.clip(q, 0, top).astype(np.uint8)
    return codes, scales, offsets, v


def uniform_decode_ref(codes, scales, offsets, bucket_size):
    """offset + scale * code, exactly (float64), with the scale*code term on the side."""
    n = codes.size
    sc = np.repeat(scales, bucket_size)[:n].astype(np.float64)
    off = np.repeat(offsets, bucket_size)[:n].astype(np.float64)
    prod = sc * codes
    return off + prod, prod, off


def assert_decoded_close(got, codes, scales, offsets, bucket_size):
    """Within float32 rounding of offset + scale * code: the kernel may round once (fused multiply-add)
    or twice; where scale * code itself overflows float32 only a fused kernel is finite, so skip those."""
    want, prod, off = uniform_decode_ref(codes, scales, offsets, bucket_size)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want) & (np.abs(prod) <= np.finfo(F32).max)
    tol = 2 * EPS * (np.abs(off) + np.abs(prod))[ok]
    assert (np.abs(got[ok].astype(np.float64) - want[ok]) <= tol).all()


def assert_codes_match(got, want):
    """Equal, except (at most 1 in 10^4, and by one) where t's float rounding may differ (fused multiply-add)."""
    diff = got.astype(np.int64) - want.astype(np.int64)
    bad = np.flatnonzero(diff)
    assert bad.size <= max(1, got.size // 10_000), f"{bad.size} codes differ, first at {bad[:5]}"
    assert (np.abs(diff[bad]) == 1).all()


def check_against_reference(x, bits, bucket_size, mode, rounding, seed, residual=None):
    n = np.asarray(x).size
    r_ref = None if residual is None else residual.copy()
    codes_ref, scales_ref, offsets_ref, v = uniform_encode_ref(x, bits, bucket_size, mode, rounding, seed, r_ref)
    packed, scales, offsets = uniform_encode(x, bits, bucket_size, mode, rounding, seed, residual=residual)
    assert packed.dtype == np.uint8 and packed.shape == (packed_size(n, bits),)
    nb = -(-n // bucket_size)
    assert scales.dtype == offsets.dtype == F32 and scales.shape == offsets.shape == (nb,)
    np.testing.assert_array_equal(scales, scales_ref)
    np.testing.assert_array_equal(offsets, offsets_ref)
    codes = unpack_bits(packed, bits, n)
    assert_codes_match(codes, codes_ref)
    dec = uniform_decode(packed, scales, offsets, bits, bucket_size, n)
    assert_decoded_close(dec, codes, scales, offsets, bucket_size)
    assert_residual_update(residual, v, dec)
    return codes, scales, offsets, dec


VECTORS = degenerate_vectors(
    tiny=np.array([1e-38, -3e-39, 1e-44, 0, 2e-39, -1e-45, 5e-39, 1e-40, 1e-42, 3e-42], F32),
    huge=np.array([3e38, -3e38, 1e38, 0, 2e38, -1e38, 5, 3.4e38], F32),
)
CONFIGS = [(b, m) for b in (1, 2, 4, 8) for m in ("maxmin", "absmax") if not (m == "absmax" and b == 1)]


# --- tests -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VECTORS))
@pytest.mark.parametrize("bits,mode", CONFIGS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("bucket_size", [8, 4096])
def test_matches_reference(name, bits, mode, rounding, bucket_size):
    codes, scales, offsets, dec = check_against_reference(VECTORS[name], bits, bucket_size, mode, rounding, 5)
    top = 2 * ((1 << (bits - 1)) - 1) if mode == "absmax" else (1 << bits) - 1
    assert (codes <= top).all()


@given(
    x=hnp.arrays(np.float32, st.integers(0, 150), elements=st.floats(-1e6, 1e6, width=32)),
    config=st.sampled_from(CONFIGS),
    rounding=st.sampled_from(["nearest", "stochastic"]),
    bucket_size=st.sampled_from([8, 16, 40, 64]),
    seed=st.integers(0, 2**64 - 1),
)
def test_matches_reference_property(x, config, rounding, bucket_size, seed):
    bits, mode = config
    check_against_reference(x, bits, bucket_size, mode, rounding, seed)
    check_against_reference(x, bits, bucket_size, mode, rounding, seed, residual=random_residual(x.size, seed % 1000))


def test_error_bounds_nearest():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(4096).astype(F32)
    for bits, mode in CONFIGS:
        packed, scales, offsets = uniform_encode(x, bits, 64, mode)
        dec = uniform_decode(packed, scales, offsets, bits, 64, x.size)
        half_step = np.repeat(scales, 64) / 2
        assert (np.abs(dec - x) <= half_step * (1 + 1e-5) + 1e-6).all(), (bits, mode)


def test_ties_round_half_to_even():
    # scale 1 and offset 0: t = v exactly; rint sends 0.5 -> 0, 1.5 -> 2, 2.5 -> 2.
    x = np.array([0, 0.5, 1, 1.5, 2, 2.5, 3, 3], F32)
    packed, scales, offsets = uniform_encode(x, 2, 8, "maxmin", "nearest")
    assert scales[0] == 1 and offsets[0] == 0
    np.testing.assert_array_equal(unpack_bits(packed, 2, 8), [0, 0, 1, 2, 2, 2, 3, 3])


def test_absmax_layout():
    x = np.array([-7, -3.5, 0, 1, 7, 3.5, -0.0, 0.49], F32)
    packed, scales, offsets = uniform_encode(x, 4, 8, "absmax", "nearest")
    assert scales[0] == 1 and offsets[0] == -7  # h = 7
    np.testing.assert_array_equal(unpack_bits(packed, 4, 8), [0, 4, 7, 8, 14, 10, 7, 7])  # 3.5 + 7 = 10.5 -> 10
    dec = uniform_decode(packed, scales, offsets, 4, 8, 8)
    np.testing.assert_array_equal(dec, [-7, -3, 0, 1, 7, 3, 0, 0])


@pytest.mark.parametrize("bits,mode", CONFIGS)
def test_constant_bucket_decodes_to_offset_exactly(bits, mode):
    x = np.concatenate([np.full(16, 0.1, F32), np.zeros(16, F32), np.full(16, -3.3, F32)])
    packed, scales, offsets = uniform_encode(x, bits, 16, mode, "stochastic", 3)
    dec = uniform_decode(packed, scales, offsets, bits, 16, x.size)
    codes = unpack_bits(packed, bits, x.size)
    if mode == "maxmin":
        assert (scales == 0).all()
        assert (codes == 0).all()
        np.testing.assert_array_equal(dec, x)
    else:
        assert scales[1] == 0 and (codes[16:32] == 0).all() and (dec[16:32] == 0).all()


def test_bits1_maxmin():
    x = np.array([-1, 2, 0.4, 0.6, 2, -1, 0.5, 1.0], F32)
    packed, scales, offsets = uniform_encode(x, 1, 8, "maxmin", "nearest")
    assert scales[0] == 3 and offsets[0] == -1
    np.testing.assert_array_equal(unpack_bits(packed, 1, 8), [0, 1, 0, 1, 1, 0, 0, 1])  # t = 0.5 -> 0


def test_partial_last_bucket():
    x = np.random.default_rng(3).standard_normal(8 * 5 + 3).astype(F32)
    _, scales, offsets, _ = check_against_reference(x, 4, 8, "maxmin", "nearest", 0)
    assert scales.size == 6 and offsets[-1] == x[-3:].min()


def test_nonfinite_policy():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(64).astype(F32)
    x[3] = np.nan
    x[20] = np.inf
    x[45] = -np.inf
    for bits, mode in CONFIGS:
        for rounding in ("nearest", "stochastic"):
            packed, scales, offsets = uniform_encode(x, bits, 16, mode, rounding, 1)
            assert np.isnan(scales[:3]).all() and np.isnan(offsets[:3]).all()
            assert np.isfinite(scales[3]) and np.isfinite(offsets[3])
            assert (unpack_bits(packed, bits, 64)[:48] == 0).all()
            dec = uniform_decode(packed, scales, offsets, bits, 16, 64)
            assert np.isnan(dec[:48]).all() and np.isfinite(dec[48:]).all()
            r = np.zeros(64, F32)
            uniform_encode(x, bits, 16, mode, rounding, 1, residual=r)
            assert np.isnan(r[:48]).all() and np.isfinite(r[48:]).all()
    # a finite max-min bucket whose range does not fit float32 (bits=1) is treated as non-finite
    _, scales, _ = uniform_encode(np.array([-3e38, 3e38] * 4, F32), 1, 8)
    assert np.isnan(scales[0])
    _, scales, _ = uniform_encode(np.array([-3e38, 3e38] * 4, F32), 2, 8)
    assert scales[0] == F32(2e38)


def test_deterministic_and_seeded():
    x = np.random.default_rng(0).standard_normal(5000).astype(F32)
    assert_seeded(lambda seed: uniform_encode(x, 4, 256, "maxmin", "stochastic", seed))
    # nearest rounding ignores the seed
    d = uniform_encode(x, 4, 256, "maxmin", "nearest", 1)
    e = uniform_encode(x, 4, 256, "maxmin", "nearest", 2)
    np.testing.assert_array_equal(d[0], e[0])


def test_global_rng_untouched_and_input_unmodified():
    x = np.random.default_rng(0).standard_normal(1000).astype(F32)
    assert_input_unmodified_and_rng_untouched(
        x,
        lambda x: uniform_encode(x, 4, 64, "absmax", "stochastic", 9),
        lambda x: uniform_encode(x, 4, 64, "absmax", "stochastic", 9, residual=np.zeros_like(x)),
    )


@pytest.mark.parametrize("bits,mode", [(1, "maxmin"), (2, "absmax"), (4, "maxmin"), (8, "absmax")])
def test_stochastic_unbiased(bits, mode):
    """The mean decode over 3000 seeds is within a Bernstein bound of x, per element.

    Each decode is offset + scale * (floor(t) + Bernoulli(p)), p = frac(t); the bound holds
    with probability 1 - 1e-10 per element, so a correct kernel fails this test (48 elements)
    with probability below 5e-9.
    """
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal(48) * rng.uniform(0.01, 3, 48)).astype(F32)
    bucket, seeds = 16, 3000
    total = np.zeros(48, np.float64)
    for seed in range(seeds):
        packed, scales, offsets = uniform_encode(x, bits, bucket, mode, "stochastic", seed)
        total += uniform_decode(packed, scales, offsets, bits, bucket, 48)
    mean = total / seeds
    _, scales, offsets = uniform_encode(x, bits, bucket, mode, "stochastic", 0)
    sc = np.repeat(scales, bucket).astype(np.float64)
    off = np.repeat(offsets, bucket).astype(np.float64)
    t = (x - off) / sc
    p = t - np.floor(t)
    tol = bernstein_tol(sc, p, seeds) + 1e-5 * sc
    assert (np.abs(mean - x) <= tol).all(), np.max(np.abs(mean - x) / tol)


@pytest.mark.parametrize("bits,mode", CONFIGS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_residual_identity(bits, mode, rounding):
    rng = np.random.default_rng(bits)
    x = rng.standard_normal(1003).astype(F32)
    r = (0.3 * rng.standard_normal(1003)).astype(F32)
    v = x + r
    r0 = r.copy()
    packed, scales, offsets = uniform_encode(x, bits, 64, mode, rounding, 5, residual=r)
    dec = uniform_decode(packed, scales, offsets, bits, 64, 1003)
    err = np.abs(dec.astype(np.float64) + r - v)
    assert (err <= 2 * EPS * np.maximum(np.abs(v), np.abs(dec))).all()
    check_against_reference(x, bits, 64, mode, rounding, 5, residual=r0)


def test_accumulate_and_out():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(300).astype(F32)
    packed, scales, offsets = uniform_encode(x, 4, 64, "maxmin", "stochastic", 1)
    dec = uniform_decode(packed, scales, offsets, 4, 64, 300)
    base = rng.standard_normal(300).astype(F32)
    acc = base.copy()
    got = uniform_decode(packed, scales, offsets, 4, 64, 300, out=acc, accumulate=True)
    assert got is acc
    np.testing.assert_allclose(acc, base + dec, rtol=1e-6, atol=1e-6)
    out = np.full(310, 9.0, F32)
    got = uniform_decode(packed, scales, offsets, 4, 64, 300, out=out)
    np.testing.assert_array_equal(got, dec)
    assert np.shares_memory(got, out) and (out[300:] == 9.0).all()
    ro = packed.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(uniform_decode(ro, scales, offsets, 4, 64, 300), dec)
    # float64 scales are accepted (converted)
    np.testing.assert_array_equal(uniform_decode(packed, scales.astype(np.float64), offsets, 4, 64, 300), dec)


def test_empty():
    packed, scales, offsets = uniform_encode(np.zeros(0, F32), 4, 8)
    assert packed.size == scales.size == offsets.size == 0
    assert uniform_decode(packed, scales, offsets, 4, 8, 0).size == 0


def test_invalid_arguments():
    x = np.ones(16, F32)
    for bits in (0, 3, 16):
        with pytest.raises(ValueError, match="expected bits in"):
            uniform_encode(x, bits, 8)
        with pytest.raises(ValueError, match="expected bits in"):
            uniform_decode(np.zeros(16, np.uint8), np.ones(2, F32), np.ones(2, F32), bits, 8, 16)
    with pytest.raises(ValueError, match=r"expected bits in \(2, 4, 8\) for mode='absmax'"):
        uniform_encode(x, 1, 8, "absmax")
    with pytest.raises(ValueError, match="expected mode in"):
        uniform_encode(x, 4, 8, "minmax")
    with pytest.raises(TypeError, match="expected mode to be a str"):
        uniform_encode(x, 4, 8, 0)
    with pytest.raises(ValueError, match="expected rounding in"):
        uniform_encode(x, 4, 8, "maxmin", "up")
    for bs in (12, 0, -8):
        with pytest.raises(ValueError, match="expected bucket_size to be a positive multiple of 8, found"):
            uniform_encode(x, 4, bs)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            uniform_encode(x, 4, 8, seed=seed)
    with pytest.raises(TypeError, match="expected x of dtype float16, float32 or float64, found int32"):
        uniform_encode(np.ones(16, np.int32), 4, 8)
    with pytest.raises(ValueError, match="1-D"):
        uniform_encode(np.ones((4, 4), F32), 4, 8)
    with pytest.raises(TypeError, match="residual of dtype float32"):
        uniform_encode(x, 4, 8, residual=np.zeros(16))
    with pytest.raises(ValueError, match="residual of length 16"):
        uniform_encode(x, 4, 8, residual=np.zeros(17, F32))
    packed, scales, offsets = uniform_encode(x, 4, 8)
    with pytest.raises(ValueError, match="expected offsets to be 1-D with 2 entries"):
        uniform_decode(packed, scales, offsets[:1], 4, 8, 16)
    with pytest.raises(TypeError, match="expected scales of dtype float16, float32 or float64"):
        uniform_decode(packed, scales.astype(np.int32), offsets, 4, 8, 16)
    with pytest.raises(ValueError, match="expected packed to hold at least 8 bytes"):
        uniform_decode(packed[:7], scales, offsets, 4, 8, 16)
    with pytest.raises(ValueError, match="expected out when accumulate=True"):
        uniform_decode(packed, scales, offsets, 4, 8, 16, accumulate=True)
