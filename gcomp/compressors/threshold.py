"""``threshold``: send every entry with ``|x| >= tau`` (Strom 2015); the count varies.

``tau`` is required: no default suits every gradient scale.  The count sent is
whatever passes, so a ``tau`` small for the data sends nearly every entry, each
with its index: a packet larger than the dense vector (``tau=0.001`` on
N(0, 1) data keeps 99.9% of the entries).  Choose it from your gradients'
magnitudes: to send a fraction ``d`` of the entries, take ``tau`` near the
``1 - d`` quantile of ``|g|`` (for N(0, 1) entries, ``tau=2.58`` keeps about
1%, ``tau=1.64`` about 10%).  For a fixed density whatever the scale, use
``topk`` or ``dgc``.  Decoding does not read ``tau`` (a receiver that only
decompresses may pass any value, e.g. ``threshold:tau=0``).
"""

from ..kernels.threshold import threshold_select
from ._params import nonneg_float_param, sparse_payload_bound
from .codec import Codec, sparse_values
from .topk import SparseCompressor

TAU_HINT = ("no default suits every gradient scale: entries with |x| >= tau are sent, so take tau near the (1 - d) "
            "quantile of |gradient| to send a fraction d (N(0, 1) entries: tau=2.58 keeps about 1%; tau=0.001 keeps "
            "99.9%, a packet larger than the dense one); for a fixed density use topk or dgc")


class Threshold(SparseCompressor):
    name = "threshold"
    description = "every entry with |x| >= tau (variable count; tau required, scale-dependent)"
    params = {"tau": nonneg_float_param(None, "send every entry with |x| >= tau (required: it depends on the "
                                              "gradients' scale)", example=0.01, hint=TAU_HINT)}
    codec = Codec(7, sparse_values, sparse=True)

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
