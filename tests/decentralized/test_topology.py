"""Topologies: the built-in graphs, Metropolis-Hastings weights, validation with a ConfigError naming the fault,
spectral gaps."""

import math

import numpy as np
import pytest

from gcomp.decentralized import Topology, topology, torus_shape
from gcomp.errors import ConfigError


def neighbors_of(topo, t=0):
    return [sorted(set(topo.send_to(r, t)) | set(topo.recv_from(r, t))) for r in range(topo.size)]


@pytest.mark.parametrize("size", [2, 3, 4, 5, 8, 16])
def test_ring(size):
    topo = topology("ring", size)
    assert topo.static and topo.period == 1
    for r in range(size):
        assert topo.send_to(r) == topo.recv_from(r) == tuple(sorted({(r - 1) % size, (r + 1) % size} - {r}))
    w = topo.weights()
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w, w.T)
    if size > 2:  # Metropolis-Hastings: degree 2 everywhere -> 1/3 on each edge and on the diagonal
        assert w[0, 1] == pytest.approx(1 / 3) and w[0, 0] == pytest.approx(1 / 3)
        beta = (1 + 2 * math.cos(2 * math.pi / size)) / 3
        assert topo.spectral_gap == pytest.approx(1 - beta, abs=1e-12)
        assert topo.rate == pytest.approx(beta**2, abs=1e-12)
    else:
        assert topo.spectral_gap == pytest.approx(1.0)  # 1/2, 1/2: exact in one round


@pytest.mark.parametrize(("size", "shape"), [(4, (2, 2)), (6, (2, 3)), (8, (2, 4)), (9, (3, 3)), (16, (4, 4)), (7, (1, 7))])
def test_torus_shape_and_neighbours(size, shape):
    assert torus_shape(size) == shape
    topo = topology("torus", size)
    rows, cols = shape
    assert topo.name == f"torus:{rows}x{cols}"
    for i in range(size):
        r, c = divmod(i, cols)
        want = {((r + dr) % rows) * cols + (c + dc) % cols for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))} - {i}
        assert set(topo.send_to(i)) == want
    assert topo.max_degree() == (4 if min(shape) > 2 else len(topo.send_to(0)))


def test_torus_explicit_shape_and_gap_beats_the_ring():
    assert topology("torus:4x4", 16).max_degree() == 4
    assert topology("torus:2x8", 16).name == "torus:2x8"
    assert topology("torus", 16).spectral_gap > 2 * topology("ring", 16).spectral_gap
    with pytest.raises(ConfigError, match="rows x cols == 16"):
        topology("torus:3x5", 16)
    with pytest.raises(ConfigError, match="torus:RxC"):
        topology("torus:big", 16)


@pytest.mark.parametrize("size", [2, 3, 4, 5, 8, 16])
def test_exponential_one_peer(size):
    topo = topology("exponential", size)
    period = max(1, math.ceil(math.log2(size)))
    assert topo.period == period and not topo.static == (size > 2 or period > 1)
    for t in range(2 * period):
        k = t % period
        for r in range(size):
            assert topo.send_to(r, t) == ((r + 2**k) % size,)
            assert topo.recv_from(r, t) == ((r - 2**k) % size,)
        w = topo.weights(t)
        np.testing.assert_allclose(w.sum(axis=0), 1.0)  # columns: the average is preserved
        np.testing.assert_allclose(w.sum(axis=1), 1.0)
    if size & (size - 1) == 0:  # a power of two: the period's product is exactly the average
        assert topo.spectral_gap == pytest.approx(1.0, abs=1e-12)
        assert topo.rate == pytest.approx(0.0, abs=1e-12)
    else:
        assert 0 < topo.spectral_gap < 1


def test_complete_and_star():
    c = topology("complete", 5)
    np.testing.assert_allclose(c.weights(), np.full((5, 5), 0.2))
    assert c.spectral_gap == pytest.approx(1.0)
    s = topology("star", 5)
    assert s.send_to(0) == (1, 2, 3, 4) and s.send_to(3) == (0,)
    w = s.weights()
    assert w[0, 3] == pytest.approx(0.2) and w[3, 3] == pytest.approx(0.8) and w[0, 0] == pytest.approx(0.2)
    assert 0 < s.spectral_gap < 1


def test_user_neighbour_lists_and_matrix_agree():
    lists = [[1, 2], [0], [0, 3], [2]]
    adj = np.zeros((4, 4), int)
    for i, peers in enumerate(lists):
        adj[i, peers] = 1
    a, b = topology(lists, 4), topology(adj, 4)
    assert a == b and a.digest() == b.digest()
    np.testing.assert_allclose(a.weights()[0], [1 - 1 / 3 - 1 / 3, 1 / 3, 1 / 3, 0])  # degrees 2,1,2,1
    assert topology(lists) == a  # the size is that of the lists
    md = topology(lists, 4, weights="max-degree")
    assert md.weights()[1, 0] == pytest.approx(1 / 3) and md.weights()[1, 1] == pytest.approx(2 / 3)


def test_user_weights():
    w = np.array([[0.5, 0.5, 0.0], [0.5, 0.25, 0.25], [0.0, 0.25, 0.75]])
    topo = topology([[1], [0, 2], [1]], 3, weights=w)
    np.testing.assert_array_equal(topo.weights(), w)
    assert topo.send_to(1) == (0, 2)
    # a zero weight on an edge drops that link
    w2 = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.5, 0.5]])
    with pytest.raises(ConfigError, match="connected"):
        topology([[1], [0, 2], [1]], 3, weights=w2)


@pytest.mark.parametrize(("spec", "size", "weights", "message"), [
    ([[1], [], [1]], 3, None, "rank 0 lists 1 but rank 1 does not list 0"),
    ([[1], [0], [3], [2]], 4, None, r"connected graph .* 2 components: \[0, 1\]; \[2, 3\]"),
    ([[0, 1], [0]], 2, None, "rank 0 lists itself"),
    ([[5], [0]], 2, None, "neighbour 5 is not a rank"),
    ([[1], [0]], 3, None, "one neighbour list per rank"),
    (np.array([[0, 1], [0, 0]]), 2, None, r"symmetric adjacency matrix .* A\[0, 1\]"),
    (np.ones((2, 3)), 2, None, "shape"),
    ("ring", 4, np.full((4, 4), 0.25), r"W\[0, 2\] = 0.25 on ranks that are not neighbours"),
    ([[1], [0]], 2, np.array([[0.5, 0.5], [0.4, 0.6]]), r"symmetric mixing matrix, found W\[0, 1\] = 0.5 but W\[1, 0\] = 0.4"),
    ([[1], [0]], 2, np.array([[0.5, 0.6], [0.6, 0.5]]), "row 0 summing to 1.1"),
    ([[1], [0]], 2, np.array([[1.5, -0.5], [-0.5, 1.5]]), r"non-negative mixing weights, found W\[0, 1\] = -0.5"),
    ([[1], [0]], 2, np.array([[0.0, 1.0], [1.0, 0.0]]), "spectral gap 0"),
    ("ring", 4, "uniformish", "unknown mixing weights"),
    ("hypercube", 4, None, "unknown topology 'hypercube'"),
    ("exponential", 4, "metropolis", "weights are fixed"),
    ("ring:3", 4, None, "takes no argument"),
    (42, 4, None, "found int"),
])
def test_validation_names_the_fault(spec, size, weights, message):
    with pytest.raises(ConfigError, match=message):
        topology(spec, size, weights=weights)


def test_time_varying_needs_columns_summing_to_one():
    good = [np.array([[0.5, 0.5, 0], [0, 0.5, 0.5], [0.5, 0, 0.5]])]
    assert Topology(good, symmetric=False).size == 3
    bad = [np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]])]
    with pytest.raises(ConfigError, match="column 0 summing to 1.5"):
        Topology(bad, symmetric=False)


def test_size_checks():
    with pytest.raises(ConfigError, match="size"):
        topology("ring")
    with pytest.raises(ConfigError, match="positive"):
        topology("ring", 0)
    t = topology("ring", 4)
    assert topology(t, 4) is t
    with pytest.raises(ConfigError, match="over 5 ranks"):
        topology(t, 5)


def test_single_rank_is_trivial():
    for name in ("ring", "torus", "exponential", "complete", "star"):
        topo = topology(name, 1)
        assert topo.send_to(0) == () and topo.recv_from(0) == () and topo.spectral_gap == 1.0


def test_digest_tells_weights_apart():
    tree = [[1, 2, 3], [0], [0], [0, 4], [3]]  # edge 3-4: 1/3 by Metropolis-Hastings, 1/4 by max-degree
    assert topology(tree).weights()[3, 4] == pytest.approx(1 / 3)
    assert topology(tree).digest() != topology(tree, weights="max-degree").digest()
    assert topology("ring", 8).digest() != topology("torus", 8).digest()
    assert topology("ring", 8).digest() == topology([[(i - 1) % 8, (i + 1) % 8] for i in range(8)]).digest()
    desc = topology("torus", 16).describe()
    assert desc["degrees"] == [4] and desc["period"] == 1 and 0 < desc["spectral_gap"] < 1
