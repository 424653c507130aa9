"""TorchTransport.exchange, split and split_by_node on real gloo process groups (spawned ranks, 2 and 3).

One launch per world size runs every check (a spawned rank's ``import torch``
is most of the cost); each test reads one check's per-rank outcome.
"""

import functools

import numpy as np
import pytest

try:  # pytest puts tests/ on sys.path (tests/ddp and tests/transports are packages under it)
    from ddp.launch import capture, launch
except ImportError:  # pragma: no cover - run from the repository root in another import mode
    from tests.ddp.launch import capture, launch

pytestmark = pytest.mark.slow

SIZES = (2, 3)


def payload(src, dst):
    n = 1 + 7 * src + 3 * dst
    return (np.arange(n, dtype=np.float64) + 1000 * src + dst)


# ---------------------------------------------------------------------------
# the checks, run inside each rank (dist is initialised: gloo, world group)
# ---------------------------------------------------------------------------
def _ring(t):
    nxt, prv = (t.rank + 1) % t.size, (t.rank - 1) % t.size
    before = t.counter.snapshot()
    out = t.exchange({nxt: payload(t.rank, nxt)}, [prv])
    after = t.counter.snapshot()
    np.testing.assert_array_equal(out[prv].view(np.float64), payload(prv, t.rank))
    assert out[prv].dtype == np.uint8 and out[prv].flags.writeable
    assert after[0] - before[0] == payload(t.rank, nxt).nbytes + 8, (before, after)
    assert after[1] - before[1] == payload(prv, t.rank).nbytes + 8, (before, after)


def _ring_both_ways(t):
    peers = sorted({(t.rank + 1) % t.size, (t.rank - 1) % t.size})
    out = t.exchange({p: payload(t.rank, p) for p in peers}, list(reversed(peers)))
    assert list(out) == list(reversed(peers))
    for p in peers:
        np.testing.assert_array_equal(out[p].view(np.float64), payload(p, t.rank))


def _empty(t):
    nxt, prv = (t.rank + 1) % t.size, (t.rank - 1) % t.size
    before = t.counter.snapshot()
    out = t.exchange({nxt: b""}, [prv])
    out2 = t.exchange({nxt: np.zeros(0, np.float32)}, [prv])
    assert out[prv].size == 0 and out2[prv].size == 0 and out[prv].dtype == np.uint8
    after = t.counter.snapshot()
    assert (after[0] - before[0], after[1] - before[1]) == (16, 16)


def _bytes_input(t):
    nxt, prv = (t.rank + 1) % t.size, (t.rank - 1) % t.size
    out = t.exchange({nxt: bytes([t.rank]) * (5 + t.rank)}, [prv])  # read-only source buffer
    assert bytes(out[prv]) == bytes([prv]) * (5 + prv)


def _asymmetric(t):
    # rank 0 only sends (to every other rank); the last rank only receives (from every other rank);
    # middle ranks receive from 0 and send to the last
    last = t.size - 1
    if t.rank == 0:
        out = t.exchange({p: payload(0, p) for p in range(1, t.size)}, [])
        assert out == {}
    elif t.rank == last:
        out = t.exchange({}, list(range(last)))
        for p in range(last):
            np.testing.assert_array_equal(out[p].view(np.float64), payload(p, last))
    else:
        out = t.exchange({last: payload(t.rank, last)}, [0])
        np.testing.assert_array_equal(out[0].view(np.float64), payload(0, t.rank))


def _bystander(t):
    # only ranks 0 and 1 exchange; any other rank does not call
    if t.rank < 2:
        peer = 1 - t.rank
        out = t.exchange({peer: payload(t.rank, peer)}, [peer])
        np.testing.assert_array_equal(out[peer].view(np.float64), payload(peer, t.rank))
    t.barrier()


def _validation(t):
    for sends, recv_from, peer in (({t.rank: b"x"}, [], t.rank), ({}, [t.size], t.size), ({}, [-1], -1)):
        try:
            t.exchange(sends, recv_from)
        except ValueError as exc:
            assert f"peer {peer}" in str(exc), str(exc)
        else:
            raise AssertionError(f"expected a ValueError for peer {peer}")
    if t.size > 2:
        try:
            t.exchange({}, [(t.rank + 1) % t.size] * 2)
        except ValueError as exc:
            assert "more than once" in str(exc)
        else:
            raise AssertionError("expected a ValueError for duplicate sources")


def _split_none_allreduce(t):
    # last rank opts out; the rest split into colors by parity, ordered by descending rank
    color = None if t.rank == t.size - 1 else t.rank % 2
    sub = t.split(color, key=-t.rank)
    if color is None:
        assert sub is None
        return None
    members = sorted((r for r in range(t.size - 1) if r % 2 == color), reverse=True)
    assert (sub.rank, sub.size) == (members.index(t.rank), len(members)), (sub.rank, sub.size, members)
    assert sub.timeout == t.timeout
    total = np.array([float(t.rank + 1)], np.float32)
    sub.allreduce_(total)
    assert total[0] == sum(r + 1 for r in members), (total, members)
    gathered = sub.allgatherv(np.array([t.rank], np.uint8))
    assert [int(b[0]) for b in gathered] == members
    return sub.rank, sub.size


def _split_all_one_color_by_key(t):
    # one group of everybody, reversed by key: exchange inside it addresses group ranks (global ranks differ)
    sub = t.split(0, key=t.size - t.rank)
    assert sub.rank == t.size - 1 - t.rank
    nxt, prv = (sub.rank + 1) % sub.size, (sub.rank - 1) % sub.size
    out = sub.exchange({nxt: np.array([t.rank], np.int64)}, [prv])
    assert int(out[prv].view(np.int64)[0]) == t.size - 1 - prv
    total = np.array([1], np.int64)
    sub.allreduce_(total)
    assert total[0] == t.size


def _split_of_a_part(t):
    # a transport over part of the world (ranks 0 and 1 only) splits again: local synchronisation in torch
    part = t.split(0 if t.rank < 2 else None)
    if part is None:
        return None
    single = part.split(part.rank, key=0)
    assert single.size == 1
    again = part.split(0, key=-part.rank)
    assert again.rank == 1 - part.rank
    total = np.array([float(t.rank)])
    again.allreduce_(total)
    assert total[0] == 1.0
    out = again.exchange({1 - again.rank: np.array([t.rank], np.int64)}, [1 - again.rank])
    assert int(out[1 - again.rank].view(np.int64)[0]) == 1 - t.rank
    return again.rank


def _bad_color(t):
    from gcomp.errors import ConfigError

    try:
        t.split("blue" if t.rank == 1 else 0)
    except ConfigError as exc:
        assert "rank(s) [1]" in str(exc), str(exc)
    else:
        raise AssertionError("expected ConfigError on every rank")


def _split_by_node(t):
    node = t.split_by_node()  # every rank runs on this host
    assert (node.rank, node.size) == (t.rank, t.size)
    total = np.array([1.0])
    node.allreduce_(total)
    assert total[0] == t.size
    node.free()


def _collectives_unchanged(t):
    before = t.counter.snapshot()
    a = np.arange(6, dtype=np.float32) + t.rank
    t.allreduce_(a)
    np.testing.assert_array_equal(a, np.arange(6, dtype=np.float32) * t.size + sum(range(t.size)))
    g = t.allgatherv(np.full(t.rank + 1, t.rank, np.uint8))
    assert [v.tolist() for v in g] == [[r] * (r + 1) for r in range(t.size)]
    after = t.counter.snapshot()
    moved = 2 * (t.size - 1) * 24 // t.size
    others = sum(r + 1 for r in range(t.size) if r != t.rank)
    assert after[0] - before[0] == moved + (t.rank + 1) * (t.size - 1) + 8 * (t.size - 1)
    assert after[1] - before[1] == moved + others + 8 * (t.size - 1)


def _neighbor_ring(t):
    nxt, prv = (t.rank + 1) % t.size, (t.rank - 1) % t.size
    peers = sorted({nxt, prv})
    before, peers_before = t.counter.snapshot(), t.bytes_by_peer()
    out = t.neighbor_exchange({p: payload(t.rank, p) for p in peers}, list(reversed(peers)), timeout=20)
    assert list(out) == list(reversed(peers))
    for p in peers:
        np.testing.assert_array_equal(out[p].view(np.float64), payload(p, t.rank))
    after, peers_after = t.counter.snapshot(), t.bytes_by_peer()
    assert after[0] - before[0] == sum(payload(t.rank, p).nbytes + 8 for p in peers)
    assert after[1] - before[1] == sum(payload(p, t.rank).nbytes + 8 for p in peers)
    for p in peers:
        s0, r0 = peers_before.get(p, (0, 0))
        assert peers_after[p] == (s0 + payload(t.rank, p).nbytes + 8, r0 + payload(p, t.rank).nbytes + 8), p


def _neighbor_channel(t):
    # a neighbour message, then an exchange message, received in the other order: the channels never pair
    if t.rank == 0:
        t.neighbor_post({1: b"neighbor"})
        t.exchange({1: b"exchange"}, [])
    elif t.rank == 1:
        assert bytes(t.exchange({}, [0])[0]) == b"exchange"
        assert bytes(t.neighbor_exchange({}, [0], timeout=20)[0]) == b"neighbor"


def _neighbor_check_abandons_sends(t):
    # rank 1 receives rank 0's buffer only later: rank 0's check raises and returns without waiting for that send
    import time

    if t.rank == 0:
        start = time.monotonic()
        try:
            t.neighbor_exchange({1: np.zeros(1 << 18, np.uint8)}, [1], timeout=20,
                                check=lambda bufs: (_ for _ in ()).throw(ValueError("refused")))
        except ValueError:
            pass
        else:
            raise AssertionError("expected the check's ValueError")
        assert time.monotonic() - start < 1.5, time.monotonic() - start
        t.barrier()
    elif t.rank == 1:
        t.neighbor_exchange({0: b"x"}, [], timeout=20)
        t.barrier()
        import time as _t

        _t.sleep(0.1)
        assert t.neighbor_exchange({}, [0], timeout=20)[0].nbytes == 1 << 18
    else:
        t.barrier()


def _neighbor_post(t):
    if t.rank == 0:
        t.neighbor_post({p: bytes([p]) * 3 for p in range(1, t.size)})
    else:
        assert bytes(t.neighbor_exchange({}, [0], timeout=20)[0]) == bytes([t.rank]) * 3


def _neighbor_timeout(t):
    # the last check, with no barrier after it: a gloo wait that times out closes links of the process
    import time

    from gcomp.errors import CollectiveError

    if t.rank == 0:
        start = time.monotonic()
        try:
            t.neighbor_exchange({}, [1], timeout=1.0)
        except CollectiveError as exc:
            assert "timed out" in str(exc) and "rank 1" in str(exc), str(exc)
        else:
            raise AssertionError("expected CollectiveError")
        assert time.monotonic() - start < 10
    else:
        time.sleep(3.0)  # alive (a dead peer is reported at once, as a closed connection) but never sending


CHECKS = {
    "ring": _ring,
    "ring-both-ways": _ring_both_ways,
    "empty": _empty,
    "bytes-input": _bytes_input,
    "asymmetric": _asymmetric,
    "bystander": _bystander,
    "validation": _validation,
    "split-none-allreduce": _split_none_allreduce,
    "split-by-key": _split_all_one_color_by_key,
    "split-of-a-part": _split_of_a_part,
    "bad-color": _bad_color,
    "split-by-node": _split_by_node,
    "collectives-unchanged": _collectives_unchanged,
    "neighbor-ring": _neighbor_ring,
    "neighbor-channel": _neighbor_channel,
    "neighbor-check-abandons-sends": _neighbor_check_abandons_sends,
    "neighbor-post": _neighbor_post,
    "neighbor-timeout": _neighbor_timeout,  # last: it breaks a pair of its own group
}


def worker(rank, world_size):
    from gcomp.transports import TorchTransport

    t = TorchTransport(timeout=30)
    results = {}
    for name, check in CHECKS.items():
        results[name] = capture(check, t)
        if name != "neighbor-timeout":
            t.barrier()  # a failed check must not leave its peers mid-exchange in the next one
    return results


@functools.cache
def run(world_size):
    return launch(worker, world_size, timeout=120.0, pg_timeout=30.0)


@pytest.mark.parametrize("world_size", SIZES)
@pytest.mark.parametrize("check", list(CHECKS))
def test_gloo(world_size, check):
    reports = {rank: results[check] for rank, results in enumerate(run(world_size))}
    failed = {rank: rep for rank, rep in reports.items() if rep[0] != "ok"}
    assert not failed, f"{check} on {world_size} gloo ranks failed: {failed}"


def test_split_results_at_3():
    results = run(3)
    assert [r["split-none-allreduce"][1] for r in results] == [(0, 1), (0, 1), None]
    assert [r["split-of-a-part"][1] for r in results] == [1, 0, None]
