"""The small Transport interface every collective algorithm is written against.

A transport moves numpy buffers between the ranks of one group.  It offers
four operations (all blocking, all called by every rank in the same order):

* :meth:`Transport.allreduce_` - in-place elementwise sum (float16/32/64, int64);
* :meth:`Transport.allgatherv` - every rank gets every rank's byte buffer
  (sizes may differ: the transport exchanges them first);
* :meth:`Transport.alltoallv` - rank r sends ``chunks[j]`` to rank j and
  receives one buffer from each rank (sizes may differ);
* :meth:`Transport.broadcast_` - copy root's buffer to every rank.

Byte counters (``bytes_sent`` / ``bytes_received``) follow one documented
model so that algorithms can be compared: a ring allreduce of S bytes sends
and receives ``2 (P - 1) / P * S``; allgatherv sends its own buffer to the
``P - 1`` others and receives theirs; alltoallv sends ``chunks[j]`` for every
``j != rank``; the size exchanges count 8 bytes per peer.  Nothing about
compression lives here.
"""

import numpy as np

__all__ = ["Transport", "ByteCounter"]


class ByteCounter:
    """Bytes a rank sent and received, under the model in the module docstring."""

    def __init__(self):
        self.sent = 0
        self.received = 0

    def add(self, sent, received):
        self.sent += int(sent)
        self.received += int(received)

    def snapshot(self):
        return self.sent, self.received


class Transport:
    """Base class; subclasses implement the ``_``-prefixed primitives."""

    rank: int = 0
    size: int = 1
    name = "transport"

    def __init__(self):
        self.counter = ByteCounter()

    @property
    def bytes_sent(self):
        return self.counter.sent

    @property
    def bytes_received(self):
        return self.counter.received

    # -- public, counted --------------------------------------------------
    def allreduce_(self, array: np.ndarray) -> np.ndarray:
        """Sum ``array`` over ranks, in place; returns it."""
        if self.size > 1 and array.size:
            moved = 2 * (self.size - 1) * array.nbytes // self.size
            self.counter.add(moved, moved)
            self._allreduce(array)
        return array

    def allgatherv(self, data: np.ndarray) -> list:
        """Every rank's uint8 buffer, in rank order (this rank's own is returned as given)."""
        data = _as_bytes(data)
        if self.size == 1:
            return [data]
        out = self._allgatherv(data)
        others = sum(b.nbytes for i, b in enumerate(out) if i != self.rank)
        self.counter.add(data.nbytes * (self.size - 1) + 8 * (self.size - 1), others + 8 * (self.size - 1))
        return out

    def alltoallv(self, chunks: list) -> list:
        """Send ``chunks[j]`` to rank j; returns the buffers received from each rank, in rank order."""
        if len(chunks) != self.size:
            raise ValueError(f"expected one chunk per rank ({self.size}), found {len(chunks)}")
        chunks = [_as_bytes(c) for c in chunks]
        if self.size == 1:
            return chunks
        out = self._alltoallv(chunks)
        sent = sum(c.nbytes for j, c in enumerate(chunks) if j != self.rank)
        received = sum(b.nbytes for j, b in enumerate(out) if j != self.rank)
        self.counter.add(sent + 8 * (self.size - 1), received + 8 * (self.size - 1))
        return out

    def broadcast_(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """Copy ``root``'s ``array`` into every rank's, in place."""
        if self.size > 1 and array.size:
            if self.rank == root:
                self.counter.add(array.nbytes * (self.size - 1), 0)
            else:
                self.counter.add(0, array.nbytes)
            self._broadcast(array, root)
        return array

    def barrier(self):
        self._barrier()

    def split(self, color: int, key: int | None = None) -> "Transport":
        """A transport over the ranks with the same ``color`` (collective over this transport)."""
        raise NotImplementedError(f"{type(self).__name__} cannot split")

    # -- primitives ---------------------------------------------------------
    def _allreduce(self, array):
        raise NotImplementedError

    def _allgatherv(self, data):
        raise NotImplementedError

    def _alltoallv(self, chunks):
        raise NotImplementedError

    def _broadcast(self, array, root):
        raise NotImplementedError

    def _barrier(self):
        raise NotImplementedError


def _as_bytes(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if not isinstance(data, np.ndarray) or data.ndim != 1:
        raise TypeError(f"expected a 1-D numpy array or bytes, found {type(data).__name__}")
    if data.dtype != np.uint8:
        data = np.ascontiguousarray(data).view(np.uint8)
    return np.ascontiguousarray(data)
