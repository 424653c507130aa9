"""PowerSGD's rank-r products, streaming: one read of the matrix per phase, no padding copy.

A flat float32 vector ``x`` of ``n`` entries is read as a ``rows x cols``
row-major matrix ``M`` whose entries past ``n`` are zero (so a vector that
does not fill its matrix view needs no zero-padded copy).  With ``r`` the rank:

* :func:`matrix_times` -- ``P = M Q`` (``rows x r``), from ``Q`` given
  transposed (``qt``, ``r x cols``): each row of M is read once and dotted
  with the ``r`` rows of ``qt`` while it sits in L1;
* :func:`matrix_t_times` -- ``Q' = M^T P`` (``cols x r``): rows of M are
  streamed and ``P[i, k] * M[i, :]`` is accumulated into ``r x cols`` sums
  that stay in L2;
* :func:`outer` -- the dense ``P Q^T`` (first ``n`` entries), written once;
  :func:`outer_add` adds it into an accumulator instead (each row formed in a
  row-sized scratch, then added: the bits of ``acc += outer(...)``);
* :func:`orthonormalize` -- modified Gram-Schmidt on the columns of ``P``, in
  strict IEEE arithmetic in a fixed order (float64 dot products in row order):
  the same ``P_hat`` on every machine, where a BLAS ``sdot`` sums in an order
  that depends on the CPU it dispatches to;
* :func:`power_step` -- ``M Q``, orthonormalize and ``M^T P_hat`` in one
  compiled call for small vectors (the fixed cost of three calls is most of a
  small vector's time), the same bits as the three calls.

Residual error feedback fuses into passes that run anyway: ``matrix_times(...,
accumulate=res, scale=s)`` forms ``res = x * s + res`` row by row and takes
``P`` from that row while it is in L1 (M is then ``res``), and ``outer(...,
residual=res, divisor=d)`` sets ``res = res - result / d`` as each row of the
result is written.  Both use IEEE arithmetic for these updates (no fused
multiply-add, no reciprocal), so they give numpy's bits for ``v = x * s;
v += res`` and ``res = v - result / d``.

These skinny products are memory-bound: the kernels read M once per phase,
allocate nothing of M's size, and split rows over threads for large matrices.

**Same bits for any thread count** (the policy of :mod:`gcomp.kernels.config`):

* ``matrix_times`` and ``outer``: every row is computed on its own, by the
  same loop, in the serial and the parallel kernel.
* ``matrix_t_times`` sums over rows.  The rows are split into units of
  ``max(1, UNIT_ENTRIES // cols)`` rows (fixed by the shape, never by the
  thread count); each unit's partial ``r x cols`` sum is formed row by row,
  and the partials are added in unit order.  The serial kernel computes the
  same units the same way.

The dot products of ``matrix_times`` are float32 sums in a fixed but
vectorized order (fast-math reassociation, the same on every run and thread
count).  Non-finite entries propagate as IEEE arithmetic does (a NaN in a row
of M makes that row of P NaN, and every entry of ``Q'`` it touches).
"""

import numpy as np
from numba import prange

from . import config
from .config import kernel

__all__ = ["matrix_times", "matrix_t_times", "outer", "outer_add", "orthonormalize", "power_step", "UNIT_ENTRIES", "unit_rows"]

#: entries of M per unit of ``matrix_t_times`` (its partial sums are combined in unit order)
UNIT_ENTRIES = 1 << 19

#: rows per parallel block of ``matrix_times`` and ``outer`` (any blocking gives the same bits)
_ROW_ENTRIES = 1 << 16


_NO_RESIDUAL = np.empty(0, np.float32)  # read-only by the kernels (their "no residual" marker)
_ONE = np.float32(1.0)


def unit_rows(cols):
    """Rows per unit of :func:`matrix_t_times` for a matrix of ``cols`` columns."""
    return max(1, UNIT_ENTRIES // max(1, cols))


# -- P = M Q -------------------------------------------------------------------------------
@kernel
def _mq_row(x, n, cols, qt, p, i):
    s = i * cols
    e = min(s + cols, n)
    if e <= s:
        for k in range(qt.shape[0]):
            p[i, k] = np.float32(0.0)
        return
    row = x[s:e]
    for k in range(qt.shape[0]):
        qk = qt[k]
        acc = np.float32(0.0)
        for j in range(row.shape[0]):
            acc += row[j] * qk[j]
        p[i, k] = acc


@kernel(exact=True)
def _accumulate_row(x, n, cols, acc, scale, i):
    """``acc = x * scale + acc`` on row i (IEEE: rounded product, then the sum, as numpy's ``v = x * s; v += acc``)."""
    s = i * cols
    e = min(s + cols, n)
    xr = x[s:e]
    ar = acc[s:e]
    for j in range(xr.shape[0]):
        ar[j] = xr[j] * scale + ar[j]


@kernel
def _mq(x, n, rows, cols, qt, p, acc, scale):
    for i in range(rows):
        if acc.shape[0]:
            _accumulate_row(x, n, cols, acc, scale, i)
            _mq_row(acc, n, cols, qt, p, i)
        else:
            _mq_row(x, n, cols, qt, p, i)


@kernel(parallel=True)
def _mq_par(x, n, rows, cols, qt, p, acc, scale):
    per = max(1, _ROW_ENTRIES // max(1, cols))
    blocks = (rows + per - 1) // per
    for b in prange(blocks):
        for i in range(b * per, min(rows, b * per + per)):
            if acc.shape[0]:
                _accumulate_row(x, n, cols, acc, scale, i)
                _mq_row(acc, n, cols, qt, p, i)
            else:
                _mq_row(x, n, cols, qt, p, i)


# -- Q' = M^T P ----------------------------------------------------------------------------
@kernel
def _mtp_unit(x, n, rows, cols, p, acc, u, per):
    """acc (r x cols) = sum over the rows of unit u of P[i, k] * M[i, :], row by row from zero."""
    r = acc.shape[0]
    for k in range(r):
        for j in range(cols):
            acc[k, j] = np.float32(0.0)
    for i in range(u * per, min(rows, u * per + per)):
        s = i * cols
        e = min(s + cols, n)
        if e <= s:
            continue
        row = x[s:e]
        for k in range(r):
            w = p[i, k]
            ak = acc[k]
            for j in range(row.shape[0]):
                ak[j] += w * row[j]


@kernel
def _mtp(x, n, rows, cols, p, q, parts, total):
    acc = parts[0]
    per = max(1, UNIT_ENTRIES // max(1, cols))
    units = (rows + per - 1) // per
    r = p.shape[1]
    for k in range(r):
        for j in range(cols):
            total[k, j] = np.float32(0.0)
    for u in range(units):
        _mtp_unit(x, n, rows, cols, p, acc, u, per)
        for k in range(r):
            tk = total[k]
            ak = acc[k]
            for j in range(cols):
                tk[j] += ak[j]
    for j in range(cols):
        for k in range(r):
            q[j, k] = total[k, j]


@kernel(parallel=True)
def _mtp_par(x, n, rows, cols, p, q, parts, total):
    per = max(1, UNIT_ENTRIES // max(1, cols))
    units = (rows + per - 1) // per
    r = p.shape[1]
    for u in prange(units):
        _mtp_unit(x, n, rows, cols, p, parts[u], u, per)
    chunk = 4096
    for c in prange((cols + chunk - 1) // chunk):
        j0 = c * chunk
        j1 = min(cols, j0 + chunk)
        for k in range(r):
            for j in range(j0, j1):
                total[k, j] = np.float32(0.0)
            for u in range(units):
                for j in range(j0, j1):
                    total[k, j] += parts[u, k, j]
        for j in range(j0, j1):
            for k in range(r):
                q[j, k] = total[k, j]


# -- P Q^T ---------------------------------------------------------------------------------
@kernel
def _outer_row_into(p, qt, i, o):
    """Row i of ``P Q^T``, its first ``o.shape[0]`` entries, written into ``o``."""
    w = p[i, 0]
    q0 = qt[0]
    for j in range(o.shape[0]):
        o[j] = w * q0[j]
    for k in range(1, qt.shape[0]):
        w = p[i, k]
        qk = qt[k]
        for j in range(o.shape[0]):
            o[j] += w * qk[j]


@kernel
def _outer_row(p, qt, n, cols, out, i):
    s = i * cols
    e = min(s + cols, n)
    if e <= s:
        return
    _outer_row_into(p, qt, i, out[s:e])


@kernel
def _outer_from_q(p, q, out):
    """:func:`_outer` without a residual, from ``Q`` itself (``cols x r``, transposed here into a small scratch):
    the small-vector decode, one call with no Python-side transpose; the same rows, so the same bits."""
    cols, r = q.shape
    qt = np.empty((r, cols), np.float32)
    for j in range(cols):
        for k in range(r):
            qt[k, j] = q[j, k]
    n = out.shape[0]
    for i in range(p.shape[0]):
        _outer_row(p, qt, n, cols, out, i)


@kernel
def _outer_add_row(p, qt, n, cols, acc, tmp, i):
    """``acc += row i of P Q^T`` (the row formed in ``tmp`` as :func:`_outer_row` forms it, then added: the bits of
    ``acc += dense``)."""
    s = i * cols
    e = min(s + cols, n)
    if e <= s:
        return
    t = tmp[: e - s]
    _outer_row_into(p, qt, i, t)
    a = acc[s:e]
    for j in range(t.shape[0]):
        a[j] += t[j]


@kernel
def _outer_add(p, qt, n, rows, cols, acc):
    tmp = np.empty(cols, np.float32)
    for i in range(rows):
        _outer_add_row(p, qt, n, cols, acc, tmp, i)


@kernel(parallel=True)
def _outer_add_par(p, qt, n, rows, cols, acc):
    per = max(1, _ROW_ENTRIES // max(1, cols))
    blocks = (rows + per - 1) // per
    for b in prange(blocks):
        tmp = np.empty(cols, np.float32)
        for i in range(b * per, min(rows, b * per + per)):
            _outer_add_row(p, qt, n, cols, acc, tmp, i)


@kernel(exact=True)
def _residual_row(out, n, cols, v, d, i):
    """``v = v - out / d`` on row i, while the row of out is still in L1 (IEEE division and subtraction, as numpy's)."""
    s = i * cols
    e = min(s + cols, n)
    if e <= s:
        return
    o = out[s:e]
    vr = v[s:e]
    for j in range(o.shape[0]):
        vr[j] = vr[j] - o[j] / d


@kernel
def _outer(p, qt, n, rows, cols, out, v, d):
    for i in range(rows):
        _outer_row(p, qt, n, cols, out, i)
        if v.shape[0]:
            _residual_row(out, n, cols, v, d, i)


@kernel(parallel=True)
def _outer_par(p, qt, n, rows, cols, out, v, d):
    per = max(1, _ROW_ENTRIES // max(1, cols))
    blocks = (rows + per - 1) // per
    for b in prange(blocks):
        for i in range(b * per, min(rows, b * per + per)):
            _outer_row(p, qt, n, cols, out, i)
            if v.shape[0]:
                _residual_row(out, n, cols, v, d, i)


# -- orthonormalize P ----------------------------------------------------------------------
@kernel(exact=True)
def _orthonormalize(p, eps):
    """Modified Gram-Schmidt on the columns of p, in place (float64 sums in row order, float32 updates)."""
    rows, r = p.shape
    for j in range(r):
        for i in range(j):
            d = 0.0
            for k in range(rows):
                d += np.float64(p[k, i]) * np.float64(p[k, j])
            c = np.float32(d)
            for k in range(rows):
                p[k, j] = p[k, j] - c * p[k, i]
        s = 0.0
        for k in range(rows):
            v = np.float64(p[k, j])
            s += v * v
        norm = np.sqrt(s)
        if norm > eps and np.isfinite(norm):
            f = np.float32(norm)
            for k in range(rows):
                p[k, j] = p[k, j] / f
        else:
            fill = np.float32(0.0) if np.isfinite(norm) else np.float32(np.nan)
            for k in range(rows):
                p[k, j] = fill


# -- one whole power step, serial (small vectors: one call instead of three) ---------------
@kernel
def _power_step(x, cols, qt, p, q, scratch, eps):
    n, rows = x.shape[0], p.shape[0]
    for i in range(rows):
        _mq_row(x, n, cols, qt, p, i)
    _orthonormalize(p, eps)
    _mtp(x, n, rows, cols, p, q, scratch[:1], scratch[1])


# -- wrappers ------------------------------------------------------------------------------
def _check_x(x, rows, cols):
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 1 or not x.flags.c_contiguous:
        found = f"{x.dtype} {x.ndim}-D" if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"expected x to be a C-contiguous 1-D float32 array, found {found}")
    rows, cols = int(rows), int(cols)
    if rows < 0 or cols < 0 or x.shape[0] > rows * cols:
        raise ValueError(f"expected a rows x cols view holding all {x.shape[0]} entries of x, found {rows} x {cols}")
    if rows and x.shape[0] <= (rows - 1) * cols:
        raise ValueError(f"expected every row of the {rows} x {cols} view to hold an entry of x (n={x.shape[0]}), "
                         f"found the last row empty")
    return rows, cols


def _check_qt(qt, cols):
    if not isinstance(qt, np.ndarray) or qt.dtype != np.float32 or qt.ndim != 2 or not qt.flags.c_contiguous:
        raise TypeError(f"expected qt to be a C-contiguous 2-D float32 array, found "
                        f"{getattr(qt, 'dtype', type(qt).__name__)}")
    if qt.shape[1] != cols or qt.shape[0] < 1:
        raise ValueError(f"expected qt of shape (r >= 1, {cols}), found {qt.shape}")


def _check_product(p, qt, n):
    """The checks of :func:`outer` and :func:`outer_add` on their factors and ``n``: ``(rows, cols, n)``."""
    if not isinstance(p, np.ndarray) or p.ndim != 2:
        raise TypeError(f"expected p to be a 2-D float32 array, found {type(p).__name__}")
    rows = p.shape[0]
    _check_factor(p, rows, "p")
    if not isinstance(qt, np.ndarray) or qt.dtype != np.float32 or qt.ndim != 2 or not qt.flags.c_contiguous:
        raise TypeError("expected qt to be a C-contiguous 2-D float32 array")
    if qt.shape[0] != p.shape[1]:
        raise ValueError(f"expected qt with {p.shape[1]} rows (the rank of p), found {qt.shape}")
    cols = qt.shape[1]
    n = int(n)
    if not (rows - 1) * cols < n <= rows * cols and not (n == 0 and rows * cols == 0):
        raise ValueError(f"expected n in ({(rows - 1) * cols}, {rows * cols}] for a {rows} x {cols} product, found {n}")
    return rows, cols, n


def _check_factor(a, shape0, name):
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 2 or not a.flags.c_contiguous:
        found = f"{a.dtype} {a.ndim}-D" if isinstance(a, np.ndarray) else type(a).__name__
        raise TypeError(f"expected {name} to be a C-contiguous 2-D float32 array, found {found}")
    if a.shape[0] != shape0 or a.shape[1] < 1:
        raise ValueError(f"expected {name} of shape ({shape0}, r >= 1), found {a.shape}")
    return a


def _check_vector(v, n, name, apart_from):
    if (not isinstance(v, np.ndarray) or v.dtype != np.float32 or v.ndim != 1 or not v.flags.c_contiguous
            or v.shape[0] != n or np.shares_memory(v, apart_from)):
        raise ValueError(f"expected {name} to be a C-contiguous float32 vector of {n} entries, not sharing memory "
                         f"with the other arguments")


def orthonormalize(p, eps=1e-8):
    """Modified Gram-Schmidt on the columns of ``p`` (a C-contiguous ``rows x r`` float32 array), in place.

    Column ``j`` loses its projections on the columns before it, one at a time (each
    coefficient a float64 dot product in row order, rounded to float32; the update
    ``p[:, j] - c * p[:, i]`` in float32, no fused multiply-add), then is divided by its
    float64 norm rounded to float32.  A column whose norm is at most ``eps`` becomes zeros, a
    non-finite one NaNs.  Strict IEEE arithmetic in a fixed order: the same bits on every
    machine and run (no BLAS, whose summation order depends on the CPU it dispatches to), so
    ranks on different processors orthonormalize the same ``P`` to the same ``P_hat``.
    Returns ``p``.
    """
    if not isinstance(p, np.ndarray) or p.dtype != np.float32 or p.ndim != 2 or not p.flags.c_contiguous:
        found = f"{p.dtype} {p.ndim}-D" if isinstance(p, np.ndarray) else type(p).__name__
        raise TypeError(f"expected p to be a C-contiguous 2-D float32 array, found {found}")
    if p.size:
        _orthonormalize(p, float(eps))
    return p


def power_step(x, rows, cols, qt, eps=1e-8):
    """One power-iteration step on the ``rows x cols`` view ``M`` of ``x``: ``(P_hat, Q', Q'^T)``.

    ``P = M Q`` (``qt`` is ``Q^T``, ``r x cols``), ``P_hat = orthonormalize(P)`` (in place),
    ``Q' = M^T P_hat``: the same bits as :func:`matrix_times`, :func:`orthonormalize` and
    :func:`matrix_t_times` called in turn (the same row and unit loops), in one compiled call
    for vectors below :data:`~gcomp.kernels.config.PARALLEL_MIN` entries; larger ones take
    those three calls, so they may run on Numba's threads.
    """
    rows, cols = _check_x(x, rows, cols)
    _check_qt(qt, cols)
    return _power_step_trusted(x, rows, cols, qt, eps)


def _power_step_trusted(x, rows, cols, qt, eps):
    """:func:`power_step` for arguments valid by construction (PowerSGD's own): no checks."""
    n = x.shape[0]
    if n >= config.PARALLEL_MIN or config._force is not None:
        p = orthonormalize(matrix_times(x, rows, cols, qt), eps)
        q = matrix_t_times(x, rows, cols, p)
        return p, q, np.ascontiguousarray(q.T)
    r = qt.shape[0]
    p = np.empty((rows, r), np.float32)
    q = np.empty((cols, r), np.float32)
    scratch = np.empty((2, r, cols), np.float32)  # one unit's partial sum, and the total
    _power_step(x, cols, qt, p, q, scratch, float(eps))
    return p, q, scratch[1]


def matrix_times(x, rows, cols, qt, out=None, accumulate=None, scale=1.0):
    """``P = M Q`` (``rows x r`` float32) for ``M`` the ``rows x cols`` view of ``x``; ``qt`` is ``Q^T`` (``r x cols``).

    ``accumulate`` (a float32 vector as long as ``x``): in the same pass, ``accumulate = x * scale +
    accumulate`` (numpy's rounding: the product, then the sum), and ``M`` is that sum (error
    feedback's ``v = x / P + residual`` formed in the residual's own buffer).
    """
    rows, cols = _check_x(x, rows, cols)
    _check_qt(qt, cols)
    r = qt.shape[0]
    if out is None:
        out = np.empty((rows, r), np.float32)
    else:
        _check_factor(out, rows, "out")
        if out.shape[1] != r:
            raise ValueError(f"expected out of shape ({rows}, {r}), found {out.shape}")
    if accumulate is None:
        accumulate = np.empty(0, np.float32)
    else:
        _check_vector(accumulate, x.shape[0], "accumulate", x)
    config.run(x.shape[0], _mq, _mq_par, x, x.shape[0], rows, cols, qt, out, accumulate, np.float32(scale))
    return out


def matrix_t_times(x, rows, cols, p, out=None):
    """``Q' = M^T P`` (``cols x r`` float32) for ``M`` the ``rows x cols`` view of ``x`` and ``P`` (``rows x r``)."""
    rows, cols = _check_x(x, rows, cols)
    _check_factor(p, rows, "p")
    r = p.shape[1]
    if out is None:
        out = np.empty((cols, r), np.float32)
    else:
        _check_factor(out, cols, "out")
        if out.shape[1] != r:
            raise ValueError(f"expected out of shape ({cols}, {r}), found {out.shape}")
    n = x.shape[0]
    total = np.empty((r, cols), np.float32)
    # the serial kernel needs one unit's scratch, the parallel one every unit's
    units = (rows + unit_rows(cols) - 1) // unit_rows(cols)
    may_split = config.parallel_threads(n) > 1 or config._force == "parallel"
    parts = np.empty((max(1, units) if may_split else 1, r, cols), np.float32)
    config.run(n, _mtp, _mtp_par, x, n, rows, cols, p, out, parts, total)
    return out


def outer(p, qt, n, out=None, residual=None, divisor=1.0):
    """The first ``n`` entries of ``P Q^T`` (flat float32): ``p`` is ``rows x r``, ``qt`` is ``Q^T`` (``r x cols``).

    ``residual`` (a float32 vector of ``n`` entries, not ``out``): in the same pass,
    ``residual[e] = residual[e] - result[e] / divisor`` (error feedback's ``v - mean``
    with ``residual`` holding ``v`` and ``divisor`` the number of ranks).
    """
    rows, cols, n = _check_product(p, qt, n)
    if out is None:
        out = np.empty(n, np.float32)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.ndim != 1 or not out.flags.c_contiguous
          or out.shape[0] != n):
        raise ValueError(f"expected out to be a C-contiguous float32 vector of {n} entries")
    if residual is None:
        residual = _NO_RESIDUAL
    else:
        _check_vector(residual, n, "residual", out)
    config.run(n, _outer, _outer_par, p, qt, n, rows, cols, out, residual, np.float32(divisor))
    return out


def outer_add(p, qt, n, acc):
    """``acc += `` the first ``n`` entries of ``P Q^T`` (the bits of ``acc += outer(p, qt, n)``), with no
    vector of ``n`` entries allocated: each row of the product is formed in a row-sized scratch and added.
    ``acc`` is a C-contiguous float32 vector of ``n`` entries; returns it."""
    _, _, n = _check_product(p, qt, n)
    if (not isinstance(acc, np.ndarray) or acc.dtype != np.float32 or acc.ndim != 1 or not acc.flags.c_contiguous
            or acc.shape[0] != n):
        raise ValueError(f"expected acc to be a C-contiguous float32 vector of {n} entries")
    return _outer_add_trusted(p, qt, n, acc)


def _outer_add_trusted(p, qt, n, acc):
    config.run(n, _outer_add, _outer_add_par, p, qt, n, p.shape[0], qt.shape[1], acc)
    return acc


def _outer_q_trusted(p, q, n, out):
    """:func:`outer` into ``out`` (no residual) from ``Q`` itself (``cols x r``, not transposed), for arguments checked
    by the caller: C-contiguous ``p`` (``rows x r``) and ``q``, ``(rows - 1) cols < n <= rows cols``, and a float32
    vector ``out`` of ``n`` entries."""
    if n < config.PARALLEL_MIN and config._force is None:
        _outer_from_q(p, q, out)  # small: one compiled call, the transpose inside it
    else:
        config.run(n, _outer, _outer_par, p, np.ascontiguousarray(q.T), n, p.shape[0], q.shape[0], out, _NO_RESIDUAL,
                   _ONE)
    return out
