"""``scatter-reduce-allgather``: the two-phase compressed allreduce (DeepSpeed 1-bit Adam, CGX, Bagua).

The vector is split into P contiguous chunks; rank r owns chunk r.

1. Each rank compresses every chunk through its *worker* error feedback
   (keys ``"<key>/chunk<j>"``) and sends chunk j's packet to rank j (alltoall).
2. Rank r decodes the P packets of its chunk in rank order, averages them, and
   compresses that through its *server* error feedback (key ``"<key>/server"``).
3. The server packets are allgathered; every rank decodes chunk j from rank j's
   packet.  The result is identical on every rank.

Each rank sends about ``2 (P - 1) / P`` compressed vectors, flat in P.
"""

import numpy as np

from .. import wire
from . import sequence
from .base import Algorithm, CallStats, Pending, Timer

ALIGN = 64


def chunk_bounds(numel, parts):
    """Start offsets (``parts + 1`` of them) of ``parts`` contiguous chunks, aligned to 64 entries.

    The chunks of ``scatter-reduce-allgather``: rank ``r`` owns
    ``bounds[r]:bounds[r + 1]``.  Every inner boundary is a multiple of 64;
    a chunk may be empty when ``numel`` is small.

    Parameters
    ----------
    numel : int
        Entries of the vector.
    parts : int
        The number of chunks (the world size), at least 1.

    Returns
    -------
    list of int
        ``parts + 1`` non-decreasing offsets, from 0 to ``numel``.

    Examples
    --------
    >>> from gcomp.collectives import chunk_bounds
    >>> chunk_bounds(200, 3)
    [0, 64, 128, 200]
    >>> chunk_bounds(100, 4)
    [0, 0, 0, 64, 100]
    """
    bounds = [0]
    for j in range(1, parts):
        b = (numel * j // parts) // ALIGN * ALIGN
        bounds.append(max(b, bounds[-1]))
    bounds.append(numel)
    return bounds


class ScatterReduceAllgather(Algorithm):
    """``scatter-reduce-allgather``: the two-phase compressed allreduce (module docstring).

    Each rank reduces the chunk it owns (:func:`chunk_bounds`) from every rank's
    compressed chunk, compresses the result again through its server error
    feedback, and the server packets are allgathered.  Works with any
    compressor; each rank sends about ``2 (P - 1) / P`` compressed vectors.

    Parameters
    ----------
    transport : gcomp.transports.Transport
        Carries the bytes.
    compressor : gcomp.Compressor
        The compressor every rank uses.
    feedback : gcomp.feedback.ErrorFeedback
        The worker error feedback (one memory per chunk).
    server_feedback : gcomp.feedback.ErrorFeedback, optional
        The server error feedback (this rank's reduced chunk); the engine
        passes ``feedback.server_memory()``.

    Examples
    --------
    >>> import numpy as np
    >>> from gcomp import compressor
    >>> from gcomp.collectives import ScatterReduceAllgather
    >>> from gcomp.feedback import feedback
    >>> from gcomp.transports import run_local
    >>> def rank(transport):
    ...     comp = compressor("fp16")
    ...     memory = feedback("none", comp)
    ...     algorithm = ScatterReduceAllgather(transport, comp, memory, memory.server_memory())
    ...     x = np.full(200, transport.rank + 1.0, np.float32)
    ...     return set(algorithm.complete(algorithm.prepare(x, key="w", step=0)).tolist())
    >>> run_local(3, rank)
    [{2.0}, {2.0}, {2.0}]
    """

    name = "scatter-reduce-allgather"

    def estimated_bytes(self, numel):
        """Bytes of ``P - 1`` chunk packets (alltoall) and ``P - 1`` copies of this rank's server packet.

        Parameters
        ----------
        numel : int
            Entries of the vector.

        Returns
        -------
        int
            Bytes sent by this rank (:meth:`Algorithm.estimated_bytes`).
        """
        per_chunk = wire.HEADER_SIZE + self.compressor.max_payload_bytes(-(-numel // self.size))
        return 2 * (self.size - 1) * per_chunk + (self.size - 1) * sequence.PREFIX_SIZE

    def memory_keys(self, key):
        """The chunks' worker keys ``"<key>/chunk<j>"`` and the server key ``"<key>/server"``.

        Parameters
        ----------
        key : object
            The call's key.

        Returns
        -------
        list
            The feedback keys.
        """
        return [f"{key}/chunk{j}" for j in range(self.size)] + [f"{key}/server"]

    def take_memory(self, key, numel, average):
        """The chunks' worker memories in place, plus this rank's server memory scaled to one rank's share.

        Parameters
        ----------
        key : object
            The call's key.
        numel : int
            Entries of the key's vector.
        average : bool
            Whether the key's last call averaged.

        Returns
        -------
        numpy.ndarray or None
            The memories as one addend to the next input (:meth:`Algorithm.take_memory`).
        """
        # the chunks' worker memories in place, and this rank's server memory (of the chunk it owns, in units of
        # the reduced chunk: a mean when averaging) scaled back to one rank's share of the sum
        bounds = chunk_bounds(numel, self.size)
        out = None
        for j in range(self.size):
            lo, hi = bounds[j], bounds[j + 1]
            parts = [(self.feedback.take(f"{key}/chunk{j}"), 1.0)]
            if j == self.transport.rank:
                parts.append((self.server_feedback.take(f"{key}/server") if self.server_feedback is not None else None,
                              float(self.size) if average else 1.0))
            for memory, factor in parts:
                if memory is None or memory.shape[0] != hi - lo:
                    continue
                if out is None:
                    out = np.zeros(numel, np.float32)
                out[lo:hi] += memory if factor == 1.0 else memory * np.float32(factor)
        return out

    def prepare(self, x, key, step, average=True, out=None):
        """Compress each chunk of ``x`` through its worker error feedback into a packet for its owner.

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
        stats = CallStats(key, step, self.name, x.shape[0])
        t = Timer()
        bounds = chunk_bounds(x.shape[0], self.size)
        # each packet behind the call's sequence prefix (the alltoall is the call's first collective)
        packets = [
            sequence.stamp(wire.encode_array(self.feedback.compress(x[bounds[j]: bounds[j + 1]], key=f"{key}/chunk{j}",
                                                                    step=step), reserve=sequence.PREFIX_SIZE), key, step)
            for j in range(self.size)
        ]
        stats.compress_s += t.lap()
        stats.packet_bytes = sum(p.nbytes - sequence.PREFIX_SIZE for p in packets)
        return Pending(x, key, step, stats, payload=(bounds, packets), average=average)

    def complete(self, pending, out=None):
        """Alltoall the chunk packets, reduce and recompress the owned chunk, allgather the server packets.

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
        """
        bounds, packets = pending.payload
        rank, size, key = self.transport.rank, self.size, pending.key
        if pending.fault:
            packets = [sequence.stamp(p, key, pending.step, True) for p in packets]
        received = self._counted(pending, self.transport.alltoallv, packets)
        received = sequence.unframe(received, key, pending.step, rank, pending.fault)
        t = Timer()
        lo, hi = bounds[rank], bounds[rank + 1]
        acc = np.zeros(hi - lo, np.float32)
        for buf in received:
            self.compressor.decompress_add(wire.decode(buf, expected_numel=hi - lo), acc)
        if pending.average and size > 1:
            acc /= np.float32(size)
        pending.stats.decompress_s += t.lap()
        server = self.server_feedback.compress(acc, key=f"{key}/server", step=pending.step)
        server_packet = wire.encode_array(server)
        pending.stats.compress_s += t.lap()
        gathered = self._counted(pending, self.transport.allgatherv, server_packet)
        t = Timer()
        if out is None:
            out = np.empty(pending.x.shape[0], np.float32)
        for j, buf in enumerate(gathered):
            n = bounds[j + 1] - bounds[j]
            self.compressor.decompress(wire.decode(buf, expected_numel=n), out=out[bounds[j]: bounds[j + 1]])
        pending.stats.decompress_s += t.lap()
        return out
