"""Compressed allreduce algorithms, written once against a Transport; used by the DDP hook and MPI."""

from .allgather import AllgatherAlgorithm
from .allreduce import LinearAllreduce
from .base import Algorithm, CallStats, Pending
from .dense import DenseAllreduce
from .engine import ALGORITHMS, NONFINITE_POLICIES, CompressedAllreduce
from .hierarchical import HierarchicalAllreduce, split_groups
from .scatter_reduce_allgather import ScatterReduceAllgather, chunk_bounds

__all__ = ["Algorithm", "CallStats", "Pending", "DenseAllreduce", "LinearAllreduce", "AllgatherAlgorithm",
           "ScatterReduceAllgather", "chunk_bounds", "HierarchicalAllreduce",
           "split_groups", "CompressedAllreduce", "ALGORITHMS", "NONFINITE_POLICIES"]
