"""Transport.neighbor_exchange / neighbor_post and the per-peer byte counters, in-process (LocalTransport).

The same checks run on real gloo ranks (tests/transports/test_torch.py, ``neighbor-*``) and under mpiexec
(tests/transports/scripts/exchange_split.py, ``neighbor/*``).
"""

import threading
import time

import numpy as np
import pytest

from gcomp.errors import CollectiveError
from gcomp.transports import LocalGroup, run_local


def payload(src, dst):
    return np.arange(1 + 5 * src + 3 * dst, dtype=np.float32) + 100 * src + dst


def test_ring_both_ways_with_total_and_per_peer_counts():
    def fn(t):
        nxt, prv = (t.rank + 1) % t.size, (t.rank - 1) % t.size
        out = t.neighbor_exchange({nxt: payload(t.rank, nxt), prv: payload(t.rank, prv)}, [prv, nxt])
        assert list(out) == [prv, nxt]
        for p in (prv, nxt):
            np.testing.assert_array_equal(out[p].view(np.float32), payload(p, t.rank))
            assert out[p].dtype == np.uint8 and out[p].flags.writeable
        return t.counter.snapshot(), t.bytes_by_peer()

    for rank, ((sent, received), by_peer) in enumerate(run_local(4, fn)):
        nxt, prv = (rank + 1) % 4, (rank - 1) % 4
        assert by_peer == {p: (payload(rank, p).nbytes + 8, payload(p, rank).nbytes + 8) for p in sorted((nxt, prv))}
        assert sent == sum(s for s, _ in by_peer.values()) and received == sum(r for _, r in by_peer.values())


def test_exchange_counts_per_peer_too():
    def fn(t):
        peer = 1 - t.rank
        t.exchange({peer: b"abc"}, [peer])
        return t.bytes_by_peer()

    assert run_local(2, fn) == [{1: (11, 11)}, {0: (11, 11)}]


def test_its_own_channel_never_pairs_with_exchange():
    def fn(t):
        if t.rank == 0:
            t.exchange({1: b"exchange"}, [])
            t.neighbor_exchange({1: b"neighbor"}, [])
            return None
        got_neighbor = bytes(t.neighbor_exchange({}, [0])[0])
        got_exchange = bytes(t.exchange({}, [0])[0])
        return got_neighbor, got_exchange

    assert run_local(2, fn)[1] == (b"neighbor", b"exchange")


def test_a_neighbour_that_never_calls_times_out_naming_it():
    t0, _t1, _t2 = LocalGroup(3, timeout=60).transports()
    start = time.monotonic()
    with pytest.raises(CollectiveError, match="timed out after 0.3 s waiting for a buffer from rank 2"):
        t0.neighbor_exchange({1: b"x"}, [2], timeout=0.3)
    assert 0.25 <= time.monotonic() - start < 5


def test_default_timeout_is_the_groups():
    t0, _t1 = LocalGroup(2, timeout=0.2).transports()
    assert t0.neighbor_timeout == 0.2
    with pytest.raises(CollectiveError, match="timed out"):
        t0.neighbor_exchange({}, [1])


def test_check_sees_the_buffers_and_its_error_propagates():
    seen = {}

    def fn(t):
        peer = 1 - t.rank

        def check(bufs):
            seen[t.rank] = {p: bytes(b) for p, b in bufs.items()}
            if t.rank == 0:
                raise ValueError("bad packet")

        if t.rank == 0:
            with pytest.raises(ValueError, match="bad packet"):
                t.neighbor_exchange({peer: bytes([t.rank])}, [peer], check=check)
        else:
            t.neighbor_exchange({peer: bytes([t.rank])}, [peer], check=check)

    run_local(2, fn)
    assert seen == {0: {1: b"\x01"}, 1: {0: b"\x00"}}


def test_post_is_received_by_the_next_exchange_and_counted():
    def fn(t):
        if t.rank == 0:
            t.neighbor_post({1: b"notice", 2: b"notice!"})
            return t.counter.snapshot(), t.bytes_by_peer()
        return bytes(t.neighbor_exchange({}, [0])[0])

    (snap, by_peer), got1, got2 = run_local(3, fn)
    assert (got1, got2) == (b"notice", b"notice!")
    assert snap == (6 + 7 + 16, 0) and by_peer == {1: (14, 0), 2: (15, 0)}


def test_validation_before_anything_moves():
    t = LocalGroup(3, timeout=0.5).transports()[1]
    for sends, recv_from, text in (({1: b"x"}, [], "peer 1"), ({}, [3], "peer 3"), ({}, [0, 0], "more than once")):
        with pytest.raises(ValueError, match=text):
            t.neighbor_exchange(sends, recv_from)
    for bad in (0, -1, float("nan"), "1", True):
        with pytest.raises(ValueError, match="timeout"):
            t.neighbor_exchange({0: b"x"}, [], timeout=bad)
    assert t.bytes_sent == 0 and not t.group._queues and t.bytes_by_peer() == {}


def test_late_sender_within_the_timeout():
    group = LocalGroup(2, timeout=5)
    t0, t1 = group.transports()
    timer = threading.Timer(0.2, lambda: t1.neighbor_exchange({0: b"late"}, []))
    timer.start()
    try:
        assert bytes(t0.neighbor_exchange({}, [1], timeout=3)[1]) == b"late"
    finally:
        timer.join()
