"""``allreduce``: linear compressors, whose compressed forms are summed on the wire.

* Compressors with ``summable`` arrays (``none``, ``fp16``, ``bf16`` via float32,
  ``randomk`` with the shared seed): each rank compresses ``x / P`` (dividing
  first keeps fp16 from overflowing), the summable arrays are allreduced in
  their own dtype, and the summed form is decompressed: that is the mean.
* PowerSGD: ``P = M Q`` allreduced, orthonormalized, ``Q' = M^T P_hat``
  allreduced, result ``P_hat Q'^T`` (Vogels et al.); the error feedback keeps
  ``M - mean`` per rank (in units scaled by 1/P), as PyTorch's PowerSGD hook does.
"""

import numpy as np

from .base import Algorithm, CallStats, Pending, Timer


class LinearAllreduce(Algorithm):
    name = "allreduce"

    def estimated_bytes(self, numel):
        return 2 * (self.size - 1) * self.compressor.max_payload_bytes(numel) // max(self.size, 1)

    def prepare(self, x, key, step, average=True):
        stats = CallStats(key, step, self.name, x.shape[0])
        t = Timer()
        scale = np.float32(1.0 / self.size) if average else np.float32(1.0)
        if hasattr(self.compressor, "p_phase"):
            v = x * scale
            residual = self.feedback.memory_array(key, x.shape[0]) if self.feedback.kind == "residual" else None
            if residual is not None:
                v += residual
            p = self.compressor.p_phase(v, key)
            stats.compress_s += t.lap()
            stats.packet_bytes = p.nbytes
            return Pending(v, key, step, stats, payload=("powersgd", p, residual), average=average)
        c = self.feedback.compress(x * scale, key=key, step=step)
        stats.compress_s += t.lap()
        stats.packet_bytes = c.nbytes
        return Pending(x, key, step, stats, payload=("summable", c), average=average)

    def complete(self, pending):
        kind = pending.payload[0]
        if kind == "powersgd":
            return self._powersgd(pending)
        c = pending.payload[1]
        for name in self.compressor.summable or ("values",):
            arr = c.arrays[name]
            if arr.dtype == np.uint16:  # bf16 bit patterns: sum as float32 (bf16 has no portable wire sum)
                from ..compressors.bf16 import from_bf16_bits, to_bf16_bits

                total = np.array(from_bf16_bits(arr), copy=True)
                self._counted(pending, self.transport.allreduce_, total)
                c.arrays[name] = to_bf16_bits(total)
                continue
            arr = np.array(arr, copy=True)
            self._counted(pending, self.transport.allreduce_, arr)
            c.arrays[name] = arr
        t = Timer()
        out = self.compressor.decompress(c)
        out = np.asarray(out, dtype=np.float32)
        pending.stats.decompress_s += t.lap()
        return out

    def _powersgd(self, pending):
        _, p, residual = pending.payload
        comp, key, v = self.compressor, pending.key, pending.x
        self._counted(pending, self.transport.allreduce_, p)
        t = Timer()
        q = comp.q_phase(v, p, key)
        pending.stats.compress_s += t.lap()
        pending.stats.packet_bytes += q.nbytes
        self._counted(pending, self.transport.allreduce_, q)
        t = Timer()
        out = comp.finish(q, v.shape[0], key)
        if residual is not None:
            # out approximates the sum over ranks of v; this rank keeps v - out / P (torch's M - mean, scaled).
            np.subtract(v, out / np.float32(self.size), out=residual)
        pending.stats.decompress_s += t.lap()
        return out
