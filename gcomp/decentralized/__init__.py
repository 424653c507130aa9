"""Decentralized training: gossip with the neighbours on a topology (exact gossip and CHOCO-SGD).

::

    import gcomp.decentralized as gd

    g = gd.Gossip(model, topology="ring", compressor="topk:ratio=0.01", gamma=0.05)
    ...
    optimizer.step()
    g.step()

* ``gcomp.decentralized.topology``: ring, 2-D torus, one-peer exponential
  graph, complete, star or any user graph; Metropolis-Hastings or given
  weights, validated; spectral gap and rate;
* ``gcomp.decentralized.gossip``: :class:`Gossip` for a torch model or a
  numpy vector over any gcomp Transport (torch.distributed, mpi4py,
  in-process), with checkpointable state and the consensus distance;
* ``gcomp.decentralized.packets``: the prefix every gossip packet carries.

See docs/decentralized.md.
"""

from .gossip import ALGORITHMS, INITIAL, NONFINITE_POLICIES, Gossip, GossipStats, choco_scale, count_sketch, spectral_summary
from .topology import TOPOLOGIES, Topology, topology, torus_shape

__all__ = ["Gossip", "GossipStats", "Topology", "topology", "TOPOLOGIES", "ALGORITHMS", "NONFINITE_POLICIES", "INITIAL",
           "choco_scale", "count_sketch", "spectral_summary", "torus_shape"]
