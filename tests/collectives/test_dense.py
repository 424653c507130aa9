"""``dense``: a float32 allreduce, bit-identical to scaling by 1/P then summing in rank order."""

import numpy as np
import pytest

from gcomp.collectives import CompressedAllreduce

from ._reference import KEYS, NUMELS, SIZES, assert_equal, assert_same_bits, dense_reference, inputs, run_engines


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("average", [True, False], ids=["mean", "sum"])
@pytest.mark.parametrize("spec", ["none", "topk:ratio=0.1"])  # algorithm="dense" ignores the compressor
def test_dense_is_scale_then_sum_in_rank_order(size, average, spec):
    for numel in NUMELS:
        xs = inputs(size, numel, steps=2, seed=1)
        engines, outs = run_engines(size, lambda t: CompressedAllreduce(t, spec, algorithm="dense"), xs,
                                    key=KEYS[numel], average=average)
        for step in range(2):
            per_rank = [outs[r][step] for r in range(size)]
            assert_same_bits(per_rank)
            assert_equal(per_rank[0], dense_reference(xs[step], average=average), f"dense P={size} n={numel}")
        for engine in engines:
            assert engine.stats[-1].algorithm == "dense"
            assert engine.feedback.memory(KEYS[numel]) is None  # dense never touches the memories


@pytest.mark.parametrize("size", SIZES)
def test_auto_with_none_is_dense(size):
    xs = inputs(size, 1000, seed=2)
    engines, outs = run_engines(size, lambda t: CompressedAllreduce(t, "none"), xs)
    assert [e.stats[-1].algorithm for e in engines] == ["dense"] * size
    assert_same_bits([o[0] for o in outs])
    assert_equal(outs[0][0], dense_reference(xs[0]), "auto/none")


@pytest.mark.parametrize("size", [3])
def test_mean_differs_from_sum_then_divide_at_odd_sizes(size):
    """The reference is not vacuous: at P=3 scaling first and dividing last give different bits for these inputs."""
    xs = inputs(size, 1000, seed=3)[0]
    scaled = dense_reference(xs)
    divided = (xs[0] + xs[1] + xs[2]) / np.float32(size)
    assert not np.array_equal(scaled, divided)
    engines, outs = run_engines(size, lambda t: CompressedAllreduce(t, "none", algorithm="dense"), [xs])
    assert_equal(outs[0][0], scaled, "dense P=3")


@pytest.mark.parametrize("size", SIZES)
def test_divide_after_is_the_sum_then_divided(size):
    """``dense_mean="divide-after"`` (gcomp.mpi's MEAN): the rank-order sum, then divided by P, bit for bit."""
    xs = inputs(size, 1000, seed=4)[0]
    total = xs[0].copy()
    for x in xs[1:]:
        total += x
    want = total / np.float32(size) if size > 1 else total
    engines, outs = run_engines(size, lambda t: CompressedAllreduce(t, "none", dense_mean="divide-after"), [xs])
    assert_same_bits([o[0] for o in outs])
    assert_equal(outs[0][0], want, f"divide-after P={size}")


def test_dense_mean_option_is_validated():
    from gcomp.errors import ConfigError
    from gcomp.transports import run_local

    with pytest.raises(ConfigError, match="dense_mean"):
        run_local(1, lambda t: CompressedAllreduce(t, "none", dense_mean="middle"))
