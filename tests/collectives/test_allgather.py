"""``allgather`` and ``scatter-reduce-allgather`` for every built-in compressor, against numpy references."""

import numpy as np
import pytest

import gcomp.collectives
from gcomp.collectives import CompressedAllreduce

from ._reference import (
    KEYS,
    NUMELS,
    SIZES,
    AllgatherReference,
    ScatterReduceAllgatherReference,
    assert_close,
    assert_equal,
    assert_same_bits,
    builtin_names,
    chunk_bounds,
    fresh,
    inputs,
    run_engines,
)

STEPS = 3
REFERENCES = {"allgather": AllgatherReference, "scatter-reduce-allgather": ScatterReduceAllgatherReference}
NUMELS_FOR = {"allgather": NUMELS, "scatter-reduce-allgather": NUMELS + (5000,)}  # 5000: several 64-aligned chunks


def check(algorithm, name, size, feedback, average=True):
    for numel in NUMELS_FOR[algorithm]:
        key = KEYS[numel]
        xs = inputs(size, numel, steps=STEPS, seed=20)
        records = {}

        def make(t, records=records):
            engine = CompressedAllreduce(t, fresh(name), algorithm=algorithm, error_feedback=feedback)
            records[t.rank] = recording(engine)
            return engine

        engines, outs = run_engines(size, make, xs, key=key, average=average)
        ref = REFERENCES[algorithm](name, size, feedback)
        for step in range(STEPS):
            per_rank = [outs[r][step] for r in range(size)]
            assert_same_bits(per_rank)
            what = f"{algorithm} {name} P={size} n={numel} step={step} feedback={feedback}"
            if algorithm == "allgather":
                expected, bound = ref(xs[step], key, step, average=average)
                assert_close(per_rank[0], expected, bound, what)
            else:
                server_inputs = [records[j][f"{key}/server"][step][0] for j in range(size)]
                assert_equal(per_rank[0], ref(xs[step], key, step, average=average, server_inputs=server_inputs), what)
        assert [e.stats[-1].algorithm for e in engines] == [algorithm] * size
        if feedback == "residual" and numel:
            for rank, engine in enumerate(engines):
                worker_keys = [key] if algorithm == "allgather" else [f"{key}/chunk{j}" for j in range(size)]
                for k in worker_keys:
                    assert_equal(engine.feedback.memory(k), ref_memories(ref)[rank].residual[k], f"{what} residual {k!r}")


def ref_memories(ref):
    return ref.memories if isinstance(ref, AllgatherReference) else ref.workers


@pytest.mark.parametrize("feedback", ["none", "residual"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", builtin_names())
def test_allgather(name, size, feedback):
    check("allgather", name, size, feedback)


@pytest.mark.parametrize("feedback", ["none", "residual"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", builtin_names())
def test_scatter_reduce_allgather(name, size, feedback):
    check("scatter-reduce-allgather", name, size, feedback)


@pytest.mark.parametrize("algorithm", sorted(REFERENCES))
@pytest.mark.parametrize("name", ["topk", "qsgd", "threshold"])
def test_sum(algorithm, name):
    check(algorithm, name, 3, "residual", average=False)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("numel", [0, 1, 7, 63, 64, 65, 1000, 5000, 12345])
def test_chunk_bounds(numel, size):
    bounds = gcomp.collectives.chunk_bounds(numel, size)
    assert bounds == chunk_bounds(numel, size)
    assert len(bounds) == size + 1 and bounds[0] == 0 and bounds[-1] == numel
    assert all(a <= b for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    assert all(b % 64 == 0 for b in bounds[:-1])


# ---------------------------------------------------------------------------
# residual error feedback: sum of inputs = what was sent + residual
# ---------------------------------------------------------------------------
def recording(engine):
    """Wrap the engine's worker and server memories so every Compressed they produce is recorded per key."""
    sent = {}
    for memory in {id(engine.feedback): engine.feedback, id(engine.server_feedback): engine.server_feedback}.values():
        compress = memory.compress

        def wrapped(x, key=0, *, step=None, _compress=compress, _memory=memory):
            c = _compress(x, key=key, step=step)
            sent.setdefault(key, []).append((x.copy(), np.asarray(_memory.compressor.decompress(c), np.float32)))
            return c

        memory.compress = wrapped
    return sent


def check_identity(memory, key, records):
    """Over the steps: sum of inputs == sum of decoded messages + the memory's final residual."""
    residual = memory.memory(key)
    assert residual is not None, key
    inputs_sum = np.sum([x.astype(np.float64) for x, _ in records], axis=0)
    sent_sum = np.sum([d.astype(np.float64) for _, d in records], axis=0)
    scale = (np.sum([np.abs(x.astype(np.float64)) + np.abs(d.astype(np.float64)) for x, d in records], axis=0)
             + np.abs(residual) + 1.0)
    np.testing.assert_array_less(np.abs(inputs_sum - (sent_sum + residual)), 1e-5 * scale)


@pytest.mark.parametrize("algorithm", sorted(REFERENCES))
@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("name", [n for n in builtin_names() if n != "none"])
def test_residual_identity_over_steps(name, size, algorithm):
    steps, numel, key = 5, 5000, "fc.weight"
    xs = inputs(size, numel, steps=steps, seed=21)
    records = {}

    def make(t):
        engine = CompressedAllreduce(t, fresh(name), algorithm=algorithm, error_feedback="residual")
        records[t.rank] = recording(engine)
        return engine

    engines, _ = run_engines(size, make, xs, key=key)
    rank = size - 1
    engine, sent = engines[rank], records[rank]
    if algorithm == "allgather":
        assert len(sent[key]) == steps
        check_identity(engine.feedback, key, sent[key])
        return
    for j in range(size):
        assert len(sent[f"{key}/chunk{j}"]) == steps
        check_identity(engine.feedback, f"{key}/chunk{j}", sent[f"{key}/chunk{j}"])
    assert len(sent[f"{key}/server"]) == steps
    check_identity(engine.server_feedback, f"{key}/server", sent[f"{key}/server"])
    # the server's inputs are the means of this rank's chunk: the memory really is server-side
    bounds = chunk_bounds(numel, size)
    assert engine.server_feedback.memory(f"{key}/server").shape == (bounds[rank + 1] - bounds[rank],)
