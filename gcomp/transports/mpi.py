"""Transport over an mpi4py communicator, using only the buffer (uppercase) methods.

Allreduce, Allgather/Allgatherv, Alltoall/Alltoallv and Bcast on numpy
buffers, and Isend/Irecv + Waitall for :meth:`Transport.exchange` (an int64
size, then the bytes as ``MPI.BYTE``, both on tag :data:`EXCHANGE_TAG`):
nothing is ever pickled (mpi4py's lowercase methods pickle; they are never
called).  float16 sums use MPICH's ``MPIX_C_FLOAT16`` where the MPI library
offers it, else they are summed in float32.

:meth:`Transport.neighbor_exchange` uses Isend/Irecv on tag
:data:`NEIGHBOR_TAG` (its own channel): each send posts its int64 size and
its payload at once (MPI keeps a pair's messages in order, so the receiver's
first receive gets the size, the next the payload); the receives are
completed by polling ``Testall`` against the call's deadline, so a neighbour
that never sends is a :class:`~gcomp.errors.CollectiveError` after
``timeout`` (``MPITransport(comm, timeout=...)``, default 300 s), not a hang;
its outstanding receives are cancelled.  Why not a distributed-graph
communicator with ``Neighbor_alltoallv``: it is blocking (no deadline), and
a time-varying topology would need one communicator per round of its period.

Ownership: ``MPITransport(comm)`` never frees the caller's ``comm``; the
transports returned by :meth:`~MPITransport.split` and
:meth:`~MPITransport.split_by_node` own their new communicator and
:meth:`~MPITransport.free` frees it (collective over that communicator, as
``MPI_Comm_free`` is).
"""

import time

import numpy as np
from mpi4py import MPI

from .base import Transport, split_members, timed_out

__all__ = ["MPITransport", "EXCHANGE_TAG", "NEIGHBOR_TAG"]

#: the tag of exchange's point-to-point messages (sizes and payloads; MPI keeps each pair's messages in order)
EXCHANGE_TAG = 26467
#: the tag of neighbor_exchange's messages (sizes and payloads)
NEIGHBOR_TAG = 26469
#: longest sleep between two polls of outstanding requests (seconds)
_POLL_MAX = 0.002


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
    """A :class:`~gcomp.transports.Transport` over an mpi4py communicator.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The communicator.
    owns_comm : bool, optional
        Free ``comm`` in :meth:`free` (for communicators gcomp created).
    timeout : float, optional
        Seconds :meth:`~gcomp.transports.Transport.neighbor_exchange` waits by default (None: 300).

    Examples
    --------
    Under ``mpiexec -n 3 python script.py``::

        from mpi4py import MPI
        from gcomp.transports import MPITransport

        transport = MPITransport(MPI.COMM_WORLD)
        transport.allreduce_(np.ones(4))       # sums over the ranks, in place
    """

    name = "mpi"

    def __init__(self, comm, *, owns_comm=False, timeout=None):
        """``timeout``: seconds :meth:`neighbor_exchange` waits by default (None: 300)."""
        super().__init__()
        self.comm = comm
        self.owns_comm = owns_comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self._f16 = None
        if timeout is not None:
            self.neighbor_timeout = self._timeout(timeout)

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

    def _exchange(self, sends, recv_from):
        comm, tag = self.comm, EXCHANGE_TAG
        in_sizes = {peer: np.zeros(1, np.int64) for peer in recv_from}
        out_sizes = {peer: np.array([buf.nbytes], np.int64) for peer, buf in sends.items()}
        requests = [comm.Irecv([in_sizes[peer], MPI.INT64_T], source=peer, tag=tag) for peer in recv_from]
        requests += [comm.Isend([out_sizes[peer], MPI.INT64_T], dest=peer, tag=tag) for peer in sends]
        MPI.Request.Waitall(requests)
        out = {peer: np.empty(int(in_sizes[peer][0]), np.uint8) for peer in recv_from}
        # empty payloads are not sent: both sides know the size is 0
        requests = [comm.Irecv([out[peer], MPI.BYTE], source=peer, tag=tag) for peer in recv_from if out[peer].nbytes]
        requests += [comm.Isend([buf, MPI.BYTE], dest=peer, tag=tag) for peer, buf in sends.items() if buf.nbytes]
        MPI.Request.Waitall(requests)
        return out

    def _neighbor_exchange(self, sends, recv_from, deadline, timeout):
        comm, tag = self.comm, NEIGHBOR_TAG
        keep = []  # the send buffers live until their requests complete
        requests = []
        for peer, buf in sends.items():
            size = np.array([buf.nbytes], np.int64)
            keep.append(size)
            requests.append(comm.Isend([size, MPI.INT64_T], dest=peer, tag=tag))
            if buf.nbytes:
                keep.append(buf)
                requests.append(comm.Isend([buf, MPI.BYTE], dest=peer, tag=tag))
        pending = _MPISends(requests, keep, self.rank, list(sends))
        if not recv_from:
            return {}, pending
        in_sizes = {peer: np.zeros(1, np.int64) for peer in recv_from}
        recvs = [(peer, comm.Irecv([in_sizes[peer], MPI.INT64_T], source=peer, tag=tag)) for peer in recv_from]
        _poll(recvs, deadline, timeout, self.rank, "the size of a buffer from rank {}")
        out = {peer: np.empty(int(in_sizes[peer][0]), np.uint8) for peer in recv_from}
        recvs = [(peer, comm.Irecv([out[peer], MPI.BYTE], source=peer, tag=tag)) for peer in recv_from if out[peer].nbytes]
        _poll(recvs, deadline, timeout, self.rank, "a buffer from rank {}")
        return out, pending

    def _split(self, entries):
        # Colors and keys were gathered and checked by the base class; MPI gets dense colors (C ints) and each
        # rank's position in its (key, rank) order as the key, so int64 keys and colors work too.
        color = entries[self.rank][0]
        colors = sorted({c for c, _ in entries if c is not None})
        if color is None:
            self.comm.Split(MPI.UNDEFINED, 0)  # returns MPI.COMM_NULL: nothing to free
            return None
        sub = self.comm.Split(colors.index(color), split_members(entries, color).index(self.rank))
        return MPITransport(sub, owns_comm=True)

    def split_by_node(self):
        """The ranks that share memory with this one (``Split_type(COMM_TYPE_SHARED)``), ordered by rank."""
        return MPITransport(self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank), owns_comm=True)

    def free(self):
        """Free the communicator if this transport owns it (one from split/split_by_node); idempotent."""
        if self.owns_comm and self.comm != MPI.COMM_NULL:
            self.comm.Free()
        self.owns_comm = False


def _poll(recvs, deadline, timeout, rank, what):
    """Complete ``[(peer, request)]`` by ``deadline``, or cancel what is left and raise CollectiveError."""
    requests = [r for _, r in recvs]
    nap = 0.0
    while not MPI.Request.Testall(requests):
        if time.monotonic() >= deadline:
            missing = [peer for peer, r in recvs if not r.Test()]
            live = [r for _, r in recvs if r != MPI.REQUEST_NULL]
            for r in live:
                r.Cancel()
            give_up = time.monotonic() + 1.0  # a cancelled receive completes locally; do not wait on it for long
            while live and not MPI.Request.Testall(live) and time.monotonic() < give_up:
                time.sleep(_POLL_MAX)
            raise timed_out(rank, timeout, ", ".join(what.format(p) for p in missing))
        time.sleep(nap)
        nap = min(_POLL_MAX, nap * 2 + 1e-5)


class _MPISends:
    def __init__(self, requests, keep, rank, peers):
        self.requests, self.keep, self.rank, self.peers = requests, keep, rank, peers

    def done(self):
        return MPI.Request.Testall(self.requests)

    def wait(self, deadline, timeout):
        nap = 0.0
        while not MPI.Request.Testall(self.requests):
            if time.monotonic() >= deadline:
                raise timed_out(self.rank, timeout, f"ranks {self.peers} to receive what it sent")
            time.sleep(nap)
            nap = min(_POLL_MAX, nap * 2 + 1e-5)
