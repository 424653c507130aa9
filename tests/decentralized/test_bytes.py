"""Bytes per rank per round depend on the degree, not on P; the per-neighbour counters split them per link."""

import numpy as np
import pytest

from gcomp import wire
from gcomp.decentralized import packets

from ._helpers import run_gossip

N = 20000
ROUNDS = 3


def per_round(size, **kwargs):
    """``[bytes sent in the last round, per rank]``, ``[by_peer of rank 0]`` and the Gossip objects."""
    _, _, _, gossips = run_gossip(size, ROUNDS, n=N, **kwargs)
    return [g.stats[-1].bytes_sent for g in gossips], gossips[0].stats[-1].by_peer, gossips


def dense_link():
    """One exact-gossip packet on a link: prefix + wire header + 4 N bytes + the 8-byte size."""
    return packets.PREFIX_SIZE + wire.HEADER_SIZE + 4 * N + 8


@pytest.mark.parametrize("size", [4, 8, 16])
def test_exact_gossip_on_a_ring_sends_two_dense_packets_whatever_p(size):
    sent, by_peer, _ = per_round(size, topology="ring")
    assert sent == [2 * dense_link()] * size
    assert by_peer == {1: (dense_link(), dense_link()), size - 1: (dense_link(), dense_link())}


def test_bytes_follow_the_degree():
    ring, _, _ = per_round(16, topology="ring")
    torus, _, _ = per_round(16, topology="torus")           # 4 x 4: degree 4
    expo, by_peer, _ = per_round(16, topology="exponential")  # one peer per round
    assert torus[0] == 2 * ring[0] and expo[0] * 2 == ring[0]
    assert by_peer == {4: (dense_link(), 0), 12: (0, dense_link())}  # round 2: rank 0 sends to 4, hears 12


def test_choco_topk_ring_bytes_flat_in_p_and_a_fraction_of_exact():
    """The issue's target: at P = 16 a ring round's bytes per rank within 10% of the P = 4 figure (CHOCO top-k 1%)."""
    spec = {"topology": "ring", "compressor": "topk:ratio=0.01", "gamma": 0.05}
    sent4, _, _ = per_round(4, **spec)
    sent8, _, _ = per_round(8, **spec)
    sent16, _, g16 = per_round(16, **spec)
    mean4, mean8, mean16 = np.mean(sent4), np.mean(sent8), np.mean(sent16)
    assert abs(mean16 - mean4) <= 0.10 * mean4, (mean4, mean16)
    assert abs(mean8 - mean4) <= 0.10 * mean4, (mean4, mean8)
    # 200 values (4 bytes each) and their indices per link: about 1-2% of the dense packet
    k = 200
    per_link = [s / 2 for s in sent16]
    low = packets.PREFIX_SIZE + wire.HEADER_SIZE + 8 + 4 * k
    assert all(low < b < low + 4 * k for b in per_link), (low, per_link)
    assert max(sent16) < 0.03 * 2 * dense_link()
    assert g16[0].stats[-1].bytes_received == sum(r for _, r in g16[0].stats[-1].by_peer.values())


def test_local_steps_send_nothing():
    _, _, _, gossips = run_gossip(4, 6, n=1000, topology="ring", every=3)
    stats = gossips[0].stats
    assert [s.gossiped for s in stats] == [False, False, True, False, False, True]
    assert [s.round for s in stats] == [0, 0, 0, 1, 1, 1]
    assert all(s.bytes_sent == 0 for s in stats if not s.gossiped)
    assert gossips[0].round == 2 and gossips[0].steps == 6
