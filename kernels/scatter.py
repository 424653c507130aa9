"""Scatter-add, scatter-set, gather, densification and non-finite counting.

The decode side of every sparse compressor ends here: ``scatter_add`` adds a
(indices, values) pair into a dense float32 vector (duplicate indices
accumulate, in order), ``sparse_to_dense`` builds a fresh dense vector.

Values follow IEEE arithmetic (see :mod:`gcomp.kernels`): NaN and +-Inf are
copied and added as they are, never dropped or replaced;
:func:`count_nonfinite` counts them so the layers above can apply one policy
on every rank.

Arithmetic is float32.  With a ``scale`` other than 1 the multiply-add may be
fused (``fastmath`` allows ``contract``), so results can differ from
``out + np.float32(scale) * values`` in the last bit; with ``scale == 1`` no
multiply is done and results are exact IEEE float32 sums.
"""

import numpy as np

from ._checks import as_f32, check_f32_inplace, check_indices, check_int, out_array
from .config import kernel

__all__ = [
    "scatter_add",
    "scatter_set",
    "gather",
    "sparse_to_dense",
    "count_nonfinite",
    "add_inplace",
    "scale_inplace",
]

# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------


@kernel
def _scatter_add(indices, values, out):
    for t in range(indices.shape[0]):
        out[indices[t]] += values[t]


@kernel
def _scatter_add_scaled(indices, values, scale, out):
    s = np.float32(scale)
    for t in range(indices.shape[0]):
        out[indices[t]] += s * values[t]


@kernel
def _scatter_set(indices, values, out):
    for t in range(indices.shape[0]):
        out[indices[t]] = values[t]


@kernel
def _sparse_to_dense(indices, values, n, out):
    for i in range(n):
        out[i] = np.float32(0.0)
    for t in range(indices.shape[0]):
        out[indices[t]] = values[t]


@kernel
def _gather(x, indices, out):
    for t in range(indices.shape[0]):
        out[t] = x[indices[t]]


@kernel
def _count_exp_all_ones(bits, mask):
    """Number of elements whose exponent field (``mask``) is all ones: NaN or +-Inf."""
    c = 0
    for i in range(bits.shape[0]):
        c += (bits[i] & mask) == mask
    return c


@kernel
def _add_inplace(out, x):
    for i in range(out.shape[0]):
        out[i] += x[i]


@kernel
def _add_inplace_scaled(out, x, scale):
    s = np.float32(scale)
    for i in range(out.shape[0]):
        out[i] += s * x[i]


@kernel
def _scale_inplace(out, factor):
    f = np.float32(factor)
    for i in range(out.shape[0]):
        out[i] *= f


# ---------------------------------------------------------------------------
# wrappers
# ---------------------------------------------------------------------------


def _check_real(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"expected a real number {name}, found {type(value).__name__} {value!r}")
    return float(value)


def _pair(indices, values, n):
    idx = check_indices(indices, n)
    vals = as_f32(values, "values")
    if vals.shape[0] != idx.shape[0]:
        raise ValueError(f"expected as many values as indices, found {vals.shape[0]} values for {idx.shape[0]} indices")
    return idx, vals


def scatter_add(indices, values, out, scale=1.0):
    """``out[indices] += scale * values`` in place; duplicate indices accumulate.

    ``out`` must be a writeable 1-D C-contiguous float32 array; ``indices``
    integers in ``[0, out.size)``; ``values`` float16/32/64 (converted to
    float32).  Returns ``out``.
    """
    out = check_f32_inplace(out, "out")
    idx, vals = _pair(indices, values, out.shape[0])
    scale = _check_real(scale, "scale")
    if scale == 1.0:
        _scatter_add(idx, vals, out)
    else:
        _scatter_add_scaled(idx, vals, np.float32(scale), out)
    return out


def scatter_set(indices, values, out):
    """``out[indices] = values`` in place (for duplicate indices the last value wins). Returns ``out``."""
    out = check_f32_inplace(out, "out")
    idx, vals = _pair(indices, values, out.shape[0])
    _scatter_set(idx, vals, out)
    return out


def gather(x, indices, out=None):
    """``x[indices]`` as float32 (``x`` float16/32/64, converted; values copied as they are)."""
    if isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype != np.float32 and x.dtype in (np.float16, np.float64):
        # convert only the gathered values, not the whole vector
        idx = check_indices(indices, x.shape[0])
        out = out_array(out, idx.shape[0], np.float32)
        out[: idx.shape[0]] = x[idx]
        return out[: idx.shape[0]]
    x = as_f32(x, "x")
    idx = check_indices(indices, x.shape[0])
    out = out_array(out, idx.shape[0], np.float32)
    _gather(x, idx, out)
    return out[: idx.shape[0]]


def sparse_to_dense(indices, values, n, out=None):
    """A float32 vector of ``n`` zeros with ``values`` set at ``indices`` (last duplicate wins).

    Returns ``out[:n]`` when ``out`` is given.
    """
    n = check_int(n, "n", 0)
    idx, vals = _pair(indices, values, n)
    out = out_array(out, n, np.float32)
    _sparse_to_dense(idx, vals, n, out)
    return out[:n]


_EXP_MASK = {
    np.dtype(np.float16): (np.uint16, 0x7C00),
    np.dtype(np.float32): (np.uint32, 0x7F800000),
    np.dtype(np.float64): (np.uint64, 0x7FF0000000000000),
}


def count_nonfinite(x):
    """Number of NaN and +-Inf elements of a 1-D float16/32/64 array (one branch-free pass on the bits)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"expected x to be a numpy array, found {type(x).__name__}")
    if x.ndim != 1:
        raise ValueError(f"expected x to be 1-D (kernels work on flat vectors), found shape {x.shape}; pass x.ravel()")
    if x.dtype not in _EXP_MASK:
        raise TypeError(f"expected x of dtype float16, float32 or float64, found {x.dtype}")
    utype, mask = _EXP_MASK[x.dtype]
    # counted in the input precision: converting would turn large float64 values into inf
    bits = np.ascontiguousarray(x).view(utype)
    return int(_count_exp_all_ones(bits, utype(mask)))


def add_inplace(out, x, scale=1.0):
    """``out += scale * x`` in place (float32; ``x`` float16/32/64 converted). Returns ``out``."""
    out = check_f32_inplace(out, "out")
    x = as_f32(x, "x")
    if x.shape[0] != out.shape[0]:
        raise ValueError(f"expected x of the same size as out ({out.shape[0]}), found {x.shape[0]}")
    scale = _check_real(scale, "scale")
    if scale == 1.0:
        _add_inplace(out, x)
    else:
        _add_inplace_scaled(out, x, np.float32(scale))
    return out


def scale_inplace(out, factor):
    """``out *= factor`` in place (float32). Returns ``out``."""
    out = check_f32_inplace(out, "out")
    factor = _check_real(factor, "factor")
    _scale_inplace(out, np.float32(factor))
    return out
