"""Topologies for gossip: who talks to whom in each round, with which mixing weights.

A :class:`Topology` over ``P`` ranks is a sequence of ``period`` mixing
matrices ``W_0 .. W_{period-1}`` (one for a static graph); round ``t`` uses
``W_{t mod period}``.  Row ``i`` of ``W_t`` says how rank ``i`` mixes:
``x_i <- sum_j W_t[i, j] x_j``.  Rank ``i`` therefore receives from every
``j != i`` with ``W_t[i, j] > 0`` and sends to every ``j`` with
``W_t[j, i] > 0``.

Built-in graphs (:func:`topology`)::

    "ring"            i <-> i +- 1                        degree 2 (1 at P = 2)
    "torus"           2-D torus, rows x cols as square as P allows ("torus:RxC" to choose)   degree <= 4
    "exponential"     one-peer exponential graph, time-varying: in round t rank i sends to
                      i + 2^(t mod L) and receives from i - 2^(t mod L), weights 1/2, L = ceil(log2 P)
    "complete"        every rank with every other              degree P - 1
    "star"            rank 0 with every other rank             degree P - 1 (centre), 1 (leaves)

or any graph the user gives: a list of ``P`` neighbour lists (``[[1, 2], [0],
[0]]``) or a ``P x P`` adjacency matrix (a 2-D numpy array; nonzero
off-diagonal entries are edges).  An undirected graph is mixed with
Metropolis-Hastings weights by default (``w_ij = 1 / (1 + max(d_i, d_j))``
on each edge, the rest of the row on the diagonal), or ``weights=`` gives
``"metropolis"``, ``"max-degree"`` (``w_ij = 1 / (1 + max_k d_k)``) or a
``P x P`` matrix.

Every matrix is validated on construction and a
:class:`~gcomp.errors.ConfigError` names what is wrong: a static ``W`` must
be non-negative, symmetric, with rows summing to 1 (so doubly stochastic),
positive only on edges and the diagonal, its graph connected, and its
second-largest eigenvalue magnitude below 1 (a bipartite graph with no
self-weight oscillates forever).  A time-varying topology (the exponential
graph) needs every ``W_t`` non-negative and doubly stochastic (rows *and*
columns summing to 1: it is not symmetric), the union of its graphs
connected, and the product over a period contracting.

Why gossip preserves the average: ``mean_i x_i' = (1/P) sum_j x_j sum_i
W[i, j]``, so it is the old mean whenever every *column* of ``W`` sums to 1.
A symmetric ``W`` with rows summing to 1 has that; the one-peer exponential
round ``W_t = (I + Pi_t) / 2``, with ``Pi_t`` the permutation ``i -> i +
2^k``, has it although it is not symmetric (each rank is received by exactly
one rank with weight 1/2 and keeps 1/2).

The **spectral gap** sets how fast gossip mixes.  For a static ``W`` it is
``1 - beta`` with ``beta = max(|lambda_2|, |lambda_P|)`` = ``||W - J||_2``
(``J = 11^T / P``); exact gossip then shrinks the consensus distance by at
least ``beta^2`` per round (:attr:`Topology.rate`).  For a time-varying one
it is that of the period's product ``W_{L-1} ... W_0``; the rate per round is
``||prod - J||_2^(2/L)``.  A ring's gap falls like ``1/P^2``, a torus's like
``1/P``; the exponential graph's period product is exactly ``J`` when P is a
power of two (exact average after ``log2 P`` rounds).
"""

import hashlib
import math
import struct

import numpy as np

from ..errors import ConfigError

__all__ = ["Topology", "topology", "TOPOLOGIES", "torus_shape"]

#: tolerance on row and column sums and on symmetry
TOL = 1e-9
#: the graph names :func:`topology` builds
TOPOLOGIES = ("ring", "torus", "exponential", "complete", "star")
WEIGHTINGS = ("metropolis", "max-degree")


class Topology:
    """A validated sequence of mixing matrices over ``size`` ranks (see the module docstring).

    Built with :func:`topology`; the constructor takes the matrices directly
    (``matrices``: a list of ``P x P`` arrays, one per round of the period) and
    validates them.  Equal topologies (same size, period and weights) compare
    equal, whatever their names.

    Parameters
    ----------
    matrices : numpy.ndarray or list of numpy.ndarray
        One ``P x P`` mixing matrix (static) or one per round of the period
        (time-varying); copied and made read-only.
    name : str, optional
        A label for messages and reports.
    symmetric : bool, optional
        Whether every matrix must be symmetric (a static undirected graph);
        False for a time-varying one such as the exponential graph.

    Raises
    ------
    gcomp.errors.ConfigError
        A matrix is not square, negative, not doubly stochastic, not symmetric
        where required, its graph is not connected, or it does not contract.

    Examples
    --------
    >>> import numpy as np
    >>> from gcomp.decentralized import Topology, topology
    >>> avg = Topology(np.full((3, 3), 1 / 3), name="average")
    >>> avg.spectral_gap, avg.send_to(0)
    (1.0, (1, 2))
    >>> ring = topology("ring", 4)
    >>> ring
    Topology('ring', size=4, period=1, spectral_gap=0.6667)
    >>> ring.weights()[0].round(3).tolist()
    [0.333, 0.333, 0.0, 0.333]
    """

    def __init__(self, matrices, *, name="custom", symmetric=True):
        if isinstance(matrices, np.ndarray):
            matrices = [matrices]
        mats = []
        for t, m in enumerate(matrices):
            a = np.array(m, dtype=np.float64, copy=True)
            if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
                raise ConfigError(f"topology {name!r}: expected square mixing matrices, round {t} has shape {a.shape}")
            mats.append(a)
        if not mats:
            raise ConfigError(f"topology {name!r}: expected at least one mixing matrix")
        size = mats[0].shape[0]
        if any(m.shape[0] != size for m in mats):
            raise ConfigError(f"topology {name!r}: expected every round's matrix to be {size} x {size}, found "
                              f"{[m.shape for m in mats]}")
        self.name = str(name)
        self.size = size
        self.period = len(mats)
        self.symmetric = bool(symmetric)
        self._matrices = mats
        for m in mats:
            m.setflags(write=False)
        self._validate()
        self._links = [self._round_links(m) for m in mats]
        self._gap = None

    # -- what a rank needs --------------------------------------------------
    @property
    def static(self) -> bool:
        """True for one mixing matrix (period 1), False for a time-varying topology."""
        return self.period == 1

    def weights(self, t: int = 0) -> np.ndarray:
        """``W_{t mod period}`` (read-only float64 ``P x P``).

        Parameters
        ----------
        t : int, optional
            The gossip round.
        """
        return self._matrices[int(t) % self.period]

    def send_to(self, rank: int, t: int = 0) -> tuple:
        """The ranks that receive from ``rank`` in round ``t`` (ascending).

        Parameters
        ----------
        rank : int
            A rank in ``[0, size)``.
        t : int, optional
            The gossip round.

        Examples
        --------
        >>> from gcomp.decentralized import topology
        >>> expo = topology("exponential", 8)
        >>> [expo.send_to(0, t) for t in range(expo.period)]
        [(1,), (2,), (4,)]
        """
        return self._links[int(t) % self.period][rank][0]

    def recv_from(self, rank: int, t: int = 0) -> tuple:
        """The ranks ``rank`` receives from in round ``t`` (ascending).

        Parameters
        ----------
        rank : int
            A rank in ``[0, size)``.
        t : int, optional
            The gossip round.
        """
        return self._links[int(t) % self.period][rank][1]

    def neighbors(self, rank: int) -> tuple:
        """Every rank ``rank`` exchanges with in some round of the period (ascending).

        Parameters
        ----------
        rank : int
            A rank in ``[0, size)``.
        """
        out = set()
        for links in self._links:
            out.update(links[rank][0])
            out.update(links[rank][1])
        return tuple(sorted(out))

    def degree(self, rank: int, t: int = 0) -> int:
        """How many ranks ``rank`` sends to in round ``t``.

        Parameters
        ----------
        rank : int
            A rank in ``[0, size)``.
        t : int, optional
            The gossip round.
        """
        return len(self.send_to(rank, t))

    def max_degree(self) -> int:
        """The largest number of ranks any rank sends to in any round."""
        return max(len(self.send_to(r, t)) for r in range(self.size) for t in range(self.period))

    # -- how fast it mixes ---------------------------------------------------
    @property
    def spectral_gap(self) -> float:
        """``1 - ||W - J||_2`` (static) or the same of the period's product (time-varying); 1: exact in one
        round (period)."""
        if self._gap is None:
            self._gap = 1.0 - self._beta()
        return self._gap

    @property
    def rate(self) -> float:
        """The factor by which exact gossip shrinks the consensus distance per round, at least (asymptotically
        exactly for a generic start): ``(1 - spectral_gap) ** (2 / period)``."""
        return max(0.0, 1.0 - self.spectral_gap) ** (2.0 / self.period)

    def _beta(self):
        size = self.size
        if size == 1:
            return 0.0
        prod = np.eye(size)
        for m in self._matrices:
            prod = m @ prod
        j = np.full((size, size), 1.0 / size)
        if self.static and self.symmetric:
            eig = np.sort(np.abs(np.linalg.eigvalsh((prod + prod.T) / 2 - j)))
            return float(min(1.0, eig[-1]))
        return float(min(1.0, np.linalg.norm(prod - j, 2)))

    # -- identity -------------------------------------------------------------
    def digest(self) -> bytes:
        """32 bytes that differ for any difference in size, period or any weight (for agreement checks)."""
        h = hashlib.sha256()
        h.update(struct.pack("<QQ", self.size, self.period))
        for m in self._matrices:
            rows, cols = np.nonzero(m)
            h.update(np.stack([rows, cols]).astype("<i8").tobytes())
            h.update(m[rows, cols].astype("<f8").tobytes())
        return h.digest()

    def describe(self) -> dict:
        """Name, size, period, degrees, spectral gap and rate (what the docs and the benchmark print).

        Examples
        --------
        >>> from gcomp.decentralized import topology
        >>> info = topology("ring", 4).describe()
        >>> info["degrees"], round(info["spectral_gap"], 4), round(info["rate"], 4)
        ([2], 0.6667, 0.1111)
        """
        degrees = sorted({self.degree(r, t) for r in range(self.size) for t in range(self.period)})
        return {"name": self.name, "size": self.size, "period": self.period, "degrees": degrees,
                "spectral_gap": self.spectral_gap, "rate": self.rate}

    def __repr__(self):
        return (f"Topology({self.name!r}, size={self.size}, period={self.period}, "
                f"spectral_gap={self.spectral_gap:.4g})")

    def __eq__(self, other):
        return isinstance(other, Topology) and self.digest() == other.digest()

    def __hash__(self):
        return hash(self.digest())

    # -- validation -----------------------------------------------------------
    def _validate(self):
        name, size = self.name, self.size
        for t, m in enumerate(self._matrices):
            where = f"topology {name!r}" + (f" round {t}" if self.period > 1 else "")
            if not np.all(np.isfinite(m)):
                raise ConfigError(f"{where}: expected finite mixing weights, found NaN or Inf")
            neg = np.argwhere(m < 0)
            if neg.size:
                i, j = neg[0]
                raise ConfigError(f"{where}: expected non-negative mixing weights, found W[{i}, {j}] = {m[i, j]:.6g}")
            rows = m.sum(axis=1)
            bad = np.flatnonzero(np.abs(rows - 1.0) > TOL)
            if bad.size:
                raise ConfigError(f"{where}: expected every row of the mixing matrix to sum to 1 (row-stochastic), "
                                  f"found row {bad[0]} summing to {rows[bad[0]]:.12g}"
                                  + (f" (and {bad.size - 1} more rows)" if bad.size > 1 else ""))
            if self.symmetric:
                asym = np.argwhere(np.abs(m - m.T) > TOL)
                if asym.size:
                    i, j = asym[0]
                    raise ConfigError(f"{where}: expected a symmetric mixing matrix, found W[{i}, {j}] = {m[i, j]:.6g} "
                                      f"but W[{j}, {i}] = {m[j, i]:.6g}")
            else:
                cols = m.sum(axis=0)
                bad = np.flatnonzero(np.abs(cols - 1.0) > TOL)
                if bad.size:
                    raise ConfigError(f"{where}: expected every column of the mixing matrix to sum to 1 (doubly "
                                      f"stochastic: else the average drifts), found column {bad[0]} summing to "
                                      f"{cols[bad[0]]:.12g}")
        union = np.zeros((size, size), bool)
        for m in self._matrices:
            union |= (m > 0) | (m.T > 0)
        components = _components(union)
        if len(components) > 1:
            shown = "; ".join(str(sorted(c)) if len(c) <= 8 else f"{len(c)} ranks from {min(c)}" for c in components[:4])
            raise ConfigError(f"topology {name!r}: expected a connected graph (else the groups never agree), found "
                              f"{len(components)} components: {shown}")
        if size > 1 and self._beta() >= 1.0 - 1e-12:
            raise ConfigError(f"topology {name!r}: its mixing never converges (spectral gap 0: an eigenvalue of "
                              "magnitude 1 besides the average, e.g. a bipartite graph with no self-weight); give "
                              "every rank a positive self-weight (Metropolis-Hastings weights do)")

    def _round_links(self, m):
        size = self.size
        links = []
        for i in range(size):
            send = tuple(int(j) for j in np.flatnonzero(m[:, i] > 0) if j != i)
            recv = tuple(int(j) for j in np.flatnonzero(m[i, :] > 0) if j != i)
            links.append((send, recv))
        return links


def _components(adj):
    size = adj.shape[0]
    seen = np.zeros(size, bool)
    out = []
    for start in range(size):
        if seen[start]:
            continue
        comp, stack = [], [start]
        seen[start] = True
        while stack:
            i = stack.pop()
            comp.append(i)
            for j in np.flatnonzero(adj[i] & ~seen):
                seen[j] = True
                stack.append(int(j))
        out.append(comp)
    return out


# -- builders ---------------------------------------------------------------------
def torus_shape(size: int) -> tuple:
    """``(rows, cols)`` with ``rows * cols == size``, ``rows <= cols``, as square as possible (1 x P for a prime).

    The shape ``topology("torus", size)`` uses.

    Parameters
    ----------
    size : int
        The number of ranks, at least 1.

    Examples
    --------
    >>> from gcomp.decentralized import torus_shape
    >>> torus_shape(12), torus_shape(7)
    ((3, 4), (1, 7))
    """
    rows = int(math.isqrt(size))
    while size % rows:
        rows -= 1
    return rows, size // rows


def _ring(size):
    return [sorted({(i - 1) % size, (i + 1) % size} - {i}) for i in range(size)]


def _torus(size, shape=None):
    rows, cols = shape or torus_shape(size)
    if rows * cols != size:
        raise ConfigError(f"topology 'torus': expected rows x cols == {size} ranks, found {rows} x {cols}")
    out = []
    for i in range(size):
        r, c = divmod(i, cols)
        peers = {((r - 1) % rows) * cols + c, ((r + 1) % rows) * cols + c, r * cols + (c - 1) % cols,
                 r * cols + (c + 1) % cols}
        out.append(sorted(peers - {i}))
    return out


def _complete(size):
    return [[j for j in range(size) if j != i] for i in range(size)]


def _star(size):
    return [list(range(1, size))] + [[0] for _ in range(1, size)]


def exponential_period(size: int) -> int:
    """``ceil(log2 P)`` rounds (1 for P <= 2)."""
    return max(1, math.ceil(math.log2(size))) if size > 1 else 1


def _exponential(size):
    mats = []
    for k in range(exponential_period(size)):
        m = np.zeros((size, size))
        if size == 1:
            m[0, 0] = 1.0
        for i in range(size if size > 1 else 0):
            m[i, i] += 0.5
            m[i, (i - 2**k) % size] += 0.5
        mats.append(m)
    return mats


def _parse_adjacency(spec, size):
    """A list of neighbour lists or a 2-D array -> a symmetric bool adjacency (no diagonal), validated."""
    if isinstance(spec, np.ndarray) or type(spec).__module__.startswith("torch"):
        a = np.asarray(spec)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ConfigError(f"expected an adjacency matrix of shape (P, P), found shape {a.shape}")
        if size is not None and a.shape[0] != size:
            raise ConfigError(f"expected a {size} x {size} adjacency matrix (one row per rank), found {a.shape}")
        if not np.all(np.isfinite(a.astype(np.float64))):
            raise ConfigError("expected a finite adjacency matrix, found NaN or Inf")
        adj = a != 0
        np.fill_diagonal(adj, False)
        asym = np.argwhere(adj != adj.T)
        if asym.size:
            i, j = asym[0]
            raise ConfigError(f"expected a symmetric adjacency matrix (links go both ways), found A[{i}, {j}] = "
                              f"{a[i, j]!r} but A[{j}, {i}] = {a[j, i]!r}")
        return adj
    if not isinstance(spec, (list, tuple)):
        raise ConfigError(f"expected a topology name ({', '.join(TOPOLOGIES)}), a list of neighbour lists or an "
                          f"adjacency matrix, found {type(spec).__name__}")
    n = len(spec)
    if size is not None and n != size:
        raise ConfigError(f"expected one neighbour list per rank ({size}), found {n}")
    adj = np.zeros((n, n), bool)
    for i, peers in enumerate(spec):
        if isinstance(peers, (str, bytes)) or not isinstance(peers, (list, tuple, set, frozenset, range, np.ndarray)):
            raise ConfigError(f"expected rank {i}'s neighbours as a list of ranks, found {type(peers).__name__}")
        for j in peers:
            if isinstance(j, (bool, np.bool_)) or not isinstance(j, (int, np.integer)) or not 0 <= int(j) < n:
                raise ConfigError(f"rank {i}'s neighbour {j!r} is not a rank in [0, {n})")
            if int(j) == i:
                raise ConfigError(f"rank {i} lists itself as a neighbour (self-weights come from the mixing weights)")
            adj[i, int(j)] = True
    asym = np.argwhere(adj != adj.T)
    if asym.size:
        i, j = asym[0]
        raise ConfigError(f"expected symmetric neighbour lists (links go both ways): rank {i} lists {j} but rank {j} "
                          f"does not list {i}")
    return adj


def _weights_for(adj, weights, name):
    size = adj.shape[0]
    deg = adj.sum(axis=1)
    if weights is None or (isinstance(weights, str) and weights == "metropolis"):
        m = np.zeros((size, size))
        for i, j in np.argwhere(adj):
            m[i, j] = 1.0 / (1.0 + max(deg[i], deg[j]))
    elif isinstance(weights, str) and weights == "max-degree":
        m = adj / (1.0 + (deg.max() if size else 0))
    elif isinstance(weights, str):
        raise ConfigError(f"unknown mixing weights {weights!r}; known: {', '.join(WEIGHTINGS)}, or a P x P matrix")
    else:
        m = np.array(weights, dtype=np.float64, copy=True)
        if m.shape != (size, size):
            raise ConfigError(f"topology {name!r}: expected a {size} x {size} weight matrix, found shape {m.shape}")
        off = m.copy()
        np.fill_diagonal(off, 0.0)
        stray = np.argwhere((off != 0) & ~adj)
        if stray.size:
            i, j = stray[0]
            raise ConfigError(f"topology {name!r}: weight W[{i}, {j}] = {m[i, j]:.6g} on ranks that are not "
                              "neighbours (expected 0 off the graph's edges)")
        return m
    np.fill_diagonal(m, 0.0)
    np.fill_diagonal(m, 1.0 - m.sum(axis=1))
    return m


def topology(spec, size: int | None = None, *, weights=None) -> Topology:
    """Build and validate a :class:`Topology` over ``size`` ranks (see the module docstring).

    ``spec``: a name (``"ring"``, ``"torus"`` or ``"torus:RxC"``,
    ``"exponential"``, ``"complete"``, ``"star"``), a list of neighbour lists,
    a ``P x P`` adjacency array, or a Topology (returned after checking its
    size).  ``weights``: None / ``"metropolis"`` (default), ``"max-degree"``
    or a ``P x P`` matrix (not for the exponential graph, whose weights are
    fixed at 1/2).  A ConfigError names what is wrong.

    Parameters
    ----------
    spec : str or list of list of int or numpy.ndarray or Topology
        A name from :data:`TOPOLOGIES` (``"torus:RxC"`` chooses the torus's
        shape), ``P`` neighbour lists, a ``P x P`` adjacency array, or a built
        Topology.
    size : int, optional
        The number of ranks; required with a name, checked against the others.
    weights : str or numpy.ndarray, optional
        ``"metropolis"`` (the default), ``"max-degree"`` or a ``P x P`` matrix.

    Returns
    -------
    Topology

    Raises
    ------
    gcomp.errors.ConfigError
        An unknown name, a size that does not fit, or weights that fail the
        checks of :class:`Topology`.

    Examples
    --------
    >>> from gcomp.decentralized import topology
    >>> topology("torus", 12)
    Topology('torus:3x4', size=12, period=1, spectral_gap=0.4)
    >>> topology([[1, 2], [0], [0]]).weights().round(3).tolist()
    [[0.333, 0.333, 0.333], [0.333, 0.667, 0.0], [0.333, 0.0, 0.667]]
    >>> topology("exponential", 8).spectral_gap
    1.0
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1):
        raise ConfigError(f"expected size a positive number of ranks, found {size!r}")
    if isinstance(spec, Topology):
        if size is not None and spec.size != size:
            raise ConfigError(f"expected a topology over {size} ranks, found {spec!r}")
        if weights is not None:
            raise ConfigError("weights= applies to a graph given by name or adjacency, not to a built Topology")
        return spec
    if isinstance(spec, str):
        if size is None:
            raise ConfigError(f"topology {spec!r}: expected size (the number of ranks)")
        size = int(size)
        name, _, arg = spec.partition(":")
        name = name.strip()
        if name == "exponential":
            if weights is not None:
                raise ConfigError("topology 'exponential': its weights are fixed (1/2 self, 1/2 the one peer); "
                                  "expected weights=None")
            if arg:
                raise ConfigError(f"topology 'exponential' takes no argument, found {spec!r}")
            return Topology(_exponential(size), name="exponential", symmetric=size <= 2)
        if name == "torus":
            shape = None
            if arg:
                try:
                    shape = tuple(int(v) for v in arg.lower().split("x"))
                except ValueError:
                    shape = ()
                if len(shape) != 2 or min(shape) < 1:
                    raise ConfigError(f"expected 'torus' or 'torus:RxC' (e.g. torus:2x4), found {spec!r}")
            adj_lists = _torus(size, shape)
            label = "torus:{}x{}".format(*(shape or torus_shape(size)))
        elif arg:
            raise ConfigError(f"topology {name!r} takes no argument, found {spec!r}")
        elif name == "ring":
            adj_lists, label = _ring(size), "ring"
        elif name == "complete":
            adj_lists, label = _complete(size), "complete"
        elif name == "star":
            adj_lists, label = _star(size), "star"
        else:
            raise ConfigError(f"unknown topology {spec!r}; known: {', '.join(TOPOLOGIES)}, a list of neighbour lists "
                              "or an adjacency matrix")
        adj = _parse_adjacency(adj_lists, size)
        return Topology(_weights_for(adj, weights, label), name=label)
    adj = _parse_adjacency(spec, size)
    return Topology(_weights_for(adj, weights, "custom"), name="custom")
