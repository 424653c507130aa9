"""Transports: how collective algorithms move bytes (torch.distributed, mpi4py, in-process).

Collectives (``allreduce_``, ``allgatherv``, ``alltoallv``, ``broadcast_``, ``barrier``), a
counted point-to-point ``exchange``, and group management (``split``,
``split_by_node``, ``free``); see :class:`Transport`.
"""

from .base import ByteCounter, Transport
from .local import LocalGroup, LocalTransport, run_local

__all__ = ["Transport", "ByteCounter", "LocalGroup", "LocalTransport", "run_local", "TorchTransport", "MPITransport"]


def __getattr__(name):
    if name == "TorchTransport":
        from .torch_dist import TorchTransport

        return TorchTransport
    if name == "MPITransport":
        from .mpi import MPITransport

        return MPITransport
    raise AttributeError(name)
