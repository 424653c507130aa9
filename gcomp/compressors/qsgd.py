"""``qsgd``: QSGD stochastic quantization (Alistarh et al., NeurIPS 2017).

Each bucket of ``bucket_size`` entries sends its L2 norm and, per entry, a sign
and a level in ``0..levels`` chosen by unbiased stochastic rounding of
``|x| / norm * levels``; codes are bit-packed to 2, 4 or 8 bits.  Unbiased,
with variance ``E||Q(x) - x||^2 <= min(d / s^2, sqrt(d) / s) ||x||^2`` for
``d = bucket_size`` and ``s = levels``.
"""

import functools

from ..errors import SizeError
from ..kernels import qsgd as kq
from ._params import bucket_param, int_param, nbuckets, packed_bytes, seed_param
from .base import Compressed, Compressor, framed, new_frame
from .codec import F32, U8, Codec

LEVELS = int_param(4, 1, 127, "levels s per sign: |x| / norm is rounded to a multiple of 1 / s (codes of 2, 4 or 8 bits)")
BUCKET = bucket_param(512, "entries sharing one L2 norm")


def _rules(levels, bucket_size, error):
    BUCKET.validate("qsgd", "bucket_size", bucket_size, error)
    LEVELS.validate("qsgd", "levels", levels, error)


def _check_packet(numel, count, p):
    _valid_packet(p["levels"], p["bucket_size"], p["bits"])


@functools.lru_cache(maxsize=64)  # one entry per configuration seen: a packet's check costs a lookup
def _valid_packet(levels, bucket_size, bits):
    _rules(levels, bucket_size, SizeError)
    want = kq.qsgd_code_bits(levels)
    if bits != want:
        raise SizeError(f"expected {want} code bits for {levels} levels, found {bits}")


def _arrays(n, count, p):
    return [("codes", U8, packed_bytes(n, p["bits"])), ("norms", F32, nbuckets(n, p["bucket_size"]))]


class QSGD(Compressor):
    name = "qsgd"
    description = "QSGD: unbiased stochastic quantization to s levels, one norm per bucket"
    unbiased = True
    randomized = True
    fused_residual = True
    params = {"levels": LEVELS, "bucket_size": BUCKET, "seed": seed_param("seed of the stochastic rounding (with step and key)")}
    codec = Codec(8, _arrays, ("levels", "bucket_size", "bits"), _check_packet)

    @classmethod
    def strategy(cls):
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"levels": st.integers(1, 127),
                                      "bucket_size": st.sampled_from([8, 64, 128, 512]), "seed": st.integers(0, 2**32)})

    @property
    def bits(self):
        return kq.qsgd_code_bits(self.levels)

    def variance_bound(self, numel):
        """QSGD's bound on E||Q(x) - x||^2 / ||x||^2 (per bucket, so d = min(bucket, numel))."""
        d = max(1, min(self.bucket_size, numel))
        s = self.levels
        return min(d / s**2, d**0.5 / s)

    def max_payload_bytes(self, numel):
        return packed_bytes(numel, self.bits) + 4 * nbuckets(numel, self.bucket_size)

    def _params_dict(self):
        return {"levels": self.levels, "bucket_size": self.bucket_size, "bits": self.bits}

    def _encode(self, x, seed, residual=None):
        fast = self.__dict__.get("_fast")
        if fast is None:  # (levels, bits, bucket_size, the packet's params, their values in codec order)
            p = self._params_dict()
            fast = self._fast = (int(self.levels), int(self.bits), int(self.bucket_size), p,
                                 tuple(p[name] for name in self.codec.params))
        n = x.shape[0]
        # a large vector's arrays are written straight into a packet's payload (a packet-backed form, which
        # wire.encode_array sends without a copy: new_frame); else fresh arrays, the same bits either way
        frame = new_frame(self.codec, n, fast[4])
        views = (None, None) if frame is None else frame.views
        if residual is None:  # the parameters were checked when this compressor was built: no checks per call
            packed, norms = kq._qsgd_encode_trusted(x, fast[0], fast[1], fast[2], seed, None, *views)
        else:
            packed, norms = kq.qsgd_encode(x, self.levels, self.bucket_size, seed, residual, *views)
        return framed(Compressed(self.name, n, "float32", {"codes": packed, "norms": norms}, dict(fast[3])), frame)

    def _decode(self, c, out=None, accumulate=False):
        p = c.params
        return kq.qsgd_decode(c.arrays["codes"], c.arrays["norms"], p["levels"], p["bucket_size"], c.numel,
                              out=out, accumulate=accumulate)
