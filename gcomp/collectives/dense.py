"""``dense``: a plain float32 allreduce (the baseline; also the warm-up and small-tensor path)."""

import numpy as np

from . import sequence
from .base import Algorithm, CallStats, Pending, Timer


class DenseAllreduce(Algorithm):
    """``dense``: a plain float32 (or float64) allreduce; nothing is compressed and the error feedback is unused.

    The baseline, the warm-up and small-tensor path, and every call on one
    rank.  The mean is computed as DDP does (:attr:`scale_first`), so the
    ``none`` compressor is bit-identical to DDP without a hook.

    Parameters
    ----------
    transport : gcomp.transports.Transport
        Carries the bytes.
    compressor : gcomp.Compressor
        Unused (kept for the common signature).
    feedback : gcomp.feedback.ErrorFeedback
        Unused (dense sends exact values).
    server_feedback : gcomp.feedback.ErrorFeedback, optional
        Unused here (the signature is :class:`Algorithm`'s).

    Examples
    --------
    >>> import numpy as np
    >>> from gcomp import compressor
    >>> from gcomp.collectives import DenseAllreduce
    >>> from gcomp.transports import run_local
    >>> def rank(transport):
    ...     algorithm = DenseAllreduce(transport, compressor("none"), None)
    ...     pending = algorithm.prepare(np.full(3, float(transport.rank), np.float32), key=0, step=0)
    ...     return algorithm.complete(pending).tolist()
    >>> run_local(2, rank)
    [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
    """

    name = "dense"
    uses_feedback = False

    def estimated_bytes(self, numel):
        """Bytes of a ring allreduce of ``numel`` float32 entries: ``2 (P - 1) / P`` vectors, plus the token.

        Parameters
        ----------
        numel : int
            Entries of the vector.

        Returns
        -------
        int
            Bytes sent by this rank (:meth:`Algorithm.estimated_bytes`).
        """
        p = max(self.size, 1)
        return 2 * (self.size - 1) * 4 * numel // p + 2 * (self.size - 1) * 4 * sequence.TAIL // p

    def prepare(self, x, key, step, average=True, out=None):
        """A copy of ``x`` to reduce (nothing is compressed).

        Parameters
        ----------
        x : numpy.ndarray
            This rank's float32 (or float64) vector.
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
        return Pending(np.array(x, copy=True), key, step, stats, average=average)

    #: MEAN as DDP computes it (each rank's vector times float32(1/P), then the sum), so that `none` is
    #: bit-identical to DDP without a hook; False: the sum, then divided by P (mpi4py's Allreduce then / P).
    #: The two differ in the last bit when P is not a power of two.
    scale_first = True

    def complete(self, pending, out=None):
        """The allreduce itself (the sequence token in its own small sum first), then the mean if averaging.

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
        buf = pending.x
        average = pending.average and self.size > 1
        t = Timer()
        if average and self.scale_first:
            buf *= buf.dtype.type(1.0 / self.size)  # in the buffer's own precision, as DDP scales
        pending.stats.decompress_s += t.lap()
        if self.size > 1:
            # the token before the values, in a sum of its own: `none` stays bit-identical to DDP without a hook
            # and to comm.Allreduce
            self._sum_token(pending, buf.dtype)
        self._counted(pending, self.transport.allreduce_, buf)
        if average and not self.scale_first:
            t = Timer()
            buf /= buf.dtype.type(self.size)
            pending.stats.decompress_s += t.lap()
        if out is not None and buf.dtype == out.dtype:
            out[:] = buf
            return out
        return buf
