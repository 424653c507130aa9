"""gcomp.kernels.randomk: exactness against a pure-Python Floyd reference, determinism, uniformity."""

import math
import random as pyrandom
from itertools import combinations

import numpy as np
import pytest
from gcomp.kernels import randomk as rk
from gcomp.kernels.random import _splitmix64_py, derive_seed
from hypothesis import given
from hypothesis import strategies as st

M64 = (1 << 64) - 1

# ---------------------------------------------------------------------------
# pure-Python reference: the documented algorithm with Python integers
# ---------------------------------------------------------------------------


def ref_bounded(state, bound):
    """Lemire's method; 32-bit below 2**32 (``random.bounded``), 64-bit above."""
    bits = 32 if bound < 1 << 32 else 64
    mask = (1 << bits) - 1
    state = (state + 1) & M64
    m = (_splitmix64_py(state) >> (64 - bits)) * bound
    if m & mask < bound:
        t = ((1 << bits) - bound) % bound
        while m & mask < t:
            state = (state + 1) & M64
            m = (_splitmix64_py(state) >> (64 - bits)) * bound
    return m >> bits, state


def ref_randomk(n, k, seed):
    chosen = set()
    state = seed
    for j in range(n - k, n):
        t, state = ref_bounded(state, j + 1)
        chosen.add(j if t in chosen else t)
    return sorted(chosen)


def chi2_threshold(df, z=6.0):
    """Wilson-Hilferty upper quantile of chi-square(df); z = 6 is a one-sided tail of ~1e-9.

    Every uniformity test below therefore fails by chance with probability
    about 1e-9 (they use fixed seeds, so in practice they are deterministic).
    """
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


# ---------------------------------------------------------------------------
# exactness and determinism
# ---------------------------------------------------------------------------


@given(st.integers(0, 400).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))), st.integers(0, M64))
def test_matches_python_reference(nk, seed):
    n, k = nk
    got = rk.randomk_indices(n, k, seed)
    assert got.dtype == np.int64 and got.shape == (k,)
    assert got.tolist() == ref_randomk(n, k, seed)


@pytest.mark.parametrize(
    "n,k,seed",
    [
        ((1 << 32) - 1, 5, 1),  # every bound below 2**32
        (1 << 32, 5, 2),  # last bound exactly 2**32: 64-bit draw
        ((1 << 32) + 10, 20, 3),  # crosses from 32-bit to 64-bit draws
        (1 << 40, 100, 4),
        (1 << 40, 1, M64),
        (1 << 40, 0, 5),
    ],
)
def test_huge_n_matches_reference(n, k, seed):
    got = rk.randomk_indices(n, k, seed)
    assert got.tolist() == ref_randomk(n, k, seed)
    assert got.size == k and (got.size == 0 or (got[0] >= 0 and got[-1] < n))


def test_golden_values():
    # frozen stream: a change here changes every rank's random-k selection
    assert rk.randomk_indices(100, 10, 42).tolist() == [1, 10, 36, 45, 66, 68, 71, 90, 92, 97]
    assert rk.randomk_indices(2**40, 5, 42).tolist() == [
        531296967769,
        800641028328,
        802862592813,
        1064782002314,
        1079197110822,
    ]


@pytest.mark.parametrize("n,k", [(0, 0), (1, 0), (1, 1), (64, 64), (65, 1), (1000, 999), (10_007, 5000), (100_000, 37)])
def test_bitmap_and_hash_paths_agree(n, k):
    for seed in (0, 7, M64):
        a = rk._randomk(n, k, np.uint64(seed), np.empty(k, np.int64), "bitmap")
        b = rk._randomk(n, k, np.uint64(seed), np.empty(k, np.int64), "hash")
        np.testing.assert_array_equal(a, b)


def test_large_bitmap_path_properties():
    n, k = 25_000_000, 250_000
    idx = rk.randomk_indices(n, k, derive_seed(1, 2, 3))
    assert idx.shape == (k,) and idx.dtype == np.int64
    assert idx[0] >= 0 and idx[-1] < n
    assert np.all(np.diff(idx) > 0)
    # roughly uniform over the range: each tenth holds k/10 +- a few sigma
    counts = np.bincount(idx * 10 // n, minlength=10)
    assert np.all(np.abs(counts - k / 10) < 6 * math.sqrt(k / 10))


def test_degenerate_sizes():
    assert rk.randomk_indices(0, 0, 1).size == 0
    assert rk.randomk_indices(1, 0, 1).size == 0
    assert rk.randomk_indices(1, 1, 1).tolist() == [0]
    np.testing.assert_array_equal(rk.randomk_indices(1000, 1000, 9), np.arange(1000))
    np.testing.assert_array_equal(rk.randomk_indices(1 << 40, 0, 9), np.zeros(0, np.int64))


def test_same_seed_same_output_and_seeds_differ():
    a = rk.randomk_indices(100_000, 1000, 123)
    np.testing.assert_array_equal(a, rk.randomk_indices(100_000, 1000, 123))
    np.testing.assert_array_equal(a, rk.randomk_indices(100_000, 1000, np.uint64(123)))
    outs = {tuple(rk.randomk_indices(100_000, 1000, s)) for s in [0, 1, 2, 123, M64, derive_seed(5), derive_seed(5, 1)]}
    assert len(outs) == 7


def test_out_argument():
    out = np.full(12, -1, np.int64)
    res = rk.randomk_indices(50, 10, 3, out=out)
    assert np.shares_memory(res, out) and res.size == 10
    np.testing.assert_array_equal(res, rk.randomk_indices(50, 10, 3))
    assert out[10] == -1 and out[11] == -1
    with pytest.raises(ValueError):
        rk.randomk_indices(50, 10, 3, out=np.empty(9, np.int64))
    with pytest.raises(ValueError):
        rk.randomk_indices(50, 10, 3, out=np.empty(10, np.int32))


def test_validation():
    with pytest.raises(ValueError, match="k <= n"):
        rk.randomk_indices(5, 6, 0)
    with pytest.raises(ValueError):
        rk.randomk_indices(5, -1, 0)
    with pytest.raises(ValueError):
        rk.randomk_indices(-1, 0, 0)
    with pytest.raises(ValueError):
        rk.randomk_indices((1 << 40) + 1, 1, 0)
    with pytest.raises(ValueError):
        rk.randomk_indices(5, 1, -1)
    with pytest.raises(ValueError):
        rk.randomk_indices(5, 1, 1 << 64)
    with pytest.raises(TypeError):
        rk.randomk_indices(5, 1, 1.5)
    with pytest.raises(TypeError):
        rk.randomk_indices(5.0, 1, 1)
    with pytest.raises(TypeError):
        rk.randomk_indices(5, True, 1)


# ---------------------------------------------------------------------------
# uniformity
# ---------------------------------------------------------------------------


def test_every_subset_equally_likely():
    n, k, trials = 6, 3, 20_000
    subsets = {c: i for i, c in enumerate(combinations(range(n), k))}
    counts = np.zeros(len(subsets))
    for t in range(trials):
        counts[subsets[tuple(rk.randomk_indices(n, k, derive_seed(2024, t)).tolist())]] += 1
    expected = trials / len(subsets)
    stat = ((counts - expected) ** 2 / expected).sum()
    assert stat < chi2_threshold(len(subsets) - 1), (stat, counts)


def test_inclusion_frequencies_uniform():
    # each element is included with probability k/n; the statistic is
    # conservative (inclusions are negatively correlated, so E[stat] < df)
    n, k, trials = 1000, 50, 2000
    counts = np.zeros(n)
    for t in range(trials):
        counts[rk.randomk_indices(n, k, derive_seed(7, t))] += 1
    expected = trials * k / n
    stat = ((counts - expected) ** 2 / expected).sum()
    assert stat < chi2_threshold(n - 1), stat


def test_bounded64_uniform():
    bound = 3 * (1 << 32) + 12345
    state = np.uint64(derive_seed(99))
    bins = 16
    counts = np.zeros(bins)
    draws = 40_000
    for _ in range(draws):
        v, new_state = rk._bounded64(state, bound)
        assert 0 <= v < bound
        ref_v, ref_state = ref_bounded(int(state), bound)
        assert (v, int(new_state)) == (ref_v, ref_state)
        state = new_state
        counts[v * bins // bound] += 1
    expected = draws / bins
    stat = ((counts - expected) ** 2 / expected).sum()
    assert stat < chi2_threshold(bins - 1), stat


def test_bounded64_rejection_path():
    # with bound 2**62 + 1 about a quarter of all draws are rejected: exercises the retry loop
    bound = (1 << 62) + 1
    state = np.uint64(5)
    for _ in range(2000):
        v, new_state = rk._bounded64(state, bound)
        assert (v, int(new_state)) == ref_bounded(int(state), bound)
        state = new_state


# ---------------------------------------------------------------------------
# randomk_select and global RNG state
# ---------------------------------------------------------------------------


def test_randomk_select():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10_000).astype(np.float32)
    x[::13] = np.nan
    x[5::17] = np.inf
    idx, vals = rk.randomk_select(x, 500, 77)
    np.testing.assert_array_equal(idx, rk.randomk_indices(x.size, 500, 77))
    assert vals.dtype == np.float32
    np.testing.assert_array_equal(vals, x[idx])  # NaN and inf copied as they are
    for dtype in (np.float16, np.float64):
        xd = x.astype(dtype)
        i2, v2 = rk.randomk_select(xd, 500, 77)
        np.testing.assert_array_equal(i2, idx)
        np.testing.assert_array_equal(v2, xd[idx].astype(np.float32))
    idx, vals = rk.randomk_select(x, 0, 1)
    assert idx.size == 0 and vals.size == 0
    idx, vals = rk.randomk_select(x[:3], 3, 1)
    np.testing.assert_array_equal(vals, x[:3])
    with pytest.raises(ValueError, match="k <= n"):
        rk.randomk_select(x[:3], 4, 1)
    with pytest.raises(TypeError):
        rk.randomk_select(np.arange(5), 1, 1)
    with pytest.raises(ValueError):
        rk.randomk_select(np.zeros((2, 2), np.float32), 1, 1)


def test_global_rngs_untouched():
    np.random.seed(1234)
    pyrandom.seed(1234)
    np_state = np.random.get_state()
    py_state = pyrandom.getstate()
    rk.randomk_indices(10_000, 100, 5)
    rk.randomk_indices(1 << 40, 10, 5)
    rk.randomk_select(np.ones(100, np.float32), 10, 5)
    after = np.random.get_state()
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1]) and np_state[2:] == after[2:]
    assert pyrandom.getstate() == py_state
    torch = pytest.importorskip("torch")
    torch.manual_seed(1234)
    before = torch.random.get_rng_state().clone()
    rk.randomk_indices(10_000, 100, 6)
    assert torch.equal(before, torch.random.get_rng_state())
