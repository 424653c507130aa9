"""``powersgd``: rank-r PowerSGD (Vogels et al., NeurIPS 2019), per weight matrix or on a matrix view.

**Per tensor** (the DDP hook, which tells the compressor each bucket's
parameter shapes through :meth:`PowerSGD.set_layout`), as published and as
torch's ``powerSGD_hook`` does it: each tensor of two or more dimensions is
viewed as ``shape[0] x (numel / shape[0])`` and factorized on its own when
that pays (``(rows + cols) r < rows cols``); the other tensors (biases, small
matrices) travel uncompressed, summed with the first phase.  No copy: the
matrices are views of the bucket.

**Flat** (a vector with no layout: ``gcomp.mpi``, and :meth:`PowerSGD.compress`
always): the ``n`` entries are viewed as one ``rows x cols`` matrix M (``rows =
floor(sqrt(n))``; the entries past ``n`` of its last row are zeros, read as
such by the kernels, not copied).

Each matrix gets one power-iteration step with a warm-started ``Q`` (``cols x
r``, initialised from the seed, identical on every rank):

1. ``P = M Q``  (linear in M: the collective sums P over ranks);
2. ``P_hat = orthonormalize(P)``;
3. ``Q' = M^T P_hat``  (linear in M: the collective sums Q');
4. result ``P_hat Q'^T``; with ``warm_start`` Q' is kept per key for the next step.

The products stream M once per phase (:mod:`gcomp.kernels.powersgd`: ``M Q``,
``M^T P_hat`` and the dense ``P_hat Q'^T``, parallel for large matrices with the
same bits for any thread count); orthonormalization (modified Gram-Schmidt) works on the small P, compiled,
in a fixed order of strict IEEE operations: the same ``P_hat`` on every machine, whatever BLAS it has.
:meth:`PowerSGD.compress` runs a small vector's whole step (``M Q``, orthonormalize, ``M^T P_hat``) in one
compiled call (:func:`gcomp.kernels.powersgd.power_step`), and ``decompress_add`` adds ``P Q^T`` row by row
into the accumulator (:func:`gcomp.kernels.powersgd.outer_add`).

:meth:`PowerSGD.compress` runs the steps on one vector; collectives drive
:meth:`PowerSGD.phases` (``p_phase``, ``q_phase``, ``finish``) so that both
sums travel on an allreduce.  The compressor is *linear in its phases* (P and Q' are
linear in M for a fixed Q and P_hat); its compressed form as a whole is not
summable.  The Q memory is per key and saved by :meth:`state_dict`.
"""

import functools
import math

import numpy as np

from ..errors import ConfigError, SizeError, StateError
from ..kernels import powersgd as kern
from ..kernels.random import derive_seed, uniform01_array
from ._params import bool_param, int_param, seed_param
from .base import Compressed, Compressor, as_flat_f32, key_to_int
from .base import _stamp as stamp
from .codec import F32, Codec

_EPS = 1e-8


@functools.lru_cache(maxsize=4096)
def matrix_shape(n):
    """(rows, cols) of the matrix view of an n-vector."""
    if n == 0:
        return 0, 0
    rows = max(1, math.isqrt(n))
    return rows, (n + rows - 1) // rows


def seeded_uniform(shape, seed):
    """Deterministic uniform(-1, 1) float32 from a 64-bit seed (no global RNG)."""
    count = int(np.prod(shape))
    key = np.uint32((seed ^ (seed >> 32)) & 0xFFFFFFFF)
    u = uniform01_array(key, np.arange(count, dtype=np.uint32))
    return (u * np.float32(2.0) - np.float32(1.0)).reshape(shape)


def orthonormalize(p):
    """Modified Gram-Schmidt on the columns of p (a C-contiguous float32 matrix, in place; near-zero columns
    become 0, non-finite ones NaN): :func:`gcomp.kernels.powersgd.orthonormalize`, the same bits on every machine."""
    return kern.orthonormalize(p, _EPS)


def _check_residual(residual, numel):
    if (not isinstance(residual, np.ndarray) or residual.dtype != np.float32 or residual.ndim != 1
            or not residual.flags.c_contiguous or residual.shape[0] != numel):
        raise ConfigError(f"expected the residual to be a C-contiguous float32 vector of {numel} entries, "
                          f"found {getattr(residual, 'dtype', type(residual).__name__)} {getattr(residual, 'shape', '')}")


def _check_packet(numel, count, p):
    rows, cols, rank = p["rows"], p["cols"], p["rank"]
    if (rows, cols) != matrix_shape(numel):
        raise SizeError(f"expected the matrix view {matrix_shape(numel)} of {numel} entries, found ({rows}, {cols})")
    if numel and not 1 <= rank <= min(rows, cols, 1024):
        raise SizeError(f"expected rank in [1, {min(rows, cols, 1024)}], found {rank}")
    if not numel and rank:
        raise SizeError(f"expected rank 0 for an empty vector, found {rank}")


def _arrays(n, count, p):
    return [("p", F32, p["rows"] * p["rank"]), ("q", F32, p["cols"] * p["rank"])]


def _shape(name, length, p):
    return (length // p["rank"], p["rank"]) if p["rank"] else (0, 0)


class PowerSGD(Compressor):
    name = "powersgd"
    description = "rank-r PowerSGD with warm start; linear in its P and Q phases"
    randomized = True
    linear = True
    phased = True
    #: :meth:`phases` takes ``residual=, scale=, divisor=``: residual error feedback fused into its passes
    fuses_residual = True
    params = {
        "rank": int_param(4, 1, 1024, "rank r of the approximation P Q^T (capped by the matrix view's shape)"),
        "warm_start": bool_param(True, "start each step's power iteration from the previous Q of the same key"),
        "seed": seed_param("seed of the initial Q (with key); equal on every rank"),
    }
    codec = Codec(13, _arrays, ("rows", "cols", "rank"), _check_packet, shape=_shape)

    def __init__(self, **params):
        super().__init__(**params)
        self._q = {}
        self._p_hat = {}
        self._layouts = {}  # key -> tensor shapes
        self._segments = {}  # (key, numel) -> [(offset, size, rows, cols, r)], r = 0: sent uncompressed
        self._dense_sums = {}  # key -> the summed uncompressed entries, from the first phase to finish()
        self._next_qt = {}  # key -> (the warm-start Q compress() stored, its transpose as the kernel computed it)

    def set_layout(self, key, shapes):
        """Factorize each tensor of ``key``'s vector on its own (see the module docstring); ``None``: flat."""
        layout = None if shapes is None else tuple(tuple(int(d) for d in shape) for shape in shapes)
        previous = self._layouts.get(key)
        if previous != layout:
            self._layouts[key] = layout
            self._segments = {k: v for k, v in self._segments.items() if k[0] != key}
            if previous is not None:  # other tensors now: their warm starts start over (a first layout keeps a
                self.reset(key)       # restored checkpoint's)

    def _plan(self, key, numel):
        """The per-tensor segments of ``key`` (None: flat)."""
        layout = self._layouts.get(key)
        if layout is None:
            return None
        plan = self._segments.get((key, numel))
        if plan is None:
            plan, offset = [], 0
            for shape in layout:
                size = math.prod(shape)
                rows = shape[0] if len(shape) >= 2 and size else 0
                cols = size // rows if rows else 0
                r = min(self.rank, rows, cols)
                if rows and (rows + cols) * r < rows * cols:
                    plan.append((offset, size, rows, cols, r))
                else:
                    plan.append((offset, size, 0, 0, 0))
                offset += size
            if offset != numel:
                raise ConfigError(f"expected {offset} entries for the layout of key {key!r} ({len(layout)} tensors), "
                                  f"found {numel}")
            self._segments[(key, numel)] = plan
        return plan

    def _segment_q(self, key, i, cols, r):
        name = f"{key}/t{i}"
        q = self._q.get(name) if self.warm_start else None
        if q is None or q.shape != (cols, r):
            q = orthonormalize(seeded_uniform((cols, r), derive_seed(self.seed, i + 1, key_to_int(key))))
        return q

    def effective_rank(self, numel):
        rows, cols = matrix_shape(numel)
        return min(self.rank, rows, cols)

    def max_payload_bytes(self, numel):
        rows, cols = matrix_shape(numel)
        r = self.effective_rank(numel)
        return 4 * r * (rows + cols)

    # -- the phases ----------------------------------------------------
    def _current_q(self, key, numel):
        rows, cols = matrix_shape(numel)
        r = self.effective_rank(numel)
        q = self._q.get(key) if self.warm_start else None
        if q is None or q.shape != (cols, r):
            q = orthonormalize(seeded_uniform((cols, r), derive_seed(self.seed, 0, key_to_int(key))))
        return q

    def p_phase(self, x, key=0, *, flat=False, residual=None, scale=1.0):
        """``P = M Q`` for this rank's vector (sum it over ranks).

        Per tensor: one flat array, the uncompressed tensors' entries, then each matrix's ``P``.
        ``residual`` (a float32 vector as long as ``x``): ``M = x * scale + residual``, formed in
        ``residual`` itself in the same pass (see :meth:`phases`); else ``M = x``.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if residual is not None:
            _check_residual(residual, x.shape[0])
        m = x if residual is None else residual
        plan = None if flat else self._plan(key, x.shape[0])
        if plan is None:
            rows, cols = matrix_shape(x.shape[0])
            q = self._current_q(key, x.shape[0])
            if not rows:
                return np.zeros((0, q.shape[1]), np.float32)
            return kern.matrix_times(x, rows, cols, np.ascontiguousarray(q.T), accumulate=residual, scale=scale)
        dense = sum(s for _, s, _, _, r in plan if not r)
        out = np.empty(dense + sum(rows * r for _, _, rows, _, r in plan if r), np.float32)
        at = 0
        for o, s, _, _, r in plan:
            if not r:
                if residual is not None:
                    residual[o: o + s] += x[o: o + s] * np.float32(scale)
                out[at: at + s] = m[o: o + s]
                at += s
        for i, (o, s, rows, cols, r) in enumerate(plan):
            if r:
                qt = np.ascontiguousarray(self._segment_q(key, i, cols, r).T)
                kern.matrix_times(x[o: o + s], rows, cols, qt, out=out[at: at + rows * r].reshape(rows, r),
                                  accumulate=None if residual is None else residual[o: o + s], scale=scale)
                at += rows * r
        return out

    def q_phase(self, x, p_sum, key=0, *, flat=False):
        """``Q' = M^T orthonormalize(P_sum)`` (sum it over ranks); remembers P_hat for :meth:`finish`."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        plan = None if flat else self._plan(key, x.shape[0])
        if plan is None:
            p_hat = orthonormalize(np.array(p_sum, dtype=np.float32, order="C", copy=True))
            self._p_hat[key] = p_hat
            rows, cols = matrix_shape(x.shape[0])
            if not rows:
                return np.zeros((0, p_hat.shape[1]), np.float32)
            return kern.matrix_t_times(x, rows, cols, p_hat)
        p_sum = np.asarray(p_sum, dtype=np.float32).reshape(-1)
        dense = sum(s for _, s, _, _, r in plan if not r)
        self._dense_sums[key] = np.array(p_sum[:dense], copy=True)
        at, p_hats = dense, []
        out = np.empty(sum(cols * r for _, _, _, cols, r in plan if r), np.float32)
        at_q = 0
        for o, s, rows, cols, r in plan:
            if r:
                p_hat = orthonormalize(np.array(p_sum[at: at + rows * r].reshape(rows, r), order="C", copy=True))
                at += rows * r
                p_hats.append(p_hat)
                kern.matrix_t_times(x[o: o + s], rows, cols, p_hat, out=out[at_q: at_q + cols * r].reshape(cols, r))
                at_q += cols * r
        self._p_hat[key] = p_hats
        return out

    def finish(self, q_sum, numel, key=0, out=None, *, flat=False, residual=None, divisor=1.0):
        """Dense ``P_hat Q_sum^T`` (first ``numel`` entries); stores Q_sum as the warm start.

        ``residual`` (a float32 vector of ``numel`` entries, not ``out``): updated in the same pass to
        ``residual - result / divisor`` (IEEE division and subtraction, as numpy's).
        """
        if residual is not None:
            _check_residual(residual, numel)
        divisor = np.float32(divisor)
        plan = None if flat else self._plan(key, numel)
        if plan is not None:
            return self._finish_per_tensor(plan, q_sum, numel, key, out, residual, divisor)
        p_hat = self._p_hat.pop(key)
        q_sum = np.array(q_sum, dtype=np.float32, copy=True)
        if self.warm_start and np.isfinite(q_sum).all():
            self._q[key] = q_sum
        elif not np.isfinite(q_sum).all():
            self._q.pop(key, None)  # a non-finite factor must not poison later warm starts
        if not numel:
            return np.zeros(0, np.float32) if out is None else out
        return self._outer(p_hat, q_sum, numel, out, residual, divisor)

    def _finish_per_tensor(self, plan, q_sum, numel, key, out, residual, divisor):
        p_hats, dense = self._p_hat.pop(key), self._dense_sums.pop(key)
        q_sum = np.asarray(q_sum, dtype=np.float32).reshape(-1)
        out = np.empty(numel, np.float32) if out is None else out
        at_dense = at_q = 0
        for i, (o, s, _rows, cols, r) in enumerate(plan):
            if not r:
                out[o: o + s] = dense[at_dense: at_dense + s]
                if residual is not None:
                    residual[o: o + s] -= dense[at_dense: at_dense + s] / divisor
                at_dense += s
                continue
            q = np.array(q_sum[at_q: at_q + cols * r].reshape(cols, r), copy=True)
            at_q += cols * r
            p_hat = p_hats.pop(0)
            self._outer(p_hat, q, s, out[o: o + s], None if residual is None else residual[o: o + s], divisor)
            if self.warm_start and np.isfinite(q).all():
                self._q[f"{key}/t{i}"] = q
            elif not np.isfinite(q).all():
                self._q.pop(f"{key}/t{i}", None)  # a non-finite factor must not poison later warm starts
        return out

    @staticmethod
    def _outer(p_hat, q, numel, out, residual, divisor):
        """``P_hat Q^T`` (first ``numel`` entries) written once into ``out`` (a float32 vector) or a new array."""
        qt = np.ascontiguousarray(q.T)
        if out is not None and isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.c_contiguous \
                and out.ndim == 1:
            return kern.outer(p_hat, qt, numel, out=out, residual=residual, divisor=divisor)
        dense = kern.outer(p_hat, qt, numel, residual=residual, divisor=divisor)
        if out is None:
            return dense
        out[:] = dense
        return out

    def phases(self, x, key=0, out=None, *, residual=None, scale=1.0, divisor=1.0):
        """Yield ``P`` (receive its sum), yield ``Q'`` (receive its sum), return the dense ``P_hat Q_sum^T``.

        ``out``: a float32 vector of ``x.shape[0]`` entries to write the result into (no fresh dense
        array; it may be ``x`` itself, e.g. the gradient bucket, when ``residual`` is given).

        ``residual`` (residual error feedback, fused; a float32 vector as long as ``x``, not ``x``
        or ``out``): the matrix is ``M = x * scale + residual``, formed in ``residual``'s own buffer
        in the pass that computes ``P`` (``x`` is read there and nowhere else), and the pass that
        writes the result also sets ``residual = M - result / divisor`` (torch's ``M - mean`` with
        ``divisor`` the number of ranks; the same bits as numpy's ``v = x * scale; v += residual``
        and ``residual = v - result / divisor``).  Without it ``M = x``.
        """
        m = x if residual is None else residual
        p_sum = yield self.p_phase(x, key, residual=residual, scale=scale)
        q_sum = yield self.q_phase(m, p_sum, key)
        return self.finish(q_sum, x.shape[0], key, out=out, residual=residual, divisor=divisor)

    @classmethod
    def strategy(cls):
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"rank": st.integers(1, 8), "seed": st.integers(0, 2**32), "warm_start": st.booleans()})

    # -- one vector ----------------------------------------------------
    def compress(self, x, *, step=0, key=0):
        """The packet of ``x`` (the flat matrix view, always: the codec's form), with ``key``'s warm start."""
        flat, dtype = as_flat_f32(x)
        return stamp(self._compress_key(flat, key), x, dtype, step, self.seed_for(step, key))

    def _compress(self, x, *, step, seed):
        return self._compress_key(x, 0)  # the base class's entry point; compress() passes its key instead

    def _compress_key(self, x, key):
        n = x.shape[0]
        if n == 0:
            return Compressed(self.name, 0, "float32", {"p": np.zeros((0, 0), np.float32), "q": np.zeros((0, 0), np.float32)},
                              {"rows": 0, "cols": 0, "rank": 0})
        rows, cols = matrix_shape(n)
        q = self._q.get(key) if self.warm_start else None
        if q is None or q.shape != (cols, min(self.rank, rows, cols)):
            q = self._current_q(key, n)
        cached = self._next_qt.get(key)  # Q^T as the last step's kernel left it: no transpose copy
        qt = cached[1] if cached is not None and cached[0] is q else np.ascontiguousarray(q.T)
        p_hat, q, q_t = kern._power_step_trusted(x, rows, cols, qt, _EPS)
        if self.warm_start:
            self._q[key] = q = q.copy()  # the packet's q is the caller's
            self._next_qt[key] = (q, q_t)
        return Compressed(self.name, n, "float32", {"p": p_hat, "q": q}, {"rows": rows, "cols": cols, "rank": p_hat.shape[1]})

    def _decompress(self, c):
        return self._decompress_into(c, None)

    @staticmethod
    def _factors(c):
        """``(p, q, fits)``: the packet's factors as float32 (``p`` C-contiguous), and whether the kernels take
        them: 2-D, of one rank, and ``numel`` within their product's rows (the codec's form)."""
        p, q = np.ascontiguousarray(c.arrays["p"], dtype=np.float32), np.asarray(c.arrays["q"], dtype=np.float32)
        fits = (p.ndim == 2 and q.ndim == 2 and p.shape[1] == q.shape[1]
                and (p.shape[0] - 1) * q.shape[0] < c.numel <= p.shape[0] * q.shape[0])
        return p, q, fits

    def _decode(self, c, out=None, accumulate=False):
        if not accumulate:
            return self._decompress_into(c, out)
        p, q, fits = self._factors(c)
        if c.numel and fits and p.shape[1] >= 1:
            return kern._outer_add_trusted(p, np.ascontiguousarray(q.T), c.numel, out)  # decompress_add checked out
        out += self._decompress_into(c, None)
        return out

    def _decompress_into(self, c, out):
        """``P Q^T`` (first ``numel`` entries) by the same kernel as the phases' last pass, into ``out`` or a new
        vector: decoding into the caller's buffer allocates nothing of the vector's size."""
        n = c.numel
        if n == 0:
            return np.zeros(0, np.float32) if out is None else out
        p, q, fits = self._factors(c)
        if not fits:
            dense = np.ascontiguousarray((p @ q.T).reshape(-1)[:n])  # a form the kernel does not take
            if out is None:
                return dense
            out[:] = dense
            return out
        if type(out) is np.ndarray and out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous \
                and out.shape[0] == n and p.shape[1] and q.flags.c_contiguous:
            return kern._outer_q_trusted(p, q, n, out)  # checked above
        return self._outer(p, q, n, out, None, np.float32(1.0))

    def combine(self, items):
        raise ConfigError("powersgd is linear in its phases, not as a whole: sum p_phase() outputs, then q_phase() outputs")

    def reset(self, key=None):
        """Forget the warm-start Q (and any pending P_hat) of ``key``, or of every key."""
        if key is None:
            self._next_qt.clear()
            self._q.clear()
            self._p_hat.clear()
            self._dense_sums.clear()
        else:
            for name in [k for k in self._q if k == key or (isinstance(k, str) and k.startswith(f"{key}/t"))]:
                del self._q[name]
            self._p_hat.pop(key, None)
            self._dense_sums.pop(key, None)
            self._next_qt.pop(key, None)

    # -- state ---------------------------------------------------------
    def state_dict(self):
        """The warm-start Q per key (float32 arrays), with a version key."""
        return {"version": 1, "q": {k: v.copy() for k, v in self._q.items()}}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or state.get("version") != 1 or "q" not in state:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise StateError(f"expected a powersgd state dict with version 1 and key 'q', found {found}")
        self._q = {k: np.array(v, dtype=np.float32, copy=True) for k, v in state["q"].items()}
        self._next_qt.clear()

