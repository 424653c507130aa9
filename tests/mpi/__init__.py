"""Tests that run gcomp.mpi for real under ``mpiexec`` (see tests/mpi/launch.py and docs/mpi.md)."""
