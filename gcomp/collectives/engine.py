"""The engine both adapters use: picks an algorithm, checks agreement, keeps memories and stats.

:class:`~gcomp.collectives.CompressedAllreduce` is the one object the DDP hook and the MPI
``Allreduce`` drive.  Its construction is collective over the transport
(unless ``agree=False``): it allgathers a fingerprint of
:meth:`~gcomp.collectives.CompressedAllreduce.options`
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
4. records :class:`~gcomp.collectives.CallStats`.

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

``groups`` (``"node"``, an int color for this rank, a callable
``rank -> color``, or a list of groups the same on every rank: ``[[0, 1], [2, 3]]``
or one color per rank ``[0, 0, 1, 1]``) makes every call
:mod:`hierarchical <gcomp.collectives.hierarchical>`: dense inside each group,
the algorithm above among the group leaders (:func:`gcomp.collectives.split_groups`).  ``hierarchical_dense="flat"``
sends a call whose leaders' hop would be dense through the plain ``dense``
algorithm over every rank instead (bit-identical to an uncompressed allreduce;
the DDP hook's default); ``"groups"`` keeps it hierarchical.

:meth:`~gcomp.collectives.CompressedAllreduce.switch` changes the compressor between calls (the
adaptive policy, :mod:`gcomp.adapt`).  Error-feedback memories carry over:
the first call of a key after its compressor or algorithm changed adds the
key's old memories (worker, chunk and server residuals, in the input's units)
into its input and forgets them, so what the old setting dropped is sent by
the new one (for residual feedback this is exactly ``C(x + e)``, the next
error-feedback step).
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
from .hierarchical import HierarchicalAllreduce, normalize_groups, split_groups
from .scatter_reduce_allgather import ScatterReduceAllgather

__all__ = ["CompressedAllreduce", "ALGORITHMS", "NONFINITE_POLICIES"]

#: ``{name: Algorithm class}`` of the flat algorithms ``algorithm=`` accepts (besides ``"auto"``); ``"hierarchical"``
#: is not among them: the engine uses it when ``groups`` is given
ALGORITHMS = {
    "dense": DenseAllreduce,
    "allreduce": LinearAllreduce,
    "allgather": AllgatherAlgorithm,
    "scatter-reduce-allgather": ScatterReduceAllgather,
}
#: what ``nonfinite=`` accepts: ``"propagate"`` (NaN/Inf reach the caller), ``"zero"`` (the vector becomes zeros),
#: ``"raise"`` (:class:`gcomp.errors.NonFiniteError` on every rank); each resets the key's error-feedback memories
NONFINITE_POLICIES = ("propagate", "zero", "raise")
STATE_VERSION = 1


class CompressedAllreduce:
    """Compressed allreduce over a transport with error feedback: the engine the DDP hook and :mod:`gcomp.mpi` drive.

    Construction is collective over ``transport`` (unless ``agree=False``):
    every rank checks that every other configured the same way.  A call,
    ``engine(x, key)``, is collective too; it returns the mean (or sum) of the
    ranks' vectors as their compressed forms decode, bit-identical on every
    rank.  The module :mod:`gcomp.collectives.engine` describes what a call
    checks and how the algorithm is chosen.

    Parameters
    ----------
    transport : gcomp.transports.Transport
        Carries the bytes (the same ranks in the same order on every rank).
    compressor : str, dict or gcomp.Compressor
        A spec (``"topk:ratio=0.01"``), a config dict or a compressor.
    algorithm : str
        ``"auto"`` (the fewest bytes per vector size) or a name of
        :data:`gcomp.collectives.ALGORITHMS`.
    error_feedback : str or gcomp.feedback.ErrorFeedback
        ``"auto"`` (the compressor's default), ``"residual"``, ``"ef21"``,
        ``"dgc"``, ``"none"``, or a memory built on the same compressor.
    nonfinite : str
        One of :data:`gcomp.collectives.NONFINITE_POLICIES`.
    min_numel : int
        Vectors with fewer entries go dense.
    verify : bool or str
        ``True`` or ``"first"``: check the ranks' agreement on the first call
        of each key; ``"always"``: on every call; ``False``: never.
    keep_stats : int
        How many :class:`~gcomp.collectives.CallStats` to keep in ``stats``.
    groups : None, str, int, callable or list
        Hierarchical groups: ``"node"``, an int color for this rank, a callable
        ``rank -> color``, or a list of groups the same on every rank
        (:func:`gcomp.collectives.split_groups`); None: flat.
    agree : bool
        Check the options across ranks at construction (collective).
    agree_extra : object, optional
        The adapter's own options (JSON-able), fingerprinted with the engine's.
    dense_mean : str
        How the dense path averages: ``"scale-first"`` (each rank's vector
        times ``1/P``, then the sum, as DDP) or ``"divide-after"`` (the sum,
        then ``/ P``, as ``comm.Allreduce`` then a division).
    hierarchical_dense : str
        With ``groups``: ``"groups"`` (a call whose leaders' hop would be dense
        stays hierarchical) or ``"flat"`` (it runs as one plain dense allreduce
        over every rank, bit-identical to an uncompressed allreduce).

    Raises
    ------
    gcomp.errors.ConfigError
        An invalid option (on every rank, after the agreement step).
    gcomp.errors.MismatchError
        On every rank, when the ranks' options differ.

    Examples
    --------
    Top-k with residual error feedback on three in-process ranks (threads):

    >>> import numpy as np
    >>> from gcomp.collectives import CompressedAllreduce
    >>> from gcomp.transports import run_local
    >>> def rank(transport):
    ...     engine = CompressedAllreduce(transport, "topk:ratio=0.25", algorithm="allgather")
    ...     x = np.arange(8, dtype=np.float32) * (transport.rank + 1)
    ...     result = engine(x, key="w")             # the mean of the ranks' top-2 entries
    ...     return result.tolist(), engine.stats[-1].algorithm
    >>> run_local(3, rank)[0]
    ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 12.0, 14.0], 'allgather')

    On one rank every call is the identity:

    >>> run_local(1, lambda t: CompressedAllreduce(t, "topk:ratio=0.25")(np.arange(4.0), key="w").tolist())
    [[0.0, 1.0, 2.0, 3.0]]
    """

    def __init__(self, transport, compressor, *, algorithm="auto", error_feedback="auto", nonfinite="propagate",
                 min_numel=0, verify=True, keep_stats=1000, groups=None, agree=True, agree_extra=None,
                 dense_mean="scale-first", hierarchical_dense="groups"):
        self.transport = transport
        self.groups = groups if groups is None or groups == "node" or callable(groups) else None
        if dense_mean not in ("scale-first", "divide-after"):
            raise ConfigError(f"expected dense_mean 'scale-first' (as DDP) or 'divide-after' (as Allreduce then / P), "
                              f"found {dense_mean!r}")
        self.dense_mean = dense_mean
        self.hierarchical_dense = hierarchical_dense
        self._generation = 0  # bumped by switch(): a key whose path changed carries its memories over
        self._paths = {}  # key -> (generation, algorithm, inner algorithm among the leaders or None, average) of its last call
        self._shapes = {}  # key -> tensor shapes given to set_layout (replayed on a switch)
        self._intra = self._leaders = None
        groups_error = None
        try:
            self.groups = normalize_groups(groups, transport.size)
        except ConfigError as exc:
            # like a bad color: split() below makes every rank raise ConfigError; this rank says why
            self.groups, groups_error = -1, exc
        try:
            if hierarchical_dense not in ("groups", "flat"):
                raise ConfigError(f"expected hierarchical_dense 'groups' (dense calls stay hierarchical) or 'flat' "
                                  f"(dense calls as one plain allreduce), found {hierarchical_dense!r}")
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
        if self.groups is not None:
            try:
                self._intra, self._leaders = split_groups(transport, self.groups)
            except ConfigError:
                if groups_error is not None:
                    raise groups_error from None
                raise
        self._build()

    def _build(self):
        if self.groups is None:
            self._algorithms = self._flat(self.transport)
            return
        inner = self._flat(self._leaders) if self._leaders is not None else {}
        self._algorithms = {
            "hierarchical": HierarchicalAllreduce(self.transport, self.compressor, self.feedback, self.server_feedback,
                                                  intra=self._intra, leaders=self._leaders, inner=inner,
                                                  choose=self._choose_flat),
            "dense": self._flat(self.transport)["dense"],  # hierarchical_dense="flat"
        }

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
        """Every option that changes what goes on the wire or when (fingerprinted across ranks).

        Returns
        -------
        dict
            JSON-able: compressor config, algorithm, feedback and its options,
            non-finite policy, ``min_numel``, ``verify``, the kind of grouping.

        Examples
        --------
        >>> from gcomp.collectives import CompressedAllreduce
        >>> from gcomp.transports import LocalGroup
        >>> engine = CompressedAllreduce(LocalGroup(1).transports()[0], "topk:ratio=0.01")
        >>> engine.options()["compressor"], engine.options()["feedback"]
        ({'name': 'topk', 'ratio': 0.01}, 'residual')
        """
        return {"compressor": self.compressor.get_config(), "algorithm": self.algorithm, "feedback": self.feedback.kind,
                "feedback_options": self.feedback.options(), "nonfinite": self.nonfinite, "min_numel": self.min_numel,
                "verify": "first" if self.verify is True else self.verify,
                # a color differs per rank by design: only the kind of grouping must agree (a list is global)
                "groups": (self.groups if self.groups is None or self.groups == "node"
                           else [list(g) for g in self.groups] if isinstance(self.groups, tuple) else "groups"),
                **({"hierarchical_dense": self.hierarchical_dense} if self.groups is not None else {})}

    def check_options(self, error=None, extra=None):
        """Allgather a fingerprint of :meth:`options` (plus ``extra``); raise on every rank if any rank differs.

        Collective.  The constructor calls it (unless ``agree=False``).

        Parameters
        ----------
        error : Exception, optional
            This rank failed to configure: it still takes part, then raises
            ``error``, and the others raise MismatchError naming it, so nobody waits.
        extra : object, optional
            More options to agree on (JSON-able).

        Raises
        ------
        gcomp.errors.MismatchError
            On every rank, when any rank's fingerprint differs (a rank that
            failed to configure raises its own ``error`` instead).

        Examples
        --------
        Two ranks built with different ratios and ``agree=False``; the check raises on both:

        >>> from gcomp.collectives import CompressedAllreduce
        >>> from gcomp.errors import MismatchError
        >>> from gcomp.transports import run_local
        >>> def rank(transport):
        ...     spec = "topk:ratio=0.5" if transport.rank == 0 else "topk:ratio=0.25"
        ...     engine = CompressedAllreduce(transport, spec, agree=False)
        ...     try:
        ...         engine.check_options()
        ...     except MismatchError:
        ...         return "MismatchError"
        >>> run_local(2, rank)
        ['MismatchError', 'MismatchError']
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
        """The algorithm used for a vector of ``numel`` entries (a name of :data:`ALGORITHMS` or ``"hierarchical"``).

        Local.

        Parameters
        ----------
        numel : int
            Entries of the vector.

        Returns
        -------
        str
            The algorithm's name.

        Examples
        --------
        >>> from gcomp.collectives import CompressedAllreduce
        >>> from gcomp.transports import run_local
        >>> def rank(transport):
        ...     engine = CompressedAllreduce(transport, "topk:ratio=0.01")
        ...     return engine.choose(100), engine.choose(1_000_000)
        >>> run_local(3, rank)[0]
        ('allgather', 'scatter-reduce-allgather')
        """
        if self.groups is not None:
            if self.hierarchical_dense == "flat" and self._leaders_dense(numel):
                return "dense"
            return "hierarchical"
        if self.transport.size == 1:
            return "dense"  # one rank: the reduction is the identity, and nothing is lost to compression
        return self._choose_flat(numel, self._algorithms)

    def _leaders_dense(self, numel, compressor=None):
        """Whether the leaders' hop of a hierarchical call would be ``dense`` (known on every rank, leader or not)."""
        comp = self.compressor if compressor is None else compressor
        return numel < self.min_numel or self.algorithm == "dense" or (self.algorithm == "auto" and comp.identity)

    def _dense_at(self, numel, algorithm):
        """Whether a vector of ``numel`` sent with ``algorithm`` travels uncompressed everywhere (flat dense, or
        dense among the leaders)."""
        if algorithm != "hierarchical":
            return algorithm == "dense"
        inner = self._algorithms["hierarchical"].inner
        return not inner or self._choose_flat(numel, inner) == "dense"

    def _choose_flat(self, numel, algorithms, compressor=None):
        comp = self.compressor if compressor is None else compressor
        if numel < self.min_numel:
            return "dense"
        if self.algorithm != "auto":
            return self.algorithm
        if comp.identity:
            return "dense"
        candidates = (["allreduce"] if comp.linear else []) + ["allgather", "scatter-reduce-allgather"]
        return min(candidates, key=lambda name: algorithms[name].estimated_bytes(numel))  # min keeps the first of ties

    # -- agreement ------------------------------------------------------
    def fingerprint(self, key, numel, dtype, algorithm, average=True) -> bytes:
        """The 32-byte digest of one call that :meth:`verify_agreement` compares across ranks.

        Parameters
        ----------
        key : object
            The call's key.
        numel : int
            Entries of the vector.
        dtype : str
            The caller's dtype name.
        algorithm : str
            The algorithm chosen.
        average : bool
            MEAN (True) or SUM.

        Returns
        -------
        bytes
            SHA-256 of the options and these.

        Examples
        --------
        >>> from gcomp.collectives import CompressedAllreduce
        >>> from gcomp.transports import LocalGroup
        >>> engine = CompressedAllreduce(LocalGroup(1).transports()[0], "topk:ratio=0.01")
        >>> len(engine.fingerprint("w", 1000, "float32", "allgather"))
        32
        """
        return _digest({**self.options(), "algorithm": algorithm, "key": str(key), "numel": int(numel),
                        "dtype": str(dtype), "average": bool(average)})

    def _gather_prints(self, mine):
        """Every rank's 32-byte digest, in rank order (one allgather over the transport)."""
        return [bytes(fp) for fp in self.transport.allgatherv(np.frombuffer(mine, np.uint8))]

    def verify_agreement(self, key, numel, dtype, algorithm, average=True):
        """Allgather fingerprints of one call; raise MismatchError on every rank if any differs.

        Collective.  :meth:`complete` calls it as ``verify`` says.

        Parameters
        ----------
        key : object
            The call's key.
        numel : int
            Entries of the vector.
        dtype : str
            The caller's dtype name.
        algorithm : str
            The algorithm chosen.
        average : bool
            MEAN (True) or SUM.

        Raises
        ------
        gcomp.errors.MismatchError
            On every rank, when any rank's fingerprint differs.

        Examples
        --------
        >>> from gcomp.collectives import CompressedAllreduce
        >>> from gcomp.errors import MismatchError
        >>> from gcomp.transports import run_local
        >>> def rank(transport):
        ...     engine = CompressedAllreduce(transport, "topk:ratio=0.01")
        ...     try:                                  # rank 1 has a vector of another size
        ...         engine.verify_agreement("w", 1000 + transport.rank, "float32", "allgather")
        ...     except MismatchError:
        ...         return "MismatchError"
        >>> run_local(2, rank)
        ['MismatchError', 'MismatchError']
        """
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
    def prepare(self, x, key=0, step=None, *, average=True, dtype="float32", out=None):
        """Local part of one call (feedback, compression); returns a pending call for :meth:`complete`.

        float64 input stays float64 on the dense path (reduced exactly, as the
        transport sums it); every compressed path works in float32.  A gcomp
        error here (e.g. a key whose size changed on this rank) is raised by
        :meth:`complete`, after the agreement step.

        Parameters
        ----------
        x : array_like
            This rank's vector (flattened).
        key : object
            The call's key: its memories, steps and agreement check.
        step : int, optional
            The key's step; None: the key's own count (identical on every rank
            in a correct run).
        average : bool
            True for the mean over the ranks, False for the sum.
        dtype : str
            The caller's dtype name (fingerprinted: every rank must agree).
        out : numpy.ndarray, optional
            The vector :meth:`complete` will be given as ``out`` (the same
            array; it may be ``x`` itself): an algorithm may write the result
            straight into it (PowerSGD with residual error feedback does: no
            fresh dense vector, no copy).  Ignored unless it is a writable
            contiguous float32 vector of ``x``'s size.

        Returns
        -------
        gcomp.collectives.Pending
            The call, for :meth:`complete`.

        Examples
        --------
        The two halves of ``engine(x, key)``, the result written into a buffer of the caller's:

        >>> import numpy as np
        >>> from gcomp.collectives import CompressedAllreduce
        >>> from gcomp.transports import run_local
        >>> def rank(transport):
        ...     engine = CompressedAllreduce(transport, "fp16")
        ...     pending = engine.prepare(np.full(4, float(transport.rank), np.float32), key="w")
        ...     out = np.empty(4, np.float32)
        ...     result = engine.complete(pending, out=out)     # on any thread: the communication
        ...     return result is out, out.tolist()
        >>> run_local(2, rank)
        [(True, [0.5, 0.5, 0.5, 0.5]), (True, [0.5, 0.5, 0.5, 0.5])]
        """
        x = np.asarray(x).reshape(-1)
        algorithm = self.choose(x.shape[0])
        wide = x.dtype == np.float64 and self._dense_at(x.shape[0], algorithm)
        x = np.ascontiguousarray(x, dtype=np.float64 if wide else np.float32)
        if step is None:
            step = self._steps.get(key, 0)
        self._steps[key] = step + 1
        chosen = self._algorithms[algorithm]
        inner = chosen.inner if algorithm == "hierarchical" else {}
        path = (algorithm, self._choose_flat(x.shape[0], inner) if inner else None, bool(average))
        old = self._paths.get(key)
        if old is not None and (old[0] != self._generation or old[1:3] != path[:2]):
            x = self._carry(old[1:], key, x)
        self._paths[key] = (self._generation, *path)
        try:
            pending = chosen.prepare(x, key, step, average=average, out=out if _usable_out(out, x.shape[0]) else None)
        except GcompError as exc:
            # Raised in complete(), after the agreement step, so that the ranks see the failure together
            # (a size change on one rank fails its feedback here, and its fingerprint differs).
            pending = Pending(x, key, step, CallStats(key, step, algorithm, x.shape[0]), error=exc)
        pending.algorithm = algorithm
        pending.dtype = dtype
        return pending

    def complete(self, pending, out=None) -> np.ndarray:
        """Communication and decoding of a prepared call; the result is identical on every rank.

        Collective: every rank completes the same calls in the same order.

        Parameters
        ----------
        pending : gcomp.collectives.Pending
            What :meth:`prepare` returned.
        out : numpy.ndarray, optional
            A float32 vector of the call's size to write the result into
            (returned); it may be the input's own memory (the DDP hook passes
            the bucket), so no fresh dense output is allocated per call.  An
            unusable ``out`` is a ConfigError on this rank after the call has
            completed on every rank (so nobody waits and the ranks stay paired).

        Returns
        -------
        numpy.ndarray
            The reduced vector.

        Raises
        ------
        gcomp.errors.MismatchError
            On every rank, when the agreement check finds a rank that differs.
        gcomp.errors.NonFiniteError
            On every rank, with ``nonfinite="raise"`` and a NaN or Inf in the result.
        gcomp.errors.SequenceError
            On every rank, when the ranks' calls no longer pair.

        Examples
        --------
        See :meth:`prepare`; the DDP hook overlaps the two::

            pending = engine.prepare(bucket_vector, key=bucket_index)    # on the training thread
            executor.submit(engine.complete, pending, out=bucket_vector)  # on the communication thread
        """
        bad_out = None
        if out is not None and not _usable_out(out, pending.x.shape[0]):
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
        """The shapes of the tensors that make up ``key``'s vector (see :meth:`gcomp.Compressor.set_layout`).

        Identical on every rank (the same model); local, nothing is sent.
        Kept across :meth:`switch`.

        Parameters
        ----------
        key : object
            The key.
        shapes : list of tuple
            The tensors' shapes, in the vector's order.

        Examples
        --------
        PowerSGD factorizes each tensor of a bucket on its own::

            engine = CompressedAllreduce(transport, "powersgd:rank=2")
            engine.set_layout(0, [(256, 128), (128,)])    # the bucket holds a weight and a bias
            engine(bucket, key=0)
        """
        self._shapes[key] = shapes
        self.compressor.set_layout(key, shapes)

    # -- switching the compressor (the adaptive policy) ------------------------------
    def switch(self, compressor):
        """Use ``compressor`` (spec, config or Compressor) from the next call on; the memories carry over.

        Local: every rank must switch at the same call (:class:`gcomp.adapt.AdaptivePolicy` agrees on it over the
        wire); the next call of every key re-checks agreement, so ranks that switched differently raise
        MismatchError instead of mixing packets.  The error feedback keeps its kind and memories; the first call
        of each key on its new path adds the key's old memories into its input (module docstring).

        Parameters
        ----------
        compressor : str, dict or gcomp.Compressor
            The new compressor.

        Raises
        ------
        gcomp.errors.ConfigError
            A nonlinear compressor with ``algorithm="allreduce"``.

        Examples
        --------
        >>> import numpy as np
        >>> from gcomp.collectives import CompressedAllreduce
        >>> from gcomp.transports import run_local
        >>> def rank(transport):
        ...     engine = CompressedAllreduce(transport, "topk:ratio=0.5", algorithm="allgather")
        ...     engine(np.arange(4, dtype=np.float32), key="w")
        ...     engine.switch("fp16")                # every rank, between the same two calls
        ...     engine(np.arange(4, dtype=np.float32), key="w")
        ...     return engine.compressor.name
        >>> run_local(2, rank)
        ['fp16', 'fp16']
        """
        comp = compressor if isinstance(compressor, Compressor) else build_compressor(compressor)
        if self.algorithm == "allreduce" and not comp.linear:
            raise ConfigError(f"algorithm 'allreduce' needs a linear compressor; {comp.name!r} is not")
        self.compressor = comp
        self.feedback = self.feedback.rebase(comp)
        self.server_feedback = self.server_feedback.rebase(comp)
        for key, shapes in self._shapes.items():
            comp.set_layout(key, shapes)
        self._generation += 1
        self._build()
        self._verified.clear()

    def _carry(self, path, key, x):
        """``x`` plus the memories ``key`` built on its previous path (in the input's units); they are forgotten.

        ``path``: (algorithm, inner algorithm among the leaders or None, average).  The memories live in the
        error feedback (shared across a switch); today's algorithm objects of those names know where.
        """
        algorithm, inner, average = path
        if algorithm == "hierarchical":
            found = self._algorithms["hierarchical"].inner.get(inner) if inner is not None else None
            extra = found.take_memory(key, x.shape[0], False) if found is not None else None
        else:
            flat = self._algorithms.get(algorithm) or self._flat(self.transport).get(algorithm)
            extra = flat.take_memory(key, x.shape[0], average) if flat is not None else None
        if extra is None:
            return x
        x = np.array(x, dtype=np.float32, copy=True)
        x += extra
        return x

    def estimate_bytes(self, numel, compressor=None) -> int:
        """Bytes this rank would send on the slow links for one call of ``numel`` entries with ``compressor``
        (default: the current one): the flat algorithm's estimate, or, hierarchical, the leaders' hop (0 on a rank
        that leads no group) or the flat dense path.  Local.

        Parameters
        ----------
        numel : int
            Entries of the vector.
        compressor : str, dict or gcomp.Compressor, optional
            Estimate for this compressor instead of the current one.

        Returns
        -------
        int
            Bytes (an upper bound from the compressor's payload bounds).

        Examples
        --------
        >>> from gcomp.collectives import CompressedAllreduce
        >>> from gcomp.transports import run_local
        >>> def rank(transport):
        ...     engine = CompressedAllreduce(transport, "topk:ratio=0.01")
        ...     return engine.estimate_bytes(1_000_000) < engine.estimate_bytes(1_000_000, "none") / 20
        >>> run_local(3, rank)
        [True, True, True]
        """
        comp = self.compressor if compressor is None else (
            compressor if isinstance(compressor, Compressor) else build_compressor(compressor))
        numel = int(numel)
        name = self._flat_choice(numel, comp)
        if name is None:
            return 0
        over = self._leaders if self.groups is not None and name != "dense-flat" else self.transport
        return ALGORITHMS["dense" if name == "dense-flat" else name](over, comp, None).estimated_bytes(numel)

    def _flat_choice(self, numel, comp):
        """The flat algorithm a call of ``numel`` entries with ``comp`` runs on this rank: among every rank (flat;
        ``"dense-flat"``: hierarchical's plain dense path) or among the leaders; None: no slow-link traffic here."""
        if self.groups is None:
            if self.transport.size == 1:
                return None
            over = self.transport
        elif self.hierarchical_dense == "flat" and self._leaders_dense(numel, comp):
            return "dense-flat"
        elif self._leaders is None or self._leaders.size == 1:
            return None
        else:
            over = self._leaders
        algorithms = {n: cls(over, comp, None) for n, cls in ALGORITHMS.items()}
        return self._choose_flat(numel, algorithms, comp)

    def bottleneck_bytes(self) -> int:
        """Bytes this rank has sent on the slow links so far: its transport's, plus the leaders' hop's
        (hierarchical); the traffic inside groups is left out.

        Returns
        -------
        int
            Bytes sent.

        Examples
        --------
        >>> import numpy as np
        >>> from gcomp.collectives import CompressedAllreduce
        >>> from gcomp.transports import run_local
        >>> def rank(transport):
        ...     engine = CompressedAllreduce(transport, "none")
        ...     engine(np.zeros(1000, np.float32), key="w")
        ...     # the call's bytes, plus those of the agreement checks (construction, first call of "w")
        ...     return engine.bottleneck_bytes() > engine.stats[-1].bytes_sent > 4000
        >>> run_local(2, rank)
        [True, True]
        """
        return self.transport.counter.sent + (self._leaders.counter.sent if self._leaders is not None else 0)

    def reset(self, key):
        """Forget every memory of ``key`` (worker, chunk and server feedback, compressor state).  Local.

        Parameters
        ----------
        key : object
            The key.

        Examples
        --------
        >>> import numpy as np
        >>> from gcomp.collectives import CompressedAllreduce
        >>> from gcomp.transports import run_local
        >>> def rank(transport):
        ...     engine = CompressedAllreduce(transport, "topk:ratio=0.5", error_feedback="residual")
        ...     engine(np.arange(4, dtype=np.float32), key="w")
        ...     kept = engine.feedback.memory("w").tolist()     # what top-2 of [0, 1, 2, 3] left out
        ...     engine.reset("w")
        ...     return kept, engine.feedback.memory("w")
        >>> run_local(2, rank)[0]
        ([0.0, 1.0, 0.0, 0.0], None)
        """
        keys = {key}
        for algorithm in self._algorithms.values():
            keys.update(algorithm.memory_keys(key))
        self._reset_keys(keys)

    def _reset_keys(self, keys):
        for k in keys:
            self.feedback.reset(k)
            self.server_feedback.reset(k)

    def free(self):
        """Release the group transports this engine split off (hierarchical); the given transport stays the caller's.

        Examples
        --------
        ::

            engine = CompressedAllreduce(transport, "topk:ratio=0.01", groups="node")
            ...
            engine.free()         # on every rank, when done
        """
        for t in (self._leaders, self._intra):
            if t is not None:
                t.free()
        self._leaders = self._intra = None

    def warm_up(self, numel, compressor=None) -> float:
        """Compile (or load from Numba's cache) every kernel a call of ``numel`` entries runs; returns the seconds.

        The first call of a Numba kernel compiles it (seconds) or loads it from
        the on-disk cache; call this before timing anything.  It communicates
        nothing: it runs the algorithm this engine would use (among the leaders,
        for hierarchical) twice, on a normal random vector, over an in-process
        group of two ranks, with a copy of the compressor and fresh memories of
        the same kind.  This engine's memories, steps and stats are untouched.

        Parameters
        ----------
        numel : int
            Entries of the vectors to warm up for.
        compressor : str, dict or gcomp.Compressor, optional
            Warm up for that one instead of the current (the adaptive policy
            warms up every setting of its ladder).

        Returns
        -------
        float
            Seconds it took.

        Examples
        --------
        ::

            engine = CompressedAllreduce(transport, "topk:ratio=0.01")
            engine.warm_up(model_numel)         # compiles now, not inside the first timed step
        """
        from ..transports import run_local

        start = time.perf_counter()
        numel = int(numel)
        config = (self.compressor if compressor is None else build_compressor(compressor)).get_config()
        if compressor is not None:
            name = self._flat_choice(numel, build_compressor(config))
            algorithm = {None: "auto", "dense-flat": "dense"}.get(name, name)
        elif self.groups is None:
            algorithm = self.choose(numel)
        else:
            inner = self._algorithms["hierarchical"].inner
            algorithm = self._choose_flat(numel, inner) if inner else "auto"
        kind, options = self.feedback.kind, self.feedback.options()
        x = np.random.default_rng(0).standard_normal(numel).astype(np.float32)

        def one_rank(t):
            comp = build_compressor(config)
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
        """This rank's memories, steps and compressor state (never the transport).

        Returns
        -------
        dict
            Plain values and tensors (:mod:`gcomp.statecodec` packs them without pickle).

        Examples
        --------
        >>> import numpy as np
        >>> from gcomp.collectives import CompressedAllreduce
        >>> from gcomp.transports import run_local
        >>> def rank(transport):
        ...     engine = CompressedAllreduce(transport, "topk:ratio=0.5")
        ...     engine(np.arange(4, dtype=np.float32), key="w")
        ...     saved = engine.state_dict()
        ...     fresh = CompressedAllreduce(transport, "topk:ratio=0.5")
        ...     fresh.load_state_dict(saved)         # the memories and steps of this rank
        ...     return fresh.state_dict()["steps"]
        >>> run_local(2, rank)
        [{'w': 1}, {'w': 1}]
        """
        return {"version": STATE_VERSION, "feedback": self.feedback.state_dict(),
                "server_feedback": self.server_feedback.state_dict(), "steps": dict(self._steps),
                # each key's last path, and whether a switch has happened since (its memories carry at its next call)
                "paths": {k: [g != self._generation, a, i, avg] for k, (g, a, i, avg) in self._paths.items()}}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output of this rank into an engine of the same configuration.  Local.

        Parameters
        ----------
        state : dict
            What :meth:`state_dict` returned.

        Raises
        ------
        gcomp.errors.StateError
            A state of another version or shape.

        Examples
        --------
        See :meth:`state_dict`.
        """
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise StateError(f"expected an engine state with version {STATE_VERSION}, found "
                             f"{state.get('version') if isinstance(state, dict) else type(state).__name__!r}")
        steps = state.get("steps", {})
        if not isinstance(steps, dict) or not all(_count(v) for v in steps.values()):
            raise StateError(f"expected the engine's steps as {{key: non-negative integer}}, found {str(steps)[:200]}")
        paths = state.get("paths", {})
        known = set(ALGORITHMS) | {"hierarchical"}
        if not isinstance(paths, dict) or not all(
                isinstance(v, (list, tuple)) and len(v) == 4 and isinstance(v[0], bool) and v[1] in known
                and (v[2] is None or v[2] in ALGORITHMS) and isinstance(v[3], bool) for v in paths.values()):
            raise StateError(f"expected the engine's paths as {{key: [stale, algorithm, inner, average]}}, found "
                             f"{str(paths)[:200]}")
        self.feedback.load_state_dict(state["feedback"])
        self.server_feedback.load_state_dict(state["server_feedback"])
        self._steps = dict(steps)
        self._paths = {k: (-1 if v[0] else self._generation, v[1], v[2], v[3]) for k, v in paths.items()}


def _digest(doc) -> bytes:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).digest()


def _count(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < 2**63


def _usable_out(out, numel):
    """Whether ``out`` can receive a call's result: a writable C-contiguous float32 vector of ``numel`` entries."""
    return (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == 1 and out.shape[0] == numel
            and out.flags.c_contiguous and out.flags.writeable)
