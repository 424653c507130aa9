"""Fused error-feedback steps: add the residual, select or quantize, update the residual.

Residual error feedback (EF-SGD) sends ``C(x + e)`` and keeps
``e <- x + e - D(C(x + e))``.  Done naively that is three or four passes over
memory; here each step takes as few as the compressor allows:

* :func:`ef_topk`: pass 1 adds ``x`` into the residual *and* builds the
  radix-select histogram; pass 2 collects the top k from the residual; the k
  sent entries of the residual are then zeroed (k writes, not a pass).
  Two passes instead of four.
* :func:`ef_sampled_topk`: one pass adds ``x`` into the residual, one pass
  selects with the sampled threshold, then k writes.
* Quantizers (``qsgd``, ``uniform``, ``sign``, ``terngrad``, ``natural``): their
  encoders take ``residual=`` and do everything in one pass, bucket by bucket
  (the bucket stays in L1 between quantizing and updating): call them with
  ``residual=`` directly.
"""

import numpy as np

from ._checks import as_f32, check_f32_inplace, check_int
from .config import kernel
from .sampled_topk import topk_sampled
from .topk import _topk_from_hist

__all__ = ["ef_topk", "ef_sampled_topk"]


@kernel
def _accumulate_histogram(x, residual):
    """residual += x, and the top-11-bit magnitude histogram of the new residual, in one pass."""
    n = x.shape[0]
    mask = np.uint32(0x7FFFFFFF)
    h4 = np.zeros((4, 2048), dtype=np.int64)
    rbits = residual.view(np.uint32)
    n4 = n - (n & 3)
    i = 0
    while i < n4:
        residual[i] += x[i]
        residual[i + 1] += x[i + 1]
        residual[i + 2] += x[i + 2]
        residual[i + 3] += x[i + 3]
        h4[0, (rbits[i] & mask) >> 20] += 1
        h4[1, (rbits[i + 1] & mask) >> 20] += 1
        h4[2, (rbits[i + 2] & mask) >> 20] += 1
        h4[3, (rbits[i + 3] & mask) >> 20] += 1
        i += 4
    while i < n:
        residual[i] += x[i]
        h4[0, (rbits[i] & mask) >> 20] += 1
        i += 1
    return h4[0] + h4[1] + h4[2] + h4[3]


@kernel
def _ef_topk(x, residual, k, out_idx, out_val):
    hist = _accumulate_histogram(x, residual)
    c = _topk_from_hist(residual, hist, k, out_idx, out_val)
    for j in range(c):
        residual[out_idx[j]] = 0.0
    return c


@kernel
def _accumulate(x, residual):
    for i in range(x.shape[0]):
        residual[i] += x[i]


def _check_pair(x, residual):
    x = as_f32(x)
    residual = check_f32_inplace(residual, "residual")
    if residual.shape[0] != x.shape[0]:
        raise ValueError(f"expected residual of {x.shape[0]} entries (like x), found {residual.shape[0]}")
    if np.shares_memory(x, residual):
        raise ValueError("expected x and residual to be distinct arrays, found overlapping memory")
    return x, residual


def ef_topk(x, residual, k):
    """Fused EF top-k: ``residual += x``; send its top k; zero them in the residual.

    Returns ``(indices ascending, values)``; ``residual`` (float32) is updated in place.
    """
    x, residual = _check_pair(x, residual)
    n = x.shape[0]
    k = check_int(k, "k", 0, n)
    if k == 0:
        _accumulate(x, residual)
        return np.empty(0, np.int64), np.empty(0, np.float32)
    idx = np.empty(k + 1, np.int64)
    val = np.empty(k + 1, np.float32)
    c = _ef_topk(x, residual, k, idx, val)
    return idx[:c], val[:c]


def ef_sampled_topk(x, residual, k, seed, sample_fraction=0.01, min_fraction=0.5):
    """Fused EF with DGC's sampled top-k (see :func:`gcomp.kernels.sampled_topk.topk_sampled`)."""
    x, residual = _check_pair(x, residual)
    _accumulate(x, residual)
    idx, val = topk_sampled(residual, k, seed, sample_fraction=sample_fraction, min_fraction=min_fraction)
    residual[idx] = 0.0
    return idx, val
