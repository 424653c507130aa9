"""``threshold``: send every entry with ``|x| >= tau`` (Strom 2015); the count varies.

``tau`` defaults to 1e-3; tune it to your gradients' scale (the count sent is
whatever passes).  Decoding does not need ``tau``.
"""

from ..kernels.threshold import threshold_select
from ._params import check_nonneg_float, sparse_payload_bound
from .codec import Codec, sparse_values
from .topk import SparseCompressor


class Threshold(SparseCompressor):
    name = "threshold"
    description = "every entry with |x| >= tau (variable count)"
    params = {"tau": 1e-3}
    codec = Codec(7, sparse_values, sparse=True)

    def _validate(self):
        check_nonneg_float(self.name, "tau", self.tau)

    @classmethod
    def strategy(cls):
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"tau": st.floats(0.0, 3.0)})

    def contraction(self, numel):
        return None  # nothing may pass the threshold

    def max_payload_bytes(self, numel):
        return sparse_payload_bound(numel, numel)

    def _compress(self, x, *, step, seed):
        idx, val = threshold_select(x, self.tau)
        return self._sparse(x, idx, val)
