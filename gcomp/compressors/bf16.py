"""``bf16``: cast to bfloat16 (round to nearest even), kept as uint16 bit patterns."""

import numpy as np

from .base import Compressed, Compressor


def to_bf16_bits(x):
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    bits = x.view(np.uint32)
    rounding = ((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = np.uint16(0x7FC0)
    return out


def from_bf16_bits(b):
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


class BF16(Compressor):
    name = "bf16"
    description = "cast to bfloat16: 2x smaller, float32's range, linear"
    linear = True
    summable = ()  # summed in float32 by combine() below, then rounded once

    def max_payload_bytes(self, numel):
        return 2 * numel

    def _compress(self, x, *, step, seed):
        return Compressed(self.name, x.shape[0], "float32", {"values": to_bf16_bits(x)})

    def _decompress(self, c):
        return from_bf16_bits(c.arrays["values"])

    def combine(self, items):
        import dataclasses

        items = list(items)
        first = super().combine(items)  # validates that the forms match
        total = np.zeros(first.numel, np.float32)
        for c in items:
            total += from_bf16_bits(c.arrays["values"])
        return dataclasses.replace(first, arrays={"values": to_bf16_bits(total)})
