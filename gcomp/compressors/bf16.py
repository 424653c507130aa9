"""``bf16``: cast to bfloat16 (round to nearest even), kept as uint16 bit patterns."""

import dataclasses

import numpy as np

from ..kernels.cast import add_bfloat16_bits, from_bfloat16_bits, to_bfloat16_bits
from .base import Compressed, Compressor, framed, new_frame
from .codec import U16, Codec


def to_bf16_bits(x):
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN becomes ``0x7FC0``."""
    return to_bfloat16_bits(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))


def from_bf16_bits(b):
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    return from_bfloat16_bits(b)


class BF16(Compressor):
    name = "bf16"
    description = "cast to bfloat16: 2x smaller, float32's range, linear"
    linear = True
    codec = Codec(3, lambda n, count, p: [("values", U16, n)])
    summable = ("values",)  # summed in float32 (bf16 has no portable wire sum), then rounded once

    def max_payload_bytes(self, numel):
        return 2 * numel

    def _compress(self, x, *, step, seed):
        n = x.shape[0]
        # a large vector is cast straight into a packet's payload (wire.encode_array: no copy)
        frame = new_frame(self.codec, n)
        if frame is None:
            return Compressed(self.name, n, "float32", {"values": to_bf16_bits(x)})
        return framed(Compressed(self.name, n, "float32", {"values": to_bfloat16_bits(x, out=frame.views[0])}), frame)

    def _decompress(self, c):
        return from_bf16_bits(c.arrays["values"])

    def _decompress_into(self, c, out):
        return from_bfloat16_bits(c.arrays["values"], out=out)

    def _decode(self, c, out=None, accumulate=False):
        if accumulate:  # decompress_add: added in one pass, no dense temporary (the same bits as acc += dense)
            return add_bfloat16_bits(c.arrays["values"], out)
        return from_bfloat16_bits(c.arrays["values"], out=out)

    def summed_bytes(self, numel):
        return 4 * numel

    def summands(self, c):
        return {"values": from_bf16_bits(c.arrays["values"])}

    def with_sums(self, c, sums):
        return super().with_sums(c, {"values": to_bf16_bits(sums["values"])})

    def combine(self, items):
        items, first = self._combinable(items)
        total = np.zeros(first.numel, np.float32)
        for c in items:
            total += from_bf16_bits(c.arrays["values"])
        return dataclasses.replace(first, arrays={"values": to_bf16_bits(total)})
