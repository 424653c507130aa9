"""Per-rank script for tests/adaptive/test_mpi.py: the adaptive policy through gcomp.mpi under mpiexec.

Each rank scripts its own link (rank r's is r + 1 times faster, so the ranks measure differently): a clock that
adds the bytes the engine sent since its last reading at the rank's rate (slow for the first SLOW calls, fast
afterwards) and 10 ms of compute per reading on the calling thread.  Groups ``[[0, 1], [2]]`` (hierarchical).
Prints ``CHECK <name> rank=<r> ok|FAIL ...`` and ``DONE rank=<r> failures=<k>``.
"""

import hashlib
import os
import sys
import threading

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mpi", "scripts"))

from _harness import Checks  # noqa: E402

import gcomp.mpi  # noqa: E402
from gcomp.adapt import AdaptivePolicy  # noqa: E402

N = 20000
SLOW = 8
CALLS = 24


class Link:
    def __init__(self, rank):
        self.rank, self.now, self.seen, self.comm, self.calls = rank, 0.0, 0, None, 0

    def __call__(self):
        if self.comm is not None:
            sent = self.comm.engine.bottleneck_bytes()
            moved, self.seen = sent - self.seen, sent
            self.now += moved / ((1e5 if self.calls < SLOW else 1e9) * (self.rank + 1))
        if threading.current_thread() is threading.main_thread():
            self.now += 0.01
        return self.now


def same_on_every_rank(comm, data: bytes):
    mine = np.frombuffer(hashlib.sha256(data).digest(), np.uint8)
    every = np.empty((comm.Get_size(), mine.size), np.uint8)
    comm.Allgather(mine, every)
    assert all(bytes(row) == bytes(every[0]) for row in every), "ranks differ"


def main():
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    checks = Checks(comm)
    with checks.check("adaptive/hierarchical"):
        link = Link(rank)
        policy = AdaptivePolicy(every=2, dwell=2, probe=0, start=0, clock=link)
        ccomm = gcomp.mpi.CompressedComm(comm, policy, hierarchical=[[0, 1], [2]])
        link.comm = ccomm
        rng = np.random.default_rng([5, rank])
        results = []
        for call in range(CALLS):
            link.calls = call
            x = rng.standard_normal(N).astype(np.float32)
            out = np.empty_like(x)
            ccomm.Allreduce(x, out, op=gcomp.mpi.MEAN)  # one key: every call is a step
            results.append(out.tobytes())
        same_on_every_rank(comm, b"".join(results))
        switches = [(s["step"], s["from"], s["to"]) for s in policy.switches]
        same_on_every_rank(comm, repr(switches).encode())
        assert len(switches) >= 2 and switches[0][1] == "none" and switches[-1][2] == "none", switches
        # an explicit end of step, then a checkpoint restored into a fresh CompressedComm
        ccomm.end_step()
        saved = ccomm.state_dict()
        fresh = gcomp.mpi.CompressedComm(comm, AdaptivePolicy(every=2, dwell=2, probe=0, start=0, clock=link),
                                         hierarchical=[[0, 1], [2]])
        fresh.load_state_dict(saved)
        assert fresh.policy.setting == policy.setting and fresh.policy.switches == policy.switches
        fresh.Free()
        ccomm.Free()
    checks.done()


if __name__ == "__main__":
    main()
