"""The adaptive policy through gcomp.mpi under ``mpiexec -n 3`` (hierarchical groups [[0, 1], [2]], a scripted
link per rank, different on every rank): the ranks switch to compression and back the same way, their results
stay identical, and a checkpoint restores the policy (tests/adaptive/mpi_adaptive.py)."""

import os

import pytest

pytest.importorskip("mpi4py")

from tests.mpi.launch import assert_check, assert_clean, run_mpi  # noqa: E402

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_adaptive.py")


def test_adaptive_policy_under_mpiexec():
    result = run_mpi(SCRIPT, 3, timeout=180.0)
    assert_clean(result, 3)
    assert_check(result, "adaptive/hierarchical", 3)
