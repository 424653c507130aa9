"""``randomk``: k entries chosen uniformly at random from a seed shared by every rank.

The indices depend only on (numel, k, seed, step, key), so every rank picks the
same ones and compressed forms are summable (linear); the wire format sends
the values only and the decoder regenerates the indices.  With ``rescale``
(the default) values are multiplied by ``numel / k``, which makes the
compressor unbiased; without it it is a contraction with delta = k / numel.
"""

import numpy as np

from ..kernels import scatter
from ..kernels.randomk import _randomk_indices_trusted, randomk_indices
from ._params import bool_param, ratio_param, seed_param
from .base import Compressed, _stamp, as_flat_f32, count_from_ratio
from .codec import Codec, sparse_values
from .topk import SparseCompressor


class RandomK(SparseCompressor):
    name = "randomk"
    description = "k uniformly random entries from a shared seed (summable), optionally rescaled to be unbiased"
    randomized = True
    linear = True
    summable = ("values",)
    #: the indices are not sent: every receiver regenerates them from (numel, count, seed), in wire.decode after
    #: its header checks (count <= numel <= 2**40, seed a uint64 field): the unchecked entry point, the same indices
    codec = Codec(6, sparse_values, regenerate_indices=_randomk_indices_trusted)
    params = {
        "ratio": ratio_param(0.01, "density: k = ceil(ratio * n) random entries are sent"),
        "rescale": bool_param(True, "multiply the values by n / k (unbiased); false: a biased, lower-variance k-subset"),
        "seed": seed_param("seed of the index choice (with step and key); every rank picks the same indices"),
    }

    @classmethod
    def strategy(cls):
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"ratio": st.floats(1e-3, 1.0), "seed": st.integers(0, 2**32), "rescale": st.booleans()})

    @property
    def unbiased(self):
        return bool(self._params["rescale"])

    def k(self, numel):
        return count_from_ratio(numel, self.ratio)

    def contraction(self, numel):
        # Without rescaling, E||x - C(x)||^2 = (1 - k/n) ||x||^2 holds only in expectation;
        # contraction() declares worst-case bounds, and a random draw can miss every large entry.
        return None

    def max_payload_bytes(self, numel):
        return 4 * self.k(numel)

    @staticmethod
    def indices_for(numel, count, seed):
        """The indices a packet with this (numel, count, seed) carries."""
        return randomk_indices(numel, count, seed)

    def _compress(self, x, *, step, seed):
        n = x.shape[0]
        k = self.k(n)
        idx = _randomk_indices_trusted(n, k, seed)  # n, k and seed valid by construction: no checks per call
        val = np.empty(k, np.float32)
        if not scatter._gather(x, idx, val):  # x is flat float32 (Compressor.compress); the kernel checks the range
            raise AssertionError("random-k drew an index out of range")  # pragma: no cover - cannot happen
        if self.rescale and k:
            val *= np.float32(n / k)
        return Compressed(self.name, n, "float32", {"indices": idx, "values": val}, count=k)

    def compress_with_residual(self, x, residual, *, step=0, key=0):
        flat, dtype = as_flat_f32(x)
        residual += flat
        c = self.compress(residual, step=step, key=key)
        residual -= self._decompress(c)
        return _stamp(c, x, dtype, step, c.seed)
