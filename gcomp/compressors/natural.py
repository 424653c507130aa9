"""``natural``: natural compression (Horvath et al., 2019): unbiased stochastic rounding to powers of two.

Each entry sends its sign and an 8-bit exponent (9 bits); ``|x|`` in
``[2^e, 2^(e+1))`` rounds up with probability ``|x| / 2^e - 1``.  Unbiased with
variance at most ``||x||^2 / 8``.  Non-finite entries decode to NaN.
"""

from ..kernels import natural as kn
from ._params import packed_bytes, seed_param
from .base import Compressed, Compressor
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
        if residual is None:  # x is flat float32 and seed an int in range (Compressor.compress): no checks per call
            exponents, signs = kn._natural_encode_trusted(x, seed)
        else:
            exponents, signs = kn.natural_encode(x, seed, residual=residual)
        return Compressed(self.name, x.shape[0], "float32", {"exponents": exponents, "signs": signs})

    def _decode(self, c, out=None, accumulate=False):
        return kn.natural_decode(c.arrays["exponents"], c.arrays["signs"], c.numel, out=out, accumulate=accumulate)
