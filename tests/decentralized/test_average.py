"""Gossip preserves the average of the ranks' vectors: exact gossip to float32 round-off, and CHOCO-SGD too
(its increments sum to zero over the ranks), at P = 3, 4, 5, 8, on static and time-varying topologies."""

import numpy as np
import pytest

from ._helpers import EPS32, run_gossip

ROUNDS = 30
N = 600


def drift_in_ulps(x0, x1):
    """max |mean(x1) - mean(x0)| over entries, in units of float32 eps times the largest |x0|."""
    m0 = np.mean(np.stack(x0).astype(np.float64), axis=0)
    m1 = np.mean(np.stack(x1).astype(np.float64), axis=0)
    scale = max(float(np.abs(x).max()) for x in x0)
    return float(np.abs(m1 - m0).max()) / (scale * EPS32)


@pytest.mark.parametrize("size", [3, 4, 5, 8])
@pytest.mark.parametrize("topo", ["ring", "torus", "exponential"])
def test_exact_gossip_preserves_the_average(size, topo):
    x0, x1, _, _ = run_gossip(size, ROUNDS, n=N, topology=topo)
    # each round rounds each entry once or twice per neighbour: a few ulps per round at most, and the vectors moved
    assert drift_in_ulps(x0, x1) <= 0.5 * ROUNDS
    assert max(float(np.abs(a - b).max()) for a, b in zip(x0, x1, strict=True)) > 0.5


@pytest.mark.parametrize("size", [3, 4, 5, 8])
@pytest.mark.parametrize(("topo", "spec", "gamma"), [
    ("ring", "topk:ratio=0.1", 0.2), ("torus", "sign", 0.1), ("exponential", "qsgd", 0.2),
    ("ring", "qsgd", 0.2), ("exponential", "topk:ratio=0.1", 0.2),
])
def test_choco_preserves_the_average(size, topo, spec, gamma):
    x0, x1, _, _ = run_gossip(size, ROUNDS, n=N, topology=topo, compressor=spec, gamma=gamma)
    assert drift_in_ulps(x0, x1) <= 1.0 * ROUNDS
    assert max(float(np.abs(a - b).max()) for a, b in zip(x0, x1, strict=True)) > 0.1


def test_weighted_user_graph_preserves_the_average():
    w = np.array([[0.5, 0.3, 0.2, 0.0], [0.3, 0.4, 0.0, 0.3], [0.2, 0.0, 0.5, 0.3], [0.0, 0.3, 0.3, 0.4]])
    lists = [[1, 2], [0, 3], [0, 3], [1, 2]]
    for kwargs in ({}, {"compressor": "topk:ratio=0.2", "gamma": 0.3}):
        x0, x1, _, _ = run_gossip(4, ROUNDS, n=N, topology=lists, weights=w, **kwargs)
        assert drift_in_ulps(x0, x1) <= 1.0 * ROUNDS


def test_exact_gossip_on_a_power_of_two_exponential_graph_averages_exactly_in_log2_p_rounds():
    x0, x1, _, _ = run_gossip(8, 3, n=N, topology="exponential")
    mean = np.mean(np.stack(x0).astype(np.float64), axis=0)
    for x in x1:
        np.testing.assert_allclose(x, mean, rtol=0, atol=8 * EPS32 * max(float(np.abs(v).max()) for v in x0))
