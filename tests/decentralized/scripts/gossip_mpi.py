"""Per-rank program: gossip under real ``mpiexec -n 3`` (run by tests/decentralized/test_mpi.py).

    mpiexec -n 3 python -m mpi4py tests/decentralized/scripts/gossip_mpi.py

Prints ``CHECK <name> rank=<r> ok|FAIL ...`` per check and ``DONE rank=<r>
failures=<k>`` (tests/mpi/launch.py parses them), plus ``BYTES rank=<r>
<bytes of the last CHOCO round>``.  Every check ends with a barrier on
COMM_WORLD; the checks that make ranks fail run on a duplicate of it, so
that their leftover fault notices never reach a later check.  The last
check runs with pickle patched to raise: only buffer methods are used.
"""

import contextlib
import os
import pickle
import sys
import time

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "mpi",
                                "scripts"))
import _harness  # noqa: E402  (the CHECK/DONE markers tests/mpi/launch.py parses)

from gcomp import statecodec  # noqa: E402
from gcomp.decentralized import Gossip  # noqa: E402
from gcomp.transports.mpi import MPITransport  # noqa: E402


class Checks(_harness.Checks):
    @contextlib.contextmanager
    def check(self, name):
        with super().check(name):
            yield
        self.comm.Barrier()


def start(rank, n=2000):
    rng = np.random.default_rng([11, rank])
    return (rng.standard_normal(n) * 2 + rank).astype(np.float32)


def expect(kind, fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ != kind:
            raise AssertionError(f"expected {kind}, found {type(exc).__name__}: {exc}") from exc
        return str(exc)
    raise AssertionError(f"expected {kind}, nothing was raised")


def main():
    world = MPI.COMM_WORLD
    h = Checks(world)
    rank, size = world.Get_rank(), world.Get_size()
    t = MPITransport(world, timeout=30)

    for name, opts in (("choco-ring-topk", {"topology": "ring", "compressor": "topk:ratio=0.1", "gamma": 0.2}),
                       ("choco-exponential-topk", {"topology": "exponential", "compressor": "topk:ratio=0.1", "gamma": 0.2}),
                       ("choco-ring-qsgd", {"topology": "ring", "compressor": "qsgd", "gamma": 0.2}),
                       ("exact-exponential", {"topology": "exponential"})):
        with h.check(name):
            x = start(rank)
            rows0 = _harness.gather_rows(world, x)
            g = Gossip(x, transport=t, **opts)
            d0 = g.consensus_distance(exact=True)
            for _ in range(30):
                g.step()
            d1 = g.consensus_distance(exact=True)
            rows1 = _harness.gather_rows(world, x)
            drift = np.abs(rows1.astype(np.float64).mean(0) - rows0.astype(np.float64).mean(0)).max()
            assert drift < 30 * 1.2e-7 * np.abs(rows0).max(), drift
            assert d1 < 0.1 * d0, (d0, d1)
            if name == "choco-ring-topk":
                last = g.stats[-1]
                assert sorted(last.by_peer) == sorted({(rank + 1) % size, (rank - 1) % size})
                _harness.emit(f"BYTES rank={rank} {last.bytes_sent}")

    with h.check("checkpoint-bit-identical"):
        for opts in ({"topology": "ring", "compressor": "qsgd", "gamma": 0.2},
                     {"topology": "exponential", "compressor": "topk:ratio=0.1", "gamma": 0.3, "every": 2}):
            x = start(rank, 999)
            g = Gossip(x, transport=t, **opts)
            for _ in range(5):
                g.step()
            saved, saved_x = statecodec.pack(g.state_dict()), x.copy()
            for _ in range(6):
                g.step()
            want = x.copy()
            x2 = saved_x.copy()
            g2 = Gossip(x2, transport=t, **opts)
            g2.load_state_dict(statecodec.unpack(saved))
            for _ in range(6):
                g2.step()
            _harness.assert_same(x2, want, f"restored {opts}")

    with h.check("mismatch-at-construction"):
        sub = MPITransport(world.Dup(), timeout=20)
        spec = "sign" if rank == 1 else "topk:ratio=0.1"
        expect("MismatchError", lambda: Gossip(start(rank, 50), compressor=spec, gamma=0.2, transport=sub))

    with h.check("mismatch-in-packets"):
        sub = MPITransport(world.Dup(), timeout=20)
        began = time.monotonic()

        def run():
            g = Gossip(start(rank, 50), compressor="topk:ratio=0.1", gamma=0.3 if rank == 2 else 0.2, transport=sub,
                       agree=False)
            for _ in range(5):
                g.step()

        expect("MismatchError", run)
        assert time.monotonic() - began < 10

    with h.check("nonfinite-raise"):
        sub = MPITransport(world.Dup(), timeout=20)

        def run():
            x = start(rank, 50)
            g = Gossip(x, transport=sub, nonfinite="raise")
            for k in range(5):
                if rank == 0 and k == 2:
                    x[1] = np.inf
                g.step()

        expect("NonFiniteError", run)

    with h.check("stopped-neighbour"):
        # rank 1 stops gossiping (it stays alive, in the barrier): ranks 0 and 2 raise after the 2 s timeout
        sub = MPITransport(world.Dup(), timeout=2.0)
        g = Gossip(start(rank, 50), compressor="topk:ratio=0.1", gamma=0.2, transport=sub)
        if rank != 1:
            began = time.monotonic()
            message = expect("CollectiveError", lambda: [g.step() for _ in range(5)])
            assert "timed out after 2 s" in message or "reported a fault" in message, message
            assert time.monotonic() - began < 8

    class PickleCalled(Exception):
        pass

    def refuse(*args, **kwargs):
        raise PickleCalled("pickle was called")

    saved = {name: getattr(pickle, name) for name in ("dumps", "loads", "dump", "load")}
    for name in saved:
        setattr(pickle, name, refuse)
    MPI.pickle.__init__(refuse, refuse)
    try:
        with h.check("nopickle"):
            expect("PickleCalled", lambda: MPI.COMM_SELF.allgather(1))  # the patch works
            x = start(rank, 100)
            g = Gossip(x, compressor="topk:ratio=0.1", gamma=0.2, transport=t)
            for _ in range(3):
                g.step()
            g.consensus_distance()
    finally:
        for name, fn in saved.items():
            setattr(pickle, name, fn)
        MPI.pickle.__init__(pickle.dumps, pickle.loads)
    h.done()


if __name__ == "__main__":
    main()
