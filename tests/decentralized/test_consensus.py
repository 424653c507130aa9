"""Consensus distance falls geometrically on a fixed problem (no gradients: pure averaging), for exact gossip and
for CHOCO-SGD with topk, sign and qsgd on the ring and the torus, and the rate is stated against the spectral gap.

The rates measured here (P = 8, 1000 entries, start vectors N(rank, 4)), per round, on the consensus distance:

==========  ==================  ============  ==========================================
topology    spectral gap delta  exact gossip  CHOCO (gamma): topk 10% / sign b64 / qsgd
==========  ==================  ============  ==========================================
ring        0.195               0.648         (0.2) 0.91 / (0.1) 0.96 / (0.2) 0.91
torus 2x4   0.5                 0.25          (0.2) 0.81 / (0.1) 0.95 / (0.2) 0.92
==========  ==================  ============  ==========================================

Exact gossip meets its bound ``(1 - delta)^2`` (``Topology.rate``); CHOCO is slower (its public copies trail the
vectors by what compression holds back) but still geometric, far inside the paper's worst-case bound
``1 - delta^2 omega / 82`` (Koloskova et al. 2019, Theorem 2, omega the compressor's contraction).
"""

import math

import numpy as np
import pytest

from gcomp.decentralized import Gossip, topology
from gcomp.transports import run_local

from ._helpers import consensus_distance, run_gossip, start_vector

P = 8


def per_round(history, a, b):
    return (history[b] / history[a]) ** (1.0 / (b - a))


def above_floor(history, floor=1e-9):
    """The rounds before the distance reaches float32 round-off (``floor`` of where it started): ``0 .. end``."""
    below = [k for k, d in enumerate(history) if d < floor * history[0]]
    return below[0] if below else len(history) - 1


@pytest.mark.parametrize("topo", ["ring", "torus"])
def test_exact_gossip_rate_is_the_spectral_gaps(topo):
    t = topology(topo, P)
    _, _, history, _ = run_gossip(P, 25, topology=topo, record=True)
    measured = per_round(history, 10, min(25, above_floor(history, 1e-7)))
    # asymptotically the slowest mode dominates: the measured factor is (1 - delta)^2, which bounds every round
    assert measured == pytest.approx(t.rate, abs=0.03), (topo, t.spectral_gap, measured)
    assert all(history[k + 1] <= history[k] * t.rate * (1 + 1e-3) for k in range(above_floor(history, 1e-7))), history


def test_exact_gossip_on_a_time_varying_graph_meets_the_period_bound():
    t = topology("exponential", 6)  # not a power of two: no exact average, a period of 3 rounds
    _, _, history, _ = run_gossip(6, 12, topology="exponential", record=True)
    for k in range(0, 12, 3):
        assert history[k + 3] <= history[k] * (t.rate**3) * (1 + 1e-6), (k, history)
    assert history[12] < 1e-3 * history[0]


CHOCO = [("topk:ratio=0.1", 0.2, 200), ("sign:bucket_size=64", 0.1, 250), ("qsgd", 0.2, 200)]


@pytest.mark.parametrize("topo", ["ring", "torus"])
@pytest.mark.parametrize(("spec", "gamma", "rounds"), CHOCO)
def test_choco_consensus_falls_geometrically(topo, spec, gamma, rounds):
    t = topology(topo, P)
    _, _, history, gossips = run_gossip(P, rounds, topology=topo, compressor=spec, gamma=gamma, record=True)
    omega = gossips[0].compressor.contraction(1000) or gossips[0].scale
    paper_bound = 1 - t.spectral_gap**2 * omega / 82
    end = above_floor(history)
    third = (end - 20) // 3
    windows = [per_round(history, 20 + i * third, 20 + (i + 1) * third) for i in range(3)]
    measured = per_round(history, 20, end)
    stated = (f"{topo} (spectral gap {t.spectral_gap:.3f}, exact gossip {t.rate:.3f}/round), CHOCO {spec} gamma "
              f"{gamma}: {measured:.4f}/round, windows {[round(w, 4) for w in windows]}, paper bound {paper_bound:.6f}")
    # geometric: every window shrinks it by a steady factor, well below 1
    assert all(w < 0.985 for w in windows), stated
    assert history[end] < 1e-4 * history[0], stated
    # against the spectral gap: no faster than exact gossip on the same graph, inside the paper's bound
    assert t.rate - 0.01 <= measured <= paper_bound, stated


def test_consensus_distance_stat_sketch_and_exact():
    n = 5000

    def fn(t):
        x = start_vector(t.rank, n)
        g = Gossip(x, topology="ring", transport=t)
        g.step()
        before = t.counter.snapshot()
        sketched = g.consensus_distance()
        moved = t.counter.snapshot()[0] - before[0]
        exact = g.consensus_distance(exact=True)
        return x.copy(), sketched, exact, moved

    results = run_local(4, fn)
    want = consensus_distance([r[0] for r in results])
    sketched, exact = {r[1] for r in results}, {r[2] for r in results}
    assert len(sketched) == 1 and len(exact) == 1  # the same value on every rank
    assert next(iter(exact)) == pytest.approx(want, rel=1e-9)
    assert next(iter(sketched)) == pytest.approx(want, rel=0.2)  # relative error about sqrt(2 / 1024)
    # the sketch sends 1024 + 1 float64 through the allreduce, not the 5000-entry vector
    assert all(r[3] <= 2 * (1025 * 8) for r in results), [r[3] for r in results]
    assert 4 * n > 2 * 1025 * 8


def test_consensus_distance_estimate_is_unbiased_over_seeds():
    n = 3000

    def fn(t):
        x = start_vector(t.rank, n)
        g = Gossip(x, topology="ring", transport=t)
        return [g.consensus_distance(sketch=256, seed=s) for s in range(40)], g.consensus_distance(exact=True)

    estimates, exact = run_local(3, fn)[0]
    mean = float(np.mean(estimates))
    assert mean == pytest.approx(exact, rel=3 * math.sqrt(2 / 256) / math.sqrt(40) + 0.02)
