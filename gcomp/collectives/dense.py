"""``dense``: a plain float32 allreduce (the baseline; also the warm-up and small-tensor path)."""

import numpy as np

from .base import Algorithm, CallStats, Pending, Timer


class DenseAllreduce(Algorithm):
    name = "dense"
    uses_feedback = False

    def estimated_bytes(self, numel):
        return 2 * (self.size - 1) * 4 * numel // max(self.size, 1)

    def prepare(self, x, key, step, average=True):
        stats = CallStats(key, step, self.name, x.shape[0], packet_bytes=x.nbytes)
        return Pending(np.array(x, dtype=np.float32, copy=True), key, step, stats, average=average)

    def complete(self, pending):
        buf = pending.x
        if pending.average and self.size > 1:
            # Scale before summing, as DDP does, so `none` is bit-identical to DDP without a hook.
            t = Timer()
            buf *= np.float32(1.0 / self.size)
            pending.stats.decompress_s += t.lap()
        self._counted(pending, self.transport.allreduce_, buf)
        return buf
