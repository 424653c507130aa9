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
    name = "allgather"

    def estimated_bytes(self, numel):
        return (self.size - 1) * (sequence.PREFIX_SIZE + wire.HEADER_SIZE + self.compressor.max_payload_bytes(numel))

    def prepare(self, x, key, step, average=True):
        stats = CallStats(key, step, self.name, x.shape[0])
        t = Timer()
        # the packet is written once, behind room for the call's sequence prefix
        framed = wire.encode_array(self.feedback.compress(x, key=key, step=step), reserve=sequence.PREFIX_SIZE)
        stats.compress_s += t.lap()
        stats.packet_bytes = framed.nbytes - sequence.PREFIX_SIZE
        return Pending(x, key, step, stats, payload=sequence.stamp(framed, key, step), average=average)

    def complete(self, pending, out=None):
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
