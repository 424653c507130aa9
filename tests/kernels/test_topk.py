"""Selection kernels (exact top-k, sampled top-k, threshold) against numpy references."""

import numpy as np
import pytest
from gcomp.kernels.sampled_topk import sample_size, topk_sampled
from gcomp.kernels.threshold import threshold_count, threshold_select
from gcomp.kernels.topk import kth_largest_key, topk_exact
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def magnitude_key_ref(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32) & np.uint32(0x7FFFFFFF)


def topk_ref(x, k):
    """Plain numpy: stable order by descending magnitude key, lowest index first on ties."""
    keys = magnitude_key_ref(x).astype(np.int64)
    order = np.lexsort((np.arange(keys.size), -keys))[:k]
    idx = np.sort(order)
    return idx, np.asarray(x, dtype=np.float32)[idx]


def threshold_ref(x, tau):
    a = np.abs(np.asarray(x, dtype=np.float32))
    return np.nonzero((a >= np.float32(tau)) | np.isnan(a))[0]


def same_bits(a, b):
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32), np.asarray(b, np.float32).view(np.uint32))


def degenerate_vectors():
    rng = np.random.default_rng(1)
    out = {
        "n0": np.zeros(0, np.float32),
        "n1": np.array([-3.0], np.float32),
        "zeros": np.zeros(1000, np.float32),
        "constant": np.full(777, -2.5, np.float32),
        "ties": rng.integers(-3, 4, 5000).astype(np.float32),
        "signed_zero": np.array([0.0, -0.0, 0.0, -0.0], np.float32),
        "fp16_extremes": np.array([65504, -65504, 6e-8, -6e-8, 6.1e-5, 0, 1, -1], np.float16),
        "normal": rng.standard_normal(20000).astype(np.float32),
        "heavy": rng.standard_cauchy(20000).astype(np.float32),
        "float64": rng.standard_normal(300),
    }
    nonfinite = rng.standard_normal(3000).astype(np.float32)
    nonfinite[rng.integers(0, 3000, 50)] = np.nan
    nonfinite[rng.integers(0, 3000, 20)] = np.inf
    nonfinite[rng.integers(0, 3000, 20)] = -np.inf
    out["nonfinite"] = nonfinite
    return out


VECTORS = degenerate_vectors()


def k_values(n):
    return sorted({0, 1, n // 100, n // 7, n // 2, max(n - 1, 0), n} & set(range(n + 1)))


@pytest.mark.parametrize("name", list(VECTORS))
def test_topk_exact_matches_reference(name):
    x = VECTORS[name]
    for k in k_values(x.size):
        idx, val = topk_exact(x, k)
        ref_idx, ref_val = topk_ref(x, k)
        assert idx.dtype == np.int64 and val.dtype == np.float32
        np.testing.assert_array_equal(idx, ref_idx)
        assert same_bits(val, ref_val)


@given(
    hnp.arrays(np.float32, st.integers(0, 400), elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=True)),
    st.data(),
)
def test_topk_exact_property(x, data):
    k = data.draw(st.integers(0, x.size))
    idx, val = topk_exact(x, k)
    ref_idx, ref_val = topk_ref(x, k)
    np.testing.assert_array_equal(idx, ref_idx)
    assert same_bits(val, ref_val)


def test_topk_large_boundary_bin_path():
    # 300k equal magnitudes force the keys-only path (boundary bin far larger than 2k).
    x = np.ones(300_000, np.float32)
    x[::3] = -1.0
    x[5] = 2.0
    idx, val = topk_exact(x, 1000)
    ref_idx, ref_val = topk_ref(x, 1000)
    np.testing.assert_array_equal(idx, ref_idx)
    assert same_bits(val, ref_val)


def test_topk_nonfinite_ranked_first():
    x = np.array([1.0, np.nan, -np.inf, 5.0, np.inf, 0.0], np.float32)
    idx, val = topk_exact(x, 3)
    np.testing.assert_array_equal(idx, [1, 2, 4])  # NaN > Inf; both Infs
    assert np.isnan(val[0]) and val[1] == -np.inf and val[2] == np.inf


def test_kth_largest_key():
    x = np.array([3.0, -7.0, 7.0, 1.0], np.float32)
    t, need = kth_largest_key(x, 2)
    assert t == magnitude_key_ref(np.float32(7.0)) and need == 2
    t, need = kth_largest_key(x, 1)
    assert need == 1


@pytest.mark.parametrize("bad_k", [-1, 11, 2.0, True])
def test_topk_rejects_bad_k(bad_k):
    with pytest.raises((ValueError, TypeError)):
        topk_exact(np.zeros(10, np.float32), bad_k)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 3), np.float32), np.zeros(4, np.int32), [1.0, 2.0], np.zeros(4, np.complex64)],
)
def test_selection_rejects_bad_input(bad):
    for fn in (lambda a: topk_exact(a, 1), lambda a: topk_sampled(a, 1, 0), lambda a: threshold_select(a, 0.5)):
        with pytest.raises((ValueError, TypeError)):
            fn(bad)


def test_topk_does_not_copy_or_modify_float32():
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    before = x.copy()
    topk_exact(x, 10)
    topk_sampled(x, 10, 1)
    threshold_select(x, 1.0)
    assert same_bits(x, before)


@pytest.mark.parametrize("name", list(VECTORS))
def test_sampled_topk_count_bound_and_prefix(name):
    x = VECTORS[name]
    for k in k_values(x.size):
        for min_fraction in (0.5, 0.9):
            idx, val = topk_sampled(x, k, seed=11, min_fraction=min_fraction)
            c = idx.size
            assert int(np.ceil(min_fraction * k)) <= c <= k
            # Always the c largest magnitudes: equal to the exact top-c.
            ref_idx, ref_val = topk_ref(x, c)
            np.testing.assert_array_equal(idx, ref_idx)
            assert same_bits(val, ref_val)


def test_sampled_topk_usually_exact_on_gradients():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(400_000) * rng.exponential(1.0, 400_000)).astype(np.float32)
    k = 4000
    exact_idx, _ = topk_exact(x, k)
    exact_hits = 0
    for seed in range(10):
        idx, _ = topk_sampled(x, k, seed=seed)
        exact_hits += idx.size == k and np.array_equal(idx, exact_idx)
    assert exact_hits >= 9


def test_sampled_topk_deterministic_and_rng_untouched():
    x = np.random.default_rng(9).standard_normal(100_000).astype(np.float32)
    state = np.random.get_state()
    a = topk_sampled(x, 997, seed=123, min_fraction=0.0)
    b = topk_sampled(x, 997, seed=123, min_fraction=0.0)
    np.testing.assert_array_equal(a[0], b[0])
    after = np.random.get_state()
    assert all(np.array_equal(p, q) if isinstance(p, np.ndarray) else p == q for p, q in zip(state, after, strict=False))


def test_sample_size():
    assert sample_size(10) == 10
    assert sample_size(1_000_000) == 10_000
    assert sample_size(50_000) == 1024


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_sampled_topk_rejects_bad_fraction(bad):
    with pytest.raises(ValueError):
        topk_sampled(np.ones(10, np.float32), 3, 0, sample_fraction=bad)


@pytest.mark.parametrize("name", list(VECTORS))
@pytest.mark.parametrize("tau", [0.0, 1e-7, 0.5, 1.0, 2.0, 1e30, float("inf")])
def test_threshold_matches_reference(name, tau):
    x = VECTORS[name]
    idx, val = threshold_select(x, tau)
    ref = threshold_ref(x, tau)
    np.testing.assert_array_equal(idx, ref)
    assert same_bits(val, np.asarray(x, np.float32)[ref])
    assert threshold_count(x, tau) == ref.size


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "1", None])
def test_threshold_rejects_bad_tau(bad):
    with pytest.raises((ValueError, TypeError)):
        threshold_select(np.ones(4, np.float32), bad)
