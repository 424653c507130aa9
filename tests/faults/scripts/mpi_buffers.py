"""Per-rank script for tests/faults/test_mpi_buffers.py: mpi4py's buffer conventions at -n 3.

Every rank prints ``BUFFERS rank=<r> ok`` when every case gives exactly what
plain ``comm.Allreduce`` gives (``none``, dense path: exact); a failed case
raises, and under ``python -m mpi4py`` the job aborts with a non-zero exit.
"""

import array

import numpy as np
from mpi4py import MPI

import gcomp.mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
cc = gcomp.mpi.CompressedComm(comm, "none")
x = np.random.default_rng([7, rank]).standard_normal(10).astype(np.float32)
want = np.empty_like(x)
comm.Allreduce(x, want, op=MPI.SUM)

# [buf, count, datatype]: only count entries, as mpi4py
recv = np.full(10, -1.0, np.float32)
cc.Allreduce([x, 4, MPI.FLOAT], [recv, 4, MPI.FLOAT], op=MPI.SUM)
assert np.array_equal(recv[:4], want[:4]) and (recv[4:] == -1.0).all(), recv

# None sendbuf is in place; MEAN is the sum divided by P
inplace = x.copy()
cc.Allreduce(None, inplace, op=gcomp.mpi.MEAN)
assert np.array_equal(inplace, want / np.float32(size)), inplace

# Fortran-ordered arrays reduce in memory order
xf = np.asfortranarray(np.tile(x[:6], 2).reshape(3, 4))
wf = np.empty_like(xf)
comm.Allreduce(xf, wf, op=MPI.SUM)
rf = np.empty_like(xf)
cc.Allreduce(xf, rf, op=MPI.SUM)
assert np.array_equal(rf, wf)

# array.array buffers and mixed Waitall
buf = array.array("f", x.tolist())
req = cc.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
other = np.empty(1, np.float32)
mreq = comm.Iallreduce(np.ones(1, np.float32), other, op=MPI.SUM)
gcomp.mpi.Request.Waitall([req, mreq])
assert np.array_equal(np.frombuffer(buf, np.float32), want) and other[0] == size

cc.Free()
print(f"BUFFERS rank={rank} ok", flush=True)
