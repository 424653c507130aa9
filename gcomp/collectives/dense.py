"""``dense``: a plain float32 allreduce (the baseline; also the warm-up and small-tensor path)."""

import numpy as np

from . import sequence
from .base import Algorithm, CallStats, Pending, Timer


class DenseAllreduce(Algorithm):
    name = "dense"
    uses_feedback = False

    def estimated_bytes(self, numel):
        p = max(self.size, 1)
        return 2 * (self.size - 1) * 4 * numel // p + 2 * (self.size - 1) * 4 * sequence.TAIL // p

    def prepare(self, x, key, step, average=True):
        stats = CallStats(key, step, self.name, x.shape[0], packet_bytes=x.nbytes)
        return Pending(np.array(x, copy=True), key, step, stats, average=average)

    #: MEAN as DDP computes it (each rank's vector times float32(1/P), then the sum), so that `none` is
    #: bit-identical to DDP without a hook; False: the sum, then divided by P (mpi4py's Allreduce then / P).
    #: The two differ in the last bit when P is not a power of two.
    scale_first = True

    def complete(self, pending, out=None):
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
