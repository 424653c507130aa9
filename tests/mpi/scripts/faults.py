"""Per-rank program: what happens when ranks disagree or one rank fails (run by tests/mpi/test_faults.py).

    mpiexec -n 4 python -m mpi4py tests/mpi/scripts/faults.py mismatch
    mpiexec -n 4 python -m mpi4py tests/mpi/scripts/faults.py hierarchical-mismatch
    mpiexec -n 4 python -m mpi4py tests/mpi/scripts/faults.py abort

``mismatch``: buffer sizes, dtypes, compressors, compressor parameters, error
feedback or algorithms that differ across ranks must raise
:class:`gcomp.errors.MismatchError` on *every* rank (each rank prints
``MARK mismatch-<case> rank=<r> <exception type>``), and the next agreeing
call must work (nothing was left half-sent).

``hierarchical-mismatch``: the same for a size mismatch in hierarchical mode.

``drift``: rank 1's communication thread fails once before its collective
(an injected exception) and every rank goes on calling with equal sizes; its
calls then pair with the others' previous ones, which must raise on every
rank from then on (``MARK drift-<case> rank=<r> <outcome per call>``), never
return a wrong sum (issue 10 item 3).

``abort``: rank 1 raises an uncaught exception while the others wait in a
compressed Allreduce; run as ``python -m mpi4py`` the job must end at once
with a non-zero exit code (MPI_Abort), not hang.
"""

import sys

import numpy as np
from _harness import Checks, assert_same, emit, make_input
from mpi4py import MPI

import gcomp.mpi
from gcomp.errors import ConfigError, MismatchError, SequenceError

N = 2048


def expect_mismatch(h, comm, case, call):
    rank = comm.Get_rank()
    with h.check(f"mismatch/{case}"):
        try:
            call()
        except MismatchError as exc:
            emit(f"MARK mismatch-{case} rank={rank} MismatchError")
            assert "differ" in str(exc), str(exc)
        except Exception as exc:
            emit(f"MARK mismatch-{case} rank={rank} {type(exc).__name__}")
            raise AssertionError(f"expected MismatchError, found {type(exc).__name__}: {exc}") from exc
        else:
            emit(f"MARK mismatch-{case} rank={rank} none")
            raise AssertionError("expected MismatchError, the call returned")


def good_call(comm, cc=None):
    """An agreeing call after a refused one: must give comm.Allreduce's result (for 'none')."""
    cc = cc or gcomp.mpi.CompressedComm(comm, "none")
    x = make_input(comm.Get_rank(), N, salt=60)
    want = np.empty_like(x)
    comm.Allreduce(x, want, op=MPI.SUM)
    got = np.empty_like(x)
    cc.Allreduce(x, got, op=MPI.SUM)
    assert_same(got, want, "agreeing call after the mismatch")


def run_mismatch(h, comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    odd = rank % 2 == 1 if size > 1 else False
    last = rank == size - 1

    def sized(n, dtype=np.float32):
        return make_input(rank, n, salt=61, dtype=dtype)

    # 1. buffer sizes differ (every rank but the last agrees)
    cc = gcomp.mpi.CompressedComm(comm, "topk:ratio=0.01")
    x = sized(N + (1 if last else 0))
    expect_mismatch(h, comm, "size", lambda: cc.Allreduce(MPI.IN_PLACE, x, op=gcomp.mpi.MEAN))
    x = sized(N)
    expect_mismatch(h, comm, "size-same-key", lambda: cc.Allreduce(MPI.IN_PLACE, sized(N + 64 * rank), key="w"))
    # an existing key whose buffer changes size on one rank: its memory refuses locally (StateError), and that
    # must not leave the others waiting: every rank raises MismatchError after the agreement step (issue 10 item 2)
    cc.Allreduce(MPI.IN_PLACE, sized(N), key="kept")
    expect_mismatch(h, comm, "size-existing-key",
                    lambda: cc.Allreduce(MPI.IN_PLACE, sized(N + (8 if last else 0)), key="kept"))
    with h.check("mismatch/size-then-agree"):
        cc.Allreduce(MPI.IN_PLACE, x, op=gcomp.mpi.MEAN)  # the same CompressedComm still works
        good_call(comm)
    cc.Free()

    # 2. dtypes differ
    cc = gcomp.mpi.CompressedComm(comm, "topk:ratio=0.01")
    expect_mismatch(h, comm, "dtype", lambda: cc.Allreduce(MPI.IN_PLACE, sized(N, np.float64 if last else np.float32)))
    cc.Free()

    # 3. compressors differ: another kind (a linear one, so even the algorithm differs), other parameters.
    #    Building the CompressedComm is collective and checks the options, so it raises there.
    for case, specs in (("compressor", ("topk:ratio=0.01", "fp16")), ("compressor-params", ("qsgd:levels=4", "qsgd:levels=8")),
                        ("compressor-seed", ("randomk:ratio=0.1,seed=1", "randomk:ratio=0.1,seed=2"))):
        expect_mismatch(h, comm, case, lambda specs=specs: gcomp.mpi.CompressedComm(comm, specs[1] if odd else specs[0]))
        with h.check(f"mismatch/{case}-then-agree"):
            good_call(comm)

    # 4. error feedback, algorithm, verify or hierarchical mode differ
    for case, options in (("error-feedback", ({"error_feedback": "residual"}, {"error_feedback": "none"})),
                          ("algorithm", ({"algorithm": "allgather"}, {"algorithm": "scatter-reduce-allgather"})),
                          ("verify", ({"verify": "always"}, {"verify": False})),
                          ("hierarchical", ({"hierarchical": None}, {"hierarchical": 0}))):
        expect_mismatch(h, comm, case, lambda options=options: gcomp.mpi.CompressedComm(comm, "sign", **options[1 if odd else 0]))
    with h.check("mismatch/bad-option-on-one-rank"):  # the bad rank raises ConfigError, the others MismatchError
        try:
            gcomp.mpi.CompressedComm(comm, "sign", algorithm="nope" if last else "auto")
        except (MismatchError, ConfigError) as exc:
            assert isinstance(exc, ConfigError if last else MismatchError), type(exc).__name__
        else:
            raise AssertionError("expected an error on every rank")

    # 4b. op or key differ on one call
    cc = gcomp.mpi.CompressedComm(comm, "topk:ratio=0.01")
    expect_mismatch(h, comm, "op", lambda: cc.Allreduce(MPI.IN_PLACE, sized(N), op=MPI.SUM if last else gcomp.mpi.MEAN))
    expect_mismatch(h, comm, "key", lambda: cc.Allreduce(MPI.IN_PLACE, sized(N), key="b" if last else "a"))
    cc.Free()

    # 5. nonblocking: Wait() raises the MismatchError
    cc = gcomp.mpi.CompressedComm(comm, "topk:ratio=0.01")
    expect_mismatch(h, comm, "iallreduce", lambda: cc.Iallreduce(MPI.IN_PLACE, sized(N + (7 if last else 0))).Wait())
    cc.Free()

    # 6. the one-off call
    expect_mismatch(h, comm, "oneoff", lambda: gcomp.mpi.Allreduce(comm, sized(N + (1 if last else 0)), sized(N + (1 if last else 0)),
                                                                    compressor="topk:ratio=0.01"))
    # 7. verify="first": checked on the first use of each key
    cc = gcomp.mpi.CompressedComm(comm, "topk:ratio=0.01", verify="first")
    expect_mismatch(h, comm, "verify-first", lambda: cc.Allreduce(MPI.IN_PLACE, sized(N + (1 if last else 0)), key="k"))
    cc.Free()
    with h.check("mismatch/final-agree"):
        good_call(comm)


def run_hierarchical_mismatch(h, comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    cc = gcomp.mpi.CompressedComm(comm, "topk:ratio=0.01", hierarchical=lambda r: r // 2)
    # the last rank (not a group leader) disagrees with its group leader
    x = make_input(rank, N + (1 if rank == size - 1 else 0), salt=62)
    expect_mismatch(h, comm, "hierarchical-size", lambda: cc.Allreduce(MPI.IN_PLACE, x, op=gcomp.mpi.MEAN))
    cc.Free()
    expect_mismatch(h, comm, "hierarchical-compressor", lambda: gcomp.mpi.CompressedComm(
        comm, "topk:ratio=0.01" if rank % 2 == 0 else "sign", hierarchical=lambda r: r // 2))
    with h.check("mismatch/hierarchical-then-agree"):
        good_call(comm)


DRIFT_CASES = {
    # DDP-like: two keys of equal size in turn, checked once per key
    "two-keys": ({"verify": "first"}, ("a", "b")),
    # one key step after step, checked every call (the default): the fingerprint agrees, the steps do not
    "one-key": ({}, ("w",)),
    # the default with two keys: the per-call fingerprint already differs (the key)
    "two-keys-verified": ({}, ("a", "b")),
}


def run_drift(h, comm):
    rank = comm.Get_rank()
    for case, (options, keys) in DRIFT_CASES.items():
        for spec in ("topk:ratio=0.05", "fp16", "none"):
            cc = gcomp.mpi.CompressedComm(comm, spec, **options)
            complete, calls = cc.engine.complete, [0]

            def failing(pending, out=None, complete=complete, calls=calls):
                calls[0] += 1
                if rank == 1 and calls[0] == 5:
                    raise RuntimeError("injected: the communication thread fails before its collective")
                return complete(pending, out=out)

            cc.engine.complete = failing
            # rank 1 makes one call more, so that every rank communicates as often and the job ends
            outcomes = []
            for i in range(10 + (rank == 1)):
                x = make_input(rank, N, step=i, salt=65)
                try:
                    cc.Allreduce(MPI.IN_PLACE, x, op=gcomp.mpi.MEAN, key=keys[i % len(keys)])
                    outcomes.append("ok")
                except (SequenceError, MismatchError, RuntimeError) as exc:
                    outcomes.append(type(exc).__name__)
            emit(f"MARK drift-{case}-{spec} rank={rank} {','.join(outcomes)}")
            cc.Free()
    with h.check("drift/then-agree"):
        good_call(comm)


def run_abort(h, comm):
    rank = comm.Get_rank()
    cc = gcomp.mpi.CompressedComm(comm, "topk:ratio=0.01")
    x = make_input(rank, N, salt=64)
    cc.Allreduce(MPI.IN_PLACE, x, op=gcomp.mpi.MEAN)
    emit(f"MARK abort-before rank={rank}")
    if rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    cc.Allreduce(MPI.IN_PLACE, x, op=gcomp.mpi.MEAN)  # waits for rank 1 forever, unless the job is aborted
    cc.Allreduce(MPI.IN_PLACE, x, op=gcomp.mpi.MEAN)
    emit(f"MARK abort-after rank={rank}")


def main():
    comm = MPI.COMM_WORLD
    h = Checks(comm)
    mode = sys.argv[1]
    {"mismatch": run_mismatch, "hierarchical-mismatch": run_hierarchical_mismatch, "drift": run_drift,
     "abort": run_abort}[mode](h, comm)
    h.done()


if __name__ == "__main__":
    main()
