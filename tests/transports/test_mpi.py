"""MPITransport.exchange, neighbor_exchange, split and split_by_node under real ``mpiexec -n 3`` and ``-n 2``.

One launch of tests/transports/scripts/exchange_split.py per size does the
work; each test reads one check's ``CHECK`` markers (see tests/mpi/launch.py).
"""

import os

import pytest

pytest.importorskip("mpi4py")

try:  # pytest puts tests/ on sys.path (tests/mpi and tests/transports are packages under it)
    from mpi.launch import assert_check, assert_clean, run_mpi_cached
except ImportError:  # pragma: no cover - run from the repository root in another import mode
    from tests.mpi.launch import assert_check, assert_clean, run_mpi_cached

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "exchange_split.py")
SIZES = (3, 2)
CHECKS = ["exchange/ring", "exchange/ring-both-ways", "exchange/empty-and-bytes", "exchange/asymmetric",
          "exchange/bystander", "exchange/validation", "neighbor/ring", "neighbor/channel",
          "neighbor/check-abandons-sends", "neighbor/post", "neighbor/timeout", "split/none-and-key", "split/parity-large-keys",
          "split/bad-color", "split_by_node", "caller-comm-not-freed", "nopickle/exchange-and-split"]


def job(n):
    return run_mpi_cached(SCRIPT, n, timeout=120.0)


@pytest.mark.parametrize("n", SIZES)
def test_job_completes_on_every_rank(n):
    assert_clean(job(n), n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("check", CHECKS)
def test_check(n, check):
    assert_check(job(n), check, n)
