"""``sign``: scaled sign, 1 bit per entry plus one scale per bucket (EF-signSGD, Karimireddy et al. 2019).

Each entry sends ``x >= 0``; each bucket sends ``scale = ||x_bucket||_1 / d``.
Biased; with error feedback it converges like SGD.  A contraction with
``delta = ||x||_1^2 / (d ||x||_2^2) >= 1 / d`` per bucket of d entries.
"""

from ..kernels import sign as ks
from ._params import bucket_param, codes_and_scales, nbuckets, packed_bytes
from .base import Compressed, Compressor, framed, new_frame
from .codec import Codec

_arrays, _check_packet = codes_and_scales("sign", 1)


class Sign(Compressor):
    name = "sign"
    description = "scaled sign: 1 bit per entry plus the mean |x| per bucket (EF-signSGD)"
    fused_residual = True
    codec = Codec(10, _arrays, ("bucket_size",), _check_packet)
    params = {"bucket_size": bucket_param(512, "entries sharing one scale (their mean |x|)")}

    @classmethod
    def strategy(cls):
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"bucket_size": st.sampled_from([8, 64, 128, 512])})

    def contraction(self, numel):
        return 1.0 / max(1, min(self.bucket_size, numel))

    def max_payload_bytes(self, numel):
        return packed_bytes(numel, 1) + 4 * nbuckets(numel, self.bucket_size)

    def _encode(self, x, seed, residual=None):
        n = x.shape[0]
        # a large vector's arrays are written straight into a packet's payload (a packet-backed form, which
        # wire.encode_array sends without a copy: new_frame); else fresh arrays, the same bits either way
        frame = new_frame(self.codec, n, (int(self.bucket_size),))
        views = (None, None) if frame is None else frame.views
        if residual is None:  # bucket_size was checked when this compressor was built: no checks per call
            packed, scales = ks._sign_encode_trusted(x, int(self.bucket_size), None, *views)
        else:
            packed, scales = ks.sign_encode(x, self.bucket_size, residual, *views)
        return framed(Compressed(self.name, n, "float32", {"codes": packed, "scales": scales},
                                 {"bucket_size": self.bucket_size}), frame)

    def _decode(self, c, out=None, accumulate=False):
        return ks.sign_decode(c.arrays["codes"], c.arrays["scales"], c.params["bucket_size"], c.numel,
                              out=out, accumulate=accumulate)
