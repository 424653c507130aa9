"""The engine both adapters use: picks an algorithm, checks agreement, keeps memories and stats.

:class:`CompressedAllreduce` is the one object the DDP hook and the MPI
``Allreduce`` drive.  Its construction is collective over the transport
(unless ``agree=False``): it allgathers a fingerprint of :meth:`CompressedAllreduce.options`
(compressor, algorithm, feedback, non-finite policy, ``min_numel``,
``verify``, kind of grouping) plus the adapter's own (``agree_extra``), and
raises on every rank if any rank differs or failed to configure, before the
first collective that depends on them.  Per call it:

1. on the first use of a key (``verify="always"``: on every call), allgathers a 32-byte fingerprint of (those
   options, the algorithm chosen, key, numel, dtype, MEAN or SUM) and raises
   :class:`gcomp.errors.MismatchError` on *every* rank if any rank differs, so
   nobody hangs and nothing is summed wrongly;
2. runs the chosen algorithm (``prepare`` then ``complete``).  A gcomp error
   in ``prepare`` (e.g. a key whose size changed on this rank) is raised in
   ``complete`` after that agreement step, so on a verified call the other
   ranks raise MismatchError instead of waiting; on a call that is not verified
   (``verify="first"`` after the first call of a key, or ``False``) they would
   wait for this rank, so keep ``"always"`` where sizes may change;
3. applies the non-finite policy to the result, which is bit-identical on every
   rank, so every rank does the same: ``"propagate"`` (default: NaN/Inf reach
   the optimizer, e.g. for GradScaler to skip the step), ``"zero"`` (the
   vector becomes zeros) or ``"raise"`` (NonFiniteError).  In all three the
   error-feedback memories of that key are reset on every rank, so one bad step
   does not poison later ones;
4. records :class:`CallStats`.

``algorithm="auto"`` picks, per vector size, the algorithm that sends the
fewest bytes by the compressor's ``max_payload_bytes`` (``summed_bytes`` for
what an allreduce sums): ``dense`` for a compressor that declares
``identity``; else, among ``allreduce`` (linear compressors only),
``allgather`` and ``scatter-reduce-allgather``, the cheapest, ties going in
that order (allreduce sums on the wire; allgather compresses once).  bf16,
which an allreduce must sum in float32, thus goes through allgather or
scatter-reduce-allgather.

On a single rank every call is the identity (the ``dense`` algorithm, which
sends nothing), whatever the compressor or ``algorithm``: compressing would
only lose information.

``groups`` (``"node"``, an int color for this rank, or a callable
``rank -> color``) makes every call :mod:`hierarchical <gcomp.collectives.hierarchical>`:
dense inside each group, the algorithm above among the group leaders.
"""

import hashlib
import json
import time

import numpy as np

from ..compressors import Compressor
from ..compressors import compressor as build_compressor
from ..errors import ConfigError, GcompError, MismatchError, NonFiniteError, StateError
from ..feedback import ErrorFeedback, feedback
from ..kernels.scatter import count_nonfinite
from .allgather import AllgatherAlgorithm
from .allreduce import LinearAllreduce
from .base import CallStats, Pending
from .dense import DenseAllreduce
from .hierarchical import HierarchicalAllreduce, split_groups
from .scatter_reduce_allgather import ScatterReduceAllgather

__all__ = ["CompressedAllreduce", "ALGORITHMS", "NONFINITE_POLICIES"]

ALGORITHMS = {
    "dense": DenseAllreduce,
    "allreduce": LinearAllreduce,
    "allgather": AllgatherAlgorithm,
    "scatter-reduce-allgather": ScatterReduceAllgather,
}
NONFINITE_POLICIES = ("propagate", "zero", "raise")
STATE_VERSION = 1


class CompressedAllreduce:
    """Compressed allreduce over a transport with error feedback (see the module docstring)."""

    def __init__(self, transport, compressor, *, algorithm="auto", error_feedback="auto", nonfinite="propagate",
                 min_numel=0, verify=True, keep_stats=1000, groups=None, agree=True, agree_extra=None,
                 dense_mean="scale-first"):
        self.transport = transport
        self.groups = groups
        if dense_mean not in ("scale-first", "divide-after"):
            raise ConfigError(f"expected dense_mean 'scale-first' (as DDP) or 'divide-after' (as Allreduce then / P), "
                              f"found {dense_mean!r}")
        self.dense_mean = dense_mean
        try:
            self._configure(compressor, algorithm, error_feedback, nonfinite, min_numel, verify, keep_stats)
            error = None
        except (GcompError, TypeError, ValueError) as exc:
            error = exc
        if agree:
            # Collective: every rank learns whether every other configured the same way (or failed to), before
            # the first collective that depends on it (the group split below, the first call).
            self.check_options(error, agree_extra)
        elif error is not None:
            raise error
        if groups is None:
            self._algorithms = self._flat(transport)
        else:
            intra, leaders = split_groups(transport, groups)
            inner = self._flat(leaders) if leaders is not None else {}
            self._algorithms = {"hierarchical": HierarchicalAllreduce(
                transport, self.compressor, self.feedback, self.server_feedback, intra=intra, leaders=leaders, inner=inner,
                choose=self._choose_flat)}

    def _configure(self, compressor, algorithm, error_feedback, nonfinite, min_numel, verify, keep_stats):
        if verify not in (True, False, "first", "always"):
            raise ConfigError(f"expected verify True/'first', 'always' or False, found {verify!r}")
        self.compressor = compressor if isinstance(compressor, Compressor) else build_compressor(compressor)
        if algorithm != "auto" and algorithm not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {algorithm!r}; known: auto, {', '.join(ALGORITHMS)}")
        if algorithm == "allreduce" and not self.compressor.linear:
            raise ConfigError(f"algorithm 'allreduce' needs a linear compressor; {self.compressor.name!r} is not "
                              "(use allgather or scatter-reduce-allgather)")
        if nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"unknown nonfinite policy {nonfinite!r}; known: {', '.join(NONFINITE_POLICIES)}")
        if isinstance(min_numel, bool) or not isinstance(min_numel, int) or min_numel < 0:
            raise ConfigError(f"expected min_numel a non-negative integer, found {min_numel!r}")
        if isinstance(error_feedback, ErrorFeedback):
            if error_feedback.compressor != self.compressor:
                raise ConfigError(f"expected an error feedback built on the engine's compressor {self.compressor!r}, found one on "
                                  f"{error_feedback.compressor!r}; pass the same compressor to both")
            self.feedback = error_feedback
            self.compressor = error_feedback.compressor  # the same configuration; its instance holds the state
        else:
            self.feedback = feedback(error_feedback or "none", self.compressor)
        self.server_feedback = self.feedback.server_memory()
        self.algorithm = algorithm
        self.nonfinite = nonfinite
        self.min_numel = min_numel
        self.verify = verify
        self.keep_stats = keep_stats
        self.stats = []
        self._verified = set()
        self._steps = {}

    # -- agreement on the options ------------------------------------------
    def options(self) -> dict:
        """Every option that changes what goes on the wire or when (fingerprinted across ranks)."""
        return {"compressor": self.compressor.get_config(), "algorithm": self.algorithm, "feedback": self.feedback.kind,
                "feedback_options": self.feedback.options(), "nonfinite": self.nonfinite, "min_numel": self.min_numel,
                "verify": "first" if self.verify is True else self.verify,
                # a color differs per rank by design: only the kind of grouping must agree
                "groups": self.groups if self.groups in (None, "node") else "groups"}

    def check_options(self, error=None, extra=None):
        """Allgather a fingerprint of :meth:`options` (plus ``extra``); raise on every rank if any rank differs.

        ``error``: this rank failed to configure; it still takes part, then raises
        it, and the others raise MismatchError naming it, so nobody waits.
        """
        mine = bytes(32) if error is not None else _digest({**self.options(), "extra": extra})
        prints = self._gather_prints(mine)
        failed = [r for r, fp in enumerate(prints) if not any(fp)]
        if error is not None:
            raise error
        differing = [r for r, fp in enumerate(prints) if fp != mine]
        if differing:
            what = f"ranks {failed} failed to configure" if failed else f"ranks {differing} differ"
            raise MismatchError(
                f"ranks disagree on the compression options: rank {self.transport.rank} has {self.options()}"
                f"{' and ' + str(extra) if extra else ''}, {what}; every rank must construct it with the same options")

    def _flat(self, transport):
        algorithms = {name: cls(transport, self.compressor, self.feedback, self.server_feedback)
                      for name, cls in ALGORITHMS.items()}
        algorithms["dense"].scale_first = self.dense_mean == "scale-first"
        return algorithms

    # -- choice ---------------------------------------------------------
    def choose(self, numel) -> str:
        """The algorithm used for a vector of ``numel`` entries."""
        if self.groups is not None:
            return "hierarchical"
        if self.transport.size == 1:
            return "dense"  # one rank: the reduction is the identity, and nothing is lost to compression
        return self._choose_flat(numel, self._algorithms)

    def _dense_at(self, numel, algorithm):
        """Whether a vector of ``numel`` sent with ``algorithm`` travels uncompressed everywhere (flat dense, or
        dense among the leaders)."""
        if algorithm != "hierarchical":
            return algorithm == "dense"
        inner = self._algorithms["hierarchical"].inner
        return not inner or self._choose_flat(numel, inner) == "dense"

    def _choose_flat(self, numel, algorithms):
        if numel < self.min_numel:
            return "dense"
        if self.algorithm != "auto":
            return self.algorithm
        if self.compressor.identity:
            return "dense"
        candidates = (["allreduce"] if self.compressor.linear else []) + ["allgather", "scatter-reduce-allgather"]
        return min(candidates, key=lambda name: algorithms[name].estimated_bytes(numel))  # min keeps the first of ties

    # -- agreement ------------------------------------------------------
    def fingerprint(self, key, numel, dtype, algorithm, average=True) -> bytes:
        return _digest({**self.options(), "algorithm": algorithm, "key": str(key), "numel": int(numel),
                        "dtype": str(dtype), "average": bool(average)})

    def _gather_prints(self, mine):
        """Every rank's 32-byte digest, in rank order (one allgather over the transport)."""
        return [bytes(fp) for fp in self.transport.allgatherv(np.frombuffer(mine, np.uint8))]

    def verify_agreement(self, key, numel, dtype, algorithm, average=True):
        """Allgather fingerprints; raise MismatchError on every rank if any differs."""
        mine = self.fingerprint(key, numel, dtype, algorithm, average)
        differing = [r for r, fp in enumerate(self._gather_prints(mine)) if fp != mine]
        if differing:
            raise MismatchError(
                f"ranks disagree on compressor, configuration, key, size, dtype or op for key {key!r}: rank "
                f"{self.transport.rank} has {self.compressor.get_config()} with algorithm {algorithm!r}, "
                f"{numel} entries of {dtype}, {'MEAN' if average else 'SUM'}, but ranks {differing} differ; every "
                "rank must use the same compressor and options on the same tensors, in the same order"
            )

    # -- work -----------------------------------------------------------
    def prepare(self, x, key=0, step=None, *, average=True, dtype="float32"):
        """Local part of one call (feedback, compression); returns a pending call for :meth:`complete`.

        float64 input stays float64 on the dense path (reduced exactly, as the
        transport sums it); every compressed path works in float32.
        """
        x = np.asarray(x).reshape(-1)
        algorithm = self.choose(x.shape[0])
        wide = x.dtype == np.float64 and self._dense_at(x.shape[0], algorithm)
        x = np.ascontiguousarray(x, dtype=np.float64 if wide else np.float32)
        if step is None:
            step = self._steps.get(key, 0)
        self._steps[key] = step + 1
        try:
            pending = self._algorithms[algorithm].prepare(x, key, step, average=average)
        except GcompError as exc:
            # Raised in complete(), after the agreement step, so that the ranks see the failure together
            # (a size change on one rank fails its feedback here, and its fingerprint differs).
            pending = Pending(x, key, step, CallStats(key, step, algorithm, x.shape[0]), error=exc)
        pending.algorithm = algorithm
        pending.dtype = dtype
        return pending

    def complete(self, pending, out=None) -> np.ndarray:
        """Communication and decoding of a prepared call; the result is identical on every rank.

        ``out``: a float32 vector of the call's size to write the result into
        (returned); it may be the input's own memory (the DDP hook passes the
        bucket), so no fresh dense output is allocated per call.  An unusable
        ``out`` is a ConfigError on this rank after the call has completed on
        every rank (so nobody waits and the ranks stay paired).
        """
        bad_out = None
        if out is not None and (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.ndim != 1
                                or out.shape[0] != pending.x.shape[0] or not out.flags.c_contiguous
                                or not out.flags.writeable):
            bad_out = ConfigError(f"expected out a writable contiguous float32 vector of {pending.x.shape[0]} "
                                  f"entries, found {getattr(out, 'dtype', type(out).__name__)} "
                                  f"{getattr(out, 'shape', '')}")
            out = None
        algorithm = self._algorithms[pending.algorithm]
        # The agreement check is communication, so it runs here (on the thread that communicates).
        # verify="always" checks every call (keys may differ across ranks); True/"first" once per key.
        try:
            if self.verify == "always" or (self.verify and (pending.key, pending.algorithm) not in self._verified):
                self.verify_agreement(pending.key, pending.x.shape[0], pending.dtype, pending.algorithm,
                                      pending.average)
                self._verified.add((pending.key, pending.algorithm))
            if pending.error is not None:
                raise pending.error
        except GcompError:
            # Nothing of this call was sent: it does not count as a step, so the key's next call carries the same
            # sequence token (gcomp.collectives.sequence) on every rank, whichever ranks had raised before it.
            if self._steps.get(pending.key) == pending.step + 1:
                self._steps[pending.key] = pending.step
            raise
        dest = out
        out = algorithm.complete(pending, out=dest)
        if algorithm.uses_feedback:
            out = self.feedback.after_reduce(pending.key, out)
        if dest is not None and out is not dest:
            dest[:] = out  # an algorithm kept float64, or the feedback returned its own aggregate
            out = dest
        if (count_nonfinite(out) if out.dtype == np.float32 else not np.isfinite(out).all()):
            pending.stats.nonfinite = True
            self._reset_keys({*algorithm.memory_keys(pending.key), pending.key})
            if self.nonfinite == "raise":
                self._record(pending.stats)
                raise NonFiniteError(
                    f"NaN or Inf in the reduced vector for key {pending.key!r} at step {pending.step} (policy 'raise'); "
                    "every rank raised and reset its error-feedback memory for this key"
                )
            if self.nonfinite == "zero":
                out[:] = 0.0
        self._record(pending.stats)
        if bad_out is not None:
            raise bad_out
        return out

    def set_layout(self, key, shapes):
        """The shapes of the tensors that make up ``key``'s vector (see :meth:`gcomp.compressors.Compressor.set_layout`).

        Identical on every rank (the same model); local, nothing is sent.
        """
        self.compressor.set_layout(key, shapes)

    def reset(self, key):
        """Forget every memory of ``key`` (worker, chunk and server feedback, compressor state)."""
        keys = {key}
        for algorithm in self._algorithms.values():
            keys.update(algorithm.memory_keys(key))
        self._reset_keys(keys)

    def _reset_keys(self, keys):
        for k in keys:
            self.feedback.reset(k)
            self.server_feedback.reset(k)

    def free(self):
        """Release the group transports this engine split off (hierarchical); the given transport stays the caller's."""
        algorithm = self._algorithms.get("hierarchical")
        if algorithm is not None:
            for t in (algorithm.leaders, algorithm.intra):
                if t is not None:
                    t.free()

    def warm_up(self, numel) -> float:
        """Compile (or load from Numba's cache) every kernel a call of ``numel`` entries runs; returns the seconds.

        The first call of a Numba kernel compiles it (seconds) or loads it from
        the on-disk cache; call this before timing anything.  It communicates
        nothing: it runs the algorithm this engine would use (among the leaders,
        for hierarchical) twice, on a normal random vector, over an in-process
        group of two ranks, with a copy of the compressor and fresh memories of
        the same kind.  This engine's memories, steps and stats are untouched.
        """
        from ..transports import run_local

        start = time.perf_counter()
        numel = int(numel)
        if self.groups is None:
            algorithm = self.choose(numel)
        else:
            inner = self._algorithms["hierarchical"].inner
            algorithm = self._choose_flat(numel, inner) if inner else "auto"
        kind, options = self.feedback.kind, self.feedback.options()
        x = np.random.default_rng(0).standard_normal(numel).astype(np.float32)

        def one_rank(t):
            comp = build_compressor(self.compressor.get_config())
            engine = CompressedAllreduce(t, comp, algorithm=algorithm, error_feedback=feedback(kind, comp, **options),
                                         nonfinite=self.nonfinite, agree=False, verify=False)
            for step in range(2):
                engine(x * np.float32(1 + t.rank + step), key="warm-up")

        run_local(2, one_rank)
        return time.perf_counter() - start

    def __call__(self, x, key=0, step=None, *, average=True, dtype="float32", out=None):
        return self.complete(self.prepare(x, key, step, average=average, dtype=dtype), out=out)

    def _record(self, stats: CallStats):
        self.stats.append(stats)
        if len(self.stats) > self.keep_stats:
            del self.stats[: len(self.stats) - self.keep_stats]

    # -- checkpointing --------------------------------------------------
    def state_dict(self):
        """This rank's memories, steps and compressor state (never the transport)."""
        return {"version": STATE_VERSION, "feedback": self.feedback.state_dict(),
                "server_feedback": self.server_feedback.state_dict(), "steps": dict(self._steps)}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise StateError(f"expected an engine state with version {STATE_VERSION}, found "
                             f"{state.get('version') if isinstance(state, dict) else type(state).__name__!r}")
        steps = state.get("steps", {})
        if not isinstance(steps, dict) or not all(_count(v) for v in steps.values()):
            raise StateError(f"expected the engine's steps as {{key: non-negative integer}}, found {str(steps)[:200]}")
        self.feedback.load_state_dict(state["feedback"])
        self.server_feedback.load_state_dict(state["server_feedback"])
        self._steps = dict(steps)


def _digest(doc) -> bytes:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).digest()


def _count(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < 2**63
