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
floor(sqrt(n))``, zero-padded).

Each matrix gets one power-iteration step with a warm-started ``Q`` (``cols x
r``, initialised from the seed, identical on every rank):

1. ``P = M Q``  (linear in M: the collective sums P over ranks);
2. ``P_hat = orthonormalize(P)``;
3. ``Q' = M^T P_hat``  (linear in M: the collective sums Q');
4. result ``P_hat Q'^T``; with ``warm_start`` Q' is kept per key for the next step.

:meth:`PowerSGD.compress` runs the steps on one vector; collectives drive
:meth:`PowerSGD.phases` (``p_phase``, ``q_phase``, ``finish``) so that both
sums travel on an allreduce.  The compressor is *linear in its phases* (P and Q' are
linear in M for a fixed Q and P_hat); its compressed form as a whole is not
summable.  The Q memory is per key and saved by :meth:`state_dict`.
"""

import math

import numpy as np

from ..errors import ConfigError, SizeError, StateError
from ..kernels.random import derive_seed, uniform01_array
from ._params import bool_param, int_param, seed_param
from .base import Compressed, Compressor, key_to_int
from .codec import F32, Codec

_EPS = 1e-8


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
    """Modified Gram-Schmidt on the columns of p (float32, in place); near-zero columns become 0."""
    for j in range(p.shape[1]):
        col = p[:, j]
        for i in range(j):
            col -= np.dot(p[:, i], col) * p[:, i]
        norm = float(np.sqrt(np.dot(col, col)))
        if norm > _EPS and math.isfinite(norm):
            col /= np.float32(norm)
        elif not math.isfinite(norm):
            col[:] = np.nan
        else:
            col[:] = 0.0
    return p


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
    def _matrix(self, x):
        n = x.shape[0]
        rows, cols = matrix_shape(n)
        if rows * cols == n:
            return x.reshape(rows, cols)
        m = np.zeros(rows * cols, np.float32)
        m[:n] = x
        return m.reshape(rows, cols)

    def _current_q(self, key, numel):
        rows, cols = matrix_shape(numel)
        r = self.effective_rank(numel)
        q = self._q.get(key) if self.warm_start else None
        if q is None or q.shape != (cols, r):
            q = orthonormalize(seeded_uniform((cols, r), derive_seed(self.seed, 0, key_to_int(key))))
        return q

    def p_phase(self, x, key=0, *, flat=False):
        """``P = M Q`` for this rank's vector (sum it over ranks).

        Per tensor: one flat array, the uncompressed tensors' entries, then each matrix's ``P``.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        plan = None if flat else self._plan(key, x.shape[0])
        if plan is None:
            return self._matrix(x) @ self._current_q(key, x.shape[0])
        parts = [x[o: o + s] for o, s, _, _, r in plan if not r]
        parts += [(x[o: o + s].reshape(rows, cols) @ self._segment_q(key, i, cols, r)).reshape(-1)
                  for i, (o, s, rows, cols, r) in enumerate(plan) if r]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def q_phase(self, x, p_sum, key=0, *, flat=False):
        """``Q' = M^T orthonormalize(P_sum)`` (sum it over ranks); remembers P_hat for :meth:`finish`."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        plan = None if flat else self._plan(key, x.shape[0])
        if plan is None:
            p_hat = orthonormalize(np.array(p_sum, dtype=np.float32, copy=True))
            self._p_hat[key] = p_hat
            return (p_hat.T @ self._matrix(x)).T  # row-major friendly form of M^T P_hat
        p_sum = np.asarray(p_sum, dtype=np.float32).reshape(-1)
        dense = sum(s for _, s, _, _, r in plan if not r)
        self._dense_sums[key] = np.array(p_sum[:dense], copy=True)
        at, p_hats, qs = dense, [], []
        for o, s, rows, cols, r in plan:
            if r:
                p_hat = orthonormalize(np.array(p_sum[at: at + rows * r].reshape(rows, r), copy=True))
                at += rows * r
                p_hats.append(p_hat)
                qs.append((p_hat.T @ x[o: o + s].reshape(rows, cols)).T.reshape(-1))
        self._p_hat[key] = p_hats
        return np.concatenate(qs) if qs else np.zeros(0, np.float32)

    def finish(self, q_sum, numel, key=0, out=None, *, flat=False):
        """Dense ``P_hat Q_sum^T`` (first ``numel`` entries); stores Q_sum as the warm start."""
        plan = None if flat else self._plan(key, numel)
        if plan is not None:
            return self._finish_per_tensor(plan, q_sum, numel, key, out)
        p_hat = self._p_hat.pop(key)
        q_sum = np.array(q_sum, dtype=np.float32, copy=True)
        if self.warm_start and np.isfinite(q_sum).all():
            self._q[key] = q_sum
        elif not np.isfinite(q_sum).all():
            self._q.pop(key, None)  # a non-finite factor must not poison later warm starts
        dense = (p_hat @ q_sum.T).reshape(-1)[:numel]
        if out is None:
            return np.ascontiguousarray(dense)
        out[:] = dense
        return out

    def _finish_per_tensor(self, plan, q_sum, numel, key, out):
        p_hats, dense = self._p_hat.pop(key), self._dense_sums.pop(key)
        q_sum = np.asarray(q_sum, dtype=np.float32).reshape(-1)
        out = np.empty(numel, np.float32) if out is None else out
        at_dense = at_q = 0
        for i, (o, s, rows, cols, r) in enumerate(plan):
            if not r:
                out[o: o + s] = dense[at_dense: at_dense + s]
                at_dense += s
                continue
            q = np.array(q_sum[at_q: at_q + cols * r].reshape(cols, r), copy=True)
            at_q += cols * r
            p_hat = p_hats.pop(0)
            np.matmul(p_hat, q.T, out=out[o: o + s].reshape(rows, cols))
            if self.warm_start and np.isfinite(q).all():
                self._q[f"{key}/t{i}"] = q
            elif not np.isfinite(q).all():
                self._q.pop(f"{key}/t{i}", None)  # a non-finite factor must not poison later warm starts
        return out

    def phases(self, x, key=0):
        """Yield ``P`` (receive its sum), yield ``Q'`` (receive its sum), return the dense ``P_hat Q_sum^T``."""
        p_sum = yield self.p_phase(x, key)
        q_sum = yield self.q_phase(x, p_sum, key)
        return self.finish(q_sum, x.shape[0], key)

    @classmethod
    def strategy(cls):
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"rank": st.integers(1, 8), "seed": st.integers(0, 2**32), "warm_start": st.booleans()})

    # -- one vector ----------------------------------------------------
    def _compress(self, x, *, step, seed):
        n = x.shape[0]
        if n == 0:
            return Compressed(self.name, 0, "float32", {"p": np.zeros((0, 0), np.float32), "q": np.zeros((0, 0), np.float32)},
                              {"rows": 0, "cols": 0, "rank": 0})
        key = self._active_key
        p = self.p_phase(x, key, flat=True)  # a packet is always the flat matrix view (its codec's form)
        q = self.q_phase(x, p, key, flat=True)
        p_hat = self._p_hat.pop(key)
        if self.warm_start:
            self._q[key] = q.copy()
        rows, cols = matrix_shape(n)
        return Compressed(self.name, n, "float32", {"p": p_hat, "q": q}, {"rows": rows, "cols": cols, "rank": p_hat.shape[1]})

    def compress(self, x, *, step=0, key=0):
        self._active_key = key
        return super().compress(x, step=step, key=key)

    def _decompress(self, c):
        if c.numel == 0:
            return np.zeros(0, np.float32)
        return np.ascontiguousarray((c.arrays["p"] @ c.arrays["q"].T).reshape(-1)[: c.numel])

    def combine(self, items):
        raise ConfigError("powersgd is linear in its phases, not as a whole: sum p_phase() outputs, then q_phase() outputs")

    def reset(self, key=None):
        """Forget the warm-start Q (and any pending P_hat) of ``key``, or of every key."""
        if key is None:
            self._q.clear()
            self._p_hat.clear()
            self._dense_sums.clear()
        else:
            for name in [k for k in self._q if k == key or (isinstance(k, str) and k.startswith(f"{key}/t"))]:
                del self._q[name]
            self._p_hat.pop(key, None)
            self._dense_sums.pop(key, None)

    # -- state ---------------------------------------------------------
    def state_dict(self):
        """The warm-start Q per key (float32 arrays), with a version key."""
        return {"version": 1, "q": {k: v.copy() for k, v in self._q.items()}}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or state.get("version") != 1 or "q" not in state:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise StateError(f"expected a powersgd state dict with version 1 and key 'q', found {found}")
        self._q = {k: np.array(v, dtype=np.float32, copy=True) for k, v in state["q"].items()}

