"""``dgc``: Deep Gradient Compression's sampled-threshold top-k (Lin et al., ICLR 2018).

The threshold comes from a random sample (see :mod:`gcomp.kernels.sampled_topk`);
the count returned is between ``ceil(min_fraction * k)`` and ``k`` and always
the largest magnitudes.  DGC's exponential warm-up of the density is available:
with ``warmup_steps > 0`` the density at step ``t < warmup_steps`` is
``warmup_start * (ratio / warmup_start) ** (t / warmup_steps)`` (DGC: 25% ->
6.25% -> ... -> 0.1% over the first epochs).  Momentum correction, momentum
factor masking and local gradient clipping live in
:class:`gcomp.feedback.DGCFeedback`.
"""

import math

from ..kernels.error_feedback import ef_sampled_topk
from ..kernels.sampled_topk import _topk_sampled_trusted
from ._params import int_param, ratio_param, seed_param, sparse_payload_bound
from .base import _stamp, as_flat_f32, count_from_ratio
from .codec import Codec, sparse_values
from .topk import SparseCompressor


class DGC(SparseCompressor):
    name = "dgc"
    description = "DGC sampled-threshold top-k with optional exponential density warm-up"
    randomized = True
    codec = Codec(5, sparse_values, sparse=True)
    params = {
        "ratio": ratio_param(0.001, "final density: about k = ceil(ratio * n) largest |x| are sent"),
        "sample_fraction": ratio_param(0.01, "fraction of the entries sampled to estimate the threshold"),
        "min_fraction": ratio_param(0.5, "fewest entries returned, as a fraction of k"),
        "warmup_steps": int_param(0, 0, help="steps of exponential density warm-up from warmup_start (0: none)"),
        "warmup_start": ratio_param(0.25, "density at step 0 of the warm-up"),
        "seed": seed_param("seed of the sampling (with step and key); equal on every rank"),
    }

    @classmethod
    def strategy(cls):
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"ratio": st.floats(1e-3, 1.0), "seed": st.integers(0, 2**32), "warmup_steps": st.integers(0, 5)})

    def ratio_at(self, step):
        """The density used at ``step`` (exponential warm-up, then ``ratio``)."""
        if self.warmup_steps and step < self.warmup_steps and self.warmup_start > self.ratio:
            return self.warmup_start * (self.ratio / self.warmup_start) ** (step / self.warmup_steps)
        return self.ratio

    def k(self, numel, step=None):
        ratio = self.ratio if step is None else self.ratio_at(step)
        return count_from_ratio(numel, ratio)

    def contraction(self, numel):
        # Worst case over steps: the final density, and the fewest entries the kernel may return.
        return max(1, math.ceil(self.min_fraction * self.k(numel))) / numel if numel else 1.0

    def max_payload_bytes(self, numel):
        return sparse_payload_bound(numel, self.k(numel, 0))

    def _compress(self, x, *, step, seed):
        # the parameters were checked when this compressor was built, x is flat float32 (Compressor.compress)
        # and seed an int in range: no checks per call
        idx, val = _topk_sampled_trusted(x, self.k(x.shape[0], step), seed, self.sample_fraction, self.min_fraction)
        return self._sparse(x, idx, val)

    def compress_with_residual(self, x, residual, *, step=0, key=0):
        flat, dtype = as_flat_f32(x)
        seed = self.seed_for(step, key)
        k = self.k(flat.shape[0], step)
        idx, val = ef_sampled_topk(flat, residual, k, seed, sample_fraction=self.sample_fraction,
                                   min_fraction=self.min_fraction)
        return _stamp(self._sparse(flat, idx, val), x, dtype, step, seed)
