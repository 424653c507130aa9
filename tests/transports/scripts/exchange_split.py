"""Per-rank program: MPITransport.exchange, split and split_by_node under mpiexec (run by tests/transports/test_mpi.py).

    mpiexec -n 3 python -m mpi4py tests/transports/scripts/exchange_split.py

Prints ``CHECK <name> rank=<r> ok|FAIL ...`` per check and ``DONE rank=<r>
failures=<k>`` (the markers tests/mpi/launch.py parses).  Every check ends
with a barrier on COMM_WORLD so that a failed one cannot leave a peer
mid-exchange in the next.  The last checks run with pickle patched to raise:
the transport uses buffer methods only.
"""

import contextlib
import os
import pickle
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "mpi", "scripts"))
import _harness  # noqa: E402  (the CHECK/DONE markers tests/mpi/launch.py parses)

from gcomp.errors import CollectiveError, ConfigError
from gcomp.transports import Transport
from gcomp.transports.mpi import EXCHANGE_TAG, NEIGHBOR_TAG, MPITransport


class Checks(_harness.Checks):
    """tests/mpi/scripts/_harness.py's markers, with a barrier after every check."""

    @contextlib.contextmanager
    def check(self, name):
        with super().check(name):
            yield
        self.comm.Barrier()


def payload(src, dst):
    n = 1 + 7 * src + 3 * dst
    return np.arange(n, dtype=np.float64) + 1000 * src + dst


def expect_raises(exc_type, fn, text):
    try:
        fn()
    except exc_type as exc:
        assert text in str(exc), f"expected {text!r} in {exc}"
        return
    raise AssertionError(f"expected {exc_type.__name__} containing {text!r}")


def main():
    world = MPI.COMM_WORLD
    h = Checks(world)
    t = MPITransport(world)
    rank, size = t.rank, t.size
    nxt, prv = (rank + 1) % size, (rank - 1) % size

    with h.check("exchange/ring"):
        before = t.counter.snapshot()
        out = t.exchange({nxt: payload(rank, nxt)}, [prv])
        after = t.counter.snapshot()
        np.testing.assert_array_equal(out[prv].view(np.float64), payload(prv, rank))
        assert out[prv].dtype == np.uint8 and out[prv].flags.writeable
        assert after[0] - before[0] == payload(rank, nxt).nbytes + 8
        assert after[1] - before[1] == payload(prv, rank).nbytes + 8

    with h.check("exchange/ring-both-ways"):
        peers = sorted({nxt, prv})
        out = t.exchange({p: payload(rank, p) for p in peers}, list(reversed(peers)))
        assert list(out) == list(reversed(peers))
        for p in peers:
            np.testing.assert_array_equal(out[p].view(np.float64), payload(p, rank))

    with h.check("exchange/empty-and-bytes"):
        before = t.counter.snapshot()
        a = t.exchange({nxt: b""}, [prv])[prv]
        b = t.exchange({nxt: bytes([rank]) * (2 + rank)}, [prv])[prv]
        after = t.counter.snapshot()
        assert a.size == 0 and bytes(b) == bytes([prv]) * (2 + prv)
        assert after[0] - before[0] == (2 + rank) + 16 and after[1] - before[1] == (2 + prv) + 16

    with h.check("exchange/asymmetric"):
        last = size - 1
        if rank == 0:
            assert t.exchange({p: payload(0, p) for p in range(1, size)}, []) == {}
        elif rank == last:
            out = t.exchange({}, list(range(last)))
            for p in range(last):
                np.testing.assert_array_equal(out[p].view(np.float64), payload(p, last))
        else:
            out = t.exchange({last: payload(rank, last)}, [0])
            np.testing.assert_array_equal(out[0].view(np.float64), payload(0, rank))

    with h.check("exchange/bystander"):
        if rank < 2:
            out = t.exchange({1 - rank: payload(rank, 1 - rank)}, [1 - rank])
            np.testing.assert_array_equal(out[1 - rank].view(np.float64), payload(1 - rank, rank))

    with h.check("exchange/validation"):
        expect_raises(ValueError, lambda: t.exchange({rank: b"x"}, []), f"peer {rank}")
        expect_raises(ValueError, lambda: t.exchange({}, [size]), f"peer {size}")
        expect_raises(ValueError, lambda: t.exchange({}, [nxt, nxt]), "more than once")
        assert not world.Iprobe(source=MPI.ANY_SOURCE, tag=EXCHANGE_TAG)  # nothing was sent

    with h.check("neighbor/ring"):
        peers = sorted({nxt, prv})
        before, peers_before = t.counter.snapshot(), t.bytes_by_peer()
        out = t.neighbor_exchange({p: payload(rank, p) for p in peers}, list(reversed(peers)), timeout=20)
        assert list(out) == list(reversed(peers))
        for p in peers:
            np.testing.assert_array_equal(out[p].view(np.float64), payload(p, rank))
        after, peers_after = t.counter.snapshot(), t.bytes_by_peer()
        assert after[0] - before[0] == sum(payload(rank, p).nbytes + 8 for p in peers)
        assert after[1] - before[1] == sum(payload(p, rank).nbytes + 8 for p in peers)
        for p in peers:
            s0, r0 = peers_before.get(p, (0, 0))
            assert peers_after[p] == (s0 + payload(rank, p).nbytes + 8, r0 + payload(p, rank).nbytes + 8), p

    with h.check("neighbor/channel"):
        # a neighbour message, then an exchange message, received in the other order: the channels never pair
        if rank == 0:
            t.neighbor_post({1: b"neighbor"})
            t.exchange({1: b"exchange"}, [])
        elif rank == 1:
            assert bytes(t.exchange({}, [0])[0]) == b"exchange"
            assert bytes(t.neighbor_exchange({}, [0], timeout=20)[0]) == b"neighbor"

    with h.check("neighbor/check-abandons-sends"):
        # a large (rendezvous) send that rank 1 receives only later: rank 0's check raises and it returns at once
        big = np.zeros(1 << 20, np.uint8)
        if rank == 0:
            start = MPI.Wtime()
            try:
                t.neighbor_exchange({1: big}, [1], timeout=20, check=lambda bufs: (_ for _ in ()).throw(ValueError("no")))
            except ValueError:
                pass
            else:
                raise AssertionError("expected the check's ValueError")
            assert MPI.Wtime() - start < 1.0, MPI.Wtime() - start
            world.Barrier()
            assert len(t._unfinished) == 1
            t.neighbor_exchange({}, [], timeout=20)  # reaps what has completed meanwhile (nothing to do here)
        elif rank == 1:
            t.neighbor_exchange({0: b"x"}, [], timeout=20)
            world.Barrier()
            assert t.neighbor_exchange({}, [0], timeout=20)[0].nbytes == big.nbytes
        else:
            world.Barrier()

    with h.check("neighbor/post"):
        if rank == 0:
            t.neighbor_post({p: bytes([p]) * 3 for p in range(1, size)})
        else:
            assert bytes(t.neighbor_exchange({}, [0], timeout=20)[0]) == bytes([rank]) * 3

    with h.check("neighbor/timeout"):
        # rank 1 never sends: rank 0 raises naming it after about the timeout, its receive cancelled
        if rank == 0:
            start = MPI.Wtime()
            try:
                t.neighbor_exchange({}, [1], timeout=0.5)
            except CollectiveError as exc:
                assert "timed out after 0.5 s" in str(exc) and "rank 1" in str(exc), str(exc)
            else:
                raise AssertionError("expected CollectiveError")
            assert 0.4 < MPI.Wtime() - start < 5
        assert not world.Iprobe(source=MPI.ANY_SOURCE, tag=NEIGHBOR_TAG)  # nothing left in flight

    with h.check("split/none-and-key"):
        color = None if rank == size - 1 else 0
        sub = t.split(color, key=-rank)
        if color is None:
            assert sub is None
        else:
            members = list(range(size - 2, -1, -1))
            assert (sub.rank, sub.size) == (members.index(rank), size - 1), (sub.rank, sub.size)
            total = np.array([float(rank + 1)])
            sub.allreduce_(total)
            assert total[0] == sum(r + 1 for r in members)
            if sub.size > 1:
                n2, p2 = (sub.rank + 1) % sub.size, (sub.rank - 1) % sub.size
                out = sub.exchange({n2: np.array([rank], np.int64)}, [p2])
                assert int(out[p2].view(np.int64)[0]) == members[p2]
            assert sub.owns_comm
            sub.free()
            assert sub.comm == MPI.COMM_NULL and not sub.owns_comm
            sub.free()  # idempotent

    with h.check("split/parity-large-keys"):
        sub = t.split(rank % 2, key=(2**40) * (size - rank))  # keys beyond a C int are fine
        members = sorted((r for r in range(size) if r % 2 == rank % 2), reverse=True)
        assert (sub.rank, sub.size) == (members.index(rank), len(members))
        sub.free()

    with h.check("split/bad-color"):
        expect_raises(ConfigError, lambda: t.split(-3 if rank == 0 else 1), "rank(s) [0]")

    with h.check("split_by_node"):
        node = t.split_by_node()
        assert (node.rank, node.size) == (rank, size)  # one host
        generic = Transport.split_by_node(t)  # the hostname version agrees
        assert (generic.rank, generic.size) == (node.rank, node.size)
        total = np.array([1], np.int64)
        node.allreduce_(total)
        assert total[0] == size
        node.free()
        generic.free()

    with h.check("caller-comm-not-freed"):
        own = world.Dup()
        MPITransport(own).free()
        assert own != MPI.COMM_NULL and own.Get_size() == size
        own.Free()

    class PickleCalled(Exception):
        pass

    def refuse(*args, **kwargs):
        raise PickleCalled("pickle was called")

    saved = {name: getattr(pickle, name) for name in ("dumps", "loads", "dump", "load")}
    for name in saved:
        setattr(pickle, name, refuse)
    MPI.pickle.__init__(refuse, refuse)
    try:
        with h.check("nopickle/exchange-and-split"):
            expect_raises(PickleCalled, lambda: MPI.COMM_SELF.allgather(1), "pickle was called")  # the patch works
            out = t.exchange({nxt: payload(rank, nxt)}, [prv])
            np.testing.assert_array_equal(out[prv].view(np.float64), payload(prv, rank))
            out = t.neighbor_exchange({nxt: payload(rank, nxt)}, [prv], timeout=20)
            np.testing.assert_array_equal(out[prv].view(np.float64), payload(prv, rank))
            sub = t.split(None if rank == 0 else 1)
            assert (sub is None) == (rank == 0)
            if sub is not None:
                sub.free()
            t.split_by_node().free()
    finally:
        for name, fn in saved.items():
            setattr(pickle, name, fn)
        MPI.pickle.__init__(pickle.dumps, pickle.loads)
    h.done()


if __name__ == "__main__":
    main()
