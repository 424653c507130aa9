"""``hierarchical``: dense inside each group of fast links, compressed between groups (cloud-edge-device).

The ranks are split into groups (by host, by a color per rank, by a
callable ``rank -> color``, or by a list of groups the same on every rank;
see :func:`gcomp.collectives.split_groups`).  Rank 0 of each group
is its leader.  One call:

1. a dense float32 sum inside the group (``intra.allreduce_``);
2. on the leaders, the compressed collective among the leaders (any flat
   algorithm: ``allreduce``, ``allgather``, ``scatter-reduce-allgather`` or
   ``dense``, chosen by the engine for the leaders' world size) on the group
   sums, with the error feedback applied there;
3. a broadcast of the result inside the group, then division by the world
   size for a mean.

Every rank gets the same bits (the leaders' result is broadcast), so the
engine's non-finite policy acts identically on all of them.

A call whose leaders' hop would be dense (an identity compressor such as
``none``, a vector under ``min_numel``, ``algorithm="dense"``) sums in another
order than a plain allreduce over all ranks: ``(x0 + x1) + (x2 + x3)`` against
the transport's ring order.  With the engine's ``hierarchical_dense="flat"``
(the DDP hook's default) such a call runs the plain ``dense`` algorithm over
every rank instead, bit-identical to the adapter's uncompressed path (DDP
without a hook); its bytes all count as between groups.

Sequence tokens (``gcomp.collectives.sequence``): the group sum carries the
call's token; a leader whose group sum is out of sequence still takes part in
the leaders' collective, flagged as broken, so every leader raises; the
broadcast carries the leader's verdict, so every member raises too.  Bytes inside the
groups are counted in ``CallStats.intra_bytes_sent`` / ``intra_bytes_received``
as well as in the totals.
"""

import numpy as np

from ..errors import ConfigError, SequenceError
from . import sequence
from .base import Algorithm, CallStats, Pending, Timer

__all__ = ["HierarchicalAllreduce", "split_groups", "normalize_groups"]


def normalize_groups(groups, size):
    """``groups`` as the engine keeps it: None, ``"node"``, an int color, a callable, or the list form as a tuple of
    tuples (the groups' members in rank order, groups ordered by their lowest rank).

    The list form is the same on every rank: a list of groups (``[[0, 1], [2, 3]]``: every rank in exactly one)
    or a list of one color per rank (``[0, 0, 1, 1]``).  Local.

    Parameters
    ----------
    groups : None, str, int, callable or list
        What ``hierarchical=`` / ``groups=`` was given.
    size : int
        The world size.

    Returns
    -------
    None, str, int, callable or tuple
        ``groups`` unchanged, except the list form as sorted tuples.

    Raises
    ------
    gcomp.errors.ConfigError
        A list form that does not hold every rank exactly once, or a color
        list of the wrong length.

    Examples
    --------
    >>> from gcomp.collectives.hierarchical import normalize_groups
    >>> normalize_groups([0, 1, 0], 3)
    ((0, 2), (1,))
    >>> normalize_groups([[3, 2], [1, 0]], 4)
    ((0, 1), (2, 3))
    >>> normalize_groups("node", 4)
    'node'
    """
    if not isinstance(groups, (list, tuple)):
        return groups  # "node", a color or a callable: split() checks the colors on every rank together
    items = list(groups)
    if items and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in items):
        if len(items) != size:
            raise ConfigError(f"expected one group color per rank ({size}) in the hierarchical list, found {len(items)}")
        colors = [int(c) for c in items]
        items = [[r for r in range(size) if colors[r] == c] for c in sorted(set(colors))]
    if not items or not all(isinstance(g, (list, tuple)) and g for g in items):
        raise ConfigError(f"expected hierarchical as a non-empty list of non-empty groups of ranks (or of colors per "
                          f"rank), found {str(groups)[:200]}")
    members = [r for g in items for r in g]
    if (not all(isinstance(r, (int, np.integer)) and not isinstance(r, bool) for r in members)
            or sorted(int(r) for r in members) != list(range(size))):
        raise ConfigError(f"expected the hierarchical groups to hold every rank 0..{size - 1} exactly once, because "
                          f"every rank belongs to one group; found {str(groups)[:200]}")
    return tuple(sorted((tuple(sorted(int(r) for r in g)) for g in items), key=lambda g: g[0]))


def split_groups(transport, groups):
    """``(intra, leaders)`` transports for ``groups``; ``leaders`` is None on ranks that do not lead a group.

    Collective over ``transport``: every rank calls it with the same kind of
    ``groups``.  The lowest rank of each group leads it (rank 0 of ``intra``).

    Parameters
    ----------
    transport : gcomp.transports.Transport
        The transport over every rank.
    groups : str, int, callable or list
        ``"node"`` (ranks on one host), a non-negative int color for this
        rank, a callable ``rank -> color``, or a list of groups the same on
        every rank (``[[0, 1], [2]]``) or of one color per rank (``[0, 0, 1]``;
        see :func:`gcomp.collectives.hierarchical.normalize_groups`).

    Returns
    -------
    tuple
        ``(intra, leaders)``: the transport inside this rank's group, and the
        transport among the group leaders (None on other ranks).

    Raises
    ------
    gcomp.errors.ConfigError
        On every rank, when a rank's color is invalid or the list form is.

    Examples
    --------
    >>> from gcomp.collectives import split_groups
    >>> from gcomp.transports import run_local
    >>> def rank(transport):
    ...     intra, leaders = split_groups(transport, [[0, 1], [2]])
    ...     return intra.size, intra.rank, leaders is not None
    >>> run_local(3, rank)
    [(2, 0, True), (2, 1, False), (1, 0, True)]
    """
    if groups == "node":
        intra = transport.split_by_node()
    else:
        # split() gathers every rank's color first, so a bad color on one rank raises ConfigError on all of them;
        # None would mean "not a member" there, but every rank belongs to a group here, so it is a bad color too.
        if isinstance(groups, (list, tuple)):
            groups = normalize_groups(groups, transport.size)
            color = next(i for i, g in enumerate(groups) if transport.rank in g)
        else:
            color = groups(transport.rank) if callable(groups) else groups
        intra = transport.split(-1 if color is None else color, transport.rank)
    leaders = transport.split(0 if intra.rank == 0 else None, transport.rank)
    return intra, leaders


class HierarchicalAllreduce(Algorithm):
    """``hierarchical``: dense inside groups, ``inner`` (a flat algorithm over the leaders) between them.

    Built by :class:`gcomp.collectives.CompressedAllreduce` when ``groups`` is
    given (the module docstring has the steps of one call).

    Parameters
    ----------
    transport : gcomp.transports.Transport
        The transport over every rank.
    compressor : gcomp.Compressor
        The compressor of the leaders' hop.
    feedback : gcomp.feedback.ErrorFeedback
        The error feedback, applied by the leaders.
    server_feedback : gcomp.feedback.ErrorFeedback, optional
        The server memory of the leaders' ``scatter-reduce-allgather``.
    intra : gcomp.transports.Transport
        The transport inside this rank's group (:func:`gcomp.collectives.split_groups`).
    leaders : gcomp.transports.Transport or None
        The transport among the group leaders; None on a rank that leads no group.
    inner : dict
        ``{name: flat Algorithm over leaders}`` (``{}`` on ranks that lead no group).
    choose : callable
        ``choose(numel, inner) -> name``: the inner algorithm for a vector size.

    Examples
    --------
    Through the engine, three in-process ranks in groups ``[0, 1]`` and ``[2]``:

    >>> import numpy as np
    >>> from gcomp.collectives import CompressedAllreduce
    >>> from gcomp.transports import run_local
    >>> def rank(transport):
    ...     engine = CompressedAllreduce(transport, "topk:ratio=0.25", groups=[[0, 1], [2]])
    ...     result = engine(np.arange(8, dtype=np.float32), key="w")
    ...     return engine.stats[-1].algorithm, result.tolist()
    >>> for algorithm, result in run_local(3, rank):
    ...     print(algorithm, result)
    hierarchical/allgather [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0, 7.0]
    hierarchical [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0, 7.0]
    hierarchical/allgather [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0, 7.0]
    """

    name = "hierarchical"
    uses_feedback = False  # the leaders apply the feedback's after_reduce before broadcasting

    def __init__(self, transport, compressor, feedback, server_feedback=None, *, intra, leaders, inner, choose):
        super().__init__(transport, compressor, feedback, server_feedback)
        self.intra = intra
        self.leaders = leaders
        self.inner = inner  # name -> flat Algorithm over the leaders ({} on ranks that lead no group)
        self._choose = choose  # (numel, algorithms) -> name

    def _inner_for(self, numel):
        return self.inner[self._choose(numel, self.inner)]

    def estimated_bytes(self, numel):
        """Bytes of the dense sum and broadcast inside the group, plus the leaders' hop on a leader.

        Parameters
        ----------
        numel : int
            Entries of the vector.

        Returns
        -------
        int
            Bytes sent by this rank.
        """
        between = self._inner_for(numel).estimated_bytes(numel) if self.inner else 0
        return 2 * (self.intra.size - 1) * 4 * (numel + sequence.TAIL) // max(self.intra.size, 1) + between

    def take_memory(self, key, numel, average):
        """The leaders' inner algorithm's memories (on the group sum); None on a rank that leads no group.

        Parameters
        ----------
        key : object
            The call's key.
        numel : int
            Entries of the key's vector.
        average : bool
            Unused: the leaders' hop always sums.

        Returns
        -------
        numpy.ndarray or None
            The memories as one addend to the next input.
        """
        # the leaders keep the memories (their inner algorithm runs on the group sum, without averaging)
        return self._inner_for(numel).take_memory(key, numel, False) if self.inner else None

    def memory_keys(self, key):
        """``key`` and every key the inner algorithms use for it.

        Parameters
        ----------
        key : object
            The call's key.

        Returns
        -------
        list
            The feedback keys.
        """
        return sorted({k for a in self.inner.values() for k in a.memory_keys(key)} | {key}, key=str)

    def prepare(self, x, key, step, average=True, out=None):
        """A copy of ``x`` with the call's sequence token behind it, for the group's dense sum.

        Parameters
        ----------
        x : numpy.ndarray
            This rank's float32 vector.
        key : object
            The call's key.
        step : int
            The key's step, identical on every rank.
        average : bool
            True for the mean, False for the sum.
        out : numpy.ndarray, optional
            The vector :meth:`complete` will be given as ``out``; unused here.

        Returns
        -------
        Pending
            The call, for :meth:`complete`.
        """
        stats = CallStats(key, step, self.name, x.shape[0], packet_bytes=x.nbytes)
        whole = sequence.with_tail(x, key, step, self.intra.size)
        return Pending(whole[: x.shape[0]], key, step, stats, payload=whole, average=average)

    def complete(self, pending, out=None):
        """The group's dense sum, the leaders' compressed collective, and the broadcast back inside the group.

        Parameters
        ----------
        pending : Pending
            What :meth:`prepare` returned.
        out : numpy.ndarray, optional
            A float32 vector of the input's size for the result.

        Returns
        -------
        numpy.ndarray
            The reduced vector, identical on every rank.

        Raises
        ------
        gcomp.errors.SequenceError
            On every rank, when a group's or the leaders' calls no longer pair.
        """
        total, whole, stats = pending.x, pending.payload, pending.stats
        key, step = pending.key, pending.step
        before = (stats.bytes_sent, stats.bytes_received)
        self._counted(pending, self.intra.allreduce_, whole, transport=self.intra)
        intra_sent, intra_received = stats.bytes_sent - before[0], stats.bytes_received - before[1]
        error = None
        try:
            sequence.check_tail(whole, key, step, self.intra.size, self.intra.rank)
        except SequenceError as exc:
            error = exc
        if self.leaders is not None and self.leaders.size > 1:
            inner = self._inner_for(total.shape[0])
            sub = inner.prepare(total, key, step, average=False)
            sub.fault = error is not None
            try:
                result = inner.complete(sub)
                if inner.uses_feedback:
                    result = self.feedback.after_reduce(key, result)
                total[:] = result
            except SequenceError as exc:
                error = error or exc
            stats.algorithm = f"{self.name}/{inner.name}"
            stats.packet_bytes = sub.stats.packet_bytes
            for field in ("bytes_sent", "bytes_received", "compress_s", "decompress_s", "comm_s"):
                setattr(stats, field, getattr(stats, field) + getattr(sub.stats, field))
        if self.intra.rank == 0:
            whole[total.shape[0]:] = 0
            whole[-1] = error is not None  # the leader's verdict travels with the result
        before = (stats.bytes_sent, stats.bytes_received)
        self._counted(pending, self.intra.broadcast_, whole, 0, transport=self.intra)
        stats.intra_bytes_sent = intra_sent + stats.bytes_sent - before[0]
        stats.intra_bytes_received = intra_received + stats.bytes_received - before[1]
        if error is not None:
            raise error
        if whole[-1] != 0:
            raise SequenceError(f"collective out of sequence on rank {self.transport.rank} at key {key!r} step {step}: "
                                f"this rank's group leader found the call broken; {sequence.RESTART}")
        if pending.average:
            t = Timer()
            total /= total.dtype.type(self.size)
            stats.decompress_s += t.lap()
        if out is not None and total.dtype == out.dtype:
            out[:] = total
            return out
        return total
