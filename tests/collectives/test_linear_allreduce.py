"""``allreduce`` for every linear compressor: the decode of the summed compressed forms of x / P."""

import numpy as np
import pytest

from gcomp.collectives import CompressedAllreduce, sequence

from ._reference import (
    KEYS,
    NUMELS,
    SIZES,
    LinearReference,
    assert_equal,
    assert_same_bits,
    fresh,
    inputs,
    linear_names,
    run_engines,
)

STEPS = 3


def check(name, size, feedback, average=True):
    for numel in NUMELS:
        key = KEYS[numel]
        xs = inputs(size, numel, steps=STEPS, seed=10)
        engines, outs = run_engines(
            size, lambda t: CompressedAllreduce(t, fresh(name), algorithm="allreduce", error_feedback=feedback),
            xs, key=key, average=average)
        ref = LinearReference(name, size, feedback)
        for step in range(STEPS):
            per_rank = [outs[r][step] for r in range(size)]
            assert_same_bits(per_rank)
            exact, combined, bound = ref(xs[step], key, step, average=average)
            what = f"{name} P={size} n={numel} step={step} feedback={feedback}"
            assert_equal(per_rank[0], exact, what + " (wire-order sum)")
            diff = np.abs(per_rank[0].astype(np.float64) - combined)
            assert np.all(diff <= bound), f"{what}: off the combined reference by {diff.max():.3g}"
        assert [e.stats[-1].algorithm for e in engines] == ["allreduce"] * size
        if feedback == "residual" and numel and not engines[0].compressor.phased:
            # what each rank keeps is what the reference keeps (float32 rounding aside)
            for rank, engine in enumerate(engines):
                np.testing.assert_allclose(engine.feedback.memory(key), ref.memories[rank].residual[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", linear_names())
def test_linear_allreduce_mean(name, size):
    check(name, size, "none")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", linear_names())
def test_linear_allreduce_residual_feedback(name, size):
    check(name, size, "residual")


@pytest.mark.parametrize("size", [3])
@pytest.mark.parametrize("name", linear_names())
def test_linear_allreduce_sum(name, size):
    check(name, size, "none", average=False)


def test_builtin_linear_compressors_are_covered():
    assert {"none", "fp16", "bf16", "randomk", "powersgd"} <= set(linear_names())


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("name", linear_names())
def test_packet_bytes_count_only_the_summed_arrays(name, size):
    """packet_bytes: the arrays summed on the wire; bytes_sent: a ring allreduce of each (randomk: values only)."""
    numel = 1000
    xs = inputs(size, numel, seed=11)
    engines, outs = run_engines(size, lambda t: CompressedAllreduce(t, fresh(name), algorithm="allreduce"), xs)
    comp = fresh(name)
    if comp.phased:  # P (rows x r) then Q (cols x r), float32
        rows = int(np.sqrt(numel))
        cols = -(-numel // rows)
        r = min(comp.rank, rows, cols)
        arrays = [4 * rows * r, 4 * cols * r]
    else:
        summed = {"none": lambda: 4 * numel, "fp16": lambda: 2 * numel,
                  "bf16": lambda: 4 * numel,  # summed in float32
                  "randomk": lambda: 4 * int(np.ceil(comp.ratio * numel))}  # the values; the indices are regenerated
        if name not in summed:
            pytest.skip(f"no byte model written for {name!r}")
        arrays = [summed[name]()]
    assert sum(arrays) <= comp.summed_bytes(numel)  # the bound the auto choice uses
    for engine in engines:
        stats = engine.stats[-1]
        assert stats.packet_bytes == sum(arrays), (name, stats.packet_bytes, arrays)
        # the first array summed carries the call's sequence token: TAIL entries of its dtype (an identity
        # compressor's token goes in its own sum, so the values are summed exactly as a plain allreduce)
        tail = sequence.TAIL * (2 if name == "fp16" else 4)
        if comp.identity:
            ring = 2 * (size - 1) * tail // size + sum(2 * (size - 1) * a // size for a in arrays)
        else:
            ring = sum(2 * (size - 1) * (a + tail * (i == 0)) // size for i, a in enumerate(arrays))
        assert (stats.bytes_sent, stats.bytes_received) == (ring, ring)


@pytest.mark.parametrize("layout", [None, [(40, 30), (30,), (9, 10)]])
def test_powersgd_result_written_into_the_input_itself(layout):
    """prepare(x, out=x) then complete(out=x) (what the DDP hook does with its bucket): the last phase writes the
    result into x's own memory, with the same bits and the same residual memories as a call with a fresh output."""
    from gcomp.transports import run_local

    size, numel = 3, 40 * 30 + 30 + 90
    xs = inputs(size, numel, steps=STEPS, seed=12)

    def fn(t, in_place):
        engine = CompressedAllreduce(t, "powersgd:rank=2", algorithm="allreduce", error_feedback="residual")
        if layout is not None:
            engine.set_layout("b", layout)
        results = []
        for step in range(STEPS):
            x = np.array(xs[step][t.rank], dtype=np.float32, copy=True)
            if in_place:
                out = engine.complete(engine.prepare(x, key="b", out=x), out=x)
                assert out is x
            else:
                out = engine.complete(engine.prepare(x, key="b"))
                assert not np.shares_memory(out, x)
            results.append((out.copy(), engine.feedback.memory("b").copy()))
        return results

    fresh_out = run_local(size, fn, False)
    in_place = run_local(size, fn, True)
    for rank in range(size):
        for (a, ma), (b, mb) in zip(fresh_out[rank], in_place[rank], strict=True):
            assert a.tobytes() == b.tobytes() and ma.tobytes() == mb.tobytes()


def test_powersgd_in_place_allocates_no_dense_vector():
    """With out given to prepare, complete allocates nothing of the vector's size (traced by tracemalloc, both
    ranks' complete calls between two barriers)."""
    import tracemalloc

    from gcomp.transports import run_local

    numel = 300 * 200

    def fn(t, give_out):
        engine = CompressedAllreduce(t, "powersgd:rank=2", algorithm="allreduce", error_feedback="residual")
        engine.set_layout("b", [(300, 200)])
        x = np.random.default_rng(1 + t.rank).standard_normal(numel).astype(np.float32)
        engine.complete(engine.prepare(x.copy(), key="b"))  # first call: the memories exist from now on
        pending = engine.prepare(x, key="b", out=x if give_out else None)
        t.barrier()
        if t.rank == 0:
            tracemalloc.start()
        t.barrier()
        engine.complete(pending, out=x)
        t.barrier()
        if t.rank == 0:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            return peak

    assert run_local(2, fn, False)[0] >= 4 * numel  # a fresh result vector on each rank
    assert run_local(2, fn, True)[0] < 4 * numel // 2
