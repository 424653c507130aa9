"""Sequence tokens (issue 10 item 3): a rank that missed a call makes every rank raise, never a wrong sum."""

import numpy as np
import pytest

from gcomp.collectives import CompressedAllreduce, sequence
from gcomp.errors import ConfigError, MismatchError, SequenceError

from ._reference import assert_same_bits, collect_errors, dense_reference, inputs

FLAT = [("none", "dense"), ("fp16", "allreduce"), ("randomk:ratio=0.1", "allreduce"), ("powersgd", "allreduce"),
        ("topk:ratio=0.1", "allgather"), ("sign", "scatter-reduce-allgather")]
NUMEL = 1000


def _drift(spec, algorithm, drifter, skip, keys, groups=None):
    """Two healthy steps over ``keys``; then ``drifter``'s next call fails before it communicates (``skip``:
    "after-prepare" leaves a prepared call behind, "before-prepare" never reaches the engine) and every rank goes
    on.  Returns each rank's ``(healthy outputs, [outcome of each later call])``."""
    xs = inputs(4, NUMEL, steps=6, seed=91)

    def fn(t):
        engine = CompressedAllreduce(t, spec, algorithm=algorithm, groups=groups)
        healthy = [engine(xs[step][t.rank], key=k) for step in range(2) for k in keys]
        calls = [(step, k) for step in range(2, 6) for k in keys]
        if t.rank == drifter:
            step, k = calls.pop(0)
            if skip == "after-prepare":
                engine.prepare(xs[step][t.rank], key=k)  # its communication thread died here
        outcomes = []
        for step, k in calls[:2]:
            try:
                outcomes.append(engine(xs[step][t.rank], key=k))
            except SequenceError as exc:
                outcomes.append(exc)
        return healthy, outcomes

    return collect_errors(4 if groups else 3, fn)


@pytest.mark.parametrize("skip", ["after-prepare", "before-prepare"])
@pytest.mark.parametrize("spec,algorithm", FLAT)
def test_a_rank_one_call_behind_makes_every_rank_raise(spec, algorithm, skip):
    """Two keys of equal size (DDP's buckets): the drifting rank's calls pair with the others' previous ones."""
    results = _drift(spec, algorithm, drifter=1, skip=skip, keys=(0, 1))
    for rank, result in enumerate(results):
        assert not isinstance(result, Exception), (rank, result)
        healthy, outcomes = result
        # the drift shows on the first paired call and on the next one: nothing is ever summed out of order
        assert all(isinstance(o, SequenceError) for o in outcomes), (rank, outcomes)
        assert "out of sequence" in str(outcomes[0]) and "restart" in str(outcomes[0])
    for i in range(4):
        assert_same_bits([r[0][i] for r in results])


@pytest.mark.parametrize("spec,algorithm", FLAT)
def test_one_key_a_step_behind_makes_every_rank_raise(spec, algorithm):
    """One key called step after step (gcomp.mpi's usual case): the drifter's next call is a step ahead."""
    results = _drift(spec, algorithm, drifter=2, skip="after-prepare", keys=("grad",))
    for rank, (_, outcomes) in enumerate(results):
        assert all(isinstance(o, SequenceError) for o in outcomes), (rank, outcomes)


@pytest.mark.parametrize("spec,algorithm", [("none", "dense"), ("topk:ratio=0.1", "allgather")])
def test_a_call_retried_before_the_engine_saw_it_still_pairs(spec, algorithm):
    """A rank whose call failed before reaching the engine, and who calls again, pairs with the others' call: the
    token is the call's (key, step) in the engine, not a count of attempts."""
    xs = inputs(3, NUMEL, steps=3, seed=93)

    def fn(t):
        engine = CompressedAllreduce(t, spec, algorithm=algorithm)
        outs = [engine(xs[0][t.rank], key="grad")]
        # rank 0's step-1 call failed before the engine; it goes on with its step-2 vector
        outs.append(engine(xs[2 if t.rank == 0 else 1][t.rank], key="grad"))
        return outs

    outs = collect_errors(3, fn)
    assert not any(isinstance(o, Exception) for o in outs), outs
    for i in range(2):
        assert_same_bits([o[i] for o in outs])
    if spec == "none":
        np.testing.assert_array_equal(outs[0][1], dense_reference([xs[2][0], xs[1][1], xs[1][2]]))


@pytest.mark.parametrize("drifter", [0, 1, 2, 3])
@pytest.mark.parametrize("inner", ["dense", "allgather", "scatter-reduce-allgather"])
def test_hierarchical_drift_raises_on_every_rank(inner, drifter):
    """Groups {0, 1} and {2, 3}: a member or a leader out of step; the leaders' collective and the broadcast carry
    the verdict, so every rank raises."""
    spec = "none" if inner == "dense" else "topk:ratio=0.1"
    results = _drift(spec, inner, drifter=drifter, skip="after-prepare", keys=(0, 1), groups=lambda r: r // 2)
    for rank, result in enumerate(results):
        assert not isinstance(result, Exception), (rank, result)
        assert all(isinstance(o, SequenceError) for o in result[1]), (rank, result[1])


def test_hierarchical_drift_in_a_group_of_one():
    """P=3 in groups {0, 1} and {2}: rank 2's group sum is trivially in sequence; the leaders' collective catches it."""
    xs = inputs(3, NUMEL, steps=4, seed=92)

    def fn(t):
        engine = CompressedAllreduce(t, "topk:ratio=0.1", algorithm="allgather", groups=lambda r: r // 2)
        for step in range(2):
            for k in (0, 1):
                engine(xs[step][t.rank], key=k)
        if t.rank == 2:
            engine.prepare(xs[2][t.rank], key=0)
            return engine(xs[2][t.rank], key=1)
        return engine(xs[2][t.rank], key=0)

    errors = collect_errors(3, fn)
    assert all(isinstance(e, SequenceError) for e in errors), errors


# ---------------------------------------------------------------------------
# the token itself
# ---------------------------------------------------------------------------
def test_frame_round_trip_and_every_mismatch_named():
    packets = [bytes([r]) * (10 + r) for r in range(3)]
    framed = [sequence.frame(p, "w", 7) for p in packets]
    assert all(f.nbytes == len(p) + sequence.PREFIX_SIZE for f, p in zip(framed, packets, strict=True))
    assert [bytes(v) for v in sequence.unframe(framed, "w", 7, rank=0)] == packets
    framed[1] = sequence.frame(packets[1], "w", 8)
    framed[2] = sequence.frame(packets[2], "v", 7)
    with pytest.raises(SequenceError, match=r"rank 1: key code .* step 8, rank 2: key code"):
        sequence.unframe(framed, "w", 7, rank=0)
    framed = [sequence.frame(p, "w", 7, fault=r == 2) for r, p in enumerate(packets)]
    with pytest.raises(SequenceError, match=r"ranks \[2\] reported this call already broken"):
        sequence.unframe(framed, "w", 7, rank=0)
    with pytest.raises(SequenceError, match="no prefix"):
        sequence.unframe([b"\x00" * 3] + framed[1:], "w", 7, rank=1)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32])
def test_tail_sums_are_exact_and_every_rank_sees_a_mismatch(dtype):
    """Three ranks whose step tokens are 1, 2 and 3: the mean equals the middle rank's, yet the bitwise sums
    differ from 0 and P, so every rank raises."""
    x = np.arange(5, dtype=dtype)
    tails = [sequence.with_tail(x, "k", step, 3) for step in (1, 2, 3)]
    assert all(t.dtype == dtype and t.shape == (5 + sequence.TAIL,) for t in tails)
    total = tails[0] + tails[1] + tails[2]
    for step in (1, 2, 3):
        with pytest.raises(SequenceError, match="sequence tokens differ"):
            sequence.check_tail(total.copy(), "k", step, 3, rank=step - 1)
    same = sum(sequence.with_tail(x, "k", 2, 3) for _ in range(3))
    np.testing.assert_array_equal(sequence.check_tail(same, "k", 2, 3, rank=0), 3 * x)
    flagged = same.copy()
    flagged[-1] = 1
    with pytest.raises(SequenceError, match="already broken"):
        sequence.check_tail(flagged, "k", 2, 3, rank=0)


def test_tail_refuses_a_dtype_that_cannot_count_the_ranks():
    sequence.with_tail(np.zeros(2, np.float16), 0, 0, 2048)
    with pytest.raises(ConfigError, match="float16 over 2049 ranks"):
        sequence.with_tail(np.zeros(2, np.float16), 0, 0, 2049)
    with pytest.raises(ConfigError, match="float or integer"):
        sequence.with_tail(np.zeros(2, np.bool_), 0, 0, 2)


def test_key_codes():
    assert sequence.key_code(3) == 3 and sequence.key_code(np.int64(3)) == 3
    assert sequence.key_code("3") != sequence.key_code("4")
    assert sequence.key_code(True) == sequence.key_code("True")


@pytest.mark.parametrize("spec,algorithm", [("none", "dense"), ("topk:ratio=0.1", "allgather"), ("fp16", "allreduce")])
def test_a_refused_call_does_not_count_as_a_step(spec, algorithm):
    """A call every rank refused (MismatchError: nothing was sent) leaves the key's step where it was on every rank,
    whichever key each rank used, so the next agreeing call pairs with the same token everywhere."""
    xs = inputs(3, NUMEL, steps=2, seed=94)

    def fn(t):
        engine = CompressedAllreduce(t, spec, algorithm=algorithm, error_feedback="none")
        try:
            engine(xs[0][t.rank], key="k" if t.rank != 2 else "other")
        except MismatchError:
            pass
        else:
            raise AssertionError("expected MismatchError")
        return engine(xs[1][t.rank], key="k"), engine._steps["k"]

    results = collect_errors(3, fn)
    assert not any(isinstance(r, Exception) for r in results), results
    assert_same_bits([r[0] for r in results])
    assert [r[1] for r in results] == [1, 1, 1]
    if spec == "none":
        np.testing.assert_array_equal(results[0][0], dense_reference(xs[1][:3]))
