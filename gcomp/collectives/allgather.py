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
        packet = wire.encode(self.feedback.compress(x, key=key, step=step))
        stats.compress_s += t.lap()
        stats.packet_bytes = len(packet)
        return Pending(x, key, step, stats, payload=sequence.frame(packet, key, step), average=average)

    def complete(self, pending):
        if pending.fault:
            pending.payload = sequence.frame(pending.payload[sequence.PREFIX_SIZE:], pending.key, pending.step, True)
        framed = self._counted(pending, self.transport.allgatherv, pending.payload)
        packets = sequence.unframe(framed, pending.key, pending.step, self.transport.rank, pending.fault)
        t = Timer()
        n = pending.x.shape[0]
        acc = np.zeros(n, np.float32)
        for buf in packets:
            self.compressor.decompress_add(wire.decode(buf, expected_numel=n), acc)
        if pending.average and self.size > 1:
            acc /= np.float32(self.size)
        pending.stats.decompress_s += t.lap()
        return acc
