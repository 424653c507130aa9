import numpy as np
import pytest

from gcomp.errors import ConfigError
from gcomp.flower import dirichlet_partition, iid_partition, label_histogram, partition
from gcomp.train.data import load_digits_split


def _labels():
    return load_digits_split(0)[1]


def _check_cover(parts, n):
    joined = np.concatenate(parts)
    assert joined.size == n and np.unique(joined).size == n
    assert all(np.all(np.diff(p) > 0) for p in parts)


def test_iid_shards_are_balanced_and_cover_everything():
    y = _labels()
    parts = iid_partition(y, 20, seed=1)
    _check_cover(parts, y.size)
    assert max(p.size for p in parts) - min(p.size for p in parts) <= 1
    hist = label_histogram(y, parts)
    assert (hist > 0).sum(axis=1).min() >= 7  # ~72 samples each: nearly every class everywhere


def test_dirichlet_skews_labels_more_as_alpha_falls():
    y = _labels()
    rng_state = np.random.get_state()
    skew = {}
    for alpha in (0.1, 0.5, 100.0):
        parts = dirichlet_partition(y, 20, alpha, seed=0)
        _check_cover(parts, y.size)
        assert min(p.size for p in parts) >= 2
        hist = label_histogram(y, parts).astype(float)
        shares = hist / hist.sum(axis=1, keepdims=True)
        skew[alpha] = float(shares.max(axis=1).mean())  # the mean share of each client's largest class
    assert skew[0.1] > skew[0.5] > skew[100.0]
    assert skew[100.0] < 0.25 and skew[0.1] > 0.6
    assert np.array_equal(np.random.get_state()[1], rng_state[1])  # the global generator untouched


def test_same_seed_same_split_and_dispatch():
    y = _labels()
    a = partition(y, 10, 0.5, seed=3)
    b = dirichlet_partition(y, 10, 0.5, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, dirichlet_partition(y, 10, 0.5, seed=4), strict=True))
    assert all(np.array_equal(p, q) for p, q in zip(partition(y, 10, None, 2), iid_partition(y, 10, 2), strict=True))


@pytest.mark.parametrize("args", [(0,), (5000,), (10, 0.0), (10, float("nan")), (10, -1.0)])
def test_bad_arguments_raise(args):
    y = _labels()
    with pytest.raises(ConfigError):
        if len(args) == 1:
            iid_partition(y, args[0])
        else:
            dirichlet_partition(y, *args)
