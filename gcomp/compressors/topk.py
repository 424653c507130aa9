"""``topk``: exact top-k by magnitude (radix select), k = ceil(ratio * numel)."""

import numpy as np

from ..kernels import scatter
from ..kernels.error_feedback import ef_topk
from ..kernels.topk import topk_exact
from ._params import ratio_param, sparse_payload_bound
from .base import _F32, _I64, Compressed, Compressor, _stamp, as_flat_f32, count_from_ratio
from .codec import Codec, sparse_values


def sparse_decompress(c):
    out = np.zeros(c.numel, np.float32)
    scatter.scatter_set(c.arrays["indices"], c.arrays["values"], out)
    return out


def sparse_decompress_add(c, acc, scale):
    scatter.scatter_add(c.arrays["indices"], c.arrays["values"], acc, scale=scale)
    return acc


class SparseCompressor(Compressor):
    """Shared decode path for codecs that send (indices ascending, float32 values)."""

    def _decompress(self, c):
        return sparse_decompress(c)

    def _decompress_into(self, c, out):
        # ``out`` passed decompress's checks (float32, 1-D, contiguous, writeable, c.numel entries); when the
        # packet's arrays are what sparse_to_dense would pass on as they are, its kernel is called directly (it
        # checks the index range itself); anything else takes the checked wrapper
        idx, val = c.arrays["indices"], c.arrays["values"]
        if (type(idx) is np.ndarray and idx.dtype is _I64 and idx.ndim == 1 and type(val) is np.ndarray
                and val.dtype is _F32 and val.ndim == 1 and val.shape[0] == idx.shape[0]
                and idx.flags.c_contiguous and val.flags.c_contiguous
                and scatter._sparse_to_dense(idx, val, out.shape[0], out)):  # zeroes and sets in one call
            return out
        scatter.sparse_to_dense(idx, val, c.numel, out)  # converts, or raises naming what is wrong
        return out

    def decompress_add(self, c, acc, scale=1.0):
        if (type(c) is not Compressed or c.codec != self.name or type(acc) is not np.ndarray or acc.dtype is not _F32
                or acc.size != c.numel or acc.ndim != 1):  # the base class's test, inlined: once per packet received
            self._refuse_add(c, acc)
        return sparse_decompress_add(c, acc, scale)

    def compress_with_residual(self, x, residual, *, step=0, key=0):
        """Selected entries are sent exactly, so their residual becomes 0; the rest keep accumulating."""
        if self.fused_residual:
            return super().compress_with_residual(x, residual, step=step, key=key)
        flat, dtype = as_flat_f32(x)
        residual += flat
        c = self.compress(residual, step=step, key=key)
        residual[c.arrays["indices"]] = 0.0
        return _stamp(c, x, dtype, step, c.seed)

    def _sparse(self, x, idx, val, params=None):
        return Compressed(self.name, x.shape[0], "float32", {"indices": idx, "values": val}, params or {}, count=idx.shape[0])


class TopK(SparseCompressor):
    name = "topk"
    description = "exact top-k by magnitude (O(n) radix select), k = ceil(ratio * n)"
    codec = Codec(4, sparse_values, sparse=True)
    fused_residual = True
    params = {"ratio": ratio_param(0.01, "density: the k = ceil(ratio * n) largest |x| are sent")}

    @classmethod
    def strategy(cls):
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"ratio": st.floats(1e-3, 1.0)})

    def k(self, numel):
        return count_from_ratio(numel, self._params["ratio"])

    def contraction(self, numel):
        return self.k(numel) / numel if numel else 1.0

    def max_payload_bytes(self, numel):
        return sparse_payload_bound(numel, self.k(numel))

    def _encode(self, x, seed, residual=None):
        k = self.k(x.shape[0])
        idx, val = topk_exact(x, k) if residual is None else ef_topk(x, residual, k)
        return self._sparse(x, idx, val)
