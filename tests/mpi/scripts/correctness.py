"""Per-rank program: gcomp.mpi results against their documented references (run by tests/mpi/test_correctness.py).

    mpiexec -n 4 python -m mpi4py tests/mpi/scripts/correctness.py --tmp DIR

Prints one ``CHECK <name> rank=<r> ok|FAIL`` line per rank and check, then
``DONE``.  Exact comparisons use ``error_feedback="none"`` unless the check is
about error feedback itself.  The last section patches pickle (and mpi4py's
pickle hooks) to raise and runs every compressor again.
"""

import argparse
import os
import pickle

import numpy as np
import torch
from _harness import (
    Checks,
    Reference,
    all_configs,
    assert_raises,
    assert_reference,
    assert_same,
    gather_rows,
    linear_names,
    make_input,
    same_on_every_rank,
)
from mpi4py import MPI

import gcomp
import gcomp.mpi
from gcomp.errors import ConfigError, StateError

N = 3001  # not a multiple of the 64-entry chunk alignment, nor of any bucket size
SEED = 11
ALGORITHMS = ("allgather", "scatter-reduce-allgather")


def ccomm(comm, spec, **options):
    options.setdefault("error_feedback", "none")
    options.setdefault("seed", SEED)
    return gcomp.mpi.CompressedComm(comm, spec, **options)


def last_algorithm(cc, key=None):
    stats = [s for s in cc.stats if key is None or s.key == key]
    return stats[-1].algorithm


# ---------------------------------------------------------------------------
def section_none(h, comm):
    size = comm.Get_size()
    for n in (1, 7, N):
        with h.check(f"none/comm-allreduce-n{n}"):
            cc = ccomm(comm, "none")
            x = make_input(comm.Get_rank(), n, salt=1)
            want = np.empty_like(x)
            comm.Allreduce(x, want, op=MPI.SUM)
            got = np.empty_like(x)
            cc.Allreduce(x, got, op=MPI.SUM)
            assert cc.stats[-1].algorithm == "dense", cc.stats[-1].algorithm
            assert_same(got, want, "SUM")
            got_mean = np.empty_like(x)
            cc.Allreduce(x, got_mean, op=gcomp.mpi.MEAN)
            assert_same(got_mean, want / np.float32(size), "MEAN")
            inplace = x.copy()
            cc.Allreduce(MPI.IN_PLACE, inplace, op=MPI.SUM)
            assert_same(inplace, want, "IN_PLACE SUM")
            # one-off call, and the explicit linear allreduce of "none" (sums x / P)
            oneoff = np.empty_like(x)
            gcomp.mpi.Allreduce(comm, x, oneoff, compressor="none", op=MPI.SUM)
            assert_same(oneoff, want, "gcomp.mpi.Allreduce SUM")
            cc.Free()
    with h.check("none/float64-buffers"):
        # float64 travels as float64 on the dense path: exactly comm.Allreduce, beyond float32's range too
        cc = ccomm(comm, "none")
        x = make_input(comm.Get_rank(), N, salt=2, dtype=np.float64) * 1e300
        want = np.empty(N, np.float64)
        comm.Allreduce(x, want, op=MPI.SUM)
        got = np.empty_like(x)
        cc.Allreduce(x, got, op=MPI.SUM)
        assert np.isfinite(got).all()
        assert_same(got, want, "float64 SUM (exact)")
        cc.Allreduce(x, got, op=gcomp.mpi.MEAN)
        assert_same(got, want / np.float64(size), "float64 MEAN (exact)")
        cc.Free()
    with h.check("none/empty"):
        cc = ccomm(comm, "topk:ratio=0.1")
        got = np.zeros(0, np.float32)
        cc.Allreduce(MPI.IN_PLACE, got, op=gcomp.mpi.MEAN)
        assert got.shape == (0,)
        cc.Free()


# ---------------------------------------------------------------------------
def section_references(h, comm):
    rank = comm.Get_rank()
    configs = all_configs()
    cases = [(name, alg) for name in configs for alg in ALGORITHMS]
    cases += [(name, "allreduce") for name in linear_names()]
    cases += [(name, "auto") for name in configs]
    for i, (name, alg) in enumerate(cases):
        with h.check(f"ref/{name}/{alg}"):
            cc = ccomm(comm, configs[name], algorithm=alg)
            config = cc.compressor.get_config()
            if "seed" in config:
                assert config["seed"] == SEED, f"expected the CompressedComm seed {SEED}, found {config['seed']}"
            ref = Reference(comm, config)
            for step, op in enumerate((gcomp.mpi.MEAN, MPI.SUM, gcomp.mpi.MEAN)):
                x = make_input(rank, N, step, salt=100 + i)
                got = np.empty_like(x)
                cc.Allreduce(x, got, op=op)
                used = last_algorithm(cc)
                if alg != "auto":
                    assert used == alg, f"expected algorithm {alg}, the stats say {used}"
                assert cc.stats[-1].step == step
                want = ref(used, x, f"n{N}", step, op is gcomp.mpi.MEAN)
                assert_reference(name, got, want, f"step {step} ({used}, {'MEAN' if op is gcomp.mpi.MEAN else 'SUM'})")
                same_on_every_rank(comm, got)
            cc.Free()
    # chunks smaller than the alignment: some ranks own an empty chunk
    for name in ("topk", "qsgd", "sign", "powersgd"):
        with h.check(f"ref/{name}/scatter-reduce-allgather-small"):
            cc = ccomm(comm, configs[name], algorithm="scatter-reduce-allgather")
            ref = Reference(comm, cc.compressor.get_config())
            x = make_input(rank, 100, salt=7)
            got = x.copy()
            cc.Allreduce(MPI.IN_PLACE, got, op=gcomp.mpi.MEAN)
            assert_same(got, ref.sra_simulated(gather_rows(comm, x), "n100", 0, True))
            cc.Free()


# ---------------------------------------------------------------------------
def section_buffers(h, comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    spec = "topk:ratio=0.05"

    def reference(cc, x32, average=True, key=None):
        ref = Reference(comm, cc.compressor.get_config())
        return ref(last_algorithm(cc), x32, key or f"n{x32.size}", cc.stats[-1].step, average)

    with h.check("buffers/in-place"):
        cc = ccomm(comm, spec)
        x = make_input(rank, N, salt=3)
        out = np.empty_like(x)
        cc.Allreduce(x, out, op=gcomp.mpi.MEAN)
        want = reference(cc, x)
        inplace = x.copy()
        cc.Allreduce(MPI.IN_PLACE, inplace, op=gcomp.mpi.MEAN)
        assert_same(out, want, "send/recv")
        assert_same(inplace, want, "IN_PLACE")
        listspec = np.empty_like(x)
        cc.Allreduce([x, MPI.FLOAT], [listspec, MPI.FLOAT], op=gcomp.mpi.MEAN)
        assert_same(listspec, want, "[buf, MPI.FLOAT] specs")
        cc.Free()

    for dtype in (np.float16, np.float64):
        name = np.dtype(dtype).name
        with h.check(f"buffers/numpy-{name}"):
            cc = ccomm(comm, spec)
            x = make_input(rank, N - 1, salt=4, dtype=dtype).reshape(-1, 2)  # 2-D buffers are flattened
            out = np.empty_like(x)
            cc.Allreduce(x, out, op=gcomp.mpi.MEAN)
            want = reference(cc, x.reshape(-1).astype(np.float32)).astype(dtype).reshape(x.shape)
            assert_same(out, want, f"{name} result")
            inplace = x.copy()
            cc.Allreduce(MPI.IN_PLACE, inplace, op=gcomp.mpi.MEAN)
            assert_same(inplace, want, f"{name} IN_PLACE")
            cc.Free()

    for tdtype in (torch.float32, torch.float16, torch.float64, torch.bfloat16):
        name = str(tdtype).replace("torch.", "")
        with h.check(f"buffers/torch-{name}"):
            cc = ccomm(comm, spec)
            x = torch.from_numpy(make_input(rank, 7 * 11 * 39, salt=5)).to(tdtype).reshape(7, 11, 39)
            out = torch.empty_like(x)
            cc.Allreduce(x, out, op=MPI.SUM)
            x32 = x.float().reshape(-1).numpy()
            want = torch.from_numpy(reference(cc, x32, average=False)).to(tdtype).reshape(x.shape)
            assert out.dtype == tdtype and out.shape == x.shape
            assert_same(out, want, f"torch {name} result")
            inplace = x.clone()
            cc.Allreduce(MPI.IN_PLACE, inplace, op=MPI.SUM)
            assert_same(inplace, want, f"torch {name} IN_PLACE")
            cc.Free()

    for alg in ALGORITHMS:
        with h.check(f"buffers/sum-vs-mean-{alg}"):
            cc = ccomm(comm, "qsgd", algorithm=alg)
            ref = Reference(comm, cc.compressor.get_config())
            x = make_input(rank, N, salt=6)
            results = {}
            for step, op in enumerate((MPI.SUM, gcomp.mpi.MEAN, "sum", "mean", "avg", gcomp.mpi.SUM)):
                out = np.empty_like(x)
                cc.Allreduce(x, out, op=op)
                average = op is gcomp.mpi.MEAN or op in ("mean", "avg")
                assert_same(out, ref(alg, x, f"n{N}", step, average), f"op {op!r}")
                results[step] = out
            if alg == "allgather":  # the mean is the sum divided by P, at equal steps
                sum1 = np.empty_like(x)
                fresh = ccomm(comm, "qsgd", algorithm=alg)
                fresh.Allreduce(x, sum1, op=MPI.SUM)
                assert_same(results[0] / np.float32(size), ref(alg, x, f"n{N}", 0, True), "SUM / P")
                fresh.Free()
            cc.Free()

    with h.check("buffers/bad-op"):
        cc = ccomm(comm, spec)
        x = make_input(rank, N, salt=7)
        out = np.empty_like(x)
        for op in (MPI.MAX, MPI.MIN, MPI.PROD, "max", None):
            assert_raises(ConfigError, lambda op=op: cc.Allreduce(x, out, op=op), f"CompressedComm.Allreduce op={op!r}")
            assert_raises(ConfigError, lambda op=op: cc.Iallreduce(x, out, op=op), f"CompressedComm.Iallreduce op={op!r}")
            assert_raises(ConfigError, lambda op=op: gcomp.mpi.Allreduce(comm, x, out, compressor=spec, op=op),
                          f"gcomp.mpi.Allreduce op={op!r}")
        # nothing was sent: the next good call on every rank still lines up
        cc.Allreduce(x, out, op=gcomp.mpi.MEAN)
        assert_same(out, reference(cc, x), "good call after the refused ones")
        cc.Free()

    with h.check("buffers/bad-buffers"):
        cc = ccomm(comm, spec)
        assert_raises(TypeError, lambda: cc.Allreduce(MPI.IN_PLACE, np.zeros(8, np.int32)), "int32 buffer")
        assert_raises(TypeError, lambda: cc.Allreduce(MPI.IN_PLACE, [1.0, 2.0]), "a Python list")
        assert_raises(ValueError, lambda: cc.Allreduce(np.zeros(8, np.float32), np.zeros(9, np.float32)), "8 vs 9 entries")
        assert_raises(ValueError, lambda: cc.Allreduce(MPI.IN_PLACE, np.zeros((8, 8), np.float32)[:, ::2]), "non-contiguous")
        x = make_input(rank, N, salt=8)
        out = np.empty_like(x)
        cc.Allreduce(x, out, op=gcomp.mpi.MEAN)
        assert_same(out, reference(cc, x), "good call after the refused ones")
        cc.Free()


# ---------------------------------------------------------------------------
def section_iallreduce(h, comm):
    rank = comm.Get_rank()
    configs = all_configs()
    for name in ("qsgd", "topk", "powersgd", "fp16"):
        with h.check(f"iallreduce/{name}"):
            cc = ccomm(comm, configs[name])
            ref = Reference(comm, cc.compressor.get_config())
            a = make_input(rank, N, salt=9)
            b = make_input(rank, 2 * N, salt=10)
            a_out = a.copy()
            b_out = torch.empty(2 * N)
            ra = cc.Iallreduce(MPI.IN_PLACE, a_out, op=gcomp.mpi.MEAN, key="a")
            rb = gcomp.mpi.Iallreduce(comm, torch.from_numpy(b), b_out, compressor=configs[name], op=MPI.SUM, key="b", state=cc)
            while not rb.Test():
                pass
            assert ra.Wait() is True
            assert_same(a_out, ref(last_algorithm(cc, "a"), a, "a", 0, True), "key a (IN_PLACE, MEAN)")
            assert_same(b_out, ref(last_algorithm(cc, "b"), b, "b", 0, False), "key b (torch, SUM)")
            # a blocking call after nonblocking ones keeps the order
            c_out = np.empty_like(a)
            cc.Allreduce(a, c_out, op=gcomp.mpi.MEAN, key="a")
            assert_same(c_out, ref(last_algorithm(cc, "a"), a, "a", 1, True), "key a, step 1")
            cc.Free()


# ---------------------------------------------------------------------------
def section_oneoff(h, comm):
    rank = comm.Get_rank()
    for spec, options in (("topk:ratio=0.05", {}), ("qsgd:levels=8", {"algorithm": "scatter-reduce-allgather"}),
                          ("randomk:ratio=0.1", {"algorithm": "allreduce"})):
        with h.check(f"oneoff/{spec.split(':')[0]}"):
            x = make_input(rank, N, salt=11)
            out = np.empty_like(x)
            stats = gcomp.mpi.Allreduce(comm, x, out, compressor=spec, op=gcomp.mpi.MEAN, **options)
            assert isinstance(stats, gcomp.collectives.CallStats), type(stats)
            assert stats.bytes_sent > 0 and stats.numel == N
            ref = Reference(comm, gcomp.compressor(spec).get_config())
            assert_same(out, ref(stats.algorithm, x, f"n{N}", 0, True))
            # stateless: the same call again gives the same result (step 0, no memory)
            again = np.empty_like(x)
            gcomp.mpi.Allreduce(comm, x, again, compressor=spec, op=gcomp.mpi.MEAN, **options)
            assert_same(again, out, "second one-off call")
    with h.check("oneoff/with-state"):
        cc = ccomm(comm, "topk:ratio=0.05", error_feedback="residual")
        x = make_input(rank, N, salt=12)
        out = np.empty_like(x)
        gcomp.mpi.Allreduce(comm, x, out, compressor="topk:ratio=0.05", state=cc, op=gcomp.mpi.MEAN, key="w")
        assert cc.stats[-1].key == "w"
        assert "w" in cc.state_dict()["engine"]["feedback"]["entries"] or last_algorithm(cc) != "allgather"
        assert_raises(ConfigError, lambda: gcomp.mpi.Allreduce(comm, x, out, compressor="sign", state=cc), "other compressor")
        cc.Free()


# ---------------------------------------------------------------------------
def section_error_feedback(h, comm):
    rank = comm.Get_rank()
    with h.check("ef/residual-allgather-topk"):
        # the documented EF-SGD step on every rank: send C(x + e), keep e <- x + e - D(C(x + e)), per key
        spec = "topk:ratio=0.05"
        cc = ccomm(comm, spec, error_feedback="residual", algorithm="allgather")
        ref = Reference(comm, cc.compressor.get_config())
        residual = {"w": np.zeros(N, np.float32), "b": np.zeros(N, np.float32)}
        for step in range(3):
            for key, salt in (("w", 13), ("b", 14)):
                x = make_input(rank, N, step, salt=salt)
                out = np.empty_like(x)
                cc.Allreduce(x, out, op=gcomp.mpi.MEAN, key=key)
                v = x + residual[key]
                want = ref.allgather(v, key, step, True)
                sent = gcomp.compressor(spec).decompress(ref.mine.compress(v, step=step, key=key))
                residual[key] = v - sent
                assert_same(out, want, f"key {key} step {step}")
        entries = cc.state_dict()["engine"]["feedback"]["entries"]
        assert set(entries) == {"w", "b"}, sorted(entries)
        for key in ("w", "b"):
            assert_same(entries[key]["residual"].numpy(), residual[key], f"stored residual of key {key}")
        cc.Free()
    with h.check("ef/ef21-allgather-topk"):
        # EF21 (gcomp/feedback.py): each rank sends c = C(x - g) and sets g <- g + D(c); the receivers'
        # aggregate G <- G + mean_i D(c_i) equals the mean of the ranks' g, and G is the estimate of the mean gradient
        spec = "topk:ratio=0.05"
        cc = ccomm(comm, spec, error_feedback="ef21", algorithm="allgather")
        ref = Reference(comm, cc.compressor.get_config())
        g = np.zeros(N, np.float32)
        for step in range(3):
            x = make_input(rank, N, step, salt=16)
            out = np.empty_like(x)
            cc.Allreduce(x, out, op=gcomp.mpi.MEAN, key="w")
            c = ref.mine.compress(x - g, step=step, key="w")
            g += gcomp.compressor(spec).decompress(c)
            want = gather_rows(comm, g).sum(axis=0, dtype=np.float32) / np.float32(comm.Get_size())
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()),
                                       err_msg=f"step {step}: the result is not the EF21 aggregate G = mean of the ranks' g")
        cc.Free()
    with h.check("ef/powersgd-residual-allreduce"):
        # Full-rank PowerSGD (a 4 x 4 matrix view, rank 4) reproduces its input, so with residual error feedback
        # the residuals stay (near) zero and every step's result is the plain mean of the ranks' vectors.
        cc = ccomm(comm, "powersgd:rank=4", error_feedback="residual", algorithm="allreduce")
        x = make_input(rank, 16, salt=17)
        want = gather_rows(comm, x).mean(axis=0, dtype=np.float64).astype(np.float32)
        for step in range(3):
            out = np.empty_like(x)
            cc.Allreduce(x, out, op=gcomp.mpi.MEAN, key="w")
            np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()),
                                       err_msg=f"step {step}: full-rank PowerSGD with residual feedback is not the mean")
        cc.Free()
    with h.check("ef/default-key-is-size"):
        cc = ccomm(comm, "sign", error_feedback="residual", algorithm="allgather")
        for n in (N, 2 * N, N):
            buf = make_input(rank, n, salt=15)
            cc.Allreduce(MPI.IN_PLACE, buf, op=gcomp.mpi.MEAN)
        state = cc.state_dict()["engine"]
        assert set(state["feedback"]["entries"]) == {f"n{N}", f"n{2 * N}"}, sorted(state["feedback"]["entries"])
        assert state["steps"] == {f"n{N}": 2, f"n{2 * N}": 1}, state["steps"]
        cc.Free()


def section_state(h, comm, tmp):
    rank = comm.Get_rank()
    cases = (("topk:ratio=0.05", "allgather", "residual"), ("qsgd", "scatter-reduce-allgather", "residual"),
             ("sign", "scatter-reduce-allgather", "ef21"), ("powersgd:rank=2", "allreduce", "residual"),
             ("dgc:ratio=0.05", "allgather", "dgc"))
    for spec, alg, ef in cases:
        name = spec.split(":")[0]
        with h.check(f"state/{name}-{alg}-{ef}"):
            a = ccomm(comm, spec, error_feedback=ef, algorithm=alg)
            keys = ("w", "b")

            def step(cc, t, key):
                x = make_input(rank, N, t, salt=20 if key == "w" else 21)
                out = np.empty_like(x)
                cc.Allreduce(x, out, op=gcomp.mpi.MEAN, key=key)
                return out

            for t in range(3):
                for key in keys:
                    step(a, t, key)
            state = a.state_dict()
            assert (state["rank"], state["size"]) == (rank, comm.Get_size())
            entries = state["engine"]["feedback"]["entries"]
            expected = set(keys) if alg != "scatter-reduce-allgather" else \
                {f"{k}/chunk{j}" for k in keys for j in range(comm.Get_size())}
            assert expected <= set(entries), f"expected memories for {sorted(expected)}, found {sorted(entries)}"
            path = os.path.join(tmp, f"{name}-{alg}-{ef}-rank{rank}.pt")
            torch.save(state, path)
            b = ccomm(comm, spec, error_feedback=ef, algorithm=alg)
            b.load_state_dict(torch.load(path, weights_only=True))
            c = ccomm(comm, spec, error_feedback=ef, algorithm=alg)  # no state: must differ
            differs = False
            for t in range(3, 6):
                for key in keys:
                    ya, yb, yc = step(a, t, key), step(b, t, key), step(c, t, key)
                    assert_same(yb, ya, f"restored vs original, step {t} key {key}")
                    differs |= not np.array_equal(yc, ya)
            assert differs, "a CompressedComm without the saved state gave the same results: the state was not used"
            # the state of another rank is refused, locally
            other = dict(state, rank=(rank + 1) % comm.Get_size())
            assert_raises(StateError, lambda c=c, other=other: c.load_state_dict(other), "another rank's state")
            for cc in (a, b, c):
                cc.Free()


# ---------------------------------------------------------------------------
def section_hierarchical(h, comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    pairs = lambda r: r // 2  # noqa: E731
    with h.check("hier/pairs-none"):
        cc = ccomm(comm, "none", hierarchical=pairs)
        x = make_input(rank, N, salt=30)
        want = np.empty_like(x)
        comm.Allreduce(x, want, op=MPI.SUM)
        got = np.empty_like(x)
        cc.Allreduce(x, got, op=MPI.SUM)
        assert_same(got, want, "SUM")
        cc.Allreduce(x, got, op=gcomp.mpi.MEAN)
        assert_same(got, want / np.float32(size), "MEAN")
        r = cc.Iallreduce(MPI.IN_PLACE, x, op=gcomp.mpi.MEAN)
        r.Wait()
        assert_same(x, want / np.float32(size), "Iallreduce MEAN")
        cc.Free()
    for spec, alg in (("topk:ratio=0.05", "allgather"), ("qsgd", "scatter-reduce-allgather"), ("sign", "allgather")):
        with h.check(f"hier/pairs-{spec.split(':')[0]}-{alg}"):
            cc = ccomm(comm, spec, hierarchical=pairs, algorithm=alg)
            ref = Reference(comm, cc.compressor.get_config(), size=2)
            for step, op in enumerate((gcomp.mpi.MEAN, MPI.SUM)):
                x = make_input(rank, N, step, salt=31)
                got = np.empty_like(x)
                cc.Allreduce(x, got, op=op)
                rows = gather_rows(comm, x)
                leader_inputs = np.stack([rows[0] + rows[1], rows[2] + rows[3]])  # dense sum inside each pair
                simulate = ref.allgather_simulated if alg == "allgather" else ref.sra_simulated
                want = simulate(leader_inputs, f"n{N}", step, False)  # compressed sum between the leaders
                if op is gcomp.mpi.MEAN:
                    want /= np.float32(size)
                assert_same(got, want, f"step {step}")
                same_on_every_rank(comm, got)
                last = cc.stats[-1]
                assert last.intra_bytes_sent > 0, "every rank sends inside its pair"
                if rank % 2 == 0:
                    assert last.algorithm == f"hierarchical/{alg}" and last.bytes_sent > last.intra_bytes_sent
                else:
                    assert last.algorithm == "hierarchical", "a non-leader has no compressed traffic"
                    assert last.bytes_sent == last.intra_bytes_sent
            cc.Free()
    for spec in ("none", "topk:ratio=0.05"):
        with h.check(f"hier/node-{spec.split(':')[0]}"):
            # one machine: every rank is on one node, so one leader and no compressed hop at all
            cc = ccomm(comm, spec, hierarchical="node")
            x = make_input(rank, N, salt=32)
            want = np.empty_like(x)
            comm.Allreduce(x, want, op=MPI.SUM)
            got = np.empty_like(x)
            cc.Allreduce(x, got, op=gcomp.mpi.MEAN)
            assert_same(got, want / np.float32(size), "MEAN")
            cc.Free()
    with h.check("hier/bad-color"):
        assert_raises(ConfigError, lambda: ccomm(comm, "none", hierarchical=lambda r: -1), "negative color")


# ---------------------------------------------------------------------------
class PickleCalled(RuntimeError):
    pass


def _pickle_free_workload(comm, name, config):
    """Every compressor through every algorithm and error feedback, Allreduce and Iallreduce, one-off and hierarchical."""
    rank, size = comm.Get_rank(), comm.Get_size()
    algorithms = ["auto", *ALGORITHMS] + (["allreduce"] if name in linear_names() else [])
    x = make_input(rank, N, salt=40)
    out = np.empty_like(x)
    for alg in algorithms:
        for ef in ("residual", "none"):
            cc = ccomm(comm, config, algorithm=alg, error_feedback=ef)
            cc.Allreduce(x, out, op=gcomp.mpi.MEAN)
            cc.Iallreduce(MPI.IN_PLACE, out, op=MPI.SUM, key="k").Wait()
            cc.Iallreduce(torch.from_numpy(x), torch.from_numpy(out), op=MPI.SUM, key="t").Wait()
            cc.state_dict()
            cc.Free()
    gcomp.mpi.Allreduce(comm, x, out, compressor=config)
    if size == 4:
        cc = ccomm(comm, config, hierarchical=lambda r: r // 2)
        cc.Allreduce(MPI.IN_PLACE, out, op=gcomp.mpi.MEAN)
        cc.Free()


def section_no_pickle(h, comm):
    configs = all_configs()
    # Warm-up, unpatched: Numba loads compiled kernels from its on-disk cache with pickle (local files, not
    # communication).  After this pass every kernel is in memory and nothing may pickle any more.
    for name, config in configs.items():
        _pickle_free_workload(comm, name, config)
    calls = []

    def refuse(*args, **kwargs):
        calls.append(1)
        raise PickleCalled("pickle was called")

    saved = {name: getattr(pickle, name) for name in ("dumps", "loads", "dump", "load")}
    with h.check("nopickle/patched"):
        for name in saved:
            setattr(pickle, name, refuse)
        MPI.pickle.__init__(refuse, refuse)
        assert_raises(PickleCalled, lambda: MPI.COMM_SELF.bcast({"a": 1}), "lowercase bcast")
        assert_raises(PickleCalled, lambda: MPI.COMM_SELF.allgather(1), "lowercase allgather")
        assert_raises(PickleCalled, lambda: pickle.dumps(1), "pickle.dumps")
        calls.clear()
    for name, config in configs.items():
        with h.check(f"nopickle/{name}"):
            _pickle_free_workload(comm, name, config)
            assert not calls, f"pickle was called {len(calls)} times"
    for name, fn in saved.items():
        setattr(pickle, name, fn)
    MPI.pickle.__init__(pickle.dumps, pickle.loads)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tmp", required=True)
    parser.add_argument("--sections", default="none,references,buffers,iallreduce,oneoff,ef,state,hierarchical,nopickle")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    h = Checks(comm)
    sections = args.sections.split(",")
    if "none" in sections:
        section_none(h, comm)
    if "references" in sections:
        section_references(h, comm)
    if "buffers" in sections:
        section_buffers(h, comm)
    if "iallreduce" in sections:
        section_iallreduce(h, comm)
    if "oneoff" in sections:
        section_oneoff(h, comm)
    if "ef" in sections:
        section_error_feedback(h, comm)
    if "state" in sections:
        section_state(h, comm, args.tmp)
    if "hierarchical" in sections and comm.Get_size() == 4:
        section_hierarchical(h, comm)
    if "nopickle" in sections:
        section_no_pickle(h, comm)  # last: it leaves every compressor's kernels compiled before patching
    h.done()


if __name__ == "__main__":
    main()
