"""gcomp.mpi under real ``mpiexec -n 2`` and ``-n 4``: results against their documented references.

One launch of tests/mpi/scripts/correctness.py per world size does all the
work (an 8-rank-on-2-cores import of torch alone takes seconds); each test
below reads the ``CHECK`` markers of one part of it.  What each reference is:
tests/mpi/scripts/_harness.py.
"""

import pytest

from gcomp.compressors import REGISTRY

from .launch import assert_check, assert_clean, run_mpi_cached

pytest.importorskip("mpi4py")
pytestmark = pytest.mark.slow

SIZES = (2, 3, 4)  # an odd P too: P = 2, 4 hid a MEAN rounding difference
NAMES = sorted(REGISTRY)
LINEAR = [name for name in NAMES if REGISTRY[name].linear]
REFERENCE_CASES = ([(name, alg) for name in NAMES for alg in ("allgather", "scatter-reduce-allgather", "auto")]
                   + [(name, "allreduce") for name in LINEAR])


@pytest.fixture(scope="session")
def mpi_tmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("mpi-correctness"))


def correctness(n, tmp):
    return run_mpi_cached("correctness.py", n, "--tmp", tmp, timeout=400.0)


@pytest.mark.parametrize("n", SIZES)
def test_job_completes_on_every_rank(n, mpi_tmp):
    assert_clean(correctness(n, mpi_tmp), n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("check", ["none/comm-allreduce-n1", "none/comm-allreduce-n7", "none/comm-allreduce-n3001",
                                   "none/float64-buffers", "none/empty"])
def test_none_equals_comm_allreduce(n, check, mpi_tmp):
    """``none`` gives exactly ``comm.Allreduce`` (SUM; MEAN is that divided by P), in place or not, one-off or not."""
    assert_check(correctness(n, mpi_tmp), check, n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(("name", "algorithm"), REFERENCE_CASES)
def test_compressor_matches_reference(n, name, algorithm, mpi_tmp):
    """Every registered compressor, through each algorithm it can use, over three steps (MEAN, SUM, MEAN)."""
    assert_check(correctness(n, mpi_tmp), f"ref/{name}/{algorithm}", n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", ["topk", "qsgd", "sign", "powersgd"])
def test_scatter_reduce_allgather_with_empty_chunks(n, name, mpi_tmp):
    """100 entries: chunks are 64-aligned, so some ranks own an empty chunk."""
    assert_check(correctness(n, mpi_tmp), f"ref/{name}/scatter-reduce-allgather-small", n)


BUFFER_CHECKS = ["buffers/in-place", "buffers/numpy-float16", "buffers/numpy-float64", "buffers/torch-float32",
                 "buffers/torch-float16", "buffers/torch-float64", "buffers/torch-bfloat16",
                 "buffers/sum-vs-mean-allgather", "buffers/sum-vs-mean-scatter-reduce-allgather",
                 "buffers/bad-op", "buffers/bad-buffers"]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("check", BUFFER_CHECKS)
def test_buffers_and_ops(n, check, mpi_tmp):
    """IN_PLACE, numpy/torch buffers of float16/32/64 (and bfloat16 tensors), SUM vs MEAN, MPI.MAX -> ConfigError."""
    assert_check(correctness(n, mpi_tmp), check, n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("check", ["iallreduce/qsgd", "iallreduce/topk", "iallreduce/powersgd", "iallreduce/fp16",
                                   "oneoff/topk", "oneoff/qsgd", "oneoff/randomk", "oneoff/with-state"])
def test_nonblocking_and_one_off(n, check, mpi_tmp):
    assert_check(correctness(n, mpi_tmp), check, n)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("check", ["ef/residual-allgather-topk", "ef/default-key-is-size"])
def test_error_feedback_per_key(n, check, mpi_tmp):
    """Residual feedback follows EF-SGD per user key (default key: the buffer's length)."""
    assert_check(correctness(n, mpi_tmp), check, n)


@pytest.mark.parametrize("n", SIZES)
def test_ef21_result_is_the_aggregate(n, mpi_tmp):
    """EF21's collective result must be the receivers' aggregate G (mean of the ranks' estimates g),
    not only this step's increment mean_i D(C(x_i - g_i)) (``ErrorFeedback.after_reduce``)."""
    assert_check(correctness(n, mpi_tmp), "ef/ef21-allgather-topk", n)


@pytest.mark.parametrize("n", SIZES)
def test_powersgd_residual_feedback_keeps_the_mean(n, mpi_tmp):
    """Full-rank PowerSGD with residual feedback must return the mean at every step: each rank keeps
    ``v - result / P`` (``ResidualFeedback.after_phases``), so the residuals sum to zero when nothing is lost;
    keeping ``v - result`` would make them sum to (1 - P) * result."""
    assert_check(correctness(n, mpi_tmp), "ef/powersgd-residual-allreduce", n)


STATE_CASES = ["topk-allgather-residual", "qsgd-scatter-reduce-allgather-residual", "sign-scatter-reduce-allgather-ef21",
               "powersgd-allreduce-residual", "dgc-allgather-dgc"]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("case", STATE_CASES)
def test_state_dict_round_trip(n, case, mpi_tmp):
    """Per-rank state_dict -> torch.save -> torch.load(weights_only=True) -> a fresh CompressedComm continues identically."""
    assert_check(correctness(n, mpi_tmp), f"state/{case}", n)


HIERARCHICAL_CHECKS = ["hier/pairs-none", "hier/pairs-topk-allgather", "hier/pairs-qsgd-scatter-reduce-allgather",
                       "hier/pairs-sign-allgather", "hier/node-none", "hier/node-topk", "hier/bad-color"]


@pytest.mark.parametrize("check", HIERARCHICAL_CHECKS)
def test_hierarchical(check, mpi_tmp):
    """-n 4 with ``hierarchical=lambda r: r // 2`` (dense pair sums, compressed sum between leaders 0 and 2,
    broadcast, / 4 for MEAN) and ``"node"`` (one machine: one leader, so no compressed hop)."""
    assert_check(correctness(4, mpi_tmp), check, 4)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", ["patched", *NAMES])
def test_no_pickle(n, name, mpi_tmp):
    """pickle.dumps/loads/dump/load and mpi4py's pickle hooks raise; every compressor still runs through
    Allreduce and Iallreduce with every algorithm and feedback (and hierarchical mode at -n 4)."""
    assert_check(correctness(n, mpi_tmp), f"nopickle/{name}", n)
