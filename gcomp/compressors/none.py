"""``none``: no compression; the dense float32 vector travels as it is."""

import numpy as np

from .base import Compressed, Compressor
from .codec import F32, Codec


class NoCompression(Compressor):
    name = "none"
    description = "no compression: dense float32 (the baseline)"
    linear = True
    unbiased = True
    summable = ("values",)
    identity = True
    codec = Codec(1, lambda n, count, p: [("values", F32, n)])

    def contraction(self, numel):
        return 1.0

    def max_payload_bytes(self, numel):
        return 4 * numel

    def _compress(self, x, *, step, seed):
        return Compressed(self.name, x.shape[0], "float32", {"values": np.array(x, dtype=np.float32, copy=True)})

    def _decompress(self, c):
        return np.array(c.arrays["values"], dtype=np.float32, copy=True)

    def _decompress_into(self, c, out):
        out[...] = c.arrays["values"]
        return out
