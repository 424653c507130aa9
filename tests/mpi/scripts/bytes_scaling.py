"""Per-rank program: bytes each rank sends and receives per compressed allreduce (run by tests/mpi/test_bytes.py).

    mpiexec -n 8 python -m mpi4py tests/mpi/scripts/bytes_scaling.py --numel 100000

For each compressor and algorithm, prints from ``CompressedComm.stats[-1]``::

    BYTES <spec> <algorithm> size=<P> rank=<r> sent=<bytes> received=<bytes> packet=<bytes>

and checks the allgather counters against the transport's byte model: a rank
sends its packet (behind the call's 8-byte sequence prefix, plus an 8-byte
size) to each of the P - 1 others and receives theirs.  Does not import torch (startup time with 8 ranks on 2 cores).
"""

import argparse

import numpy as np
from _harness import Checks, emit, make_input
from mpi4py import MPI

import gcomp.mpi
from gcomp.collectives.sequence import PREFIX_SIZE

SPECS = ("topk:ratio=0.01", "sign")
ALGORITHMS = ("allgather", "scatter-reduce-allgather")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--numel", type=int, default=100_000)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    h = Checks(comm)
    for spec in SPECS:
        for alg in ALGORITHMS:
            cc = gcomp.mpi.CompressedComm(comm, spec, algorithm=alg)
            for step in range(2):
                buf = make_input(rank, args.numel, step, salt=50)
                cc.Allreduce(MPI.IN_PLACE, buf, op=gcomp.mpi.MEAN)
            s = cc.stats[-1]
            emit(f"BYTES {spec} {alg} size={size} rank={rank} sent={s.bytes_sent} received={s.bytes_received} "
                 f"packet={s.packet_bytes}")
            if alg == "allgather":
                with h.check(f"bytes/model-{spec.split(':')[0]}-{alg}"):
                    packets = np.empty(size, np.int64)
                    comm.Allgather(np.array([s.packet_bytes], np.int64), packets)
                    others = int(packets.sum() - packets[rank])
                    assert s.bytes_sent == (size - 1) * (s.packet_bytes + PREFIX_SIZE + 8), (s.bytes_sent, s.packet_bytes)
                    assert s.bytes_received == others + (PREFIX_SIZE + 8) * (size - 1), (s.bytes_received, others)
            cc.Free()
    # the dense baseline, for the table in docs/mpi.md
    cc = gcomp.mpi.CompressedComm(comm, "none")
    buf = make_input(rank, args.numel, salt=51)
    cc.Allreduce(MPI.IN_PLACE, buf, op=gcomp.mpi.MEAN)
    s = cc.stats[-1]
    emit(f"BYTES none dense size={size} rank={rank} sent={s.bytes_sent} received={s.bytes_received} packet={s.packet_bytes}")
    cc.Free()
    h.done()


if __name__ == "__main__":
    main()
