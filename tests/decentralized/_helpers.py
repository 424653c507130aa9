"""Shared helpers: run a gossip on P in-process ranks and look at every rank's vector."""

import numpy as np

from gcomp.decentralized import Gossip
from gcomp.transports import run_local

EPS32 = float(np.finfo(np.float32).eps)


def start_vector(rank, n, seed=0):
    """Rank ``rank``'s initial vector: different per rank, mean ``rank`` (a consensus to reach)."""
    rng = np.random.default_rng([seed, rank])
    return (rng.standard_normal(n) * 2.0 + rank).astype(np.float32)


def consensus_distance(vectors):
    """Mean over ranks of ||x_i - mean||^2, in float64 (the reference)."""
    x = np.stack(vectors).astype(np.float64)
    return float(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())


def run_gossip(size, rounds, *, n=1000, record=False, seed=0, timeout=60.0, **kwargs):
    """Gossip ``rounds`` rounds on ``size`` ranks; returns (initial vectors, final vectors, per-round history or
    None, every rank's Gossip object)."""

    def fn(t):
        x = start_vector(t.rank, n, seed)
        x0 = x.copy()
        g = Gossip(x, transport=t, **kwargs)
        history = [x.copy()] if record else None
        for _ in range(rounds):
            g.step()
            if record:
                history.append(x.copy())
        return x0, x, history, g

    results = run_local(size, fn, timeout=timeout)
    x0 = [r[0] for r in results]
    x1 = [r[1] for r in results]
    history = None
    if record:
        history = [consensus_distance([r[2][k] for r in results]) for k in range(rounds + 1)]
    return x0, x1, history, [r[3] for r in results]
