"""``allreduce``: linear compressors, whose compressed forms are summed on the wire.

* Compressors with ``summable`` arrays (``none``, ``fp16``, ``bf16``,
  ``randomk`` with the shared seed): each rank compresses ``x / P`` (dividing
  first keeps fp16 from overflowing), the arrays :meth:`Compressor.summands`
  gives are allreduced in the type the compressor sums them in, and
  :meth:`Compressor.with_sums` puts them back: the summed form decompresses to
  the mean.  Only those arrays travel (random-k's indices are regenerated),
  and only they count as the packet.
* ``phased`` compressors (PowerSGD): each array :meth:`Compressor.phases`
  yields is allreduced and its sum sent back, until the generator returns
  the dense result; the error feedback wraps the phases
  (:meth:`gcomp.feedback.ErrorFeedback.before_phases` / ``after_phases``).

The first array summed (the first summand, or the first phase) carries the
call's sequence token (:mod:`gcomp.collectives.sequence`): it is summed in a
copy with :data:`~gcomp.collectives.sequence.TAIL` entries behind it.  An
identity compressor's sums must equal a plain allreduce bit for bit (``none``
is DDP without a hook), and a longer buffer would move the transport's chunk
boundaries and so the order of the float sums at P = 3: there the token
travels in its own small sum first, as in ``dense``.
"""

import numpy as np

from . import sequence
from .base import Algorithm, CallStats, Pending, Timer


class LinearAllreduce(Algorithm):
    """``allreduce``: a linear compressor's compressed arrays are summed on the wire (module docstring).

    Needs ``compressor.linear`` (``none``, ``fp16``, ``bf16``, ``randomk``,
    ``powersgd``...); the bytes each rank sends stay flat in the world size.

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
    >>> import numpy as np
    >>> from gcomp import compressor
    >>> from gcomp.collectives import LinearAllreduce
    >>> from gcomp.feedback import feedback
    >>> from gcomp.transports import run_local
    >>> def rank(transport):
    ...     comp = compressor("fp16")
    ...     algorithm = LinearAllreduce(transport, comp, feedback("none", comp))
    ...     pending = algorithm.prepare(np.full(4, 2.0 * transport.rank, np.float32), key="w", step=0)
    ...     return algorithm.complete(pending).tolist()
    >>> run_local(2, rank)
    [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    """

    name = "allreduce"

    def estimated_bytes(self, numel):
        """Bytes of a ring allreduce of the compressor's summed arrays (``summed_bytes``) plus the token.

        Parameters
        ----------
        numel : int
            Entries of the vector.

        Returns
        -------
        int
            Bytes sent by this rank (:meth:`Algorithm.estimated_bytes`).
        """
        # the token tail is counted at 4 bytes an entry (it travels in the first summand's dtype)
        p = max(self.size, 1)
        if self.compressor.identity:  # the token in its own sum
            return 2 * (self.size - 1) * self.compressor.summed_bytes(numel) // p + 2 * (self.size - 1) * 4 * sequence.TAIL // p
        return 2 * (self.size - 1) * (self.compressor.summed_bytes(numel) + 4 * sequence.TAIL) // p

    def feedback_scale(self, average):
        """``1 / P`` when averaging: each rank compresses ``x / P`` (the error feedback sees that).

        Parameters
        ----------
        average : bool
            Whether the call averages.

        Returns
        -------
        float
            The factor.
        """
        return np.float32(1.0 / self.size) if average else 1.0

    def prepare(self, x, key, step, average=True, out=None):
        """Compress ``x / P`` (or ``x`` for a sum) through the error feedback; for a phased compressor, run its
        first phase.

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
            The vector :meth:`complete` will be given as ``out``: with a phased
            compressor that fuses the residual (PowerSGD with residual error
            feedback) the last phase writes the result straight into it, even
            when it is ``x`` itself (no fresh dense vector, no copy).

        Returns
        -------
        Pending
            The call, for :meth:`complete`.
        """
        stats = CallStats(key, step, self.name, x.shape[0])
        t = Timer()
        scale = np.float32(1.0 / self.size) if average else np.float32(1.0)
        if self.compressor.phased:
            residual = (self.feedback.phase_buffer(key, x.shape[0])
                        if self.compressor.fuses_residual and x.dtype == np.float32 else None)
            if residual is not None:
                # the residual update runs inside the phases' own passes (no v, no after_phases): the same bits
                # x is read only by the first phase: the result may go into x's own memory (the DDP bucket)
                phases = self.compressor.phases(x, key, out=out, residual=residual, scale=scale, divisor=self.size)
                fused = True
            else:
                x = self.feedback.before_phases(x, key, scale)
                phases = self.compressor.phases(x, key)
                fused = False
            part = next(phases)
            stats.compress_s += t.lap()
            stats.packet_bytes = part.nbytes
            return Pending(x, key, step, stats, payload=(phases, part, fused), average=average)
        c = self.feedback.compress(x * scale, key=key, step=step)
        sums = self.compressor.summands(c)
        stats.compress_s += t.lap()
        stats.packet_bytes = sum(a.nbytes for a in sums.values())
        return Pending(x, key, step, stats, payload=(c, sums), average=average)

    def _first_sum(self, pending, array):
        """Sum ``array`` with the call's sequence token behind it; returns the summed values in its shape."""
        if self.size == 1:
            return array
        if self.compressor.identity:
            self._sum_token(pending, array.dtype)
            self._counted(pending, self.transport.allreduce_, array)
            return array
        whole = sequence.with_tail(array, pending.key, pending.step, self.size, pending.fault)
        self._counted(pending, self.transport.allreduce_, whole)
        return sequence.check_tail(whole, pending.key, pending.step, self.size, self.transport.rank,
                                   pending.fault).reshape(array.shape)

    def complete(self, pending, out=None):
        """Allreduce the summable arrays (or each phase), then decode the summed form.

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
        if self.compressor.phased:
            result = self._phases(pending)
            if out is not None:
                if result is not out:  # unless prepare() was given this out and the last phase wrote into it
                    out[:] = result
                return out
            return result
        c, sums = pending.payload
        for i, (name, arr) in enumerate(sums.items()):
            if i == 0:
                sums[name] = self._first_sum(pending, arr)
            else:
                self._counted(pending, self.transport.allreduce_, arr)
        t = Timer()
        summed = self.compressor.with_sums(c, sums)
        out = np.asarray(self.compressor.decompress(summed, out=out), dtype=np.float32)
        pending.stats.decompress_s += t.lap()
        return out

    def _phases(self, pending):
        phases, part, fused = pending.payload
        first = True
        while True:
            if first:
                part, first = self._first_sum(pending, part), False
            else:
                self._counted(pending, self.transport.allreduce_, part)
            t = Timer()
            try:
                part = phases.send(part)
            except StopIteration as done:
                out = done.value
                break
            pending.stats.compress_s += t.lap()
            pending.stats.packet_bytes += part.nbytes
        if not fused:
            self.feedback.after_phases(pending.key, pending.x, out, self.size)
        pending.stats.decompress_s += t.lap()
        return out
