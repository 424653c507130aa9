"""An in-process transport: P threads of one process form a group (fast unit tests).

``LocalGroup(P).transports()`` gives one :class:`LocalTransport` per rank; run
each rank's code in its own thread (see :func:`run_local`).  Every collective
copies through a shared slot table between two barriers, so the semantics
(and the byte counters) match the real transports.  :meth:`Transport.exchange`
is truly point-to-point: one FIFO queue per (source, destination) pair, a
receive waits at most the group's ``timeout`` and then raises
:class:`~gcomp.errors.CollectiveError`.  :meth:`Transport.neighbor_exchange`
has queues of its own (its channel) and waits at most its ``timeout`` (by
default the group's); a send is complete once queued.
"""

import queue
import threading
import time

from ..errors import CollectiveError
from .base import NoPending, Transport, split_members, timed_out

__all__ = ["LocalGroup", "LocalTransport", "run_local"]


class LocalGroup:
    """``size`` in-process ranks that share slots and queues; :meth:`transports` gives each its transport.

    Parameters
    ----------
    size : int
        The number of ranks (threads), at least 1.
    timeout : float, optional
        Seconds a collective or a receive waits before it raises.

    Examples
    --------
    >>> import threading
    >>> from gcomp.transports import LocalGroup
    >>> transports = LocalGroup(2).transports()
    >>> out = {}
    >>> def rank(t):
    ...     out[t.rank] = [bytes(b) for b in t.allgatherv(bytes([t.rank]))]
    >>> threads = [threading.Thread(target=rank, args=(t,)) for t in transports]
    >>> for th in threads: th.start()
    >>> for th in threads: th.join()
    >>> [out[r] for r in range(2)]
    [[b'\\x00', b'\\x01'], [b'\\x00', b'\\x01']]
    """

    def __init__(self, size: int, timeout: float = 60.0):
        if size < 1:
            raise ValueError(f"expected a group size >= 1, found {size}")
        self.size = size
        self.timeout = timeout
        self._barrier = threading.Barrier(size, timeout=timeout)
        self._slots = [None] * size
        self._queues = {}
        self._queues_lock = threading.Lock()

    def transports(self):
        """One :class:`LocalTransport` per rank, in rank order; run each in its own thread."""
        return [LocalTransport(self, r) for r in range(self.size)]

    def exchange(self, rank, value):
        """Every rank's ``value``, in rank order (two barriers)."""
        self._slots[rank] = value
        self._barrier.wait()
        values = list(self._slots)
        self._barrier.wait()
        return values

    def queue(self, src, dst, channel=None):
        """The FIFO of buffers sent by rank ``src`` to rank ``dst`` (point-to-point) on ``channel``
        (None: ``exchange``'s; ``"neighbor"``: ``neighbor_exchange``'s)."""
        name = (src, dst) if channel is None else (channel, src, dst)
        with self._queues_lock:
            q = self._queues.get(name)
            if q is None:
                q = self._queues[name] = queue.SimpleQueue()
            return q


class LocalTransport(Transport):
    """One rank of a :class:`LocalGroup`: a :class:`~gcomp.transports.Transport` over threads of one process.

    Parameters
    ----------
    group : LocalGroup
        The group it belongs to.
    rank : int
        Its rank in the group.
    """

    name = "local"

    def __init__(self, group: LocalGroup, rank: int):
        super().__init__()
        self.group = group
        self.rank = rank
        self.size = group.size

    def _allreduce(self, array):
        values = self.group.exchange(self.rank, array.copy())
        total = values[0].copy()
        for v in values[1:]:
            total += v
        array[...] = total

    def _allgatherv(self, data):
        values = self.group.exchange(self.rank, data.copy())
        return [v.copy() for v in values]

    def _alltoallv(self, chunks):
        values = self.group.exchange(self.rank, [c.copy() for c in chunks])
        return [values[j][self.rank].copy() for j in range(self.size)]

    def _broadcast(self, array, root):
        values = self.group.exchange(self.rank, array.copy())
        array[...] = values[root]

    def _barrier(self):
        self.group.exchange(self.rank, None)

    def _exchange(self, sends, recv_from):
        for peer, buf in sends.items():
            self.group.queue(self.rank, peer).put(buf.copy())
        deadline = time.monotonic() + self.group.timeout
        out = {}
        for peer in recv_from:
            try:
                out[peer] = self.group.queue(peer, self.rank).get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise CollectiveError(
                    f"exchange: rank {self.rank} waited {self.group.timeout} s for a buffer from rank {peer} and none "
                    f"came; expected rank {peer} to list rank {self.rank} in its sends (a peer failed or the exchange "
                    f"patterns do not match)") from None
        return out

    @property
    def neighbor_timeout(self):
        """The group's ``timeout``, what :meth:`~gcomp.transports.Transport.neighbor_exchange` waits by default."""
        return self.group.timeout

    def _neighbor_exchange(self, sends, recv_from, deadline, timeout):
        for peer, buf in sends.items():
            self.group.queue(self.rank, peer, "neighbor").put(buf.copy())
        out = {}
        for peer in recv_from:
            try:
                out[peer] = self.group.queue(peer, self.rank, "neighbor").get(
                    timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise timed_out(self.rank, timeout, f"a buffer from rank {peer}") from None
        return out, NoPending()

    def _split(self, entries):
        color = entries[self.rank][0]
        # rank 0 builds one LocalGroup per color and hands them out through the slot table
        groups = None
        if self.rank == 0:
            groups = {}
            for c in sorted({c for c, _ in entries if c is not None}):
                groups[c] = LocalGroup(len(split_members(entries, c)), self.group.timeout)
        groups = self.group.exchange(self.rank, groups)[0]
        if color is None:
            return None
        return LocalTransport(groups[color], split_members(entries, color).index(self.rank))


def run_local(size, fn, *args, timeout=60.0):
    """Run ``fn(transport, *args)`` on ``size`` threads; returns the results in rank order.

    An exception on any rank is re-raised (after aborting the barrier so no thread hangs).

    Parameters
    ----------
    size : int
        The number of ranks.
    fn : callable
        ``fn(transport, *args)``, run once per rank.
    *args
        Passed to ``fn`` after the transport.
    timeout : float, optional
        Seconds a collective waits (the :class:`LocalGroup`'s timeout).

    Returns
    -------
    list
        ``fn``'s results, in rank order.

    Examples
    --------
    >>> import numpy as np
    >>> from gcomp.transports import run_local
    >>> def rank(transport, value):
    ...     x = np.array([value * transport.rank], dtype=np.float64)
    ...     return float(transport.allreduce_(x)[0])
    >>> run_local(3, rank, 10.0)
    [30.0, 30.0, 30.0]
    """
    group = LocalGroup(size, timeout)
    results = [None] * size
    errors = [None] * size

    def target(t):
        try:
            results[t.rank] = fn(t, *args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors[t.rank] = exc
            group._barrier.abort()

    threads = [threading.Thread(target=target, args=(t,), daemon=True) for t in group.transports()]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout + 5)
    real = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if real:
        raise real[0]
    if any(e is not None for e in errors):
        raise next(e for e in errors if e is not None)
    return results
