"""``CompressedAllreduce``: agreement check, non-finite policies, feedback checks, ``auto`` choice, byte stats."""

import numpy as np
import pytest

import gcomp
from gcomp import wire
from gcomp.collectives import CompressedAllreduce, sequence
from gcomp.errors import ConfigError, MismatchError, NonFiniteError
from gcomp.feedback import ResidualFeedback
from gcomp.transports import LocalGroup, run_local

from ._reference import (
    NUMELS,
    SIZES,
    assert_same_bits,
    builtin_names,
    chunk_bounds,
    collect_errors,
    dense_reference,
    fresh,
    inputs,
    run_engines,
)

FINGERPRINT = 32  # sha256 digest allgathered by the agreement check


def run_local_results(size, fn):
    return run_local(size, fn, timeout=20.0)


# ---------------------------------------------------------------------------
# agreement
# ---------------------------------------------------------------------------
MISMATCHES = {
    "numel": lambda rank: ({"spec": "topk:ratio=0.1"}, 100 + (rank == 1)),
    "compressor-config": lambda rank: ({"spec": f"topk:ratio={0.1 if rank != 1 else 0.2}"}, 100),
    "compressor-name": lambda rank: ({"spec": "topk:ratio=0.1" if rank != 1 else "threshold:tau=1.5"}, 100),
    "algorithm": lambda rank: ({"spec": "none" if rank != 1 else "topk:ratio=0.1"}, 100),  # dense vs allgather
    "feedback": lambda rank: ({"spec": "topk:ratio=0.1", "error_feedback": "residual" if rank != 1 else "none"}, 100),
    "nonfinite": lambda rank: ({"spec": "topk:ratio=0.1", "nonfinite": "zero" if rank != 1 else "propagate"}, 100),
    "linear-numel": lambda rank: ({"spec": "randomk:ratio=0.1"}, 1000 - 7 * (rank == 1)),
    "powersgd-numel": lambda rank: ({"spec": "powersgd"}, 1000 - 7 * (rank == 1)),
    "sra-numel": lambda rank: ({"spec": "qsgd", "algorithm": "scatter-reduce-allgather"}, 5000 + 64 * (rank == 1)),
}


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("what", sorted(MISMATCHES))
def test_mismatch_raises_on_every_rank(what, size):
    def fn(t):
        options, numel = MISMATCHES[what](t.rank)
        options = dict(options)
        engine = CompressedAllreduce(t, options.pop("spec"), **options)
        return engine(np.ones(numel, np.float32), key="bucket0")

    errors = collect_errors(size, fn)
    assert all(isinstance(e, MismatchError) for e in errors), errors


@pytest.mark.parametrize("size", [2, 3])
def test_mismatch_in_the_dtype_argument(size):
    def fn(t):
        engine = CompressedAllreduce(t, "fp16")
        return engine(np.ones(10, np.float32), dtype="float16" if t.rank == 0 else "float32")

    errors = collect_errors(size, fn)
    assert all(isinstance(e, MismatchError) for e in errors), errors


@pytest.mark.parametrize("size", [1, 2, 3])
def test_agreement_check_passes_and_runs_once_per_key(size):
    """verify=True: the fingerprint travels on the first call of a key only (seen on the transport's counter)."""

    def fn(t):
        engine = CompressedAllreduce(t, "none")
        seen = []
        for key in (0, 0, 1):
            before = t.counter.snapshot()
            engine(np.ones(8, np.float32), key=key)
            seen.append(t.counter.sent - before[0] - engine.stats[-1].bytes_sent)
        return seen

    check = (FINGERPRINT + 8) * (size - 1)
    assert run_local_results(size, fn) == [[check, 0, check]] * size


def test_verify_always_catches_a_size_change_on_one_rank():
    def fn(t):
        engine = CompressedAllreduce(t, "topk:ratio=0.1", verify="always")
        engine(np.ones(100, np.float32), key=0)
        engine(np.ones(100 + (t.rank == 1), np.float32), key=0)

    errors = collect_errors(3, fn, timeout=2.0)
    assert all(isinstance(e, MismatchError) for e in errors), errors


@pytest.mark.parametrize("size", [2, 3])
def test_verify_always_catches_a_size_change_without_memories(size):
    """Without error feedback nothing fails locally first: every rank raises MismatchError on the second call."""

    def fn(t):
        engine = CompressedAllreduce(t, "topk:ratio=0.1", verify="always", error_feedback="none")
        engine(np.ones(100, np.float32), key=0)
        engine(np.ones(100 + (t.rank == 1), np.float32), key=0)

    errors = collect_errors(size, fn)
    assert all(isinstance(e, MismatchError) for e in errors), errors


def test_allreduce_needs_a_linear_compressor():
    (t,) = LocalGroup(1).transports()
    for name in builtin_names():
        if fresh(name).linear:
            CompressedAllreduce(t, fresh(name), algorithm="allreduce")
        else:
            with pytest.raises(ConfigError, match="linear"):
                CompressedAllreduce(t, fresh(name), algorithm="allreduce")


# ---------------------------------------------------------------------------
# non-finite policies
# ---------------------------------------------------------------------------
#: (compressor, algorithm): every one carries a NaN of one rank into the reduced vector
NONFINITE_CASES = [("none", "dense"), ("fp16", "allreduce"), ("randomk:ratio=1.0", "allreduce"), ("powersgd", "allreduce"),
                   ("topk:ratio=0.05", "allgather"), ("qsgd", "allgather"), ("topk:ratio=0.05", "scatter-reduce-allgather"),
                   ("sign", "scatter-reduce-allgather")]


def memory_keys(key, size, algorithm):
    if algorithm == "scatter-reduce-allgather":
        return [f"{key}/chunk{j}" for j in range(size)], [f"{key}/server"]
    return ([key] if algorithm != "dense" else []), []


def nonfinite_run(size, spec, algorithm, policy, bad_rank):
    """Three steps of key "w": clean, NaN (and an Inf) on ``bad_rank`` only, clean.  Per rank: what happened."""
    key, numel = "w", 1000
    xs = inputs(size, numel, steps=3, seed=40)

    def fn(t):
        engine = CompressedAllreduce(t, spec, algorithm=algorithm, error_feedback="residual", nonfinite=policy)
        workers, servers = memory_keys(key, t.size, algorithm)
        result = {}
        result["clean"] = engine(xs[0][t.rank], key=key)
        result["memories_before"] = [engine.feedback.memory(k) is not None for k in workers] + \
                                    [engine.server_feedback.memory(k) is not None for k in servers]
        x = xs[1][t.rank].copy()
        if t.rank == bad_rank:
            x[3] = np.nan
            x[500] = np.inf
        try:
            result["bad"] = engine(x, key=key)
        except NonFiniteError as exc:
            result["bad"] = exc
        result["bad_stats"] = engine.stats[-1]
        result["memories_after"] = [engine.feedback.memory(k) is not None for k in workers] + \
                                   [engine.server_feedback.memory(k) is not None for k in servers]
        result["warm_start"] = key in engine.compressor.state_dict().get("q", {})
        result["next"] = engine(xs[2][t.rank], key=key)
        return result

    return run_local_results(size, fn)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf in a residual
@pytest.mark.parametrize("policy", ["propagate", "zero", "raise"])
@pytest.mark.parametrize("spec,algorithm", NONFINITE_CASES, ids=[f"{s}-{a}" for s, a in NONFINITE_CASES])
@pytest.mark.parametrize("size", [2, 3])
def test_nonfinite_on_one_rank(size, spec, algorithm, policy):
    results = nonfinite_run(size, spec, algorithm, policy, bad_rank=size - 1)
    for rank, r in enumerate(results):
        assert np.all(np.isfinite(r["clean"]))
        if algorithm != "dense":
            assert all(r["memories_before"]), (rank, r["memories_before"])
        assert r["bad_stats"].nonfinite, rank
        # every rank reset every memory of the key, and the compressor's own state of it (PowerSGD's warm start)
        assert not any(r["memories_after"]), (rank, r["memories_after"])
        assert not r["warm_start"]
        # one bad step does not poison the next
        assert np.all(np.isfinite(r["next"])), rank
    if policy == "raise":
        assert all(isinstance(r["bad"], NonFiniteError) for r in results), [r["bad"] for r in results]
    else:
        outs = [r["bad"] for r in results]
        assert all(isinstance(o, np.ndarray) for o in outs), outs
        assert_same_bits(outs)
        if policy == "zero":
            assert not np.any(outs[0]) and not np.signbit(outs[0]).any()
        else:
            assert not np.all(np.isfinite(outs[0]))
    assert_same_bits([r["next"] for r in results])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_dense_nonfinite_propagates_where_it_was():
    results = nonfinite_run(3, "none", "dense", "propagate", bad_rank=1)
    out = results[0]["bad"]
    assert np.isnan(out[3]) and np.isposinf(out[500])
    assert np.isfinite(np.delete(out, [3, 500])).all()


# ---------------------------------------------------------------------------
# error feedback handed in
# ---------------------------------------------------------------------------
def test_feedback_on_another_compressor_is_refused():
    (t,) = LocalGroup(1).transports()
    with pytest.raises(ConfigError, match="compressor"):
        CompressedAllreduce(t, "topk:ratio=0.1", error_feedback=ResidualFeedback(gcomp.compressor("topk", ratio=0.2)))
    with pytest.raises(ConfigError):
        CompressedAllreduce(t, "topk:ratio=0.1", error_feedback=ResidualFeedback(gcomp.compressor("threshold:tau=1.5")))
    # the same configuration (another instance) is accepted, and the feedback's instance is the one used
    fb = ResidualFeedback(gcomp.compressor("powersgd", rank=2))
    engine = CompressedAllreduce(t, gcomp.compressor("powersgd", rank=2), error_feedback=fb)
    assert engine.feedback is fb and engine.compressor is fb.compressor


@pytest.mark.parametrize("size", [2, 3])
def test_feedback_instance_is_used(size):
    xs = inputs(size, 1000, seed=41)
    memories = {}

    def make(t):
        memories[t.rank] = ResidualFeedback(gcomp.compressor("topk", ratio=0.05))
        return CompressedAllreduce(t, "topk:ratio=0.05", algorithm="allgather", error_feedback=memories[t.rank])

    engines, _ = run_engines(size, make, xs, key=5)
    for rank in range(size):
        assert memories[rank].memory(5) is not None
        assert engines[rank].feedback.memory(5).tobytes() == memories[rank].memory(5).tobytes()


# ---------------------------------------------------------------------------
# algorithm="auto"
# ---------------------------------------------------------------------------
def expected_choice(name, size, numel):
    """The documented rule: ``dense`` for an identity compressor, else the fewest bytes under the byte model among
    ``allreduce`` (linear only: a ring allreduce of what is summed), ``allgather`` (the packet to P-1 ranks) and
    ``scatter-reduce-allgather`` (2 (P-1) packets of a 1/P chunk), ties going in that order; each with its
    sequence token (a TAIL of 4-byte entries on the sum, a prefix on each packet of the first collective)."""
    comp = fresh(name)
    if comp.identity:
        return "dense"
    candidates = {}
    if comp.linear:
        candidates["allreduce"] = 2 * (size - 1) * (comp.summed_bytes(numel) + 4 * sequence.TAIL) // size
    candidates["allgather"] = (size - 1) * (sequence.PREFIX_SIZE + wire.HEADER_SIZE + comp.max_payload_bytes(numel))
    candidates["scatter-reduce-allgather"] = (2 * (size - 1) * (wire.HEADER_SIZE + comp.max_payload_bytes(-(-numel // size)))
                                              + (size - 1) * sequence.PREFIX_SIZE)
    return min(candidates, key=candidates.get)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", builtin_names())
def test_auto_choice(name, size):
    numels = NUMELS + (5000, 100_000)
    xs_by_numel = {n: inputs(size, n, seed=42)[0] for n in numels}

    def fn(t):
        engine = CompressedAllreduce(t, fresh(name))
        chosen = []
        for n in numels:
            engine(xs_by_numel[n][t.rank], key=n)
            chosen.append((engine.choose(n), engine.stats[-1].algorithm))
        return chosen

    for chosen in run_local_results(size, fn):
        for n, (choice, ran) in zip(numels, chosen, strict=True):
            assert choice == ran == expected_choice(name, size, n), (name, size, n, choice, ran)


def test_auto_choice_uses_both_flat_algorithms():
    """Not vacuous: some non-linear compressor goes to scatter-reduce-allgather at P=4 for large vectors."""
    choices = {expected_choice(n, 4, 100_000) for n in builtin_names()}
    assert {"dense", "allreduce", "allgather", "scatter-reduce-allgather"} <= choices | {
        expected_choice(n, 2, 1000) for n in builtin_names()}
    assert "scatter-reduce-allgather" in choices


@pytest.mark.parametrize("size", [2, 3])
def test_min_numel_goes_dense(size):
    def fn(t):
        engine = CompressedAllreduce(t, "topk:ratio=0.1", min_numel=100)
        engine(np.ones(99, np.float32), key=0)
        engine(np.ones(100, np.float32), key=1)
        return [s.algorithm for s in engine.stats]

    assert run_local_results(size, fn) == [["dense", "allgather"]] * size


# ---------------------------------------------------------------------------
# byte stats under the documented model (gcomp/transports/base.py), at P=3
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("numel", NUMELS)
def test_dense_bytes(numel):
    size = 3
    xs = inputs(size, numel, steps=2, seed=43)

    def fn(t):
        engine = CompressedAllreduce(t, "none", algorithm="dense")
        deltas = []
        for step in range(2):
            before = t.counter.snapshot()
            out = engine(xs[step][t.rank], key=0)
            deltas.append((t.counter.sent - before[0], t.counter.received - before[1], engine.stats[-1], out))
        return deltas

    # the call's sequence token (its own small sum), then the values
    ring = 2 * (size - 1) * 4 * sequence.TAIL // size + 2 * (size - 1) * 4 * numel // size
    check = (FINGERPRINT + 8) * (size - 1)
    for deltas in run_local_results(size, fn):
        for step, (sent, received, stats, out) in enumerate(deltas):
            assert (stats.bytes_sent, stats.bytes_received) == (ring, ring)
            assert stats.packet_bytes == 4 * numel
            assert stats.numel == numel and stats.dense_bytes == 4 * numel
            verify = check if step == 0 else 0
            assert (sent, received) == (ring + verify, ring + verify)
            np.testing.assert_array_equal(out, dense_reference(xs[step]))


@pytest.mark.parametrize("spec", ["threshold:tau=1.5", "topk:ratio=0.05", "qsgd"])
@pytest.mark.parametrize("numel", NUMELS)
def test_allgather_bytes(numel, spec):
    size = 3
    xs = inputs(size, numel, steps=2, seed=44)
    # every rank's packet, from fresh compressors without feedback (what the engine sends with error_feedback="none")
    lengths = [[len(wire.encode(gcomp.compressor(spec).compress(xs[step][r], step=step, key="k"))) for r in range(size)]
               for step in range(2)]
    if spec.startswith("threshold") and numel >= 7:
        assert len(set(lengths[0])) > 1  # ranks send packets of different sizes

    def fn(t):
        engine = CompressedAllreduce(t, spec, algorithm="allgather", error_feedback="none")
        deltas = []
        for step in range(2):
            before = t.counter.snapshot()
            engine(xs[step][t.rank], key="k")
            deltas.append((t.counter.sent - before[0], t.counter.received - before[1], engine.stats[-1]))
        return deltas

    check = (FINGERPRINT + 8) * (size - 1)
    for rank, deltas in enumerate(run_local_results(size, fn)):
        for step, (sent, received, stats) in enumerate(deltas):
            mine = lengths[step][rank]
            others = sum(lengths[step]) - mine
            assert stats.packet_bytes == mine
            prefix = sequence.PREFIX_SIZE * (size - 1)  # each packet behind the call's sequence prefix
            assert stats.bytes_sent == (size - 1) * mine + prefix + 8 * (size - 1)
            assert stats.bytes_received == others + prefix + 8 * (size - 1)
            verify = check if step == 0 else 0
            assert (sent, received) == (stats.bytes_sent + verify, stats.bytes_received + verify)
            assert stats.compression_ratio == (4 * numel / mine)


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("numel", [7, 1000, 5000])
def test_scatter_reduce_allgather_bytes(numel, size):
    """sign's packet size depends on the chunk size only: alltoallv of the chunks, then allgatherv of the server's."""
    xs = inputs(size, numel, seed=45)
    engines, _ = run_engines(size, lambda t: CompressedAllreduce(t, "sign", algorithm="scatter-reduce-allgather"), xs)
    bounds = chunk_bounds(numel, size)
    packet = [len(wire.encode(gcomp.compressor("sign").compress(np.ones(bounds[j + 1] - bounds[j], np.float32))))
              for j in range(size)]
    for rank, engine in enumerate(engines):
        stats = engine.stats[-1]
        assert stats.packet_bytes == sum(packet)
        prefix = sequence.PREFIX_SIZE * (size - 1)  # the alltoall's packets carry the sequence prefix
        scatter_sent = sum(packet) - packet[rank] + prefix + 8 * (size - 1)
        scatter_received = (size - 1) * packet[rank] + prefix + 8 * (size - 1)
        gather_sent = (size - 1) * packet[rank] + 8 * (size - 1)
        gather_received = sum(packet) - packet[rank] + 8 * (size - 1)
        assert stats.bytes_sent == scatter_sent + gather_sent
        assert stats.bytes_received == scatter_received + gather_received


@pytest.mark.parametrize("size", [2, 3, 4])
def test_bf16_allreduce_sends_float32(size):
    """bf16 sums in float32 on the wire: its allreduce moves as many bytes as dense, so auto avoids it."""
    numel = 1000
    xs = inputs(size, numel, seed=46)
    engines, _ = run_engines(size, lambda t: CompressedAllreduce(t, "bf16", algorithm="allreduce"), xs)
    dense = 2 * (size - 1) * 4 * (numel + sequence.TAIL) // size
    for engine in engines:
        assert engine.stats[-1].bytes_sent == dense
        assert engine.stats[-1].compression_ratio == 1.0
        assert engine.choose(numel) == "allreduce"
    auto = CompressedAllreduce(engines[0].transport, "bf16", agree=False)  # one rank alone: no agreement round
    assert auto.choose(numel) in ("allgather", "scatter-reduce-allgather")


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("name", [n for n in builtin_names() if fresh(n).linear and not fresh(n).identity])
def test_linear_compressors_mostly_go_to_allreduce(name, size):
    """Except bf16 (float32 sums), the linear compressors' summed forms are the cheapest on 1000 entries."""
    expected = "allreduce" if name != "bf16" or size == 1 else {2: "allgather"}.get(size, "scatter-reduce-allgather")
    assert expected_choice(name, size, 1000) == expected


# ---------------------------------------------------------------------------
# one rank: the identity (issue 10 item 20)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["auto", "allgather", "scatter-reduce-allgather", "dense"])
@pytest.mark.parametrize("name", builtin_names())
def test_one_rank_is_the_identity(name, algorithm):
    """On one rank a lossy compressor must not change the data: the mean of one vector is that vector."""
    x = inputs(1, 1000, seed=77)[0][0]

    def fn(t):
        engine = CompressedAllreduce(t, fresh(name), algorithm=algorithm)
        out = [engine(x, key="w", average=average) for average in (True, False)]
        return out, engine.stats[-1].algorithm, engine.stats[-1].bytes_sent

    (outs, used, sent), = run_local_results(1, fn)
    for out in outs:
        np.testing.assert_array_equal(out, x)
    assert used == "dense" and sent == 0


# ---------------------------------------------------------------------------
# out=: the result written into the caller's buffer (issue 11: no fresh dense output per call)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec,algorithm", [("none", "dense"), ("topk:ratio=0.1", "allgather"),
                                            ("sign", "scatter-reduce-allgather"), ("fp16", "allreduce"),
                                            ("powersgd", "allreduce"), ("ef21:topk", "allgather")])
def test_out_receives_the_same_bits_even_as_the_input_itself(spec, algorithm):
    """``out`` may be the input's own memory (DDP's bucket): the bits equal a call without out."""
    feedback = "auto"
    if spec.startswith("ef21:"):
        spec, feedback = spec.split(":", 1)[1], "ef21"
    xs = inputs(3, 1000, steps=3, seed=95)

    def fn(t):
        plain = CompressedAllreduce(t, fresh(spec.split(":")[0]) if ":" not in spec else spec, algorithm=algorithm,
                                    error_feedback=feedback)
        into = CompressedAllreduce(t, fresh(spec.split(":")[0]) if ":" not in spec else spec, algorithm=algorithm,
                                   error_feedback=feedback)
        outs = []
        for step in range(3):
            want = plain(xs[step][t.rank].copy(), key="k")
            buf = xs[step][t.rank].copy()
            got = into(buf, key="k", out=buf)
            assert got is buf
            outs.append((want, got.copy()))
        return outs

    for rank_outs in run_local_results(3, fn):
        for want, got in rank_outs:
            np.testing.assert_array_equal(got, want)


def test_an_unusable_out_raises_on_its_rank_after_the_call():
    def fn(t):
        engine = CompressedAllreduce(t, "topk:ratio=0.1")
        x = np.ones(100, np.float32)
        out = np.empty(100 if t.rank else 99, np.float32)
        try:
            engine(x, key="k", out=out)
        except ConfigError as exc:
            result = str(exc)
        else:
            result = "ok"
        return result, engine(x, key="k").shape  # still paired: the next call works on every rank

    results = run_local_results(3, fn)
    assert "writable contiguous float32 vector of 100" in results[0][0]
    assert [r[0] for r in results[1:]] == ["ok", "ok"] and all(r[1] == (100,) for r in results)
