"""``natural``: natural compression (Horvath et al., 2019): unbiased stochastic rounding to powers of two.

Each entry sends its sign and an 8-bit exponent (9 bits); ``|x|`` in
``[2^e, 2^(e+1))`` rounds up with probability ``|x| / 2^e - 1``.  Unbiased with
variance at most ``||x||^2 / 8``.  Non-finite entries decode to NaN.
"""

from ..kernels import natural as kn
from ._params import packed_bytes, seed_param
from .base import Compressed, Compressor, framed, new_frame
from .codec import U8, Codec


class Natural(Compressor):
    name = "natural"
    description = "natural compression: unbiased stochastic rounding to powers of two (9 bits per entry)"
    unbiased = True
    randomized = True
    fused_residual = True
    codec = Codec(12, lambda n, count, p: [("exponents", U8, n), ("signs", U8, packed_bytes(n, 1))])
    params = {"seed": seed_param("seed of the stochastic rounding (with step and key)")}

    @classmethod
    def strategy(cls):
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"seed": st.integers(0, 2**32)})

    def variance_bound(self, numel):
        return 1.0 / 8.0

    def max_payload_bytes(self, numel):
        return numel + packed_bytes(numel, 1)

    def _encode(self, x, seed, residual=None):
        n = x.shape[0]
        # a large vector's arrays are written straight into a packet's payload (a packet-backed form, which
        # wire.encode_array sends without a copy: new_frame); else fresh arrays, the same bits either way
        frame = new_frame(self.codec, n)
        views = (None, None) if frame is None else frame.views
        if residual is None:  # x is flat float32 and seed an int in range (Compressor.compress): no checks per call
            exponents, signs = kn._natural_encode_trusted(x, seed, None, *views)
        else:
            exponents, signs = kn.natural_encode(x, seed, residual, *views)
        return framed(Compressed(self.name, n, "float32", {"exponents": exponents, "signs": signs}), frame)

    def _decode(self, c, out=None, accumulate=False):
        return kn.natural_decode(c.arrays["exponents"], c.arrays["signs"], c.numel, out=out, accumulate=accumulate)
