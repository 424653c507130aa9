"""Transport over an mpi4py communicator, using only the buffer (uppercase) methods.

Allreduce, Allgather/Allgatherv, Alltoall/Alltoallv and Bcast on numpy
buffers: nothing is ever pickled (mpi4py's lowercase methods pickle; they are
never called).  float16 sums use MPICH's ``MPIX_C_FLOAT16`` where the MPI
library offers it, else they are summed in float32.
"""

import numpy as np
from mpi4py import MPI

from .base import Transport

__all__ = ["MPITransport"]


def _float16_sum_supported(comm):
    try:
        from mpi4py.util.dtlib import from_numpy_dtype

        dt = from_numpy_dtype(np.float16)
        probe = np.ones(1, np.float16)
        comm.Allreduce(MPI.IN_PLACE, [probe, dt], op=MPI.SUM)
        return bool(probe[0] == comm.Get_size())
    except Exception:  # noqa: BLE001 - any failure means: not supported here
        return False


class MPITransport(Transport):
    name = "mpi"

    def __init__(self, comm):
        super().__init__()
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self._f16 = None

    def _allreduce(self, array):
        if array.dtype == np.float16:
            if self._f16 is None:
                self._f16 = _float16_sum_supported(self.comm)
            if not self._f16:
                wide = array.astype(np.float32)
                self.comm.Allreduce(MPI.IN_PLACE, wide, op=MPI.SUM)
                array[...] = wide
                return
            from mpi4py.util.dtlib import from_numpy_dtype

            self.comm.Allreduce(MPI.IN_PLACE, [array, from_numpy_dtype(np.float16)], op=MPI.SUM)
            return
        self.comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)

    def _allgatherv(self, data):
        sizes = np.zeros(self.size, np.int64)
        self.comm.Allgather(np.array([data.nbytes], np.int64), sizes)
        displs = np.zeros(self.size, np.int64)
        np.cumsum(sizes[:-1], out=displs[1:])
        out = np.empty(int(sizes.sum()), np.uint8)
        self.comm.Allgatherv([data, MPI.BYTE], [out, (sizes, displs), MPI.BYTE])
        return [out[displs[i]: displs[i] + sizes[i]] for i in range(self.size)]

    def _alltoallv(self, chunks):
        send_sizes = np.array([c.nbytes for c in chunks], np.int64)
        recv_sizes = np.zeros(self.size, np.int64)
        self.comm.Alltoall(send_sizes, recv_sizes)
        send_displs = np.zeros(self.size, np.int64)
        np.cumsum(send_sizes[:-1], out=send_displs[1:])
        recv_displs = np.zeros(self.size, np.int64)
        np.cumsum(recv_sizes[:-1], out=recv_displs[1:])
        send = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
        out = np.empty(int(recv_sizes.sum()), np.uint8)
        self.comm.Alltoallv([send, (send_sizes, send_displs), MPI.BYTE], [out, (recv_sizes, recv_displs), MPI.BYTE])
        return [out[recv_displs[i]: recv_displs[i] + recv_sizes[i]] for i in range(self.size)]

    def _broadcast(self, array, root):
        self.comm.Bcast(array, root=root)

    def _barrier(self):
        self.comm.Barrier()

    def split(self, color, key=None):
        sub = self.comm.Split(color, self.rank if key is None else key)
        return MPITransport(sub)
