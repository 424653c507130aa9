"""``dense``: a plain float32 allreduce (the baseline; also the warm-up and small-tensor path)."""

import numpy as np

from .base import Algorithm, CallStats, Pending, Timer


class DenseAllreduce(Algorithm):
    name = "dense"

    def estimated_bytes(self, numel):
        return 2 * (self.size - 1) * 4 * numel // max(self.size, 1)

    def prepare(self, x, key, step, average=True):
        stats = CallStats(key, step, self.name, x.shape[0], packet_bytes=x.nbytes)
        return Pending(np.array(x, dtype=np.float32, copy=True), key, step, stats, average=average)

    def complete(self, pending):
        buf = pending.x
        self._counted(pending, self.transport.allreduce_, buf)
        if pending.average and self.size > 1:
            t = Timer()
            buf /= np.float32(self.size)
            pending.stats.decompress_s += t.lap()
        return buf
