"""Agreement and faults: ranks that disagree raise MismatchError on every rank, a dead neighbour makes the others
raise within the timeout (never hang), NaN follows the allreduce path's policies; all in-process."""

import time

import numpy as np
import pytest

from gcomp.decentralized import Gossip, topology
from gcomp.errors import CollectiveError, ConfigError, MismatchError, NonFiniteError, SequenceError
from gcomp.transports import run_local

from ._helpers import start_vector


def outcomes(size, body, timeout=20.0):
    """``[(exception type name or "ok", message or result)]`` per rank, and the seconds the whole run took."""

    def fn(t):
        try:
            return ("ok", body(t))
        except Exception as exc:  # noqa: BLE001 - the test looks at what each rank raised
            return (type(exc).__name__, str(exc))

    start = time.monotonic()
    out = run_local(size, fn, timeout=timeout)
    return out, time.monotonic() - start


def kinds(results):
    return [kind for kind, _ in results]


BASE = {"topology": "ring", "compressor": "topk:ratio=0.1", "gamma": 0.2}
DIFFERENT = {  # rank 1 changes one option
    "topology": {"topology": "torus"},
    "compressor": {"compressor": "sign"},
    "compressor-params": {"compressor": "topk:ratio=0.2"},
    "gamma": {"gamma": 0.3},
    "every": {"every": 2},
    "nonfinite": {"nonfinite": "zero"},
    "algorithm": {"compressor": None, "gamma": None},
    "weights": {},  # a lazier mixing matrix (I + W) / 2 on the same graph
    "seed": {"compressor": "qsgd:seed=1"},
}


@pytest.mark.parametrize("size", [3, 4])
@pytest.mark.parametrize("case", list(DIFFERENT) + ["size"])
def test_construction_mismatch_raises_on_every_rank(size, case):
    def body(t):
        opts = dict(BASE)
        if case == "seed":
            opts["compressor"] = "qsgd:seed=0"
        n = 100 + (t.rank == 1 and case == "size")
        if t.rank == 1 and case != "size":
            opts.update(DIFFERENT[case])
            if case == "weights":
                opts["weights"] = (np.eye(size) + topology("ring", size).weights()) / 2
        Gossip(np.zeros(n, np.float32), transport=t, **opts)

    results, _ = outcomes(size, body)
    assert kinds(results) == ["MismatchError"] * size, results
    assert all("differ" in msg for _, msg in results)


def test_a_rank_that_fails_to_configure_raises_its_error_and_the_others_mismatch():
    def body(t):
        Gossip(np.zeros(10, np.float32), transport=t, **{**BASE, "gamma": 2.0 if t.rank == 2 else 0.2})

    results, _ = outcomes(4, body)
    assert kinds(results) == ["MismatchError", "MismatchError", "ConfigError", "MismatchError"], results
    assert "ranks [2] failed to configure" in results[0][1]


def test_initial_model_needs_equal_vectors_on_every_rank():
    def body(t):
        Gossip(np.full(10, float(t.rank == 1), np.float32), transport=t, initial="model", **BASE)

    results, _ = outcomes(3, body)
    assert kinds(results) == ["MismatchError"] * 3 and "initial='model'" in results[0][1]


def test_auto_initial_starts_the_public_copies_at_equal_vectors():
    def body(t):
        x = np.arange(10, dtype=np.float32)
        g = Gossip(x, transport=t, **BASE)
        y = np.arange(10, dtype=np.float32) + t.rank
        h = Gossip(y, transport=t, **BASE)
        return g.initial_resolved, h.initial_resolved, bool(np.array_equal(g.state_dict()["xhat"], x))

    results, _ = outcomes(3, body)
    assert [r for _, r in results] == [("model", "zeros", True)] * 3


@pytest.mark.parametrize("topo", ["ring", "exponential"])
def test_mismatch_found_by_packets_reaches_every_rank(topo):
    """Without the construction check (agree=False), the packets' digest catches a rank configured differently:
    its neighbours raise in that round and their fault notices reach every other rank, nobody waits.  On the
    time-varying graph a rank that raised posts notices for a whole period, since its later neighbours differ."""

    def body(t):
        opts = {**BASE, "topology": topo, "gamma": 0.3 if t.rank == 2 else 0.2}
        g = Gossip(start_vector(t.rank, 200), transport=t, agree=False, timeout=15.0, **opts)
        for _ in range(10):
            g.step()

    results, seconds = outcomes(7, body)
    assert kinds(results) == ["MismatchError"] * 7, results
    assert seconds < 10, seconds  # fault notices, not timeouts
    if topo == "ring":
        assert "configured differently" in results[1][1] and "configured differently" in results[3][1]
        assert "reported a fault" in results[5][1] and "first reported by rank" in results[5][1]


def test_a_rank_at_another_round_is_a_sequence_error_everywhere():
    def body(t):
        g = Gossip(start_vector(t.rank, 200), transport=t, timeout=15.0, **BASE)
        g.step()
        g.step()
        saved = g.state_dict()
        g.step()
        if t.rank == 1:
            g.load_state_dict(saved)  # rank 1 goes back one round; the others do not
        for _ in range(5):
            g.step()

    results, seconds = outcomes(5, body)
    assert kinds(results) == ["SequenceError"] * 5, results
    assert seconds < 10
    assert "is at gossip round 2, this rank at 3" in results[0][1]


def test_a_dead_neighbour_makes_every_rank_raise_within_the_timeout():
    def body(t):
        g = Gossip(start_vector(t.rank, 200), transport=t, timeout=1.0, **BASE)
        for k in range(20):
            if t.rank == 2 and k == 3:
                return "gone"  # stops gossiping: its neighbours time out
            g.step()

    results, seconds = outcomes(6, body)
    assert results[2] == ("ok", "gone")
    assert all(kind == "CollectiveError" for i, (kind, _) in enumerate(results) if i != 2), results
    assert "timed out after 1 s waiting for a buffer from rank 2" in results[1][1]
    assert "timed out after 1 s waiting for a buffer from rank 2" in results[3][1]
    assert seconds < 6, seconds  # never hang: about one timeout (the notices arrive as the others time out)


def test_an_error_before_sending_is_sent_as_a_notice():
    torch = pytest.importorskip("torch")

    def body(t):
        model = torch.nn.Linear(4, 3)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(t.rank))
        g = Gossip(model, transport=t, timeout=15.0, **BASE)
        g.step()
        if t.rank == 0:
            model.bias = torch.nn.Parameter(torch.zeros(5))  # the model changed under the Gossip (on one rank)
            g._target.params[-1] = model.bias
        g.step()

    results, seconds = outcomes(3, body)
    assert kinds(results) == ["MismatchError"] * 3, results
    assert "changed size" in results[0][1] and "reported a fault" in results[1][1]
    assert seconds < 10


def test_a_gossip_that_raised_refuses_further_rounds():
    def body(t):
        g = Gossip(start_vector(t.rank, 50), transport=t, timeout=1.0, **BASE)
        if t.rank == 1:
            return None
        with pytest.raises(CollectiveError, match="timed out"):
            g.step()
        with pytest.raises(CollectiveError, match="failed at round 0 .* restart every rank"):
            g.step()
        return g.round

    results, _ = outcomes(3, body)
    assert results == [("ok", 0), ("ok", None), ("ok", 0)]


# -- non-finite values ------------------------------------------------------------------------------------
def nan_run(policy, spec, size=5, rounds=8, bad_round=2, topo="ring"):
    def body(t):
        x = start_vector(t.rank, 300)
        kwargs = {"compressor": spec, "gamma": 0.3} if spec else {}
        g = Gossip(x, topology=topo, transport=t, nonfinite=policy, timeout=15.0, **kwargs)
        seen = []
        for k in range(rounds):
            if t.rank == 1 and k == bad_round:
                x[7] = np.nan
                x[9] = np.inf
            stats = g.step()
            seen.append((stats.nonfinite, tuple(stats.nonfinite_peers), int(np.count_nonzero(~np.isfinite(x)))))
        return seen

    return outcomes(size, body)


@pytest.mark.parametrize("spec", [None, "topk:ratio=0.1"])
def test_nonfinite_propagate_spreads(spec):
    results, _ = nan_run("propagate", spec)
    assert kinds(results) == ["ok"] * 5
    seen = [r for _, r in results]
    assert seen[1][2][0] == 2  # counted on the rank that had it
    assert seen[0][2][1] == (1,) and seen[2][2][1] == (1,)  # flagged to its neighbours
    if spec is None:
        assert seen[0][2][2] > 0 and seen[3][3][2] > 0  # in the neighbours' vectors that round, then further


@pytest.mark.parametrize("spec", [None, "topk:ratio=0.1", "qsgd"])
def test_nonfinite_zero_keeps_it_on_that_rank_and_restores_it(spec):
    results, _ = nan_run("zero", spec)
    assert kinds(results) == ["ok"] * 5, results
    seen = [r for _, r in results]
    assert seen[1][2][:1] == (2,) and seen[1][2][2] == 0  # found, and the vector put back to finite values
    assert seen[0][2][1] == (1,) and seen[2][2][1] == (1,)  # its neighbours were told
    assert all(entry[2] == 0 for rank in seen for entry in rank)  # nothing non-finite anywhere after each round


@pytest.mark.parametrize("spec", [None, "sign"])
def test_nonfinite_raise_raises_on_every_rank(spec):
    results, seconds = nan_run("raise", spec, size=7)
    assert kinds(results) == ["NonFiniteError"] * 7, results
    assert "holds 2 NaN/Inf entries at gossip round 2" in results[1][1]
    assert "rank 1's vector holds NaN/Inf" in results[0][1] and "rank 1's vector holds NaN/Inf" in results[2][1]
    assert "reported a fault" in results[4][1]
    assert seconds < 10


@pytest.mark.parametrize("size", [6, 8])
def test_nonfinite_raise_on_the_exponential_graph_reaches_every_rank(size):
    results, seconds = nan_run("raise", "topk:ratio=0.1", size=size, rounds=10, topo="exponential")
    assert kinds(results) == ["NonFiniteError"] * size, results
    assert seconds < 10


def test_errors_are_the_documented_classes():
    assert issubclass(MismatchError, CollectiveError) and issubclass(SequenceError, CollectiveError)
    assert issubclass(NonFiniteError, CollectiveError) and issubclass(ConfigError, ValueError)
