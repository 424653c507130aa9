"""``none``: no compression; the dense float32 vector travels as it is."""

import numpy as np

from .base import Compressed, Compressor, framed, new_frame
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
        n = x.shape[0]
        # a large vector is copied straight into a packet's payload (wire.encode_array: no second copy)
        frame = new_frame(self.codec, n)
        if frame is None:
            return Compressed(self.name, n, "float32", {"values": np.array(x, dtype=np.float32, copy=True)})
        values = frame.views[0]
        np.copyto(values, x)
        return framed(Compressed(self.name, n, "float32", {"values": values}), frame)

    def _decompress(self, c):
        return np.array(c.arrays["values"], dtype=np.float32, copy=True)

    def _decompress_into(self, c, out):
        out[...] = c.arrays["values"]
        return out

    def _decode(self, c, out=None, accumulate=False):
        if accumulate:  # decompress_add: added in place, no dense temporary (the same bits as acc += copy)
            np.add(out, c.arrays["values"], out=out)
            return out
        if out is None:
            return self._decompress(c)
        return self._decompress_into(c, out)
