"""Gossip on real torch.distributed gloo ranks (spawned processes): CHOCO and exact gossip, a torch model,
checkpoint/restore, agreement failures and a neighbour that dies.

One launch of 4 ranks runs the healthy checks and the agreement failures (each failure on a transport split off
for it, so that its leftover fault notices cannot reach a later check); a second launch kills one rank.
"""

import functools
import time

import numpy as np
import pytest

try:  # pytest puts tests/ on sys.path
    from ddp.launch import DIED, capture, launch
except ImportError:  # pragma: no cover
    from tests.ddp.launch import DIED, capture, launch

pytestmark = pytest.mark.slow

P = 4


def _start(rank, n=3000):
    rng = np.random.default_rng([7, rank])
    return (rng.standard_normal(n) * 2 + rank).astype(np.float32)


def _gather(t, x):
    return [np.frombuffer(b.tobytes(), np.float32) for b in t.allgatherv(x.view(np.uint8))]


def _choco_ring(t):
    from gcomp.decentralized import Gossip

    x = _start(t.rank)
    rows0 = _gather(t, x)
    g = Gossip(x, topology="ring", compressor="topk:ratio=0.1", gamma=0.2, transport=t, timeout=30)
    d0 = g.consensus_distance(exact=True)
    for _ in range(40):
        g.step()
    d1 = g.consensus_distance(exact=True)
    rows1 = _gather(t, x)
    drift = np.abs(np.mean(rows1, axis=0, dtype=np.float64) - np.mean(rows0, axis=0, dtype=np.float64)).max()
    assert drift < 40 * 1e-6 * np.abs(rows0).max(), drift
    assert d1 < 0.05 * d0, (d0, d1)
    last = g.stats[-1]
    assert sorted(last.by_peer) == sorted({(t.rank - 1) % t.size, (t.rank + 1) % t.size})
    assert last.bytes_sent == sum(s for s, _ in last.by_peer.values()) < 0.2 * 2 * 4 * x.size
    return last.bytes_sent


def _exact_exponential(t):
    from gcomp.decentralized import Gossip

    x = _start(t.rank, 500)
    mean = np.mean(_gather(t, x), axis=0, dtype=np.float64)
    g = Gossip(x, topology="exponential", transport=t, timeout=30)
    g.step()
    g.step()  # P = 4: log2 P rounds give the exact average
    np.testing.assert_allclose(x, mean, rtol=0, atol=1e-5)


def _torch_model_and_checkpoint(t):
    import torch

    from gcomp import statecodec
    from gcomp.decentralized import Gossip

    def train(model, g, opt, steps, start):
        for k in range(start, start + steps):
            gen = torch.Generator().manual_seed(1000 * t.rank + k)
            x = torch.randn(16, 8, generator=gen)
            loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            g.step()

    def make():
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = Gossip(model, topology="ring", compressor="sign", gamma=0.2, transport=t, timeout=30)
    assert g.initial_resolved == "model"  # the same seeded init on every rank
    train(model, g, opt, 3, 0)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved = statecodec.pack(g.state_dict())
    train(model, g, opt, 4, 3)
    want = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    model2 = make()
    model2.load_state_dict(saved_model)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05)
    g2 = Gossip(model2, topology="ring", compressor="sign", gamma=0.2, transport=t, timeout=30)
    g2.load_state_dict(statecodec.unpack(saved))
    train(model2, g2, opt2, 4, 3)
    assert want == b"".join(p.detach().numpy().tobytes() for p in model2.parameters())


def _expect(kind, fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ != kind:
            raise AssertionError(f"expected {kind}, found {type(exc).__name__}: {exc}") from exc
        return type(exc).__name__
    raise AssertionError(f"expected {kind}, nothing was raised")


def _mismatch_at_construction(t):
    from gcomp.decentralized import Gossip

    sub = t.split(0)
    spec = "topk:ratio=0.2" if t.rank == 2 else "topk:ratio=0.1"
    return _expect("MismatchError", lambda: Gossip(_start(t.rank, 100), topology="ring", compressor=spec, gamma=0.2,
                                                   transport=sub, timeout=20))


def _mismatch_in_packets(t):
    from gcomp.decentralized import Gossip

    sub = t.split(0)
    start = time.monotonic()

    def run():
        g = Gossip(_start(t.rank, 100), topology="ring", compressor="topk:ratio=0.1", gamma=0.3 if t.rank == 1 else 0.2,
                   transport=sub, timeout=20, agree=False)
        for _ in range(6):
            g.step()

    kind = _expect("MismatchError", run)
    assert time.monotonic() - start < 15
    return kind


def _nonfinite_raise(t):
    from gcomp.decentralized import Gossip

    sub = t.split(0)

    def run():
        x = _start(t.rank, 100)
        g = Gossip(x, topology="ring", transport=sub, nonfinite="raise", timeout=20)
        for k in range(6):
            if t.rank == 0 and k == 1:
                x[3] = np.nan
            g.step()

    return _expect("NonFiniteError", run)


CHECKS = {
    "choco-ring": _choco_ring,
    "exact-exponential": _exact_exponential,
    "torch-model-checkpoint": _torch_model_and_checkpoint,
    "mismatch-at-construction": _mismatch_at_construction,
    "mismatch-in-packets": _mismatch_in_packets,
    "nonfinite-raise": _nonfinite_raise,
}


def worker(rank, world_size):
    from gcomp.transports import TorchTransport

    t = TorchTransport(timeout=30)
    results = {}
    for name, check in CHECKS.items():
        results[name] = capture(check, t)
        t.barrier()
    return results


@functools.cache
def run():
    return launch(worker, P, timeout=240.0, pg_timeout=60.0)


@pytest.mark.parametrize("check", list(CHECKS))
def test_gloo(check):
    reports = {rank: results[check] for rank, results in enumerate(run())}
    failed = {rank: rep for rank, rep in reports.items() if rep[0] != "ok"}
    assert not failed, f"{check} on {P} gloo ranks failed: {failed}"


def test_choco_bytes_are_the_same_per_rank():
    sent = [results["choco-ring"][1] for results in run()]
    assert max(sent) - min(sent) <= 0.1 * max(sent), sent


def dying_worker(rank, world_size):
    import os

    from gcomp.decentralized import Gossip
    from gcomp.transports import TorchTransport

    t = TorchTransport()
    x = _start(rank, 200)
    g = Gossip(x, topology="ring", compressor="topk:ratio=0.1", gamma=0.2, transport=t, timeout=20)
    start = time.monotonic()
    try:
        for k in range(50):
            if rank == 2 and k == 3:
                os._exit(1)  # dies between two rounds
            g.step()
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return type(exc).__name__, str(exc)[:300], time.monotonic() - start
    return "ok", "", time.monotonic() - start


def test_a_dead_neighbour_makes_every_other_rank_raise_not_hang():
    results = launch(dying_worker, P, timeout=120.0, pg_timeout=60.0, may_die=(2,))
    assert results[2] == DIED
    for rank in (0, 1, 3):
        kind, message, seconds = results[rank]
        assert kind == "CollectiveError", results
        assert seconds < 25, results  # within the 20 s timeout, not gloo's 60 s one
    assert "rank 2" in results[1][1] and "rank 2" in results[3][1]
