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

_F32 = np.dtype(np.float32)

_I64 = np.dtype(np.int64)

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


# The index kernels check their indices against [0, n) first and return False, touching
# nothing, when one is outside (the wrapper then raises): one call instead of a min and a
# max pass in numpy before it, which is most of the cost of a small vector.


@kernel
def _in_range(indices, n):
    un = np.uint64(n)
    bad = 0
    for t in range(indices.shape[0]):
        bad += np.uint64(indices[t]) >= un  # a negative index wraps to a huge unsigned one
    return bad == 0


@kernel
def _scatter_add(indices, values, out):
    if not _in_range(indices, out.shape[0]):
        return False
    for t in range(indices.shape[0]):
        out[indices[t]] += values[t]
    return True


@kernel
def _scatter_add_scaled(indices, values, scale, out):
    if not _in_range(indices, out.shape[0]):
        return False
    s = np.float32(scale)
    for t in range(indices.shape[0]):
        out[indices[t]] += s * values[t]
    return True


@kernel
def _scatter_set(indices, values, out):
    if not _in_range(indices, out.shape[0]):
        return False
    for t in range(indices.shape[0]):
        out[indices[t]] = values[t]
    return True


@kernel
def _sparse_to_dense(indices, values, n, out):
    if not _in_range(indices, n):
        return False
    for i in range(n):
        out[i] = np.float32(0.0)
    for t in range(indices.shape[0]):
        out[indices[t]] = values[t]
    return True


@kernel
def _gather(x, indices, out):
    if not _in_range(indices, x.shape[0]):
        return False
    for t in range(indices.shape[0]):
        out[t] = x[indices[t]]
    return True


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


def _as_idx(indices, name="indices"):
    """int64 C-contiguous indices, type-checked; the range is checked by the kernel (see :func:`_range_error`)."""
    if type(indices) is np.ndarray and indices.dtype is _I64 and indices.ndim == 1 and indices.flags.c_contiguous:
        return indices
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"expected {name} to be a numpy array, found {type(indices).__name__}")
    if indices.ndim != 1 or indices.dtype.kind not in "iu":
        raise ValueError(f"expected {name} to be a 1-D integer array, found ndim={indices.ndim} dtype={indices.dtype}")
    return np.ascontiguousarray(indices, dtype=np.int64)  # as check_indices converts (uint64 >= 2**63 wraps negative)


def _range_error(idx, n):
    """The error of :func:`gcomp.kernels._checks.check_indices`, for indices a kernel found outside [0, n)."""
    return ValueError(f"expected every index in [0, {n}), found range [{idx.min()}, {idx.max()}]")


def _pair(indices, values, n):
    idx = _as_idx(indices)
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
    if not (_scatter_add(idx, vals, out) if scale == 1.0 else _scatter_add_scaled(idx, vals, np.float32(scale), out)):
        raise _range_error(idx, out.shape[0])
    return out


def scatter_set(indices, values, out):
    """``out[indices] = values`` in place (for duplicate indices the last value wins). Returns ``out``."""
    out = check_f32_inplace(out, "out")
    idx, vals = _pair(indices, values, out.shape[0])
    if not _scatter_set(idx, vals, out):
        raise _range_error(idx, out.shape[0])
    return out


def gather(x, indices, out=None):
    """``x[indices]`` as float32 (``x`` float16/32/64, converted; values copied as they are)."""
    if isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype is not _F32 and x.dtype != np.float32 \
            and x.dtype in (np.float16, np.float64):
        # convert only the gathered values, not the whole vector
        idx = check_indices(indices, x.shape[0])  # numpy gathers here, unchecked: the range is checked first
        out = out_array(out, idx.shape[0], np.float32)
        out[: idx.shape[0]] = x[idx]
        return out[: idx.shape[0]]
    x = as_f32(x, "x")
    idx = _as_idx(indices)
    out = out_array(out, idx.shape[0], np.float32)
    if not _gather(x, idx, out):
        raise _range_error(idx, x.shape[0])
    return out[: idx.shape[0]]


def sparse_to_dense(indices, values, n, out=None):
    """A float32 vector of ``n`` zeros with ``values`` set at ``indices`` (last duplicate wins).

    Returns ``out[:n]`` when ``out`` is given.
    """
    n = check_int(n, "n", 0)
    idx, vals = _pair(indices, values, n)
    out = out_array(out, n, np.float32)
    if not _sparse_to_dense(idx, vals, n, out):
        raise _range_error(idx, n)
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
