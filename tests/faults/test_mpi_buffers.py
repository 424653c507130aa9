"""Issue 10 items 7 and 20: gcomp.mpi takes buffers the way mpi4py does, or refuses them clearly.

Runs on ``MPI.COMM_SELF`` (real MPI, one rank) in this process, so it is fast;
tests/faults/scripts/mpi_buffers.py checks the same conventions at ``-n 3``.
"""

import array

import numpy as np
import pytest

MPI = pytest.importorskip("mpi4py.MPI")
import gcomp.mpi  # noqa: E402
from gcomp.errors import ConfigError  # noqa: E402


@pytest.fixture
def ccomm():
    cc = gcomp.mpi.CompressedComm(MPI.COMM_SELF, "topk:ratio=0.1")
    yield cc
    cc.Free()


def test_count_spec_writes_only_count_entries(ccomm):  # item 7
    x = np.arange(1, 11, dtype=np.float32)
    recv = np.full(10, -1.0, np.float32)
    ccomm.Allreduce([x, 4, MPI.FLOAT], [recv, 4, MPI.FLOAT], op=MPI.SUM)
    np.testing.assert_array_equal(recv[:4], x[:4])  # one rank: the identity
    np.testing.assert_array_equal(recv[4:], -1.0)  # nothing written past count


@pytest.mark.parametrize("spec", [
    lambda a: [a, MPI.DOUBLE],  # datatype of another size than the data
    lambda a: [a, 11, MPI.FLOAT],  # count beyond the data
    lambda a: [a, (4, 2), MPI.FLOAT],  # (count, displacement)
    lambda a: [a, 4, MPI.INT],  # not a float type
    lambda a: [a, 1, 2, 3],
])
def test_bad_buffer_specs_are_refused(ccomm, spec):
    recv = np.zeros(10, np.float32)
    with pytest.raises((TypeError, ValueError)):
        ccomm.Allreduce(MPI.IN_PLACE, spec(recv), op=MPI.SUM)
    assert not recv.any()


def test_none_sendbuf_is_in_place(ccomm):  # item 20
    recv = np.arange(8, dtype=np.float32)
    ccomm.Allreduce(None, recv, op=gcomp.mpi.MEAN)
    np.testing.assert_array_equal(recv, np.arange(8, dtype=np.float32))


def test_generic_float_buffers(ccomm):
    send = array.array("f", [1.0, 2.0, 3.0])
    recv = array.array("f", [0.0, 0.0, 0.0])
    ccomm.Allreduce(send, recv, op=MPI.SUM)
    assert list(recv) == [1.0, 2.0, 3.0]
    mv = memoryview(array.array("d", [4.0, 5.0]))
    ccomm.Allreduce(MPI.IN_PLACE, mv, op=MPI.SUM)
    assert mv.tolist() == [4.0, 5.0]
    with pytest.raises(TypeError, match="format"):
        ccomm.Allreduce(MPI.IN_PLACE, bytearray(16), op=MPI.SUM)


def test_fortran_ordered_arrays(ccomm):
    x = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    recv = np.asfortranarray(np.zeros((3, 4), np.float32))
    ccomm.Allreduce(x, recv, op=MPI.SUM)
    np.testing.assert_array_equal(recv, x)
    with pytest.raises(ValueError, match="contiguous"):
        ccomm.Allreduce(MPI.IN_PLACE, np.zeros((4, 4), np.float32)[:, ::2], op=MPI.SUM)


def test_mixed_dtypes_are_refused(ccomm):
    with pytest.raises(TypeError, match="dtype"):
        ccomm.Allreduce(np.ones(4, np.float64), np.zeros(4, np.float32), op=MPI.SUM)


@pytest.mark.parametrize("spec", ["topk:ratio=0.01", "qsgd", "sign", "powersgd", "fp16"])
def test_one_rank_communicator_is_the_identity(spec):
    cc = gcomp.mpi.CompressedComm(MPI.COMM_SELF, spec)
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    for op in (MPI.SUM, gcomp.mpi.MEAN):
        recv = np.empty_like(x)
        cc.Allreduce(x, recv, op=op)
        np.testing.assert_array_equal(recv, x)
    cc.Free()


def test_other_ops_are_named(ccomm):
    with pytest.raises(ConfigError, match=r"MPI\.MAX"):
        ccomm.Allreduce(MPI.IN_PLACE, np.ones(4, np.float32), op=MPI.MAX)


def test_waitall_takes_gcomp_and_mpi_requests(ccomm):
    a, b = np.ones(16, np.float32), np.full(16, 2.0, np.float32)
    reqs = [ccomm.Iallreduce(MPI.IN_PLACE, a, op=MPI.SUM), ccomm.Iallreduce(MPI.IN_PLACE, b, op=MPI.SUM)]
    buf = np.zeros(1, np.float32)
    reqs.append(MPI.COMM_SELF.Iallreduce(np.ones(1, np.float32), buf, op=MPI.SUM))
    assert gcomp.mpi.Request.Waitall(reqs)
    assert gcomp.mpi.Request.Testall(reqs)
    np.testing.assert_array_equal(a, 1.0)
    np.testing.assert_array_equal(b, 2.0)
    assert buf[0] == 1.0


def test_module_calls_check_the_state_compressor(ccomm):
    """Allreduce and Iallreduce with a state take only the state's compressor (the adaptive policy by its spec)."""
    x = np.ones(2000, np.float32)
    recv = np.empty_like(x)
    for call in (gcomp.mpi.Allreduce, gcomp.mpi.Iallreduce):
        with pytest.raises(ConfigError, match="the state's"):
            call(MPI.COMM_SELF, x, recv, compressor="topk:ratio=0.2", state=ccomm)
        with pytest.raises(TypeError, match="CompressedComm"):
            call(MPI.COMM_SELF, x, recv, compressor="topk:ratio=0.1", state=object())
    gcomp.mpi.Iallreduce(MPI.COMM_SELF, x, recv, compressor="topk:ratio=0.1", state=ccomm).Wait()
    np.testing.assert_array_equal(recv, x)
    seeded = gcomp.mpi.CompressedComm(MPI.COMM_SELF, "randomk:ratio=0.1", seed=5)
    try:  # the spec the state was built from, its seed replaced by the state's seed option
        gcomp.mpi.Allreduce(MPI.COMM_SELF, x, recv, compressor="randomk:ratio=0.1", state=seeded)
        gcomp.mpi.Iallreduce(MPI.COMM_SELF, x, recv, compressor="randomk:ratio=0.1", state=seeded).Wait()
        with pytest.raises(ConfigError, match="the state's"):
            gcomp.mpi.Iallreduce(MPI.COMM_SELF, x, recv, compressor="randomk:ratio=0.2", state=seeded)
    finally:
        seeded.Free()
    spec = "adaptive:ladder=none;topk:ratio=0.01"
    adaptive = gcomp.mpi.CompressedComm(MPI.COMM_SELF, spec, seed=3)
    try:
        recv[:] = 0
        gcomp.mpi.Allreduce(MPI.COMM_SELF, x, recv, compressor=spec, state=adaptive)
        np.testing.assert_array_equal(recv, x)
        gcomp.mpi.Iallreduce(MPI.COMM_SELF, x, recv, compressor=adaptive.policy, state=adaptive).Wait()
        for other in ("adaptive:ladder=none;topk:ratio=0.1", "topk:ratio=0.01"):
            with pytest.raises(ConfigError, match="adaptive policy"):
                gcomp.mpi.Allreduce(MPI.COMM_SELF, x, recv, compressor=other, state=adaptive)
    finally:
        adaptive.Free()


@pytest.mark.slow
def test_buffer_conventions_at_three_ranks():
    import os

    from mpi.launch import run_mpi

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "mpi_buffers.py")
    result = run_mpi(script, 3, timeout=120.0)
    assert result.returncode == 0 and not result.timed_out, result.describe(3000)
    assert sorted(line for line in result.output.splitlines() if line.startswith("BUFFERS")) == [
        f"BUFFERS rank={r} ok" for r in range(3)], result.output[-3000:]


def test_a_call_from_another_thread_while_one_is_in_flight_is_refused(ccomm):  # item 5
    import threading

    gate = threading.Event()
    ccomm._executor.submit(gate.wait)  # hold the communication thread, so the next call stays in flight
    a = np.ones(8, np.float32)
    req = ccomm.Iallreduce(MPI.IN_PLACE, a, op=MPI.SUM)
    errors = []

    def other():
        try:
            ccomm.Allreduce(MPI.IN_PLACE, np.ones(8, np.float32), op=MPI.SUM)
        except ConfigError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(30)
    gate.set()
    req.Wait()
    assert len(errors) == 1 and "thread" in str(errors[0])
    # the same thread may queue several calls, and another thread may call once nothing is in flight
    reqs = [ccomm.Iallreduce(MPI.IN_PLACE, np.ones(8, np.float32), op=MPI.SUM) for _ in range(3)]
    gcomp.mpi.Request.Waitall(reqs)
    t = threading.Thread(target=other)
    t.start()
    t.join(30)
    assert len(errors) == 1
