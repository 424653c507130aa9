"""DGC's sampled top-k when its sample is the whole vector (n <= 1024 by default, or sample_fraction=1): the
shortcut to the exact kernel gives the bits the sampled kernel gives, on ties, NaN and Inf too."""

import math

import numpy as np
import pytest
from gcomp.kernels import sampled_topk as S
from gcomp.kernels import topk as T


def _inputs(n, rng):
    yield rng.standard_normal(n).astype(np.float32)
    yield rng.integers(-3, 4, n).astype(np.float32)  # massive ties
    x = rng.standard_normal(n).astype(np.float32)
    if n >= 4:
        x[rng.integers(0, n, 3)] = [np.nan, np.inf, -np.inf]
    yield x


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 100, 513, 1000, 1023, 1024])
def test_whole_sample_equals_the_sampled_kernel_and_exact_topk(n):
    rng = np.random.default_rng(n)
    for x in _inputs(n, rng):
        for k in sorted(k for k in {1, 2, n // 100, n // 10, n // 2, n - 1, n} if 1 <= k <= n):
            m = S.sample_size(n, 0.01)
            assert m == n
            seed = int(rng.integers(0, 2**63))
            idx = np.empty(k + 1, np.int64)
            val = np.empty(k + 1, np.float32)
            c = S._sampled_into_ser(x, k, np.uint64(seed), m, max(1, math.ceil(0.5 * k)), idx, val)
            got = S.topk_sampled(x, k, seed)
            assert c == k == got[0].shape[0]
            assert got[0].tobytes() == idx[:c].tobytes() and got[1].tobytes() == val[:c].tobytes()
            exact = T.topk_exact(x, k)
            assert got[0].tobytes() == exact[0].tobytes() and got[1].tobytes() == exact[1].tobytes()


def test_sample_fraction_one_on_a_larger_vector():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(5000).astype(np.float32)
    x[::7] = 1.0  # ties at the boundary
    for k in (1, 50, 714, 2500):
        idx = np.empty(k + 1, np.int64)
        val = np.empty(k + 1, np.float32)
        c = S._sampled_into_ser(x, k, np.uint64(3), 5000, max(1, math.ceil(0.5 * k)), idx, val)
        got = S.topk_sampled(x, k, 3, sample_fraction=1.0)
        assert got[0].tobytes() == idx[:c].tobytes() and got[1].tobytes() == val[:c].tobytes()
