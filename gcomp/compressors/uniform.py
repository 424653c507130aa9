"""``uniform``: bucketed uniform quantization to 1, 2, 4 or 8 bits (CGX-style).

Each bucket sends a scale and an offset (float32) and one code per entry;
``value = offset + scale * code``.  ``mode="maxmin"`` spans [min, max] of the
bucket; ``mode="absmax"`` is symmetric around zero.  ``rounding="nearest"``
is deterministic; ``rounding="stochastic"`` is unbiased.
"""

from ..kernels import uniform as ku
from ._params import check_bucket, check_choice, check_seed, nbuckets, packed_bytes
from .base import Compressed, Compressor


class Uniform(Compressor):
    name = "uniform"
    description = "bucketed max-min or abs-max quantization to 8/4/2/1 bits, nearest or stochastic rounding"
    fused_residual = True
    params = {"bits": 8, "bucket_size": 512, "mode": "maxmin", "rounding": "nearest", "seed": 0}

    def _validate(self):
        check_choice(self.name, "bits", self.bits, (1, 2, 4, 8))
        check_bucket(self.name, self.bucket_size)
        check_choice(self.name, "mode", self.mode, ("maxmin", "absmax"))
        check_choice(self.name, "rounding", self.rounding, ("nearest", "stochastic"))
        check_seed(self.name, self.seed)
        if self.mode == "absmax" and self.bits == 1:
            from ..errors import ConfigError

            raise ConfigError("uniform: mode='absmax' needs bits in [2, 4, 8] (one bit has no zero level); use mode='maxmin' or sign")

    @property
    def unbiased(self):
        return self._params["rounding"] == "stochastic"

    @property
    def randomized(self):
        return self._params["rounding"] == "stochastic"

    def max_payload_bytes(self, numel):
        return packed_bytes(numel, self.bits) + 8 * nbuckets(numel, self.bucket_size)

    def _params_dict(self):
        return {"bits": self.bits, "bucket_size": self.bucket_size, "mode": ("maxmin", "absmax").index(self.mode),
                "stochastic": int(self.rounding == "stochastic")}

    def _encode(self, x, seed, residual=None):
        packed, scales, offsets = ku.uniform_encode(
            x, self.bits, self.bucket_size, mode=self.mode, rounding=self.rounding, seed=seed, residual=residual
        )
        return Compressed(self.name, x.shape[0], "float32", {"codes": packed, "scales": scales, "offsets": offsets},
                          self._params_dict())

    def _decode(self, c, out=None, accumulate=False):
        a, p = c.arrays, c.params
        return ku.uniform_decode(a["codes"], a["scales"], a["offsets"], p["bits"], p["bucket_size"], c.numel,
                                 out=out, accumulate=accumulate)
