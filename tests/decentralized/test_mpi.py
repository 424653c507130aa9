"""Gossip under real ``mpiexec -n 3`` (an odd P): one launch of scripts/gossip_mpi.py, one test per check."""

import os

import pytest

pytest.importorskip("mpi4py")

try:  # pytest puts tests/ on sys.path
    from mpi.launch import assert_check, assert_clean, run_mpi_cached
except ImportError:  # pragma: no cover
    from tests.mpi.launch import assert_check, assert_clean, run_mpi_cached

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "gossip_mpi.py")
N = 3
CHECKS = ["choco-ring-topk", "choco-exponential-topk", "choco-ring-qsgd", "exact-exponential", "checkpoint-bit-identical",
          "mismatch-at-construction", "mismatch-in-packets", "nonfinite-raise", "stopped-neighbour", "nopickle"]


def job():
    return run_mpi_cached(SCRIPT, N, timeout=180.0)


def test_job_completes_on_every_rank():
    assert_clean(job(), N)


@pytest.mark.parametrize("check", CHECKS)
def test_check(check):
    assert_check(job(), check, N)


def test_bytes_per_round_equal_across_ranks():
    sent = [int(text.split()[1]) for text in job().markers("BYTES")]
    assert len(sent) == N and max(sent) - min(sent) <= 0.1 * max(sent), sent
