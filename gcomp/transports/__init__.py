"""Transports: how collective algorithms move bytes (torch.distributed, mpi4py, in-process)."""

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
