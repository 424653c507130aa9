"""Input validation shared by the public kernel wrappers.

Kernels themselves never raise and never check bounds; every public wrapper
validates with these helpers first.  Errors are ``TypeError`` (wrong kind of
object or dtype) and ``ValueError`` (wrong size or value); messages say what
was expected and what was found.  (The kernel layer imports only numpy and
numba, so it raises built-in exceptions; the rest of gcomp uses
``gcomp.errors``.)
"""

import numpy as np

F32 = np.dtype(np.float32)


def as_f32(x, name="x"):
    """A flat, C-contiguous float32 view of ``x`` (copying only if dtype or layout differ).

    float16, float32 and float64 numpy arrays are accepted; anything else raises.
    """
    if type(x) is np.ndarray and x.dtype is F32 and x.ndim == 1 and x.flags.c_contiguous:
        return x  # the common case, decided without a conversion call (what ascontiguousarray would return)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"expected {name} to be a numpy array, found {type(x).__name__}")
    if x.ndim != 1:
        raise ValueError(f"expected {name} to be 1-D (kernels work on flat vectors), found shape {x.shape}; pass x.ravel()")
    if x.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"expected {name} of dtype float16, float32 or float64, found {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_f32_inplace(x, name="x"):
    """``x`` must already be flat contiguous float32 (it is written in place)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"expected {name} to be a numpy array, found {type(x).__name__}")
    if x.ndim != 1 or x.dtype != F32 or not x.flags.c_contiguous or not x.flags.writeable:
        raise ValueError(
            f"expected {name} to be a writeable 1-D C-contiguous float32 array because it is updated in place, "
            f"found ndim={x.ndim} dtype={x.dtype} contiguous={x.flags.c_contiguous} writeable={x.flags.writeable}"
        )
    return x


def out_array(out, size, dtype, name="out"):
    """Return ``out`` after checking it, or allocate a new array of ``size`` elements."""
    if type(out) is np.ndarray and out.dtype is dtype and out.ndim == 1 and out.flags.c_contiguous \
            and out.flags.writeable and out.shape[0] >= size:
        return out  # the common case (``dtype`` given as a dtype object): every check below passes
    dtype = np.dtype(dtype)
    if out is None:
        return np.empty(size, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"expected {name} to be a numpy array, found {type(out).__name__}")
    if out.dtype != dtype or out.ndim != 1 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(
            f"expected {name} to be a writeable 1-D C-contiguous {dtype} array, "
            f"found ndim={out.ndim} dtype={out.dtype} contiguous={out.flags.c_contiguous}"
        )
    if out.shape[0] < size:
        raise ValueError(f"expected {name} to hold at least {size} elements, found {out.shape[0]}")
    return out


def check_int(value, name, lo=None, hi=None):
    """An ``int`` in [lo, hi] (bounds optional); bools and floats are refused."""
    if type(value) is int and (lo is None or value >= lo) and (hi is None or value <= hi):
        return value  # the common case: a plain int within bounds
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"expected an integer {name}, found {type(value).__name__} {value!r}")
    value = int(value)
    if lo is not None and value < lo:
        raise ValueError(f"expected {name} >= {lo}, found {value}")
    if hi is not None and value > hi:
        raise ValueError(f"expected {name} <= {hi}, found {value}")
    return value


def check_seed(seed, name="seed"):
    return check_int(seed, name, 0, (1 << 64) - 1)


def check_indices(idx, n, name="indices"):
    """int64 indices, each in [0, n)."""
    if not isinstance(idx, np.ndarray):
        raise TypeError(f"expected {name} to be a numpy array, found {type(idx).__name__}")
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise ValueError(f"expected {name} to be a 1-D integer array, found ndim={idx.ndim} dtype={idx.dtype}")
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"expected every index in [0, {n}), found range [{idx.min()}, {idx.max()}]")
    return idx
