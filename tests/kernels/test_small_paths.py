"""The small-vector fast paths give the values of the paths they shortcut.

* ``derive_seed`` is a compiled kernel now: the same seeds as the plain-Python
  SplitMix64 reference, the same errors for bad arguments;
* exact top-k's small-input select (``_kth_key_small``: 7/8-bit digits) gives
  the same ``(T, need)`` as the 11/11/9-bit histogram select, and exact top-k
  stays the numpy reference on both sides of its size thresholds;
* the unchecked encoders the compressors call (``_*_trusted``: their arguments
  were checked when the compressor was built) give the bytes of the checked
  public wrappers, below and above the parallel threshold.
"""

import numpy as np
import pytest
from gcomp.kernels import topk as T
from gcomp.kernels.random import _derive_seed_py, derive_seed
from gcomp.kernels.topk import topk_exact

M64 = (1 << 64) - 1


def test_derive_seed_matches_the_python_reference():
    rng = np.random.default_rng(11)
    edge = [0, 1, 2, (1 << 63) - 1, 1 << 63, M64 - 1, M64]
    triples = [(a, b, c) for a in edge for b in edge for c in (0, 1 << 63, M64)]
    triples += [tuple(int(v) >> int(s) for v, s in zip(rng.integers(0, M64, 3, dtype=np.uint64, endpoint=True),
                                                        rng.integers(0, 64, 3), strict=True)) for _ in range(3000)]
    for seed, step, key in triples:
        got = derive_seed(seed, step, key)
        assert type(got) is int and got == _derive_seed_py(seed, step, key), (seed, step, key)
    # numpy integers take the checked path and give the same values
    assert derive_seed(np.uint64(M64), np.int32(7), np.int64(3)) == _derive_seed_py(M64, 7, 3)


@pytest.mark.parametrize("bad, exc", [(True, TypeError), (1.0, TypeError), ("3", TypeError), (-1, ValueError),
                                      (1 << 64, ValueError), (np.int64(-2), ValueError)])
def test_derive_seed_refuses_what_it_refused(bad, exc):
    for args in ((bad, 0, 0), (0, bad, 0), (0, 0, bad)):
        with pytest.raises(exc):
            derive_seed(*args)


def _key_sets():
    rng = np.random.default_rng(5)
    sets = {
        "normal": rng.standard_normal(5000).astype(np.float32),
        "heavy": (rng.standard_normal(3000) * np.exp(3 * rng.standard_normal(3000))).astype(np.float32),
        "ties": rng.integers(-3, 4, 4000).astype(np.float32),
        "constant": np.full(300, 2.5, np.float32),
        "zeros_and_signed": np.array([0.0, -0.0] * 50 + [1.0, -1.0], np.float32),
        "denormal": (rng.standard_normal(500) * 1e-42).astype(np.float32),
        "one": np.array([-7.0], np.float32),
        "big": rng.standard_normal(65536).astype(np.float32),
    }
    nonfinite = rng.standard_normal(2000).astype(np.float32)
    nonfinite[rng.integers(0, 2000, 30)] = np.nan
    nonfinite[rng.integers(0, 2000, 10)] = np.inf
    nonfinite[rng.integers(0, 2000, 10)] = -np.inf
    sets["nonfinite"] = nonfinite
    return sets


@pytest.mark.parametrize("name, x", sorted(_key_sets().items()))
def test_small_select_is_the_histogram_select(name, x):
    bits = x.view(np.uint32)
    n = bits.shape[0]
    for k in sorted({1, 2, max(1, n // 100), max(1, n // 3), max(1, n - 1), n}):
        small = T._kth_key_small(bits, k)
        ref = T._kth_from_hist(bits, T._histogram_top(bits), k)
        assert (int(small[0]), int(small[1])) == (int(ref[0]), int(ref[1])), (name, k)


def _topk_ref(x, k):
    keys = (x.view(np.uint32) & np.uint32(0x7FFFFFFF)).astype(np.int64)
    idx = np.sort(np.lexsort((np.arange(keys.size), -keys))[:k])
    return idx, x[idx]


@pytest.mark.parametrize("n", [1, 7, 8, 1023, 1024, 1025, 10_000, 65_536, 65_537])
def test_exact_topk_around_the_size_thresholds(n):
    rng = np.random.default_rng(n)
    for x in (rng.standard_normal(n).astype(np.float32), rng.integers(-2, 3, n).astype(np.float32)):
        for k in sorted({1, max(1, n // 100), max(1, n // 2), n}):
            idx, val = topk_exact(x, k)
            ridx, rval = _topk_ref(x, k)
            assert np.array_equal(idx, ridx) and np.array_equal(val.view(np.uint32), rval.view(np.uint32)), (n, k)


@pytest.mark.parametrize("n", [0, 1, 8, 1000, 10_003, (1 << 18) + 5])
def test_trusted_encoders_are_the_checked_wrappers(n):
    from gcomp.kernels import natural as kn
    from gcomp.kernels import qsgd as kq
    from gcomp.kernels import randomk as kr
    from gcomp.kernels import sampled_topk as ks
    from gcomp.kernels import sign as kg
    from gcomp.kernels import terngrad as kt
    from gcomp.kernels import uniform as ku

    rng = np.random.default_rng(n + 3)
    x = rng.standard_normal(n, dtype=np.float32) * np.exp(rng.standard_normal(n, dtype=np.float32))
    seed = int(rng.integers(0, 1 << 63)) * 2 + 1  # above 2**63 too
    pairs = [(ku._uniform_encode_trusted(x, bits, bs, absmax, sto, seed),
              ku.uniform_encode(x, bits, bs, mode="absmax" if absmax else "maxmin",
                                rounding="stochastic" if sto else "nearest", seed=seed))
             for bits, bs, absmax, sto in ((8, 512, False, False), (4, 64, False, True), (2, 8, True, True),
                                           (1, 1 << 17, False, True))]
    pairs += [(kq._qsgd_encode_trusted(x, lv, kq.qsgd_code_bits(lv), bs, seed), kq.qsgd_encode(x, lv, bs, seed))
              for lv, bs in ((4, 512), (1, 8), (127, 1 << 17))]
    pairs += [(kt._terngrad_encode_trusted(x, bs, seed), kt.terngrad_encode(x, bs, seed)) for bs in (8, 512, 1 << 17)]
    pairs += [(kg._sign_encode_trusted(x, bs), kg.sign_encode(x, bs)) for bs in (8, 512, 1 << 17)]
    pairs.append((kn._natural_encode_trusted(x, seed), kn.natural_encode(x, seed)))
    for k in sorted({0, min(n, 1), -(-n // 100), n}):
        pairs.append(((kr._randomk_indices_trusted(n, k, seed),), (kr.randomk_indices(n, k, seed),)))
        pairs.append((ks._topk_sampled_trusted(x, k, seed, 0.01, 0.5), ks.topk_sampled(x, k, seed, 0.01, 0.5)))
    for got, want in pairs:
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
