"""gcomp inside Flower: compressed client updates with error feedback (optional extra ``gcomp[flower]``).

* :func:`compression_mod`: the client-side Flower mod (:mod:`gcomp.flower.mod`);
* :class:`CompressionStrategy`: the server-side wrapper around FedAvg or any
  array-aggregating strategy, which decodes and checks every packet and counts
  the bytes (:mod:`gcomp.flower.strategy`);
* :func:`iid_partition`, :func:`dirichlet_partition`: client data splits
  (:mod:`gcomp.flower.partition`).

See docs/federated.md.  Flower itself is imported only when a mod or strategy
is used, so ``import gcomp.flower`` works without it (the partitions need only
numpy).
"""

from .mod import compression_mod
from .partition import dirichlet_partition, iid_partition, label_histogram, partition
from .records import PACKET_KEY, PACKET_STYPE

__all__ = ["compression_mod", "CompressionStrategy", "iid_partition", "dirichlet_partition", "partition",
           "label_histogram", "PACKET_KEY", "PACKET_STYPE"]


def __getattr__(name):
    if name in ("CompressionStrategy", "RejectedUpdate"):
        from . import strategy

        return getattr(strategy, name)
    raise AttributeError(f"module 'gcomp.flower' has no attribute {name!r}")
