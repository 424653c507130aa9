"""The user API: two lines in a torch loop, numpy vectors, transports, options and their validation."""

import numpy as np
import pytest

import gcomp.decentralized as gd
from gcomp.decentralized import Gossip, choco_scale
from gcomp.errors import ConfigError
from gcomp.transports import LocalGroup, run_local

from ._helpers import start_vector

torch = pytest.importorskip("torch")


def test_two_lines_in_a_torch_loop_train_a_decentralized_model():
    """Each rank fits y = X w* on its own data (D-PSGD with CHOCO top-k): the models agree and approach w*."""
    w_star = torch.linspace(-1, 1, 8)

    def fn(t):
        torch.manual_seed(0)  # the same initial model everywhere
        model = torch.nn.Linear(8, 1, bias=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        g = gd.Gossip(model, topology="ring", compressor="topk:ratio=0.25", gamma=0.4, transport=t)
        for step in range(100):
            gen = torch.Generator().manual_seed(100 * t.rank + step)
            x = torch.randn(32, 8, generator=gen) * (1 + 0.2 * t.rank)  # different data per rank
            loss = (model(x).squeeze(1) - x @ w_star).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            g.step()
        return model.weight.detach().reshape(-1).clone(), g.consensus_distance(exact=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # four ranks in threads of one process on a small machine
    try:
        results = run_local(4, fn)
    finally:
        torch.set_num_threads(threads)
    for w, distance in results:
        assert float((w - w_star).abs().max()) < 0.05, w
        assert distance < 1e-3


def test_exact_gossip_on_a_model_averages_its_parameters_in_place():
    def fn(t):
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        with torch.no_grad():
            for k, p in enumerate(model.parameters()):
                p.fill_(float(t.rank * 10 + k))
        g = Gossip(model, topology="complete", transport=t)
        stats = g.step()
        return [p.detach().clone() for p in model.parameters()], stats

    results = run_local(3, fn)
    for params, stats in results:
        for k, p in enumerate(params):
            torch.testing.assert_close(p, torch.full_like(p, 10.0 + k))
        assert stats.gossiped and stats.round == 0 and stats.bytes_sent > 0 and set(stats.by_peer) <= {0, 1, 2}


def test_parameters_of_other_dtypes_and_lists_of_tensors():
    def fn(t):
        a = torch.full((5,), float(t.rank), dtype=torch.float64)
        b = torch.full((2, 2), float(t.rank), dtype=torch.bfloat16)
        g = Gossip([a, b], topology="ring", transport=t)
        g.step()
        return a.clone(), b.clone()

    for a, b in run_local(2, fn):
        assert a.dtype == torch.float64 and b.dtype == torch.bfloat16
        torch.testing.assert_close(a, torch.full((5,), 0.5, dtype=torch.float64))
        torch.testing.assert_close(b.float(), torch.full((2, 2), 0.5))


def test_numpy_vector_in_place_and_gossip_now():
    def fn(t):
        x = np.full(6, float(t.rank), np.float32)
        g = Gossip(x, topology="ring", transport=t, every=10)
        assert not g.step().gossiped
        stats = g.gossip()  # a round now, whatever `every` says
        return x.copy(), stats.round, g.round, g.steps

    for x, stats_round, rnd, steps in run_local(3, fn):
        np.testing.assert_allclose(x, 1.0, rtol=1e-6)
        assert (stats_round, rnd, steps) == (0, 1, 1)


def test_an_mpi4py_communicator_is_wrapped():
    MPI = pytest.importorskip("mpi4py.MPI")
    x = np.arange(4, dtype=np.float32)
    g = Gossip(x, transport=MPI.COMM_SELF, compressor="topk:ratio=0.5", gamma=0.5, timeout=5)
    g.step()
    np.testing.assert_array_equal(x, np.arange(4, dtype=np.float32))  # one rank: nothing to mix
    assert type(g.transport).__name__ == "MPITransport" and g.transport.neighbor_timeout == 5


def test_no_transport_without_torch_distributed_is_a_config_error():
    if torch.distributed.is_initialized():  # pragma: no cover
        pytest.skip("a process group is initialised")
    with pytest.raises(ConfigError, match="transport="):
        Gossip(np.zeros(3, np.float32))


def single():
    return LocalGroup(1).transports()[0]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"compressor": "topk:ratio=0.1"}, "CHOCO-SGD needs gamma"),
    ({"compressor": "topk:ratio=0.1", "gamma": 1.5}, r"gamma a number in \(0, 1\]"),
    ({"gamma": 0}, r"gamma a number in \(0, 1\]"),
    ({"algorithm": "exact", "compressor": "topk:ratio=0.1"}, "exact gossip sends the vectors uncompressed"),
    ({"algorithm": "push-sum"}, "unknown gossip algorithm"),
    ({"every": 0}, "every a positive integer"),
    ({"nonfinite": "ignore"}, "unknown nonfinite policy"),
    ({"initial": "random"}, "unknown initial"),
    ({"compressor": "terngrad", "gamma": 0.1}, "pass scale="),
    ({"compressor": "randomk:ratio=0.1", "gamma": 0.1}, "randomk:rescale=false"),
    ({"compressor": "topk:ratio=0.1", "gamma": 0.1, "scale": 2.0}, r"scale a number in \(0, 1\]"),
    ({"scale": 0.5}, "scale= applies to CHOCO-SGD"),
    ({"topology": "moebius"}, "unknown topology"),
])
def test_options_are_validated(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Gossip(np.zeros(4, np.float32), transport=single(), **kwargs)


@pytest.mark.parametrize("bad", [np.zeros(4), np.zeros((2, 2), np.float32), np.zeros(8, np.float32)[::2]])
def test_numpy_vectors_must_be_contiguous_float32(bad):
    with pytest.raises(ConfigError, match="1-D float32"):
        Gossip(bad, transport=single())


def test_read_only_vector_and_integer_parameters_refused():
    x = np.zeros(4, np.float32)
    x.setflags(write=False)
    with pytest.raises(ConfigError, match="read-only"):
        Gossip(x, transport=single())
    with pytest.raises(ConfigError, match="floating-point"):
        Gossip([torch.zeros(3, dtype=torch.int64)], transport=single())
    with pytest.raises(ConfigError, match="transport a gcomp Transport"):
        Gossip(np.zeros(3, np.float32), transport="tcp://")
    with pytest.raises(ConfigError, match="timeout a positive number"):  # after the agreement step: nobody waits
        Gossip(np.zeros(3, np.float32), transport=single(), timeout=-1)


def test_choco_scale_follows_the_declared_guarantees():
    import gcomp

    assert choco_scale(gcomp.compressor("topk:ratio=0.01"), 1000) == 1.0
    assert choco_scale(gcomp.compressor("sign"), 1000) == 1.0
    assert choco_scale(gcomp.compressor("none"), 1000) == 1.0
    qsgd = gcomp.compressor("qsgd")
    assert choco_scale(qsgd, 1000) == pytest.approx(1 / (1 + qsgd.variance_bound(1000)))
    assert choco_scale(gcomp.compressor("terngrad"), 1000, scale=0.25) == 0.25


def test_randomized_compressors_get_a_seed_per_rank():
    def fn(t):
        g = Gossip(start_vector(t.rank, 10), topology="ring", compressor="qsgd:seed=5", gamma=0.2, transport=t)
        return g.compressor.get_config()["seed"], g.spec.get_config()["seed"]

    seeds = run_local(3, fn)
    assert len({s for s, _ in seeds}) == 3 and {b for _, b in seeds} == {5}


def test_summary_line():
    line = gd.spectral_summary(gd.topology("ring", 8))
    assert "spectral gap 0.1953" in line and "half-life" in line
