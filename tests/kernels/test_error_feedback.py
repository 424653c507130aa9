"""Fused error-feedback kernels against the unfused numpy reference."""

import numpy as np
import pytest
from gcomp.kernels import error_feedback as ef
from gcomp.kernels.sampled_topk import topk_sampled
from gcomp.kernels.topk import topk_exact


def reference_topk_step(x, residual, k):
    v = (residual + x).astype(np.float32)
    keys = v.view(np.uint32) & np.uint32(0x7FFFFFFF)
    order = np.lexsort((np.arange(v.size), -keys.astype(np.int64)))[:k]
    idx = np.sort(order)
    vals = v[idx].copy()
    v[idx] = 0.0
    return idx, vals, v


@pytest.mark.parametrize("n", [0, 1, 2, 17, 1000, 70_000])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 1.0])
def test_ef_topk_matches_reference(n, density):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    residual = rng.standard_normal(n).astype(np.float32)
    k = int(density * n)
    ref_idx, ref_vals, ref_res = reference_topk_step(x, residual.copy(), k)
    idx, vals = ef.ef_topk(x, residual, k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(vals.view(np.uint32), ref_vals.view(np.uint32))
    np.testing.assert_array_equal(residual.view(np.uint32), ref_res.view(np.uint32))


def test_ef_topk_ties_and_nonfinite():
    x = np.array([1, 1, 1, 1, np.nan, 0, -np.inf, 2], np.float32)
    residual = np.zeros(8, np.float32)
    idx, vals = ef.ef_topk(x, residual, 4)
    np.testing.assert_array_equal(idx, [0, 4, 6, 7])  # NaN, -Inf, 2, then the first tie
    assert np.isnan(vals[1]) and vals[2] == -np.inf
    np.testing.assert_array_equal(residual, [0, 1, 1, 1, 0, 0, 0, 0])


def test_ef_identity_over_many_steps():
    rng = np.random.default_rng(1)
    n, k = 5000, 50
    residual = np.zeros(n, np.float32)
    sent = np.zeros(n, np.float64)
    total = np.zeros(n, np.float64)
    for _ in range(30):
        x = rng.standard_normal(n).astype(np.float32)
        total += x
        idx, vals = ef.ef_topk(x, residual, k)
        sent[idx] += vals
    np.testing.assert_allclose(sent + residual, total, atol=1e-4)


def test_ef_sampled_topk_matches_unfused():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(50_000).astype(np.float32)
    residual = rng.standard_normal(50_000).astype(np.float32)
    v = residual + x
    ref_idx, ref_vals = topk_sampled(v, 500, seed=9)
    idx, vals = ef.ef_sampled_topk(x, residual, 500, seed=9)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(vals, ref_vals)
    v[ref_idx] = 0
    np.testing.assert_array_equal(residual, v)


def test_fused_quantizers_keep_the_identity():
    from gcomp.kernels import natural, qsgd, sign, terngrad, uniform

    rng = np.random.default_rng(3)
    x = rng.standard_normal(4096).astype(np.float32)
    cases = [
        (lambda r: qsgd.qsgd_encode(x, 4, 512, 7, residual=r), lambda out: qsgd.qsgd_decode(out[0], out[1], 4, 512, x.size)),
        (lambda r: uniform.uniform_encode(x, 4, 512, residual=r),
         lambda out: uniform.uniform_decode(out[0], out[1], out[2], 4, 512, x.size)),
        (lambda r: sign.sign_encode(x, 512, residual=r), lambda out: sign.sign_decode(out[0], out[1], 512, x.size)),
        (lambda r: terngrad.terngrad_encode(x, 512, 3, residual=r),
         lambda out: terngrad.terngrad_decode(out[0], out[1], 512, x.size)),
        (lambda r: natural.natural_encode(x, 5, residual=r), lambda out: natural.natural_decode(out[0], out[1], x.size)),
    ]
    for encode, decode in cases:
        start = rng.standard_normal(x.size).astype(np.float32)
        residual = start.copy()
        out = encode(residual)
        np.testing.assert_allclose(decode(out) + residual, x + start, rtol=1e-5, atol=1e-5)


def test_validation():
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError):
        ef.ef_topk(x, np.ones(9, np.float32), 3)
    with pytest.raises(ValueError):
        ef.ef_topk(x, np.ones(10, np.float64), 3)
    with pytest.raises(ValueError):
        ef.ef_topk(x, x, 3)  # aliasing
    with pytest.raises((ValueError, TypeError)):
        ef.ef_topk(x, np.ones(10, np.float32), 11)
    r = np.zeros(10, np.float32)
    ef.ef_topk(x, r, 0)  # k = 0 only accumulates
    np.testing.assert_array_equal(r, x)


def test_exact_topk_unchanged_by_fused_path():
    x = np.random.default_rng(4).standard_normal(10_000).astype(np.float32)
    residual = np.zeros_like(x)
    a = ef.ef_topk(x, residual, 100)
    b = topk_exact(x, 100)
    np.testing.assert_array_equal(a[0], b[0])
