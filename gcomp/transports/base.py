"""The small Transport interface every collective algorithm is written against.

A transport moves numpy buffers between the ranks of one group.  It offers
four collective operations (all blocking, all called by every rank in the
same order):

* :meth:`Transport.allreduce_` - in-place elementwise sum (float16/32/64, int64);
* :meth:`Transport.allgatherv` - every rank gets every rank's byte buffer
  (sizes may differ: the transport exchanges them first);
* :meth:`Transport.alltoallv` - rank r sends ``chunks[j]`` to rank j and
  receives one buffer from each rank (sizes may differ);
* :meth:`Transport.broadcast_` - copy root's buffer to every rank.

two point-to-point operations, called only by the ranks involved:

* :meth:`Transport.exchange` - send ``sends[peer]`` to each listed peer and
  receive one buffer from each rank in ``recv_from`` (sizes may differ per
  pair: they are exchanged first).  The caller's contract: every send a -> b
  is matched by b listing a in its ``recv_from`` (and vice versa), and every
  pair of ranks calls its exchanges in the same order;
* :meth:`Transport.neighbor_exchange` - the same pattern on a channel of its
  own (it never pairs with ``exchange``), for gossip between neighbours: a
  deadline on the whole call (``timeout``), receives completed before sends
  are waited for, and a ``check`` of what was received that may abandon the
  sends (a rank that finds a fault raises at once instead of waiting for a
  neighbour that will never receive).  :meth:`Transport.neighbor_post` sends
  without waiting (the last word of a rank that is about to raise);

and the group management the algorithms need (collective over the transport,
not counted: they are setup, not traffic):

* :meth:`Transport.split` - a transport over the ranks with the same color,
  ordered by (key, rank); ``color=None`` opts out and gets ``None``;
* :meth:`Transport.split_by_node` - a transport over the ranks on this host;
* :meth:`Transport.free` - release what a transport owns.  A transport
  returned by ``split``/``split_by_node`` owns its communicator (MPI frees it;
  torch process groups live until ``destroy_process_group``; local groups are
  plain objects); a transport built by the caller around the caller's
  communicator or group never frees it.

Byte counters (``bytes_sent`` / ``bytes_received``) follow one documented
model so that algorithms can be compared: a ring allreduce of S bytes sends
and receives ``2 (P - 1) / P * S``; allgatherv sends its own buffer to the
``P - 1`` others and receives theirs; alltoallv sends ``chunks[j]`` for every
``j != rank``; broadcast counts ``(P - 1) S`` sent at the root and ``S``
received elsewhere; exchange counts the buffers it sends and receives; the
size exchanges count 8 bytes per peer (allgatherv and alltoallv: ``8 (P - 1)``
each way; exchange and neighbor_exchange: ``8 * len(sends)`` sent and
``8 * len(recv_from)`` received).  ``exchange``, ``neighbor_exchange`` and
``neighbor_post`` also count per peer (``bytes_by_peer()``: ``{peer: (sent,
received)}``, the same model, the 8-byte size included): what a gossip
round costs on each link.  Nothing about compression lives here.
"""

import socket
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from ..errors import CollectiveError, ConfigError

__all__ = ["Transport", "ByteCounter", "NoPending", "TIMED_OUT"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BAD_COLOR, _BAD_KEY = 1, 2


class ByteCounter:
    """Bytes a rank sent and received, under the model in the module docstring.

    ``sent`` / ``received`` are the totals; ``peers`` holds the point-to-point
    traffic per peer (``{peer: [sent, received]}``, only the peers this rank
    exchanged with), which :meth:`add_peer` adds to (the totals are added to
    separately, with :meth:`add`).
    """

    def __init__(self):
        self.sent = 0
        self.received = 0
        self.peers = {}

    def add(self, sent, received):
        """Count ``sent`` and ``received`` bytes of a collective.

        Parameters
        ----------
        sent, received : int
            Bytes under the module docstring's model.
        """
        self.sent += int(sent)
        self.received += int(received)

    def add_peer(self, peer, sent, received):
        """Count point-to-point bytes exchanged with ``peer`` (also per peer).

        Parameters
        ----------
        peer : int
            The other rank.
        sent, received : int
            Bytes under the module docstring's model.
        """
        entry = self.peers.setdefault(int(peer), [0, 0])
        entry[0] += int(sent)
        entry[1] += int(received)

    def snapshot(self):
        """``(sent, received)`` so far: subtract two snapshots for the bytes in between."""
        return self.sent, self.received

    def by_peer(self) -> dict:
        """``{peer: (sent, received)}``, in peer order (a copy)."""
        return {peer: (s, r) for peer, (s, r) in sorted(self.peers.items())}


class Transport:
    """Base class; subclasses implement the ``_``-prefixed primitives.

    Every collective algorithm and adapter of gcomp is written against this
    interface; pass one as ``transport=`` to inject it.  The implementations:
    :class:`~gcomp.transports.TorchTransport` (torch.distributed),
    :class:`~gcomp.transports.MPITransport` (mpi4py) and
    :class:`~gcomp.transports.LocalTransport` (threads of one process).

    Examples
    --------
    >>> import numpy as np
    >>> from gcomp.transports import run_local
    >>> def rank(transport):
    ...     x = np.full(2, float(transport.rank + 1))
    ...     transport.allreduce_(x)                      # sums over the ranks, in place
    ...     return x.tolist(), transport.bytes_sent > 0
    >>> run_local(3, rank)
    [([6.0, 6.0], True), ([6.0, 6.0], True), ([6.0, 6.0], True)]
    """

    rank: int = 0
    size: int = 1
    name = "transport"
    #: seconds :meth:`neighbor_exchange` waits when not given a timeout (subclasses set their own)
    neighbor_timeout: float = 300.0

    def __init__(self):
        self.counter = ByteCounter()
        self._unfinished = []  # sends neighbor_exchange/neighbor_post left running (see _reap_sends)

    @property
    def bytes_sent(self):
        """Bytes this rank sent through the counted operations so far (the module docstring's model)."""
        return self.counter.sent

    @property
    def bytes_received(self):
        """Bytes this rank received through the counted operations so far."""
        return self.counter.received

    def bytes_by_peer(self) -> dict:
        """Point-to-point bytes per peer: ``{peer: (sent, received)}`` (see the module docstring)."""
        return self.counter.by_peer()

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

    def exchange(self, sends: Mapping, recv_from: Iterable) -> dict:
        """Point-to-point: send ``sends[peer]`` to each peer, receive one buffer from each rank in ``recv_from``.

        ``sends`` maps a peer rank to a 1-D numpy array (any dtype, sent as its
        bytes) or a bytes-like object; sizes may differ per pair (each pair's
        size travels first, 8 bytes).  Returns ``{peer: uint8 array}`` for
        every peer in ``recv_from``, in that order; the arrays are writable
        copies owned by the caller.

        Not collective: only the ranks involved call it.  The caller's
        contract is that every send a -> b is matched by b listing a in its
        ``recv_from`` (and every receive by a send), and that two ranks call
        their exchanges with each other in the same order; a receive that is
        never matched blocks until the transport's timeout.

        Peers are checked before anything moves: each must be an int in
        ``[0, size)`` other than this rank (ValueError naming it), and
        ``recv_from`` must not repeat a rank.  Counted as documented in the
        module docstring: ``bytes_sent`` grows by the bytes sent plus
        ``8 * len(sends)``, ``bytes_received`` by the bytes received plus
        ``8 * len(recv_from)`` (and per peer, :meth:`bytes_by_peer`).
        """
        buffers, sources = self._check_pattern(sends, recv_from)
        if not buffers and not sources:
            return {}
        out = self._exchange(buffers, sources)
        out = {peer: out[peer] for peer in sources}
        self._count(buffers, out)
        return out

    def neighbor_exchange(self, sends: Mapping, recv_from: Iterable, *, timeout: float | None = None,
                          check: Callable | None = None) -> dict:
        """Send ``sends[peer]`` to each neighbour and receive one buffer from each rank in ``recv_from``.

        The gossip primitive.  The pattern and the caller's contract are those
        of :meth:`exchange` (sizes may differ per pair and travel first; every
        send a -> b matched by b listing a; pairs call in the same order), on a
        channel of its own: its messages never pair with ``exchange``'s.  On
        top of it:

        * ``timeout`` (seconds; None: the transport's ``neighbor_timeout``)
          bounds the whole call: a neighbour that is dead, or never calls,
          makes this rank raise :class:`~gcomp.errors.CollectiveError` naming
          it within about ``timeout``, never hang (gloo: a dead peer's closed
          connection is reported at once; on a timeout gloo closes that pair,
          so treat the transport's links to that peer as broken);
        * the sends are started first and the receives completed before the
          sends are waited for; ``check(received)``, if given, is then called
          with ``{peer: uint8 array}``.  If it raises, the exception propagates
          at once and the sends are left to finish in the background (a
          neighbour that stopped receiving would otherwise hold this rank until
          the timeout); otherwise the sends are waited for (same deadline) and
          the received buffers returned (writable copies, in ``recv_from``
          order).

        Counted like :meth:`exchange` (plus per peer, :meth:`bytes_by_peer`).
        """
        buffers, sources = self._check_pattern(sends, recv_from)
        timeout = self._timeout(timeout)
        self._reap_sends()
        if not buffers and not sources:
            return {}
        deadline = time.monotonic() + timeout
        out, pending = self._neighbor_exchange(buffers, sources, deadline, timeout)
        out = {peer: out[peer] for peer in sources}
        self._count(buffers, out)
        if check is not None:
            try:
                check(out)
            except BaseException:
                self._unfinished.append(pending)
                raise
        pending.wait(deadline, timeout)
        return out

    def neighbor_post(self, sends: Mapping) -> None:
        """Start sending ``sends[peer]`` to each peer on :meth:`neighbor_exchange`'s channel and return at once.

        Best effort, never waited for: what a rank sends to the neighbours of
        its next exchange before it raises (they receive it in that exchange,
        as that message), so they learn of the failure instead of waiting for
        the timeout.  Counted like a send of :meth:`neighbor_exchange`.
        """
        buffers, _ = self._check_pattern(sends, ())
        self._reap_sends()
        if not buffers:
            return
        timeout = self._timeout(None)
        _, pending = self._neighbor_exchange(buffers, [], time.monotonic() + timeout, timeout)
        self._count(buffers, {})
        self._unfinished.append(pending)

    def barrier(self):
        """Wait until every rank of the transport has called it (not counted)."""
        self._barrier()

    # -- groups (collective over this transport, not counted) ----------------
    def split(self, color: int | None, key: int | None = None) -> "Transport | None":
        """A transport over the ranks that pass the same ``color``, ordered by ``(key, rank)``.

        Collective over this transport: every rank calls it.  ``color`` is a
        non-negative int, or ``None`` for "not a member" (that rank gets
        ``None`` back); ``key`` is an int (default: this rank).  Every rank
        raises :class:`~gcomp.errors.ConfigError` if any rank passes an
        invalid color or key (the values are gathered first, so no rank is
        left waiting).  The new transport owns its group: see :meth:`free`.
        """
        if type(self)._split is Transport._split:
            raise NotImplementedError(f"{type(self).__name__} cannot split")
        entries = self._split_entries(color, key)
        return self._split(entries)

    def split_by_node(self) -> "Transport":
        """A transport over the ranks on this host (collective; ordered by rank).

        Generic version: every rank's ``socket.gethostname()`` is gathered and
        each rank takes the lowest rank with the same hostname as its color.
        """
        host = np.frombuffer(socket.gethostname().encode(), np.uint8)
        hosts = [bytes(b) for b in (self._allgatherv(host.copy()) if self.size > 1 else [host])]
        return self.split(hosts.index(hosts[self.rank]), key=self.rank)

    def free(self):
        """Release what this transport owns (see the module docstring); a no-op unless a subclass owns something."""

    # -- primitives ---------------------------------------------------------
    def _neighbor_exchange(self, sends: dict, recv_from: list, deadline: float, timeout: float):
        """Start the sends, complete the receives by ``deadline`` (``time.monotonic()``); returns
        ``({peer: owned uint8 array}, pending)`` where ``pending.wait(deadline, timeout)`` completes the sends
        (raising CollectiveError past the deadline) and ``pending.done()`` tells whether they have completed."""
        raise NotImplementedError(f"{type(self).__name__} has no neighbor exchange")

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

    def _exchange(self, sends: dict, recv_from: list) -> dict:
        """``sends``: {peer: uint8 array}, ``recv_from``: distinct peers; returns {peer: owned uint8 array}."""
        raise NotImplementedError(f"{type(self).__name__} has no point-to-point exchange")

    def _split(self, entries: list):
        """``entries[r]`` is rank r's ``(color or None, key)``, validated; returns a transport or None."""
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------
    def _check_pattern(self, sends, recv_from):
        if not isinstance(sends, Mapping):
            raise TypeError(f"expected sends to be a mapping peer -> buffer, found {type(sends).__name__}")
        if isinstance(recv_from, (str, bytes)) or not isinstance(recv_from, Iterable):
            raise TypeError(f"expected recv_from to be an iterable of ranks, found {type(recv_from).__name__}")
        buffers = {}
        for peer, buf in sends.items():
            buffers[self._check_peer(peer, "send to")] = _as_bytes(buf)
        sources = []
        for peer in recv_from:
            peer = self._check_peer(peer, "receive from")
            if peer in sources:
                raise ValueError(f"exchange: rank {peer} appears more than once in recv_from (expected distinct ranks)")
            sources.append(peer)
        return buffers, sources

    def _count(self, buffers, received):
        self.counter.add(sum(b.nbytes for b in buffers.values()) + 8 * len(buffers),
                         sum(b.nbytes for b in received.values()) + 8 * len(received))
        for peer, b in buffers.items():
            self.counter.add_peer(peer, b.nbytes + 8, 0)
        for peer, b in received.items():
            self.counter.add_peer(peer, 0, b.nbytes + 8)

    def _timeout(self, timeout):
        if timeout is None:
            timeout = self.neighbor_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"expected timeout a positive number of seconds or None, found {timeout!r}")
        return float(timeout)

    def _reap_sends(self):
        """Forget the background sends that have completed (those still running stay referenced: their buffers
        must live until they complete)."""
        if self._unfinished:
            self._unfinished = [p for p in self._unfinished if not _done(p)]

    def _check_peer(self, peer, what):
        if isinstance(peer, (bool, np.bool_)) or not isinstance(peer, (int, np.integer)):
            raise ValueError(f"exchange: cannot {what} peer {peer!r}: expected an int rank in [0, {self.size})")
        peer = int(peer)
        if not 0 <= peer < self.size:
            raise ValueError(f"exchange: cannot {what} peer {peer}: expected a rank in [0, {self.size})")
        if peer == self.rank:
            raise ValueError(f"exchange: cannot {what} peer {peer}: that is this rank (expected another rank)")
        return peer

    def _split_entries(self, color, key):
        """Every rank's validated ``(color, key)`` (gathered with the uncounted ``_allgatherv``)."""
        flags = 0
        if color is None:
            code = -1
        elif _is_int(color) and 0 <= int(color) <= _INT64_MAX:
            code = int(color)
        else:
            code, flags = -1, flags | _BAD_COLOR
        if key is None:
            key_code = self.rank
        elif _is_int(key) and _INT64_MIN <= int(key) <= _INT64_MAX:
            key_code = int(key)
        else:
            key_code, flags = 0, flags | _BAD_KEY
        mine = np.array([code, key_code, flags], np.int64)
        if self.size > 1:
            rows = [np.frombuffer(b.tobytes(), np.int64) for b in self._allgatherv(mine.view(np.uint8))]
        else:
            rows = [mine]
        bad = [r for r, row in enumerate(rows) if row[2]]
        if bad:
            own = ""
            if flags & _BAD_COLOR:
                own += f" (this rank's color: {color!r})"
            if flags & _BAD_KEY:
                own += f" (this rank's key: {key!r})"
            raise ConfigError(f"split: expected every rank's color to be a non-negative int or None and its key an "
                              f"int or None; rank(s) {bad} passed something else{own}")
        return [(None if row[0] < 0 else int(row[0]), int(row[1])) for row in rows]


class NoPending:
    """Sends that completed when they were started (the in-process transport)."""

    def wait(self, deadline, timeout):
        return None

    def done(self):
        return True


def _done(pending):
    try:
        return pending.done()
    except Exception:  # noqa: BLE001 - a send that failed (its peer died) is over too
        return True


#: how a neighbor exchange's timeout is reported (the tests match on it)
TIMED_OUT = "timed out"


def timed_out(rank, timeout, waiting):
    return CollectiveError(f"neighbor exchange: rank {rank} {TIMED_OUT} after {timeout:g} s waiting for {waiting}; "
                           "expected every neighbour to call its exchange (a neighbour failed, hangs, or the patterns "
                           "do not match)")


def split_members(entries, color):
    """The ranks whose color is ``color``, ordered by (key, rank)."""
    return [r for _, r in sorted((k, r) for r, (c, k) in enumerate(entries) if c == color)]


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_bytes(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if not isinstance(data, np.ndarray) or data.ndim != 1:
        raise TypeError(f"expected a 1-D numpy array or bytes, found {type(data).__name__}")
    if data.dtype != np.uint8:
        data = np.ascontiguousarray(data).view(np.uint8)
    return np.ascontiguousarray(data)
