"""Per-rank program: the third-party ``blockk`` compressor through gcomp.mpi (run by tests/plugins/test_thirdparty.py).

    mpiexec -n 3 python -m mpi4py tests/plugins/scripts/thirdparty_mpi.py

For each algorithm, three MEAN Allreduce steps of ``CompressedComm(COMM_WORLD,
"blockk:ratio=0.1", error_feedback="none")`` are compared bit for bit with the
references of tests/mpi/scripts/_harness.py (plain mpi4py buffer calls and
fresh compressors) and across ranks.  For allreduce and allgather every rank
keeps the same block, so the result is also the plain mean of the inputs on
that block and zero elsewhere.  Prints ``CHECK blockk/<algorithm> rank=<r> ok|FAIL``, then ``DONE``.
"""

import os
import sys

import numpy as np
from mpi4py import MPI

TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(TESTS, "plugins"), os.path.join(TESTS, "mpi", "scripts")]

from _harness import Checks, Reference, assert_same, gather_rows, make_input, same_on_every_rank  # noqa: E402
from blockk import BlockK, block_indices  # noqa: E402  (importing it registers "blockk")

import gcomp.mpi  # noqa: E402

N = 3001
ALGORITHMS = ("allreduce", "allgather", "scatter-reduce-allgather")


def main():
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    h = Checks(comm)
    for i, algorithm in enumerate(ALGORITHMS):
        with h.check(f"blockk/{algorithm}"):
            cc = gcomp.mpi.CompressedComm(comm, "blockk:ratio=0.1", algorithm=algorithm, error_feedback="none")
            assert type(cc.compressor) is BlockK, cc.compressor
            ref = Reference(comm, cc.compressor.get_config())
            for step in range(3):
                x = make_input(rank, N, step, salt=500 + i)
                got = np.empty_like(x)
                cc.Allreduce(x, got, op=gcomp.mpi.MEAN)
                assert cc.stats[-1].algorithm == algorithm, cc.stats[-1].algorithm
                assert_same(got, ref(algorithm, x, f"n{N}", step, True), f"step {step}")
                same_on_every_rank(comm, got, f"step {step}")
                if algorithm != "scatter-reduce-allgather":
                    block = block_indices(N, cc.compressor.k(N), cc.compressor.seed_for(step, f"n{N}"))
                    want = np.zeros(N, np.float32)
                    want[block] = gather_rows(comm, x)[:, block].mean(axis=0)
                    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"step {step}: mean on the block")
                    assert not np.any(np.delete(got, block)), f"step {step}: nonzero entries off the block"
            cc.Free()
    h.done()


if __name__ == "__main__":
    main()
