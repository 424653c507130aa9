"""Gossip over a topology: exact gossip (D-PSGD) and CHOCO-SGD, for torch models and numpy vectors.

::

    g = gcomp.decentralized.Gossip(model, topology="ring", compressor="topk:ratio=0.01", gamma=0.05)
    for batch in data:
        loss(model, batch).backward(); optimizer.step(); optimizer.zero_grad()
        g.step()                      # mixes the parameters with the neighbours', in place

Each rank talks only to its neighbours (``transport.neighbor_exchange``);
no step has a collective over all ranks.

**Exact gossip** (``compressor=None``, D-PSGD, Lian et al. 2017): every rank
sends its whole float32 vector to its neighbours and sets ``x_i <- x_i +
gamma (sum_j W_ij x_j - x_i)`` (``gamma = 1``: ``x_i <- sum_j W_ij x_j``).
It preserves the average of the vectors (to float32 round-off) and shrinks
their consensus distance by ``topology.rate`` per round.

**CHOCO-SGD** (Koloskova, Stich, Jaggi, ICML 2019, Algorithm 1) with any
registered compressor ``C``: every rank keeps a public copy ``x̂_i`` of its
vector, which its neighbours know too; it sends ``q_i = C(x_i - x̂_i)``
(a gcomp wire packet), every holder adds it (``x̂_i += q_i``), and the
ranks mix the public copies: ``x_i += gamma sum_j W_ij (x̂_j - x̂_i)``.  The
copies are CHOCO's error feedback: what compression drops stays in ``x_i -
x̂_i`` and is sent later.  On a static graph a rank keeps only ``x̂_i`` and
``s_i = sum_j W_ij x̂_j`` (two vectors, whatever its degree), adding the
received ``q_j`` into ``s_i``.  On a time-varying graph (the one-peer
exponential graph) a rank's neighbour changes every round, so one public copy
cannot be kept current at every neighbour; each directed link ``j -> i``
then has its own pair of copies (kept by ``j`` and by ``i``, updated by what
``j`` sends ``i``), and ``x_i += gamma (sum_{j in in(i)} W_ij x̂_{j->i} -
sum_{o in out(i)} W_oi x̂_{i->o})``: the increments still sum to zero over
the ranks (the average is preserved) and it is CHOCO's step once the copies
track the vectors.  Memory: two copies per link of the period (``2 log2 P``
for the exponential graph).

Unbiased compressors (QSGD, random-k with rescaling) are not contractions;
CHOCO uses them scaled by ``1 / (1 + omega)`` (the paper's rescaling), with
``omega`` the compressor's declared ``variance_bound``; ``scale=`` sets the
factor explicitly (needed for an unbiased compressor that declares no
bound, e.g. terngrad or random-k with ``rescale=true``).

**Local SGD**: ``every=H`` gossips on every H-th call of :meth:`Gossip.step`
(the others only count).

**What is checked, when.**  At construction (unless ``agree=False``), one
allgather over the whole transport of a digest of the algorithm, topology
(every weight), compressor configuration, ``gamma``, ``every``, scale,
non-finite policy and vector size: any difference raises
:class:`~gcomp.errors.MismatchError` on every rank (a rank that failed to
configure takes part and raises its own error).  It also compares the
ranks' initial vectors: with ``initial="auto"`` CHOCO starts its public copies
at the vector itself when every rank holds the same bits (the usual seeded
init), else at zero, as in the paper.  Every gossip packet then carries a
32-byte prefix (:mod:`gcomp.decentralized.packets`): the round and the
configuration digest, checked by each receiver before it decodes
(SequenceError, MismatchError).  A rank sends before it checks, so its
neighbours are never left waiting; a rank that raises for any reason (a
mismatch, a neighbour that timed out or died, NaN under ``"raise"``, an
error of its own before sending: then it sends a fault notice instead of its
packet) sends fault notices to its neighbours of the next round (of every
round of the next period on a time-varying graph) before it raises, and a
rank that receives a notice raises too and passes it on.  So
every rank raises within (diameter) rounds, the ones next to the fault at
once, none waits longer than the ``timeout`` for a dead neighbour, and a
Gossip that raised refuses further rounds (restart every rank from the last
checkpoint).

**Non-finite values** follow the allreduce path's policies
(``nonfinite=``), applied to each rank's own vector before it is sent:

* ``"propagate"`` (default): NaN/Inf travel and mix like any value (they reach
  the neighbours' vectors in that round, every rank within diameter rounds);
* ``"zero"``: the rank sends an empty packet (its public copies and its
  neighbours' sums do not change) and its vector goes back to what it was
  after its previous gossip round (kept for this policy: one more copy), so
  nothing non-finite reaches another rank and the fault does not persist;
* ``"raise"``: that rank and the ranks that receive from it raise
  :class:`~gcomp.errors.NonFiniteError` in that round (nothing is applied),
  the others through the fault notices.
"""

import dataclasses
import hashlib
import json
import math
import time

import numpy as np

from .. import wire
from ..compressors import Compressor, with_seed
from ..compressors import compressor as build_compressor
from ..errors import (
    CollectiveError,
    ConfigError,
    GcompError,
    MismatchError,
    NonFiniteError,
    SequenceError,
    StateError,
    WireFormatError,
)
from ..kernels.random import derive_seed
from ..kernels.scatter import count_nonfinite
from ..transports.base import Transport
from . import packets
from .topology import Topology
from .topology import topology as build_topology

__all__ = ["Gossip", "GossipStats", "ALGORITHMS", "NONFINITE_POLICIES", "INITIAL", "choco_scale"]

#: the gossip algorithms :class:`Gossip` runs: exact gossip (D-PSGD) and CHOCO-SGD
ALGORITHMS = ("exact", "choco")
#: what :class:`Gossip` does with NaN/Inf in a rank's vector (see the module docstring)
NONFINITE_POLICIES = ("propagate", "zero", "raise")
#: where CHOCO's public copies start: decided from the vectors, at zero, or at the (common) vector
INITIAL = ("auto", "zeros", "model")
STATE_VERSION = 1
RESTART = "restart every rank from the last checkpoint"
#: key mixed into the per-rank seed of a randomized compressor
_SEED_KEY = 0x676F73  # "gos"


@dataclasses.dataclass
class GossipStats:
    """What one call of :meth:`Gossip.step` did.

    ``gossiped`` is False on the local-only steps of ``every > 1``; the other
    fields then stay zero.  Bytes follow the transport's model (payloads plus
    8 bytes of size per neighbour); ``by_peer`` splits them per neighbour.

    Parameters
    ----------
    step : int
        The count of :meth:`Gossip.step` calls, this one included.
    round : int
        The gossip round (rounds count only the steps that gossiped).
    gossiped : bool, optional
        Whether this call ran a gossip round.
    bytes_sent, bytes_received : int, optional
        Bytes of the round, all neighbours together.
    by_peer : dict, optional
        ``{peer: (sent, received)}`` bytes of the round.
    seconds : float, optional
        Wall time of the round.
    comm_seconds : float, optional
        Of which waiting for the neighbour exchange.
    nonfinite : int, optional
        Non-finite entries found in this rank's vector.
    nonfinite_peers : list, optional
        Neighbours whose packets announced non-finite values.

    Examples
    --------
    >>> import numpy as np
    >>> import gcomp.decentralized as gd
    >>> from gcomp.transports import run_local
    >>> def worker(transport):
    ...     x = np.zeros(8, np.float32)
    ...     g = gd.Gossip(x, topology="ring", every=2, transport=transport)
    ...     return [g.step().gossiped for _ in range(4)]
    >>> run_local(3, worker)[0]
    [False, True, False, True]
    """

    step: int
    round: int
    gossiped: bool = False
    bytes_sent: int = 0
    bytes_received: int = 0
    by_peer: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    comm_seconds: float = 0.0
    nonfinite: int = 0
    nonfinite_peers: list = dataclasses.field(default_factory=list)


def choco_scale(comp: Compressor, numel: int, scale=None) -> float:
    """The factor CHOCO applies to ``comp``'s output (see the module docstring).

    1 for a biased (contractive) compressor, ``1 / (1 + omega)`` for an
    unbiased one that declares its variance bound ``omega``.

    Parameters
    ----------
    comp : gcomp.Compressor
        The compressor CHOCO sends with.
    numel : int
        Elements of the vector gossiped.
    scale : float, optional
        An explicit factor in (0, 1], returned as it is.

    Raises
    ------
    gcomp.errors.ConfigError
        ``scale`` is out of range, or ``comp`` is unbiased with no declared
        variance bound and no ``scale`` is given.

    Examples
    --------
    >>> import gcomp
    >>> from gcomp.decentralized import choco_scale
    >>> choco_scale(gcomp.compressor("topk:ratio=0.01"), 1000)
    1.0
    >>> 0 < choco_scale(gcomp.compressor("qsgd:levels=4"), 1000) < 1
    True
    """
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
            raise ConfigError(f"expected scale a number in (0, 1], found {scale!r}")
        return float(scale)
    if not comp.unbiased:
        return 1.0  # biased compressors (top-k, sign, casts, ...) are CHOCO's contractions as they are
    contraction = comp.contraction(numel)
    if contraction is not None and contraction >= 1.0:
        return 1.0  # exact
    bound = getattr(comp, "variance_bound", None)
    if bound is None:
        raise ConfigError(f"CHOCO-SGD needs a contraction: compressor {comp.name!r} is unbiased and declares no "
                          "variance bound omega, so it cannot be rescaled by 1 / (1 + omega) automatically; pass "
                          "scale=1/(1+omega) (or use a biased compressor, e.g. randomk:rescale=false)")
    return 1.0 / (1.0 + float(bound(numel)))


def _digest(doc) -> bytes:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).digest()


def _resolve_transport(transport, timeout):
    if isinstance(transport, Transport):
        return transport
    if transport is None:
        try:
            import torch.distributed as dist
        except ImportError:  # pragma: no cover - torch is a dependency
            dist = None
        if dist is not None and dist.is_available() and dist.is_initialized():
            from ..transports.torch_dist import TorchTransport

            return TorchTransport()
        raise ConfigError("expected transport= (a gcomp Transport or an mpi4py communicator), or torch.distributed "
                          "initialised (dist.init_process_group) for the default group")
    if hasattr(transport, "Get_rank") and hasattr(transport, "Get_size"):
        from ..transports.mpi import MPITransport

        return MPITransport(transport, timeout=timeout)
    raise ConfigError(f"expected transport a gcomp Transport, an mpi4py communicator or None, found "
                      f"{type(transport).__name__}")


class _Params:
    """A torch model's parameters seen as one float32 vector (copied in before a round, out after)."""

    def __init__(self, target):
        import torch

        if isinstance(target, torch.nn.Module):
            params = list(target.parameters())
        elif isinstance(target, torch.Tensor):
            params = [target]
        else:
            params = list(target)
        if not params or not all(isinstance(p, torch.Tensor) for p in params):
            raise ConfigError("expected a torch module, a tensor or an iterable of tensors with at least one tensor")
        bad = [i for i, p in enumerate(params) if not p.is_floating_point()]
        if bad:
            raise ConfigError(f"expected floating-point parameters, found tensors {bad} of dtype {params[bad[0]].dtype}")
        self.params = params
        self.sizes = [p.numel() for p in params]
        self.numel = int(sum(self.sizes))
        self.vector = np.zeros(self.numel, np.float32)
        self._flat = torch.from_numpy(self.vector)

    def check(self):
        sizes = [p.numel() for p in self.params]
        if sizes != self.sizes:
            raise MismatchError(f"the model's parameters changed size since the Gossip was built ({sum(self.sizes)} "
                                f"-> {sum(sizes)} entries); build a new Gossip on every rank")

    def gather(self):
        import torch

        with torch.no_grad():
            offset = 0
            for p, n in zip(self.params, self.sizes, strict=True):
                self._flat[offset: offset + n].copy_(p.detach().reshape(-1))
                offset += n
        return self.vector

    def scatter(self):
        import torch

        with torch.no_grad():
            offset = 0
            for p, n in zip(self.params, self.sizes, strict=True):
                p.copy_(self._flat[offset: offset + n].view(p.shape))
                offset += n


class _Vector:
    """A numpy float32 vector gossiped in place."""

    def __init__(self, x):
        if x.ndim != 1 or x.dtype != np.float32 or not x.flags.c_contiguous or not x.flags.writeable:
            raise ConfigError(f"expected a writable contiguous 1-D float32 numpy array (gossiped in place), found "
                              f"{x.dtype} of shape {x.shape}" + ("" if x.flags.writeable else " (read-only)")
                              + "; e.g. x = np.ascontiguousarray(x, dtype=np.float32)")
        self.vector = x
        self.numel = x.shape[0]

    def check(self):
        pass

    def gather(self):
        return self.vector

    def scatter(self):
        pass


class Gossip:
    """Gossip one vector (a torch model's parameters or a numpy array) with the neighbours on a topology.

    ``target``: a ``torch.nn.Module`` (its parameters), a tensor or an
    iterable of tensors, or a 1-D float32 numpy array (changed in place).

    * ``topology``: a name (``"ring"``, ``"torus"``, ``"torus:RxC"``,
      ``"exponential"``, ``"complete"``, ``"star"``), neighbour lists, an
      adjacency matrix or a :class:`Topology` (see
      :mod:`gcomp.decentralized.topology`); ``weights``: its mixing weights
      (default Metropolis-Hastings);
    * ``compressor``: None for exact gossip, else any gcomp compressor spec for
      CHOCO-SGD (``algorithm`` defaults accordingly; ``"choco"`` with
      ``compressor="none"`` is CHOCO without compression);
    * ``gamma``: the consensus step size in (0, 1]; required for CHOCO (see
      docs/decentralized.md for values that work), default 1 for exact gossip;
    * ``every``: gossip on every ``every``-th :meth:`step` (local SGD);
    * ``transport``: a gcomp Transport, an mpi4py communicator, or None
      (torch.distributed's default group);
    * ``nonfinite``: ``"propagate"``, ``"zero"`` or ``"raise"`` (module docstring);
    * ``timeout``: seconds a round waits for a neighbour (None: the transport's);
    * ``initial``: CHOCO's first public copies: ``"auto"``, ``"zeros"`` or
      ``"model"`` (every rank must then hold the same vector: checked);
    * ``scale``: CHOCO's factor on the compressor's output (default: 1, or
      ``1 / (1 + omega)`` for an unbiased compressor);
    * ``seed``: base seed of a randomized compressor (None: the spec's); each
      rank compresses with its own seed derived from it and its rank;
    * ``agree``: the construction-time agreement check (one allgather).

    Every rank builds its Gossip at the same point with the same options;
    then every rank calls :meth:`step` after each optimizer step.

    Parameters
    ----------
    target : torch.nn.Module or torch.Tensor or iterable of torch.Tensor or numpy.ndarray
        What is gossiped, in place.
    topology : str or list or numpy.ndarray or Topology, optional
        The graph, as :func:`gcomp.decentralized.topology` accepts it.
    compressor : str or dict or gcomp.Compressor, optional
        None for exact gossip; a compressor (with a wire codec) for CHOCO-SGD.
    gamma : float, optional
        Consensus step size in (0, 1]; required for CHOCO, default 1 for exact gossip.
    algorithm : str, optional
        ``"exact"`` or ``"choco"``; by default from ``compressor``.
    every : int, optional
        Gossip on every ``every``-th :meth:`step`.
    weights : str or numpy.ndarray, optional
        The mixing weights (``"metropolis"``, ``"max-degree"`` or a matrix).
    transport : gcomp.transports.Transport or mpi4py communicator, optional
        How bytes travel; None: torch.distributed's default group.
    nonfinite : str, optional
        ``"propagate"``, ``"zero"`` or ``"raise"``.
    timeout : float, optional
        Seconds a round waits for a neighbour; None: the transport's.
    initial : str, optional
        CHOCO's first public copies: ``"auto"``, ``"zeros"`` or ``"model"``.
    scale : float, optional
        CHOCO's factor on the compressor's output (see :func:`choco_scale`).
    seed : int, optional
        Base seed of a randomized compressor; None keeps the spec's.
    agree : bool, optional
        Run the construction-time agreement check.
    keep_stats : int, optional
        How many :class:`GossipStats` the ``stats`` list keeps.

    Raises
    ------
    gcomp.errors.ConfigError
        An invalid option (raised on every rank, after the agreement step).
    gcomp.errors.MismatchError
        The ranks were built with different options or vector sizes.

    Examples
    --------
    Three in-process ranks on a ring, CHOCO-SGD with top-k 10%; in a real job
    each rank is a process and ``transport`` is left out (torch.distributed)
    or is an mpi4py communicator:

    >>> import numpy as np
    >>> import gcomp.decentralized as gd
    >>> from gcomp.transports import run_local
    >>> def worker(transport):
    ...     x = np.full(1000, float(transport.rank), np.float32)
    ...     g = gd.Gossip(x, topology="ring", compressor="topk:ratio=0.1", gamma=0.2, transport=transport)
    ...     for _ in range(100):
    ...         g.step()                  # one gossip round, in place on x
    ...     return float(x.mean()), g.consensus_distance(exact=True)
    >>> results = run_local(3, worker)
    >>> round(sum(mean for mean, _ in results) / 3, 4)      # the average is kept
    1.0
    >>> results[0][1] < 1e-3                                 # and the ranks agree
    True

    With a torch model, after the optimizer's step::

        g = gcomp.decentralized.Gossip(model, topology="ring", compressor="topk:ratio=0.01", gamma=0.05)
        for x, y in loader:
            loss_fn(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            g.step()
    """

    def __init__(self, target, *, topology="ring", compressor=None, gamma=None, algorithm=None, every=1, weights=None,
                 transport=None, nonfinite="propagate", timeout=None, initial="auto", scale=None, seed=None,
                 agree=True, keep_stats=1000):
        bad_timeout = None
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0):
            # raised after the agreement step (below), like every other option, so that no rank is left waiting
            bad_timeout = ConfigError(f"expected timeout a positive number of seconds or None, found {timeout!r}")
            timeout = None
        self.transport = _resolve_transport(transport, timeout)
        self.rank, self.size = self.transport.rank, self.transport.size
        self.timeout = timeout
        self.keep_stats = keep_stats
        self.stats = []
        self.round = 0
        self.steps = 0
        self._broken = None
        self._origin = None
        error = None
        try:
            if bad_timeout is not None:
                raise bad_timeout
            self._configure(target, topology, weights, compressor, gamma, algorithm, every, nonfinite, initial,
                            scale, seed, timeout)
        except (GcompError, TypeError, ValueError) as exc:
            error = exc
        initial_resolved = None
        if agree:
            initial_resolved = self._agree(error)
        elif error is not None:
            raise error
        if initial_resolved is None:
            initial_resolved = "zeros" if self.initial == "auto" else self.initial
        self.initial_resolved = initial_resolved
        self._init_state(initial_resolved)

    # -- configuration ------------------------------------------------------
    def _configure(self, target, topology, weights, compressor, gamma, algorithm, every, nonfinite, initial, scale,
                   seed, timeout):
        if isinstance(target, np.ndarray):
            self._target = _Vector(target)
        else:
            self._target = _Params(target)
        self.numel = self._target.numel
        self.topology = build_topology(topology, self.size, weights=weights)
        if algorithm is None:
            algorithm = "exact" if compressor is None else "choco"
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"unknown gossip algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
        self.algorithm = algorithm
        if algorithm == "exact":
            spec = build_compressor("none") if compressor is None else build_compressor(compressor)
            if not spec.identity:
                raise ConfigError(f"exact gossip sends the vectors uncompressed; found compressor {spec.name!r} "
                                  "(use algorithm='choco' to gossip compressed)")
            if scale is not None:
                raise ConfigError("scale= applies to CHOCO-SGD, not to exact gossip")
        else:
            spec = build_compressor("none" if compressor is None else compressor)
            if spec.codec is None:
                raise ConfigError(f"compressor {spec.name!r} has no wire codec: gossip sends wire packets")
        self.spec = spec
        base_seed = seed
        if spec.randomized and "seed" in spec.params:
            base_seed = int(spec.get_config()["seed"] if seed is None else seed)
            rank_seed = derive_seed(base_seed, self.rank, _SEED_KEY)
            self.compressor = with_seed(spec, rank_seed)
            self.spec = with_seed(spec, base_seed)
        else:
            self.compressor = build_compressor(spec.get_config())
        if gamma is None:
            if algorithm == "choco":
                raise ConfigError("CHOCO-SGD needs gamma, the consensus step size in (0, 1] (e.g. 0.05 to 0.5; it "
                                  "must shrink as compression gets stronger: see docs/decentralized.md)")
            gamma = 1.0
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
            raise ConfigError(f"expected gamma a number in (0, 1], found {gamma!r}")
        self.gamma = float(gamma)
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ConfigError(f"expected every a positive integer (gossip every that many steps), found {every!r}")
        self.every = int(every)
        if nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"unknown nonfinite policy {nonfinite!r}; known: {', '.join(NONFINITE_POLICIES)}")
        self.nonfinite = nonfinite
        if initial not in INITIAL:
            raise ConfigError(f"unknown initial {initial!r}; known: {', '.join(INITIAL)}")
        self.initial = initial
        self.scale = choco_scale(self.compressor, self.numel, scale) if algorithm == "choco" else 1.0
        self.per_link = algorithm == "choco" and not self.topology.static
        self._digest = _digest(self.options())
        self._digest8 = self._digest[:8]

    def options(self) -> dict:
        """Everything that must be the same on every rank (fingerprinted at construction and in every packet).

        Returns
        -------
        dict
            Algorithm, topology digest and name, compressor config, gamma,
            every, nonfinite, numel, scale, initial and the state version.
        """
        return {"version": STATE_VERSION, "algorithm": self.algorithm, "topology": self.topology.digest().hex(),
                "topology_name": self.topology.name, "compressor": self.spec.get_config(), "gamma": self.gamma,
                "every": self.every, "nonfinite": self.nonfinite, "numel": self.numel, "scale": self.scale,
                "initial": self.initial}

    def _agree(self, error):
        """One allgather of (options digest, vector digest, ok flag); MismatchError on every rank if any differs."""
        if error is None:
            mine = self._digest + hashlib.sha256(self._target.gather().view(np.uint8)).digest() + b"\1"
        else:
            mine = bytes(65)
        rows = [bytes(b) for b in self.transport.allgatherv(np.frombuffer(mine, np.uint8))]
        if error is not None:
            raise error
        failed = [r for r, row in enumerate(rows) if len(row) != 65 or row[64] != 1]
        differing = [r for r, row in enumerate(rows) if row[:32] != mine[:32]]
        if failed or differing:
            what = f"ranks {failed} failed to configure" if failed else f"ranks {differing} differ"
            raise MismatchError(f"ranks disagree on the gossip configuration: rank {self.rank} has {self.options()}, "
                                f"{what}; every rank must build its Gossip with the same topology, compressor, "
                                "gamma, every, nonfinite, initial and vector size")
        same = all(row[32:64] == mine[32:64] for row in rows)
        if self.initial == "model" and not same:
            raise MismatchError("initial='model' needs the same initial vector on every rank (CHOCO's public copies "
                                "start at it), and the ranks' vectors differ; broadcast rank 0's model first or "
                                "use initial='zeros'")
        if self.initial == "auto":
            return "model" if same else "zeros"
        return self.initial

    def _init_state(self, initial):
        n = self.numel
        x = self._target.gather()
        self._tmp = np.empty(n, np.float32)
        self._xhat = self._s = None
        self._out, self._in = {}, {}
        if self.algorithm == "choco":
            start = (lambda: x.copy()) if initial == "model" else (lambda: np.zeros(n, np.float32))
            if self.per_link:
                for t in range(self.topology.period):
                    for o in self.topology.send_to(self.rank, t):
                        self._out.setdefault(o, start())
                    for j in self.topology.recv_from(self.rank, t):
                        self._in.setdefault(j, start())
            else:
                self._xhat = start()
                self._s = start()
        self._last_good = x.copy() if self.nonfinite == "zero" else None

    # -- the user's call ----------------------------------------------------
    def step(self) -> GossipStats:
        """Call after ``optimizer.step()``: on every ``every``-th call, one gossip round (in place).

        Every rank calls it the same number of times.

        Returns
        -------
        GossipStats
            What this call did (also appended to ``self.stats``).

        Raises
        ------
        gcomp.errors.CollectiveError
            A neighbour failed, timed out or sent a fault notice; every rank
            raises within (diameter) rounds.
        """
        self.steps += 1
        stats = GossipStats(step=self.steps, round=self.round)
        if self.steps % self.every == 0:
            self._gossip(stats)
        self._record(stats)
        return stats

    def gossip(self) -> GossipStats:
        """One gossip round now, whatever ``every`` says (every rank must call it at the same point).

        Returns
        -------
        GossipStats

        Examples
        --------
        Exact gossip on a complete graph averages in one round:

        >>> import numpy as np
        >>> import gcomp.decentralized as gd
        >>> from gcomp.transports import run_local
        >>> def worker(transport):
        ...     x = np.full(4, float(transport.rank), np.float32)
        ...     gd.Gossip(x, topology="complete", transport=transport).gossip()
        ...     return x.tolist()
        >>> run_local(3, worker)
        [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
        """
        stats = GossipStats(step=self.steps, round=self.round)
        self._gossip(stats)
        self._record(stats)
        return stats

    def _record(self, stats):
        self.stats.append(stats)
        if len(self.stats) > self.keep_stats:
            del self.stats[: len(self.stats) - self.keep_stats]

    def bytes_by_peer(self) -> dict:
        """The transport's point-to-point bytes per peer: ``{peer: (sent, received)}`` (all traffic, all rounds).

        Returns
        -------
        dict
        """
        return self.transport.bytes_by_peer()

    # -- one round ------------------------------------------------------------
    def _gossip(self, stats):
        if self._broken is not None:
            raise CollectiveError(f"this Gossip failed at round {self._broken[0]} ({self._broken[1]}) and cannot go "
                                  f"on: {RESTART}")
        start = time.perf_counter()
        self._origin = None
        t = self.round
        topo, rank = self.topology, self.rank
        send_to, recv_from = topo.send_to(rank, t), topo.recv_from(rank, t)
        before_sent, before_received = self.transport.counter.snapshot()
        before_peers = self.transport.counter.by_peer()
        local_error = None
        own = {}
        try:
            self._target.check()
            x = self._target.gather()
            bad = count_nonfinite(x)
            stats.nonfinite = bad
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf are the policy's business, not warnings
                sends, own = self._prepare(t, x, send_to, bad)
        except Exception as exc:  # noqa: BLE001 - sent as a fault notice, then re-raised below
            local_error = exc
            reason = "mismatch" if isinstance(exc, MismatchError) else "local"
            notice = self._notice(t, reason, rank)
            sends = {p: notice for p in send_to}
        received = {}

        def check(bufs):
            received.update(self._parse(t, bufs))

        comm_start = time.perf_counter()
        try:
            self.transport.neighbor_exchange(sends, recv_from, timeout=self.timeout, check=check)
        except Exception as exc:
            stats.comm_seconds = time.perf_counter() - comm_start
            self._fail(t, exc if local_error is None else local_error)
            if local_error is not None:
                raise local_error from exc
            raise
        stats.comm_seconds = time.perf_counter() - comm_start
        if local_error is not None:
            self._fail(t, local_error)
            raise local_error
        stats.nonfinite_peers = [p for p, (flags, _) in received.items() if flags & packets.NONFINITE]
        if stats.nonfinite and self.nonfinite == "raise":
            exc = NonFiniteError(f"rank {rank}'s vector holds {stats.nonfinite} NaN/Inf entries at gossip round {t} "
                                 f"(nonfinite='raise'); its neighbours {list(send_to)} raised too: {RESTART}")
            self._fail(t, exc)
            raise exc
        with np.errstate(invalid="ignore", over="ignore"):
            self._apply(t, own, received)
        if self._last_good is not None:
            np.copyto(self._last_good, self._target.vector)
        self._target.scatter()
        self.round = t + 1
        after_sent, after_received = self.transport.counter.snapshot()
        stats.gossiped = True
        stats.bytes_sent = after_sent - before_sent
        stats.bytes_received = after_received - before_received
        after_peers = self.transport.counter.by_peer()
        stats.by_peer = {p: (s - before_peers.get(p, (0, 0))[0], r - before_peers.get(p, (0, 0))[1])
                         for p, (s, r) in after_peers.items() if (s, r) != before_peers.get(p, (0, 0))}
        stats.seconds = time.perf_counter() - start

    def _header(self, buf, t, flags=0):
        return packets.pack(buf, flags=flags, origin=self.rank, round=t, digest=self._digest8)

    def _notice(self, t, reason, origin):
        buf = np.empty(packets.PREFIX_SIZE, np.uint8)
        return packets.pack(buf, flags=packets.FAULT | packets.EMPTY, reason=packets.REASON_CODE[reason],
                            origin=origin, round=t, digest=self._digest8)

    def _packet(self, c, t, flags=0):
        buf = wire.encode_array(c, reserve=packets.PREFIX_SIZE)
        return self._header(buf, t, flags)

    def _empty(self, t, flags):
        return self._header(np.empty(packets.PREFIX_SIZE, np.uint8), t, flags | packets.EMPTY)

    def _prepare(self, t, x, send_to, bad):
        """``({peer: framed buffer}, {peer or None: own Compressed})``; on a non-finite vector, per the policy."""
        if bad and self.nonfinite in ("zero", "raise"):
            if self.nonfinite == "zero":
                np.copyto(x, self._last_good)
            empty = self._empty(t, packets.NONFINITE)
            return {p: empty for p in send_to}, {}
        flags = packets.NONFINITE if bad else 0
        if self.algorithm == "exact":
            c = self.compressor.compress(x, step=t, key=0)
            buf = self._packet(c, t, flags)
            return {p: buf for p in send_to}, {None: c}
        if not self.per_link:
            np.subtract(x, self._xhat, out=self._tmp)
            c = self.compressor.compress(self._tmp, step=t, key=0)
            buf = self._packet(c, t, flags)
            return {p: buf for p in send_to}, {None: c}
        sends, own = {}, {}
        for o in send_to:
            np.subtract(x, self._out[o], out=self._tmp)
            c = self.compressor.compress(self._tmp, step=t, key=o + 1)
            sends[o] = self._packet(c, t, flags)
            own[o] = c
        return sends, own

    def _parse(self, t, bufs):
        """``{peer: (flags, Compressed or None)}``, or the error every problem found in ``bufs`` amounts to."""
        out, problems = {}, []
        self._origin = None
        for peer, buf in bufs.items():
            if buf.nbytes < packets.PREFIX_SIZE:
                problems.append(("mismatch", f"rank {peer} sent {buf.nbytes} bytes, not a gossip packet"))
                continue
            magic, version, flags, reason, origin, rnd, digest = packets.unpack(buf)
            if magic != packets.MAGIC or version != packets.VERSION:
                problems.append(("mismatch", f"rank {peer} sent something that is not a gossip packet "
                                             f"(magic {magic!r}, version {version})"))
                continue
            if flags & packets.FAULT:
                name, meaning = packets.REASONS.get(reason, ("failure", "unknown reason"))
                via = "" if origin == peer else f" (first reported by rank {origin})"
                if self._origin is None:
                    self._origin = int(origin)
                problems.append((name, f"rank {peer} reported a fault{via}: {meaning}"))
                continue
            if rnd != t:
                problems.append(("sequence", f"rank {peer} is at gossip round {rnd}, this rank at {t}"))
                continue
            if digest != self._digest8:
                problems.append(("mismatch", f"rank {peer} is configured differently (digest {digest.hex()}, this "
                                             f"rank {self._digest8.hex()})"))
                continue
            if flags & packets.NONFINITE and self.nonfinite == "raise":
                problems.append(("nonfinite", f"rank {peer}'s vector holds NaN/Inf"))
                continue
            if flags & packets.EMPTY:
                out[peer] = (flags, None)
                continue
            try:
                c = wire.decode(buf[packets.PREFIX_SIZE:], expected_numel=self.numel)
            except WireFormatError as exc:
                problems.append(("failure", f"rank {peer}'s packet does not decode: {type(exc).__name__}: {exc}"))
                continue
            if c.codec != self.compressor.name:
                problems.append(("mismatch", f"rank {peer} sent a {c.codec!r} packet, this rank uses "
                                             f"{self.compressor.name!r}"))
                continue
            out[peer] = (flags, c)
        if problems:
            kinds = {k for k, _ in problems}
            text = (f"gossip round {t} on rank {self.rank}: " + "; ".join(m for _, m in problems) + f": {RESTART}")
            for kind, cls in (("mismatch", MismatchError), ("sequence", SequenceError), ("nonfinite", NonFiniteError)):
                if kind in kinds:
                    raise cls(text)
            raise CollectiveError(text)
        return out

    def _apply(self, t, own, received):
        x = self._target.vector
        comp, lam, gamma = self.compressor, self.scale, np.float32(self.gamma)
        w = self.topology.weights(t)
        i = self.rank
        if self.algorithm == "exact":
            acc = self._tmp
            np.multiply(x, np.float32(w[i, i]), out=acc)
            for j, (_, c) in received.items():
                if c is not None:
                    comp.decompress_add(c, acc, scale=float(w[i, j]))
                else:  # an empty packet (its vector was non-finite): keep this rank's own share instead
                    acc += np.float32(w[i, j]) * x
            if gamma == 1:
                np.copyto(x, acc)
            else:
                acc -= x
                acc *= gamma
                x += acc
            return
        if not self.per_link:
            c = own.get(None)
            if c is not None:
                comp.decompress_add(c, self._xhat, scale=lam)
                comp.decompress_add(c, self._s, scale=lam * float(w[i, i]))
            for j, (_, cj) in received.items():
                if cj is not None:
                    comp.decompress_add(cj, self._s, scale=lam * float(w[i, j]))
            np.subtract(self._s, self._xhat, out=self._tmp)
        else:
            for o, c in own.items():
                comp.decompress_add(c, self._out[o], scale=lam)
            for j, (_, cj) in received.items():
                if cj is not None:
                    comp.decompress_add(cj, self._in[j], scale=lam)
            self._tmp[:] = 0.0
            for j in self.topology.recv_from(i, t):
                self._tmp += np.float32(w[i, j]) * self._in[j]
            for o in self.topology.send_to(i, t):
                self._tmp -= np.float32(w[o, i]) * self._out[o]
        self._tmp *= gamma
        x += self._tmp

    def _fail(self, t, exc):
        """Mark this Gossip broken and tell the neighbours of the coming rounds (best effort), so that they raise."""
        if isinstance(exc, MismatchError):
            reason = "mismatch"
        elif isinstance(exc, SequenceError):
            reason = "sequence"
        elif isinstance(exc, NonFiniteError):
            reason = "nonfinite"
        elif isinstance(exc, CollectiveError):
            reason = "failure"
        else:
            reason = "local"
        self._broken = (t, f"{type(exc).__name__}: {exc}"[:300])
        origin = self._origin if self._origin is not None else self.rank  # pass the first rank's number on
        # One notice per round of a whole period: on a time-varying graph a rank that expects this one's packet in any
        # later round of the period must find a notice there (within a period every in-neighbour has sent it one).
        for ahead in range(1, self.topology.period + 1):
            notice = self._notice(t + ahead, reason, origin)
            try:
                self.transport.neighbor_post({p: notice for p in self.topology.send_to(self.rank, t + ahead)})
            except Exception:  # noqa: BLE001 - best effort: the neighbours still time out
                break

    # -- statistics -------------------------------------------------------------
    def consensus_distance(self, exact: bool = False, sketch: int = 1024, seed: int = 0) -> float:
        """Mean over ranks of ``||x_i - x̄||^2`` (x̄ the ranks' average); collective: every rank calls it.

        By default it is estimated from a CountSketch of ``sketch`` buckets
        (the same random hash on every rank, unbiased, relative error about
        ``sqrt(2 / sketch)``): two allreduces of ``sketch`` and 1 float64, not
        of the vector.  ``exact=True`` allreduces the whole vector (float64).
        Every rank returns the same value.

        Parameters
        ----------
        exact : bool, optional
            Allreduce the whole vector instead of a sketch.
        sketch : int, optional
            Buckets of the CountSketch.
        seed : int, optional
            Seed of the sketch's hash (the same on every rank).

        Returns
        -------
        float

        Examples
        --------
        >>> import numpy as np
        >>> import gcomp.decentralized as gd
        >>> from gcomp.transports import run_local
        >>> def worker(transport):
        ...     x = np.full(4, float(transport.rank), np.float32)     # ranks hold 0, 1, 2
        ...     return gd.Gossip(x, transport=transport).consensus_distance(exact=True)
        >>> round(run_local(3, worker)[0], 4)                      # mean of 4 * (1, 0, 1)
        2.6667
        """
        x = self._target.gather() if isinstance(self._target, _Params) else self._target.vector
        size = self.size
        if exact:
            total = x.astype(np.float64)
            self.transport.allreduce_(total)
            total /= size
            np.subtract(x, total, out=total)
            mine = np.array([float(np.dot(total, total))])
        else:
            if isinstance(sketch, bool) or not isinstance(sketch, (int, np.integer)) or sketch < 1:
                raise ConfigError(f"expected sketch a positive number of buckets, found {sketch!r}")
            y = count_sketch(x, int(sketch), seed)
            total = y.copy()
            self.transport.allreduce_(total)
            y -= total / size
            mine = np.array([float(np.dot(y, y))])
        self.transport.allreduce_(mine)
        return float(mine[0]) / size

    # -- checkpointing ----------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's public copies, round and step counts and compressor state (the model is the caller's).

        Save it with the model (``torch.save`` or :func:`gcomp.statecodec.pack`);
        restore both on every rank to continue bit-identically.

        Returns
        -------
        dict
            numpy arrays and plain values, versioned.
        """
        state = {"version": STATE_VERSION, "digest": self._digest.hex(), "round": self.round, "steps": self.steps,
                 "initial": self.initial_resolved, "compressor": self.compressor.state_dict()}
        if self.algorithm == "choco":
            if self.per_link:
                state["out"] = {int(p): a.copy() for p, a in self._out.items()}
                state["in"] = {int(p): a.copy() for p, a in self._in.items()}
            else:
                state["xhat"] = self._xhat.copy()
                state["s"] = self._s.copy()
        if self._last_good is not None:
            state["last_good"] = self._last_good.copy()
        return state

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output (StateError if it belongs to another configuration or shape).

        Parameters
        ----------
        state : dict
            What :meth:`state_dict` returned on this rank, from a Gossip built
            with the same options.

        Raises
        ------
        gcomp.errors.StateError
            Another version, configuration or shape.

        Examples
        --------
        >>> import numpy as np
        >>> import gcomp.decentralized as gd
        >>> from gcomp.transports import run_local
        >>> def worker(transport):
        ...     x = np.full(8, float(transport.rank), np.float32)
        ...     g = gd.Gossip(x, topology="ring", compressor="topk:ratio=0.5", gamma=0.5, transport=transport)
        ...     g.step()
        ...     saved, x_saved = g.state_dict(), x.copy()
        ...     g.step(); after = x.copy()
        ...     x[:] = x_saved; g.load_state_dict(saved)     # back to the checkpoint
        ...     g.step()
        ...     return bool(np.array_equal(x, after))        # the same next step, bit for bit
        >>> run_local(3, worker)
        [True, True, True]
        """
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise StateError(f"expected a gossip state of version {STATE_VERSION}, found "
                             f"{state.get('version') if isinstance(state, dict) else type(state).__name__!r}")
        if state.get("digest") != self._digest.hex():
            raise StateError("this gossip state was saved by a Gossip with another configuration (topology, "
                             "compressor, gamma, every, nonfinite, initial or size); build the Gossip as it was")
        for key in ("round", "steps"):
            v = state.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < 2**63:
                raise StateError(f"expected {key} a non-negative integer, found {v!r}")
        arrays = {}

        def array(value, what):
            if not isinstance(value, np.ndarray) or value.dtype != np.float32 or value.shape != (self.numel,):
                raise StateError(f"expected {what} a float32 array of {self.numel} entries, found "
                                 f"{getattr(value, 'dtype', type(value).__name__)} {getattr(value, 'shape', '')}")
            out = np.empty(self.numel, np.float32)  # a fresh native float32 array (the kernels insist on it)
            out[...] = value
            return out

        if self.algorithm == "choco":
            if self.per_link:
                for key, mine in (("out", self._out), ("in", self._in)):
                    got = state.get(key)
                    if not isinstance(got, dict) or sorted(got) != sorted(mine):
                        raise StateError(f"expected {key!r} copies for links {sorted(mine)}, found "
                                         f"{sorted(got) if isinstance(got, dict) else type(got).__name__}")
                    arrays[key] = {int(p): array(a, f"{key}[{p}]") for p, a in got.items()}
            else:
                arrays["xhat"] = array(state.get("xhat"), "xhat")
                arrays["s"] = array(state.get("s"), "s")
        if self._last_good is not None:
            arrays["last_good"] = array(state.get("last_good"), "last_good")
        self.compressor.load_state_dict(state.get("compressor", {}))
        if self.algorithm == "choco":
            if self.per_link:
                self._out, self._in = arrays["out"], arrays["in"]
            else:
                self._xhat, self._s = arrays["xhat"], arrays["s"]
        if self._last_good is not None:
            self._last_good = arrays["last_good"]
        self.round = int(state["round"])
        self.steps = int(state["steps"])
        self.initial_resolved = state.get("initial", self.initial_resolved)
        self._broken = None


def count_sketch(x, buckets, seed=0, chunk=1 << 20):
    """``S x`` (float64, ``buckets`` entries) for the CountSketch ``S`` of ``(seed, len(x))``: each entry goes to a
    random bucket with a random sign; ``E ||S v||^2 = ||v||^2``.  The same on every rank for the same seed.

    Parameters
    ----------
    x : array_like
        The vector (flattened).
    buckets : int
        Entries of the sketch.
    seed : int, optional
        Seed of the hash and signs (a local generator; the global ones are untouched).
    chunk : int, optional
        Entries hashed at a time (bounds the memory used).

    Returns
    -------
    numpy.ndarray
        float64 of ``buckets`` entries; linear in ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from gcomp.decentralized import count_sketch
    >>> x, y = np.arange(10.0), np.ones(10)
    >>> np.allclose(count_sketch(x + y, 4), count_sketch(x, 4) + count_sketch(y, 4))
    True
    """
    x = np.asarray(x).reshape(-1)
    out = np.zeros(buckets, np.float64)
    for c, lo in enumerate(range(0, x.shape[0], chunk)):
        part = x[lo: lo + chunk].astype(np.float64)
        h = np.random.default_rng([int(seed), int(x.shape[0]), c]).integers(0, 2 * buckets, part.shape[0])
        signs = 1.0 - 2.0 * (h >= buckets)
        out += np.bincount(h % buckets, weights=part * signs, minlength=buckets)
    return out


def spectral_summary(topology: Topology) -> str:
    """One line about a topology (for logs): name, size, period, spectral gap, per-round rate.

    Parameters
    ----------
    topology : Topology
        A built topology.

    Examples
    --------
    >>> from gcomp.decentralized import spectral_summary, topology
    >>> print(spectral_summary(topology("ring", 4)))  # doctest: +NORMALIZE_WHITESPACE
    ring over 4 ranks (period 1, degrees [2]): spectral gap 0.6667,
    exact gossip shrinks the consensus distance by 0.1111 per round (half-life 0.315 rounds)
    """
    d = topology.describe()
    return (f"{d['name']} over {d['size']} ranks (period {d['period']}, degrees {d['degrees']}): spectral gap "
            f"{d['spectral_gap']:.4g}, exact gossip shrinks the consensus distance by {d['rate']:.4g} per round "
            f"(half-life {math.log(0.5) / math.log(d['rate']) if 0 < d['rate'] < 1 else 0:.3g} rounds)")
