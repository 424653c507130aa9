"""An in-process transport: P threads of one process form a group (fast unit tests).

``LocalGroup(P).transports()`` gives one :class:`LocalTransport` per rank; run
each rank's code in its own thread (see :func:`run_local`).  Every operation
copies through a shared slot table between two barriers, so the semantics
(and the byte counters) match the real transports.
"""

import threading

from .base import Transport

__all__ = ["LocalGroup", "LocalTransport", "run_local"]


class LocalGroup:
    def __init__(self, size: int, timeout: float = 60.0):
        if size < 1:
            raise ValueError(f"expected a group size >= 1, found {size}")
        self.size = size
        self.timeout = timeout
        self._barrier = threading.Barrier(size, timeout=timeout)
        self._slots = [None] * size

    def transports(self):
        return [LocalTransport(self, r) for r in range(self.size)]

    def exchange(self, rank, value):
        """Every rank's ``value``, in rank order (two barriers)."""
        self._slots[rank] = value
        self._barrier.wait()
        values = list(self._slots)
        self._barrier.wait()
        return values


class LocalTransport(Transport):
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

    def split(self, color, key=None):
        key = self.rank if key is None else key
        entries = self.group.exchange(self.rank, (color, key, self.rank))
        if self.rank == 0:
            groups = {}
            for c, _, _ in entries:
                if c not in groups:
                    groups[c] = LocalGroup(sum(1 for e in entries if e[0] == c), self.group.timeout)
            self.group._split_groups = groups
        self._barrier()
        members = sorted((k, r) for c, k, r in entries if c == color)
        new_rank = [r for _, r in members].index(self.rank)
        group = self.group._split_groups[color]
        self._barrier()
        return LocalTransport(group, new_rank)


def run_local(size, fn, *args, timeout=60.0):
    """Run ``fn(transport, *args)`` on ``size`` threads; returns the results in rank order.

    An exception on any rank is re-raised (after aborting the barrier so no thread hangs).
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


