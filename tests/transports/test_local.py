"""Transport.exchange, split and split_by_node on the in-process LocalTransport (threads; fast)."""

import socket
import threading
import time

import numpy as np
import pytest

from gcomp.errors import CollectiveError, ConfigError
from gcomp.transports import LocalGroup, LocalTransport, Transport, run_local


def payload(src, dst, dtype=np.float32):
    """A buffer whose length and contents depend on the (src, dst) pair."""
    n = 1 + 3 * src + 5 * dst
    return (np.arange(n) * 10 + 100 * src + dst).astype(dtype)


def expected_bytes(src, dst, dtype=np.float32):
    return payload(src, dst, dtype).view(np.uint8)


# ---------------------------------------------------------------------------
# exchange
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", [3, 4])
def test_ring_both_directions_different_sizes(size):
    def fn(t):
        nxt, prv = (t.rank + 1) % t.size, (t.rank - 1) % t.size
        out = t.exchange({nxt: payload(t.rank, nxt), prv: payload(t.rank, prv)}, [prv, nxt])
        assert list(out) == [prv, nxt]  # in recv_from order
        for peer in (prv, nxt):
            assert out[peer].dtype == np.uint8 and out[peer].flags.writeable
            np.testing.assert_array_equal(out[peer], expected_bytes(peer, t.rank))
        return t.bytes_sent, t.bytes_received

    results = run_local(size, fn)
    for rank, (sent, received) in enumerate(results):
        nxt, prv = (rank + 1) % size, (rank - 1) % size
        assert sent == payload(rank, nxt).nbytes + payload(rank, prv).nbytes + 16
        assert received == payload(nxt, rank).nbytes + payload(prv, rank).nbytes + 16


@pytest.mark.parametrize("size", [3, 4])
def test_one_directional_ring_counters_exact(size):
    def fn(t):
        nxt, prv = (t.rank + 1) % t.size, (t.rank - 1) % t.size
        before = t.counter.snapshot()
        out = t.exchange({nxt: payload(t.rank, nxt, np.float64)}, [prv])
        after = t.counter.snapshot()
        return after[0] - before[0], after[1] - before[1], out[prv].view(np.float64)

    for rank, (sent, received, got) in enumerate(run_local(size, fn)):
        prv = (rank - 1) % size
        assert sent == payload(rank, (rank + 1) % size, np.float64).nbytes + 8
        assert received == payload(prv, rank, np.float64).nbytes + 8
        np.testing.assert_array_equal(got, payload(prv, rank, np.float64))


def test_empty_buffers_and_bytes_inputs():
    def fn(t):
        peer = 1 - t.rank
        a = t.exchange({peer: np.zeros(0, np.float32)}, [peer])
        b = t.exchange({peer: b""}, [peer])
        c = t.exchange({peer: bytes([t.rank]) * (3 + t.rank)}, [peer])
        d = t.exchange({peer: bytearray(b"xy")}, [peer])
        return a[peer], b[peer], c[peer], d[peer], t.bytes_sent, t.bytes_received

    for rank, (a, b, c, d, sent, received) in enumerate(run_local(2, fn)):
        assert a.dtype == np.uint8 and a.size == 0
        assert b.size == 0
        assert bytes(c) == bytes([1 - rank]) * (3 + 1 - rank)
        assert c.flags.writeable  # a copy, even of a bytes object
        assert bytes(d) == b"xy"
        assert sent == 0 + 0 + (3 + rank) + 2 + 4 * 8
        assert received == 0 + 0 + (3 + 1 - rank) + 2 + 4 * 8


def test_returned_arrays_are_copies():
    def fn(t):
        peer = 1 - t.rank
        src = np.arange(8, dtype=np.uint8)
        out = t.exchange({peer: src}, [peer])[peer]
        out[:] = 0  # writable, and writing does not touch the sender's buffer
        t.barrier()
        return src

    for src in run_local(2, fn):
        np.testing.assert_array_equal(src, np.arange(8, dtype=np.uint8))


def test_asymmetric_sender_only_receiver_only_and_bystander():
    # P=4: rank 0 only sends (to 1 and 2), rank 2 only receives (from 0 and 1), rank 1 both, rank 3 not involved
    def fn(t):
        if t.rank == 0:
            out = t.exchange({1: payload(0, 1), 2: payload(0, 2)}, [])
        elif t.rank == 1:
            out = t.exchange({2: payload(1, 2)}, [0])
        elif t.rank == 2:
            out = t.exchange({}, (r for r in (1, 0)))  # any iterable
        else:
            out = None  # rank 3 does not call
        return out, t.bytes_sent, t.bytes_received

    (o0, s0, r0), (o1, s1, r1), (o2, s2, r2), (o3, s3, r3) = run_local(4, fn)
    assert o0 == {} and s0 == payload(0, 1).nbytes + payload(0, 2).nbytes + 16 and r0 == 0
    np.testing.assert_array_equal(o1[0], expected_bytes(0, 1))
    assert s1 == payload(1, 2).nbytes + 8 and r1 == payload(0, 1).nbytes + 8
    assert list(o2) == [1, 0]
    np.testing.assert_array_equal(o2[0], expected_bytes(0, 2))
    np.testing.assert_array_equal(o2[1], expected_bytes(1, 2))
    assert s2 == 0 and r2 == payload(0, 2).nbytes + payload(1, 2).nbytes + 16
    assert o3 is None and s3 == r3 == 0


def test_messages_between_a_pair_keep_their_order():
    def fn(t):
        if t.rank == 0:
            for i in range(5):
                t.exchange({1: np.full(i + 1, i, np.uint8)}, [])
            return None
        return [t.exchange({}, [0])[0].tolist() for _ in range(5)]

    assert run_local(2, fn)[1] == [[i] * (i + 1) for i in range(5)]


def test_nothing_to_do_is_a_no_op():
    t = LocalGroup(1).transports()[0]
    assert t.exchange({}, []) == {}
    assert t.bytes_sent == t.bytes_received == 0


@pytest.mark.parametrize(("sends", "recv_from", "peer"), [
    ({1: b"x"}, [], "1"),            # this rank (rank 1)
    ({}, [1], "1"),
    ({3: b"x"}, [], "3"),            # out of range
    ({}, [-1], "-1"),
    ({}, [7], "7"),
    ({"0": b"x"}, [], "'0'"),        # not an int
    ({}, [True], "True"),            # bool is not a rank
    ({}, [1.0], "1.0"),
])
def test_bad_peers_rejected_before_anything_moves(sends, recv_from, peer):
    t = LocalGroup(3, timeout=0.5).transports()[1]
    with pytest.raises(ValueError, match=f"peer {peer}"):
        t.exchange(sends, recv_from)
    assert t.bytes_sent == t.bytes_received == 0
    assert not t.group._queues  # nothing was sent


def test_duplicate_sources_rejected():
    t = LocalGroup(3, timeout=0.5).transports()[0]
    with pytest.raises(ValueError, match="rank 2 appears more than once"):
        t.exchange({1: b"a"}, [2, 1, 2])
    assert not t.group._queues and t.bytes_sent == 0


def test_numpy_integer_peers_accepted():
    def fn(t):
        peer = np.int64(1 - t.rank)
        return t.exchange({peer: b"ab"}, [np.int32(peer)])

    for out in run_local(2, fn):
        assert list(out) == [0] or list(out) == [1]
        assert all(type(k) is int for k in out)


def test_bad_buffers_rejected():
    t = LocalGroup(2, timeout=0.5).transports()[0]
    with pytest.raises(TypeError):
        t.exchange({1: np.zeros((2, 2))}, [])
    with pytest.raises(TypeError):
        t.exchange({1: [1, 2]}, [])
    with pytest.raises(TypeError):
        t.exchange([b"x"], [])
    with pytest.raises(TypeError):
        t.exchange({}, 1)


def test_receive_that_is_never_matched_times_out():
    group = LocalGroup(2, timeout=0.3)
    t0, _t1 = group.transports()
    start = time.monotonic()
    with pytest.raises(CollectiveError, match="from rank 1"):
        t0.exchange({}, [1])
    assert 0.25 <= time.monotonic() - start < 5
    assert t0.bytes_received == 0


def test_timeout_covers_the_whole_call():
    # rank 1 sends only after 0.2 s, rank 2 never: rank 0 gives up within about one timeout overall
    group = LocalGroup(3, timeout=0.4)
    t0, t1, _t2 = group.transports()
    sender = threading.Timer(0.2, lambda: t1.exchange({0: b"late"}, []))
    sender.start()
    start = time.monotonic()
    try:
        with pytest.raises(CollectiveError, match="from rank 2"):
            t0.exchange({}, [1, 2])
    finally:
        sender.join()
    assert time.monotonic() - start < 1.0


def test_exchange_is_not_available_on_the_bare_base_class():
    class Bare(Transport):
        size = 2

    with pytest.raises(NotImplementedError):
        Bare().exchange({1: b"x"}, [])


# ---------------------------------------------------------------------------
# split, split_by_node, free
# ---------------------------------------------------------------------------
def test_split_with_none_and_subgroup_collectives():
    def fn(t):
        color = None if t.rank == 2 else t.rank % 2
        sub = t.split(color)
        if sub is None:
            return None
        total = np.array([float(t.rank)])
        sub.allreduce_(total)
        return sub.rank, sub.size, float(total[0])

    assert run_local(5, fn) == [(0, 2, 4.0), (0, 2, 4.0), None, (1, 2, 4.0), (1, 2, 4.0)]


def test_split_orders_by_key_then_rank():
    def fn(t):
        key = {0: 5, 1: -1, 2: 5, 3: 0}[t.rank]
        sub = t.split(7, key=key)
        seen = sub.allgatherv(np.array([t.rank], np.uint8))
        return sub.rank, [int(b[0]) for b in seen]

    results = run_local(4, fn)
    # order by key: rank 1 (-1), rank 3 (0), then ranks 0 and 2 (5) in rank order
    assert [r for r, _ in results] == [2, 0, 3, 1]
    assert all(order == [1, 3, 0, 2] for _, order in results)


def test_split_uses_no_counted_bytes_and_exchange_works_in_subgroups():
    def fn(t):
        sub = t.split(t.rank % 2, key=-t.rank)
        assert t.bytes_sent == t.bytes_received == 0
        nxt, prv = (sub.rank + 1) % sub.size, (sub.rank - 1) % sub.size
        out = sub.exchange({nxt: np.array([t.rank], np.int64)}, [prv])
        return sub.rank, int(out[prv].view(np.int64)[0])

    # color 0: ranks [4, 2, 0] by key -rank; color 1: [3, 1]
    assert run_local(5, fn) == [(2, 2), (1, 3), (1, 4), (0, 1), (0, 0)]


def test_split_of_a_split():
    def fn(t):
        sub = t.split(0 if t.rank < 4 else None)
        if sub is None:
            return None
        subsub = sub.split(sub.rank // 2, key=-sub.rank)
        return subsub.rank, subsub.size

    assert run_local(5, fn) == [(1, 2), (0, 2), (1, 2), (0, 2), None]


def test_split_every_rank_none():
    assert run_local(3, lambda t: t.split(None)) == [None, None, None]


@pytest.mark.parametrize("bad", ["a", -1, 1.5, True, 2**63])
def test_invalid_color_raises_on_every_rank(bad):
    def fn(t, errors):
        try:
            t.split(bad if t.rank == 1 else 0)
        except ConfigError as exc:
            errors[t.rank] = str(exc)

    errors = {}
    run_local(3, fn, errors, timeout=5)
    assert sorted(errors) == [0, 1, 2]
    assert all("rank(s) [1]" in msg for msg in errors.values())
    assert repr(bad) in errors[1]


def test_invalid_key_raises_on_every_rank():
    def fn(t, errors):
        try:
            t.split(0, key="k" if t.rank == 0 else None)
        except ConfigError as exc:
            errors[t.rank] = str(exc)

    errors = {}
    run_local(2, fn, errors, timeout=5)
    assert sorted(errors) == [0, 1] and "'k'" in errors[0]


def test_split_on_one_rank():
    t = LocalGroup(1).transports()[0]
    sub = t.split(3, key=-4)
    assert isinstance(sub, LocalTransport) and (sub.rank, sub.size) == (0, 1)
    assert t.split(None) is None


def test_split_by_node_local_is_one_group_of_all():
    def fn(t):
        node = t.split_by_node()
        total = np.array([1.0])
        node.allreduce_(total)
        return node.rank, node.size, float(total[0])

    assert run_local(4, fn) == [(r, 4, 4.0) for r in range(4)]


def test_split_by_node_groups_by_hostname(monkeypatch):
    # pretend ranks 0 and 2 run on one host and ranks 1 and 3 on another
    names = {}

    def fake_hostname():
        return names[threading.current_thread().name]

    monkeypatch.setattr(socket, "gethostname", fake_hostname)

    def fn(t):
        names[threading.current_thread().name] = "even" if t.rank % 2 == 0 else "odd"
        t.barrier()
        node = t.split_by_node()
        seen = node.allgatherv(np.array([t.rank], np.uint8))
        return node.rank, [int(b[0]) for b in seen]

    assert run_local(4, fn) == [(0, [0, 2]), (0, [1, 3]), (1, [0, 2]), (1, [1, 3])]


def test_free_is_a_no_op_for_local():
    def fn(t):
        sub = t.split(0)
        sub.free()
        sub.free()
        return sub.size

    assert run_local(2, fn) == [2, 2]


def test_collectives_and_their_counters_unchanged():
    def fn(t):
        a = np.arange(6, dtype=np.float32) + t.rank
        t.allreduce_(a)
        g = t.allgatherv(np.full(t.rank + 1, t.rank, np.uint8))
        x = t.alltoallv([np.full(j + 1, t.rank, np.uint8) for j in range(t.size)])
        b = np.full(4, t.rank, np.float64)
        t.broadcast_(b, root=1)
        t.barrier()
        return a.tolist(), [v.tolist() for v in g], [v.tolist() for v in x], b.tolist(), t.counter.snapshot()

    results = run_local(3, fn)
    for rank, (a, g, x, b, (sent, received)) in enumerate(results):
        assert a == [3.0 + 3 * i for i in range(6)]
        assert g == [[0], [1, 1], [2, 2, 2]]
        assert x == [[j] * (rank + 1) for j in range(3)]
        assert b == [1.0] * 4
        moved = 2 * 2 * 24 // 3
        ag_sent, ag_recv = (rank + 1) * 2 + 16, sum(r + 1 for r in range(3) if r != rank) + 16
        a2a_sent, a2a_recv = sum(j + 1 for j in range(3) if j != rank) + 16, (rank + 1) * 2 + 16
        bc_sent, bc_recv = (64, 0) if rank == 1 else (0, 32)
        assert sent == moved + ag_sent + a2a_sent + bc_sent
        assert received == moved + ag_recv + a2a_recv + bc_recv
