"""``allgather``: every rank receives every rank's packet, decodes and sums them.

Works with any compressor.  Bytes received grow with the world size P:
``(P - 1)`` packets.  Every rank decodes the same packets in rank order, so
every rank computes a bit-identical result: the mean (or sum) of the ranks'
decompressed contributions.
"""

import numpy as np

from .. import wire
from . import sequence
from .base import Algorithm, CallStats, Pending, Timer


class AllgatherAlgorithm(Algorithm):
    """``allgather``: every rank receives every rank's packet, decodes them in rank order and sums them.

    Works with any compressor; bytes received grow with the world size (module
    docstring).

    Parameters
    ----------
    transport : gcomp.transports.Transport
        Carries the bytes.
    compressor : gcomp.Compressor
        The compressor every rank uses.
    feedback : gcomp.feedback.ErrorFeedback
        The worker error feedback.
    server_feedback : gcomp.feedback.ErrorFeedback, optional
        Unused here (the signature is :class:`Algorithm`'s).

    Examples
    --------
    Top-k (2 of 8 entries) with residual error feedback on three in-process ranks:

    >>> import numpy as np
    >>> from gcomp import compressor
    >>> from gcomp.collectives import AllgatherAlgorithm
    >>> from gcomp.feedback import feedback
    >>> from gcomp.transports import run_local
    >>> def rank(transport):
    ...     comp = compressor("topk:ratio=0.25")
    ...     algorithm = AllgatherAlgorithm(transport, comp, feedback("residual", comp))
    ...     x = np.arange(8, dtype=np.float32) * (transport.rank + 1)
    ...     result = algorithm.complete(algorithm.prepare(x, key="w", step=0))
    ...     return result.tolist()
    >>> run_local(3, rank)[0]
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 12.0, 14.0]
    """

    name = "allgather"

    def estimated_bytes(self, numel):
        """Bytes of this rank's packet, sent to each of the ``P - 1`` others (header and sequence prefix included).

        Parameters
        ----------
        numel : int
            Entries of the vector.

        Returns
        -------
        int
            Bytes sent by this rank (:meth:`Algorithm.estimated_bytes`).
        """
        return (self.size - 1) * (sequence.PREFIX_SIZE + wire.HEADER_SIZE + self.compressor.max_payload_bytes(numel))

    def prepare(self, x, key, step, average=True, out=None):
        """Compress ``x`` through the error feedback into one wire packet behind the call's sequence prefix.

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
        # the packet is written once, behind room for the call's sequence prefix
        framed = wire.encode_array(self.feedback.compress(x, key=key, step=step), reserve=sequence.PREFIX_SIZE)
        stats.compress_s += t.lap()
        stats.packet_bytes = framed.nbytes - sequence.PREFIX_SIZE
        return Pending(x, key, step, stats, payload=sequence.stamp(framed, key, step), average=average)

    def complete(self, pending, out=None):
        """Allgather the packets, check their sequence prefixes, decode and sum them in rank order.

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
        if pending.fault:
            sequence.stamp(pending.payload, pending.key, pending.step, True)
        framed = self._counted(pending, self.transport.allgatherv, pending.payload)
        packets = sequence.unframe(framed, pending.key, pending.step, self.transport.rank, pending.fault)
        t = Timer()
        n = pending.x.shape[0]
        if out is None:
            acc = np.zeros(n, np.float32)
        else:
            acc = out
            acc[:] = 0.0
        for buf in packets:
            self.compressor.decompress_add(wire.decode(buf, expected_numel=n), acc)
        if pending.average and self.size > 1:
            acc /= np.float32(self.size)
        pending.stats.decompress_s += t.lap()
        return acc
