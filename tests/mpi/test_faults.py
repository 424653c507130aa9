"""Faults under real mpiexec: disagreeing ranks raise everywhere, a failing rank ends the job."""

import pytest

from .launch import assert_check, assert_clean, run_mpi, run_mpi_cached

pytest.importorskip("mpi4py")
pytestmark = pytest.mark.slow

# verify, hierarchical, op, key: issue 10 item 4 (settings that change what goes on the wire are agreed on)
MISMATCH_CASES = ["size", "size-same-key", "size-existing-key",
                  "dtype", "compressor", "compressor-params", "compressor-seed", "error-feedback",
                  "algorithm", "verify", "hierarchical", "op", "key", "iallreduce", "oneoff", "verify-first"]


def mismatch_run(n):
    return run_mpi_cached("faults.py", n, "mismatch", timeout=120.0)


def marks(result, case):
    out = {}
    for text in result.markers(f"MARK mismatch-{case}"):
        rank, _, outcome = text.partition(" ")
        out[int(rank.removeprefix("rank="))] = outcome
    return out


@pytest.mark.parametrize("n", (2, 3, 4))
def test_mismatch_job_completes(n):
    """No rank hangs: the job exits 0 well before its timeout and every rank reaches the end."""
    assert_clean(mismatch_run(n), n)


@pytest.mark.parametrize("n", (2, 3, 4))
@pytest.mark.parametrize("case", MISMATCH_CASES)
def test_mismatch_raises_on_every_rank(n, case):
    result = mismatch_run(n)
    assert marks(result, case) == {r: "MismatchError" for r in range(n)}, result.describe(3000)
    assert_check(result, f"mismatch/{case}", n)


@pytest.mark.parametrize("n", (2, 3, 4))
@pytest.mark.parametrize("check", ["size-then-agree", "compressor-then-agree", "compressor-params-then-agree",
                                   "compressor-seed-then-agree", "final-agree", "bad-option-on-one-rank"])
def test_agreeing_call_after_a_mismatch_works(n, check):
    assert_check(mismatch_run(n), f"mismatch/{check}", n)


@pytest.mark.parametrize("case", ["hierarchical-size", "hierarchical-compressor"])
def test_hierarchical_mismatch_raises_on_every_rank(case):
    """Hierarchical mode must check agreement on every rank before its dense intra-group Allreduce:
    otherwise a size mismatch inside a group is an MPI fatal error ("Message truncated") that aborts the
    whole job, and a non-leader's different compressor is never noticed."""
    result = run_mpi_cached("faults.py", 4, "hierarchical-mismatch", timeout=60.0)
    assert not result.timed_out, result.describe()
    assert marks(result, case) == {r: "MismatchError" for r in range(4)}, result.describe(3000)
    assert_clean(result, 4)


DRIFT = [(case, spec) for case in ("two-keys", "one-key", "two-keys-verified")
         for spec in ("topk:ratio=0.05", "fp16", "none")]


@pytest.mark.parametrize("n", (2, 3))
@pytest.mark.parametrize("case,spec", DRIFT)
def test_a_rank_that_missed_a_collective_makes_every_rank_raise(n, case, spec):
    """Issue 10 item 3: rank 1's 5th call fails before its collective; from then on its calls pair with the others'
    previous ones (equal sizes), and every rank raises on every such call instead of summing the wrong buckets."""
    result = run_mpi_cached("faults.py", n, "drift", timeout=120.0)
    assert_clean(result, n)
    assert_check(result, "drift/then-agree", n)
    found = {int(r.removeprefix("rank=")): o.split(",") for r, _, o in
             (m.partition(" ") for m in result.markers(f"MARK drift-{case}-{spec}"))}
    error = "MismatchError" if case == "two-keys-verified" else "SequenceError"
    expected = {r: ["ok"] * 4 + ([error] * 6 if r != 1 else ["RuntimeError"] + [error] * 6) for r in range(n)}
    assert found == expected, result.describe(3000)


def test_exception_on_one_rank_aborts_the_job():
    """``python -m mpi4py script.py``: rank 1's uncaught exception calls MPI_Abort; the others, blocked in a
    compressed Allreduce, are killed at once instead of hanging."""
    timeout = 90.0
    result = run_mpi("faults.py", 4, "abort", timeout=timeout)
    assert not result.timed_out, "the job hung instead of aborting:\n" + result.describe()
    assert result.returncode != 0, result.describe()
    assert result.elapsed < timeout / 3, f"took {result.elapsed:.1f}s to abort"
    assert "RuntimeError: rank 1 fails on purpose" in result.output
    assert sorted(int(t.removeprefix("rank=")) for t in result.markers("MARK abort-before")) == [0, 1, 2, 3]
    assert result.markers("MARK abort-after") == [], "a rank went on past the failed collective"
