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
"""

import numpy as np

from .base import Algorithm, CallStats, Pending, Timer


class LinearAllreduce(Algorithm):
    name = "allreduce"

    def estimated_bytes(self, numel):
        return 2 * (self.size - 1) * self.compressor.summed_bytes(numel) // max(self.size, 1)

    def prepare(self, x, key, step, average=True):
        stats = CallStats(key, step, self.name, x.shape[0])
        t = Timer()
        scale = np.float32(1.0 / self.size) if average else np.float32(1.0)
        if self.compressor.phased:
            v = self.feedback.before_phases(x * scale, key)
            phases = self.compressor.phases(v, key)
            part = next(phases)
            stats.compress_s += t.lap()
            stats.packet_bytes = part.nbytes
            return Pending(v, key, step, stats, payload=(phases, part), average=average)
        c = self.feedback.compress(x * scale, key=key, step=step)
        sums = self.compressor.summands(c)
        stats.compress_s += t.lap()
        stats.packet_bytes = sum(a.nbytes for a in sums.values())
        return Pending(x, key, step, stats, payload=(c, sums), average=average)

    def complete(self, pending):
        if self.compressor.phased:
            return self._phases(pending)
        c, sums = pending.payload
        for arr in sums.values():
            self._counted(pending, self.transport.allreduce_, arr)
        t = Timer()
        out = np.asarray(self.compressor.decompress(self.compressor.with_sums(c, sums)), dtype=np.float32)
        pending.stats.decompress_s += t.lap()
        return out

    def _phases(self, pending):
        phases, part = pending.payload
        while True:
            self._counted(pending, self.transport.allreduce_, part)
            t = Timer()
            try:
                part = phases.send(part)
            except StopIteration as done:
                out = done.value
                break
            pending.stats.compress_s += t.lap()
            pending.stats.packet_bytes += part.nbytes
        self.feedback.after_phases(pending.key, pending.x, out, self.size)
        pending.stats.decompress_s += t.lap()
        return out
