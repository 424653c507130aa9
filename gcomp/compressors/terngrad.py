"""``terngrad``: TernGrad (Wen et al., NeurIPS 2017): stochastic ternary codes {-1, 0, +1} times the bucket's max |x|.

Unbiased: an entry is sent as ``sign(x) * s`` with probability ``|x| / s``,
``s = max |x|`` over its bucket, else as 0.  Codes take 2 bits.
"""

from ..kernels import terngrad as kt
from ._params import bucket_param, codes_and_scales, nbuckets, packed_bytes, seed_param
from .base import Compressed, Compressor, framed, new_frame
from .codec import Codec

_arrays, _check_packet = codes_and_scales("terngrad", 2)


class TernGrad(Compressor):
    name = "terngrad"
    description = "TernGrad: unbiased stochastic ternary {-1,0,1} times max|x| per bucket"
    unbiased = True
    randomized = True
    fused_residual = True
    codec = Codec(11, _arrays, ("bucket_size",), _check_packet)
    params = {"bucket_size": bucket_param(512, "entries sharing one scale (their max |x|)"),
              "seed": seed_param("seed of the stochastic rounding (with step and key)")}

    @classmethod
    def strategy(cls):
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"bucket_size": st.sampled_from([8, 64, 128, 512]), "seed": st.integers(0, 2**32)})

    def max_payload_bytes(self, numel):
        return packed_bytes(numel, 2) + 4 * nbuckets(numel, self.bucket_size)

    def _encode(self, x, seed, residual=None):
        n = x.shape[0]
        # a large vector's arrays are written straight into a packet's payload (a packet-backed form, which
        # wire.encode_array sends without a copy: new_frame); else fresh arrays, the same bits either way
        frame = new_frame(self.codec, n, (int(self.bucket_size),))
        views = (None, None) if frame is None else frame.views
        if residual is None:  # bucket_size was checked when this compressor was built: no checks per call
            packed, scales = kt._terngrad_encode_trusted(x, int(self.bucket_size), seed, None, *views)
        else:
            packed, scales = kt.terngrad_encode(x, self.bucket_size, seed, residual, *views)
        return framed(Compressed(self.name, n, "float32", {"codes": packed, "scales": scales},
                                 {"bucket_size": self.bucket_size}), frame)

    def _decode(self, c, out=None, accumulate=False):
        return kt.terngrad_decode(c.arrays["codes"], c.arrays["scales"], c.params["bucket_size"], c.numel,
                                  out=out, accumulate=accumulate)
