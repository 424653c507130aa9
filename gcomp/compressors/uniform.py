"""``uniform``: bucketed uniform quantization to 1, 2, 4 or 8 bits (CGX-style).

Each bucket sends a scale and an offset (float32) and one code per entry;
``value = offset + scale * code``.  ``mode="maxmin"`` spans [min, max] of the
bucket; ``mode="absmax"`` is symmetric around zero.  ``rounding="nearest"``
is deterministic; ``rounding="stochastic"`` is unbiased.
"""

import functools

from ..errors import ConfigError, SizeError
from ..kernels import uniform as ku
from ._params import bucket_param, choice_param, nbuckets, packed_bytes, seed_param
from .base import Compressed, Compressor, framed, new_frame
from .codec import F32, U8, Codec

MODES = ("maxmin", "absmax")
ROUNDINGS = ("nearest", "stochastic")
PARAMS = {
    "bits": choice_param(8, (1, 2, 4, 8), "bits per code"),
    "bucket_size": bucket_param(512, "entries sharing one scale and offset"),
    "mode": choice_param("maxmin", MODES, "maxmin: codes span [min, max] of the bucket; absmax: symmetric around 0 "
                                         "(needs bits >= 2)"),
    "rounding": choice_param("nearest", ROUNDINGS, "nearest: deterministic, biased; stochastic: unbiased"),
    "seed": seed_param("seed of the stochastic rounding (with step and key)"),
}


def _rules(bits, bucket_size, mode, rounding, error):
    for key, value in (("bits", bits), ("bucket_size", bucket_size), ("mode", mode), ("rounding", rounding)):
        PARAMS[key].validate("uniform", key, value, error)
    _absmax_rule(bits, mode, error)


def _absmax_rule(bits, mode, error):
    if mode == "absmax" and bits == 1:
        raise error("uniform: mode='absmax' (abs-max) needs bits in [2, 4, 8] (one bit has no zero level); use mode='maxmin' or sign")


def _check_packet(numel, count, p):
    _valid_packet(p["bits"], p["bucket_size"], p["mode"], p["stochastic"])


@functools.lru_cache(maxsize=64)  # one entry per configuration seen: a packet's check costs a lookup
def _valid_packet(bits, bucket_size, mode, stochastic):
    if mode not in (0, 1) or stochastic not in (0, 1):
        raise SizeError(f"expected uniform mode 0/1 and stochastic 0/1, found {mode}, {stochastic}")
    _rules(bits, bucket_size, MODES[mode], ROUNDINGS[stochastic], SizeError)


def _arrays(n, count, p):
    buckets = nbuckets(n, p["bucket_size"])
    return [("codes", U8, packed_bytes(n, p["bits"])), ("scales", F32, buckets), ("offsets", F32, buckets)]


class Uniform(Compressor):
    name = "uniform"
    description = "bucketed max-min or abs-max quantization to 8/4/2/1 bits, nearest or stochastic rounding"
    fused_residual = True
    params = PARAMS
    codec = Codec(9, _arrays, ("bits", "bucket_size", "mode", "stochastic"), _check_packet)

    def _validate(self):
        _absmax_rule(self.bits, self.mode, ConfigError)  # the declared checks have run: the rule between two remains

    @classmethod
    def strategy(cls):
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"bits": st.sampled_from([2, 4, 8]), "bucket_size": st.sampled_from([8, 64, 128, 512]),
                                      "mode": st.sampled_from(MODES), "rounding": st.sampled_from(ROUNDINGS),
                                      "seed": st.integers(0, 2**32)})

    @property
    def unbiased(self):
        return self._params["rounding"] == "stochastic"

    @property
    def randomized(self):
        return self._params["rounding"] == "stochastic"

    def max_payload_bytes(self, numel):
        return packed_bytes(numel, self.bits) + 8 * nbuckets(numel, self.bucket_size)

    def _params_dict(self):
        return {"bits": self.bits, "bucket_size": self.bucket_size, "mode": MODES.index(self.mode),
                "stochastic": int(self.rounding == "stochastic")}

    def _encode(self, x, seed, residual=None):
        fast = self.__dict__.get("_fast")
        if fast is None:
            p = self._params_dict()
            fast = self._fast = (int(self.bits), int(self.bucket_size), self.mode == "absmax",
                                 self.rounding == "stochastic", p, tuple(p[name] for name in self.codec.params))
        n = x.shape[0]
        # a large vector's arrays are written straight into a packet's payload (a packet-backed form, which
        # wire.encode_array sends without a copy: new_frame); else fresh arrays, the same bits either way
        frame = new_frame(self.codec, n, fast[5])
        views = (None, None, None) if frame is None else frame.views
        if residual is None:  # the parameters were checked when this compressor was built: no checks per call
            packed, scales, offsets = ku._uniform_encode_trusted(x, fast[0], fast[1], fast[2], fast[3], seed, None,
                                                                 *views)
        else:
            packed, scales, offsets = ku.uniform_encode(x, self.bits, self.bucket_size, self.mode, self.rounding, seed,
                                                        residual, *views)
        return framed(Compressed(self.name, n, "float32", {"codes": packed, "scales": scales, "offsets": offsets},
                                 dict(fast[4])), frame)

    def _decode(self, c, out=None, accumulate=False):
        a, p = c.arrays, c.params
        return ku.uniform_decode(a["codes"], a["scales"], a["offsets"], p["bits"], p["bucket_size"], c.numel,
                                 out=out, accumulate=accumulate)
