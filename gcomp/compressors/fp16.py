"""``fp16``: cast to IEEE half precision (values beyond +-65504 become +-Inf)."""

import numpy as np

from ..kernels.cast import add_float16, from_float16, to_float16
from .base import Compressed, Compressor, framed, new_frame
from .codec import F16, Codec


class FP16(Compressor):
    name = "fp16"
    description = "cast to float16: 2x smaller, linear (summable on the wire)"
    linear = True
    summable = ("values",)
    wire_dtype = np.float16
    codec = Codec(2, lambda n, count, p: [("values", F16, n)])

    def max_payload_bytes(self, numel):
        return 2 * numel

    def _compress(self, x, *, step, seed):
        n = x.shape[0]
        # a large vector is cast straight into a packet's payload (wire.encode_array: no copy)
        frame = new_frame(self.codec, n)
        if frame is None:
            return Compressed(self.name, n, "float32", {"values": to_float16(x)})
        return framed(Compressed(self.name, n, "float32", {"values": to_float16(x, out=frame.views[0])}), frame)

    def _decode(self, c, out=None, accumulate=False):
        if accumulate:
            return add_float16(c.arrays["values"], out)
        return from_float16(c.arrays["values"], out=out)
