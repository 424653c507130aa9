"""gcomp.kernels.scatter against numpy references (np.add.at, fancy indexing, np.isfinite)."""

import numpy as np
import pytest
from gcomp.kernels import scatter as sc
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

f32_any = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def sparse_cases(draw, allow_duplicates=True):
    n = draw(st.integers(1, 300))
    k = draw(st.integers(0, 2 * n if allow_duplicates else n))
    if allow_duplicates:
        idx = draw(hnp.arrays(np.int64, k, elements=st.integers(0, n - 1)))
    else:
        idx = np.array(draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k, unique=True)), dtype=np.int64)
    vals = draw(hnp.arrays(np.float32, idx.size, elements=f32_any))
    base = draw(hnp.arrays(np.float32, n, elements=st.floats(-1e3, 1e3, width=32)))
    return n, idx, vals, base


# ---------------------------------------------------------------------------
# scatter_add
# ---------------------------------------------------------------------------


@given(sparse_cases())
def test_scatter_add_matches_add_at(case):
    n, idx, vals, base = case
    out = base.copy()
    res = sc.scatter_add(idx, vals, out)
    assert res is out
    expected = base.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        np.add.at(expected, idx, vals)
    np.testing.assert_array_equal(out, expected)  # NaN positions must match too


@given(sparse_cases(), st.sampled_from([0.5, -2.0, 1e-3, 3.0]))
def test_scatter_add_scaled(case, scale):
    n, idx, vals, base = case
    vals = np.nan_to_num(vals, nan=1.0, posinf=2.0, neginf=-2.0).clip(-1e6, 1e6)
    out = base.copy()
    sc.scatter_add(idx, vals, out, scale=scale)
    terms = np.float64(np.float32(scale)) * vals.astype(np.float64)
    expected = base.astype(np.float64)
    np.add.at(expected, idx, terms)
    # float32 accumulation (multiply-add possibly fused): each of the m adds into an entry rounds
    # once, so the error is bounded by (m + 1) * 2**-23 times the magnitudes summed.
    magnitude = np.abs(base).astype(np.float64)
    np.add.at(magnitude, idx, np.abs(terms))
    adds = np.bincount(idx, minlength=n) + 1
    assert np.all(np.abs(out - expected) <= adds * 2.0**-23 * magnitude * 1.01 + 1e-30)


def test_scatter_add_duplicates_and_nonfinite():
    out = np.zeros(6, np.float32)
    idx = np.array([1, 1, 1, 3, 4, 4, 5], np.int64)
    vals = np.array([1, 2, 3, np.nan, np.inf, -np.inf, np.inf], np.float32)
    sc.scatter_add(idx, vals, out)
    np.testing.assert_array_equal(out, [0, 6, 0, np.nan, np.nan, np.inf])
    sc.scatter_add(np.array([5]), np.array([np.inf], np.float32), out, scale=2.0)
    assert out[5] == np.inf


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_scatter_add_converts_values(dtype):
    vals = np.array([0.5, -1.25, 3.0], dtype=dtype)
    out = np.ones(4, np.float32)
    sc.scatter_add(np.array([0, 3, 0], dtype=np.int32), vals, out)
    np.testing.assert_array_equal(out, [4.5, 1.0, 1.0, -0.25])


def test_scatter_add_large():
    rng = np.random.default_rng(0)
    n = 1_000_003
    idx = np.sort(rng.choice(n, 10_000, replace=False)).astype(np.int64)
    vals = rng.standard_normal(idx.size).astype(np.float32)
    out = rng.standard_normal(n).astype(np.float32)
    expected = out.copy()
    np.add.at(expected, idx, vals)
    sc.scatter_add(idx, vals, out)
    np.testing.assert_array_equal(out, expected)


def test_scatter_add_degenerate():
    empty_i = np.zeros(0, np.int64)
    empty_v = np.zeros(0, np.float32)
    out = np.zeros(0, np.float32)
    sc.scatter_add(empty_i, empty_v, out)
    out = np.arange(3, dtype=np.float32)
    sc.scatter_add(empty_i, empty_v, out)
    np.testing.assert_array_equal(out, [0, 1, 2])
    out = np.zeros(1, np.float32)
    sc.scatter_add(np.array([0, 0]), np.array([1.5, 1.5], np.float32), out)
    assert out[0] == 3.0


def test_scatter_add_validation():
    idx = np.array([0, 2])
    vals = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="float32"):
        sc.scatter_add(idx, vals, np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        sc.scatter_add(idx, vals, np.zeros(6, np.float32)[::2])
    ro = np.zeros(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        sc.scatter_add(idx, vals, ro)
    with pytest.raises(TypeError):
        sc.scatter_add(idx, vals, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="index"):
        sc.scatter_add(np.array([0, 3]), vals, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="index"):
        sc.scatter_add(np.array([-1, 0]), vals, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="as many values"):
        sc.scatter_add(idx, np.ones(3, np.float32), np.zeros(3, np.float32))
    with pytest.raises(TypeError):
        sc.scatter_add(idx, np.ones(2, np.int32), np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        sc.scatter_add(np.array([0.0, 1.0]), vals, np.zeros(3, np.float32))
    with pytest.raises(TypeError):
        sc.scatter_add(idx, vals, np.zeros(3, np.float32), scale="2")
    out = np.zeros(3, np.float32)
    with pytest.raises(ValueError):
        sc.scatter_add(np.array([0, 5]), vals, out)
    np.testing.assert_array_equal(out, 0)  # nothing written when validation fails


# ---------------------------------------------------------------------------
# scatter_set, sparse_to_dense, gather
# ---------------------------------------------------------------------------


@given(sparse_cases(allow_duplicates=False))
def test_scatter_set_and_sparse_to_dense(case):
    n, idx, vals, base = case
    out = base.copy()
    assert sc.scatter_set(idx, vals, out) is out
    expected = base.copy()
    expected[idx] = vals
    np.testing.assert_array_equal(out, expected)
    dense = sc.sparse_to_dense(idx, vals, n)
    expected = np.zeros(n, np.float32)
    expected[idx] = vals
    assert dense.dtype == np.float32
    np.testing.assert_array_equal(dense, expected)


def test_scatter_set_duplicates_last_wins():
    out = np.zeros(3, np.float32)
    sc.scatter_set(np.array([2, 2, 0, 2]), np.array([1, 2, 3, 4], np.float32), out)
    np.testing.assert_array_equal(out, [3, 0, 4])
    np.testing.assert_array_equal(sc.sparse_to_dense(np.array([1, 1]), np.array([5, 6], np.float32), 2), [0, 6])


def test_sparse_to_dense_out_and_degenerate():
    out = np.full(8, np.nan, np.float32)
    res = sc.sparse_to_dense(np.array([1, 4]), np.array([np.inf, -2], np.float32), 5, out=out)
    assert np.shares_memory(res, out) and res.size == 5
    np.testing.assert_array_equal(res, [0, np.inf, 0, 0, -2])
    assert np.isnan(out[5:]).all()  # beyond n untouched
    assert sc.sparse_to_dense(np.zeros(0, np.int64), np.zeros(0, np.float32), 0).size == 0
    np.testing.assert_array_equal(sc.sparse_to_dense(np.zeros(0, np.int64), np.zeros(0, np.float32), 3), [0, 0, 0])
    np.testing.assert_array_equal(sc.sparse_to_dense(np.array([0]), np.array([np.nan], np.float32), 1), [np.nan])
    with pytest.raises(ValueError, match="index"):
        sc.sparse_to_dense(np.array([3]), np.ones(1, np.float32), 3)
    with pytest.raises(ValueError, match="at least"):
        sc.sparse_to_dense(np.array([0]), np.ones(1, np.float32), 3, out=np.zeros(2, np.float32))
    with pytest.raises(ValueError):
        sc.sparse_to_dense(np.array([0]), np.ones(1, np.float32), -1)


@given(sparse_cases())
def test_gather(case):
    n, idx, _, base = case
    x = base.copy()
    x[::7] = np.nan
    x[1::11] = -np.inf
    got = sc.gather(x, idx)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x[idx])
    for dtype in (np.float16, np.float64):
        xd = x.astype(dtype)
        np.testing.assert_array_equal(sc.gather(xd, idx), xd[idx].astype(np.float32))


def test_gather_out_and_validation():
    x = np.arange(10, dtype=np.float32)
    out = np.zeros(5, np.float32)
    res = sc.gather(x, np.array([9, 0, 9]), out=out)
    assert np.shares_memory(res, out)
    np.testing.assert_array_equal(res, [9, 0, 9])
    np.testing.assert_array_equal(sc.gather(x[::2], np.array([1, 4])), [2, 8])  # strided input is copied
    assert sc.gather(np.zeros(0, np.float32), np.zeros(0, np.int64)).size == 0
    with pytest.raises(ValueError, match="index"):
        sc.gather(x, np.array([10]))
    with pytest.raises(ValueError, match="index"):
        sc.gather(x.astype(np.float64), np.array([-1]))
    with pytest.raises(TypeError):
        sc.gather(np.arange(3), np.array([0]))
    with pytest.raises(ValueError):
        sc.gather(x, np.array([0, 1]), out=np.zeros(1, np.float32))


# ---------------------------------------------------------------------------
# count_nonfinite
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,utype", [(np.float16, np.uint16), (np.float32, np.uint32), (np.float64, np.uint64)])
def test_count_nonfinite_random_bit_patterns(dtype, utype):
    rng = np.random.default_rng(1)
    bits = rng.integers(0, np.iinfo(utype).max, 50_001, dtype=utype, endpoint=True)
    # raise the share of all-ones exponents so every kind of non-finite shows up
    info = {np.uint16: 0x7C00, np.uint32: 0x7F800000, np.uint64: 0x7FF0000000000000}[utype]
    bits[::5] |= utype(info)
    x = bits.view(dtype)
    assert sc.count_nonfinite(x) == int((~np.isfinite(x)).sum())
    assert sc.count_nonfinite(x[::3]) == int((~np.isfinite(x[::3])).sum())


@given(hnp.arrays(np.float32, st.integers(0, 200), elements=f32_any))
def test_count_nonfinite_hypothesis(x):
    assert sc.count_nonfinite(x) == int((~np.isfinite(x)).sum())


def test_count_nonfinite_edges():
    assert sc.count_nonfinite(np.zeros(0, np.float32)) == 0
    assert sc.count_nonfinite(np.array([np.nan, np.inf, -np.inf, -0.0, 3.4e38], np.float32)) == 3
    assert sc.count_nonfinite(np.array([np.finfo(np.float32).max, np.finfo(np.float32).tiny], np.float32)) == 0
    # float64 values beyond the float32 range are finite: counted without conversion
    assert sc.count_nonfinite(np.array([1e300, -1e300, np.nan])) == 1
    assert sc.count_nonfinite(np.array([65504.0, np.inf], np.float16)) == 1
    assert isinstance(sc.count_nonfinite(np.ones(3, np.float32)), int)
    with pytest.raises(TypeError):
        sc.count_nonfinite(np.ones(3, np.int32))
    with pytest.raises(TypeError):
        sc.count_nonfinite([1.0])
    with pytest.raises(ValueError):
        sc.count_nonfinite(np.ones((2, 2), np.float32))


# ---------------------------------------------------------------------------
# dense helpers
# ---------------------------------------------------------------------------


@given(hnp.arrays(np.float32, st.integers(0, 300), elements=f32_any), st.data())
def test_add_inplace(x, data):
    base = data.draw(hnp.arrays(np.float32, x.size, elements=f32_any))
    out = base.copy()
    assert sc.add_inplace(out, x) is out
    with np.errstate(invalid="ignore", over="ignore"):
        np.testing.assert_array_equal(out, base + x)


def test_add_inplace_scaled_and_converted():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(1001)
    base = rng.standard_normal(1001).astype(np.float32)
    out = base.copy()
    sc.add_inplace(out, x, scale=-0.25)
    np.testing.assert_allclose(out, base + np.float32(-0.25) * x.astype(np.float32), rtol=1e-6, atol=1e-6)
    out = np.array([1.0, np.nan, 2.0], np.float32)
    sc.add_inplace(out, np.array([np.inf, 1.0, 0.0], np.float16), scale=3.0)
    np.testing.assert_array_equal(out, [np.inf, np.nan, 2.0])
    with pytest.raises(ValueError, match="same size"):
        sc.add_inplace(np.zeros(3, np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError):
        sc.add_inplace(np.zeros(3, np.float64), np.zeros(3, np.float32))


def test_scale_inplace():
    rng = np.random.default_rng(3)
    base = rng.standard_normal(777).astype(np.float32)
    base[5] = np.nan
    base[6] = np.inf
    for factor in (0.0, 1.0, -3.5, 1e-20):
        out = base.copy()
        assert sc.scale_inplace(out, factor) is out
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(out, base * np.float32(factor))
    out = np.zeros(0, np.float32)
    sc.scale_inplace(out, 2.0)
    with pytest.raises(TypeError):
        sc.scale_inplace(np.ones(2, np.float32), None)
    with pytest.raises(ValueError):
        sc.scale_inplace(np.ones(2, np.float16), 2.0)
