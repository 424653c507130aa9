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
