"""``hierarchical``: dense inside groups of ranks, a flat algorithm among the group leaders, then / P."""

import numpy as np
import pytest

from gcomp.collectives import CompressedAllreduce, sequence
from gcomp.errors import ConfigError, NonFiniteError
from gcomp.transports import run_local

from ._reference import (
    KEYS,
    NUMELS,
    SIZES,
    HierarchicalReference,
    assert_equal,
    assert_same_bits,
    collect_errors,
    fresh,
    inputs,
    run_engines,
)

STEPS = 3
#: name -> color of each rank, as a function of (rank, size)
COLORINGS = {
    "pairs": lambda rank, size: rank // 2,  # {0,1} {2,3}: P=3 gives groups of 2 and 1
    "parity": lambda rank, size: rank % 2,  # leaders 0 and 1; groups {0,2} {1,3}
    "singletons": lambda rank, size: rank,  # every rank leads its own group: the flat algorithm on x
    "one-group": lambda rank, size: 7,  # a single group: no leaders' collective at all
}
#: (compressor, algorithm among the leaders): lossy compressors whose decoding accumulates exactly
LOSSY = [("topk", "allgather"), ("threshold", "scatter-reduce-allgather"), ("fp16", "allreduce"),
         ("randomk", "allreduce"), ("powersgd", "allreduce"), ("topk", "dense")]


def colors_of(coloring, size):
    return [COLORINGS[coloring](r, size) for r in range(size)]


def hierarchical(name, algorithm, coloring, *, as_callable, feedback="residual"):
    def make(t):
        if as_callable:
            groups = lambda rank: COLORINGS[coloring](rank, t.size)  # noqa: E731
        else:
            groups = COLORINGS[coloring](t.rank, t.size)
        return CompressedAllreduce(t, fresh(name), algorithm=algorithm, error_feedback=feedback, groups=groups)

    return make


@pytest.mark.parametrize("as_callable", [False, True], ids=["color", "callable"])
@pytest.mark.parametrize("coloring", sorted(COLORINGS))
@pytest.mark.parametrize("size", SIZES)
def test_none_gives_the_mean(size, coloring, as_callable):
    colors = colors_of(coloring, size)
    for numel in NUMELS:
        key = KEYS[numel]
        xs = inputs(size, numel, steps=2, seed=30)
        engines, outs = run_engines(size, hierarchical("none", "auto", coloring, as_callable=as_callable), xs, key=key)
        ref = HierarchicalReference("none", colors, "dense", "residual")
        for step in range(2):
            per_rank = [outs[r][step] for r in range(size)]
            assert_same_bits(per_rank)
            mean = np.mean(np.array(xs[step], np.float64), axis=0)
            np.testing.assert_allclose(per_rank[0], mean, rtol=1e-6, atol=1e-6)
            assert_equal(per_rank[0], ref(xs[step], key, step), f"none P={size} {coloring} n={numel}")
        for engine in engines:
            assert engine.choose(numel) == "hierarchical"
            assert engine.stats[-1].algorithm in ("hierarchical", "hierarchical/dense")
            engine.free()


@pytest.mark.parametrize("name,algorithm", LOSSY, ids=[f"{n}-{a}" for n, a in LOSSY])
@pytest.mark.parametrize("coloring", ["pairs", "parity", "singletons", "one-group"])
@pytest.mark.parametrize("size", SIZES)
def test_lossy_is_group_sums_then_flat_algorithm(size, coloring, name, algorithm):
    colors = colors_of(coloring, size)
    for numel in NUMELS:
        key = KEYS[numel]
        xs = inputs(size, numel, steps=STEPS, seed=31)
        engines, outs = run_engines(size, hierarchical(name, algorithm, coloring, as_callable=coloring == "parity"), xs,
                                    key=key)
        ref = HierarchicalReference(name, colors, algorithm, "residual")
        for step in range(STEPS):
            per_rank = [outs[r][step] for r in range(size)]
            assert_same_bits(per_rank)
            assert_equal(per_rank[0], ref(xs[step], key, step), f"{name}/{algorithm} P={size} {coloring} n={numel} step={step}")
        leaders = {colors.index(c) for c in colors}
        # only the leaders run the inner algorithm, and only when there are several of them
        expected = [f"hierarchical/{algorithm}" if r in leaders and len(leaders) > 1 else "hierarchical" for r in range(size)]
        assert [e.stats[-1].algorithm for e in engines] == expected
        for engine in engines:
            engine.free()


@pytest.mark.parametrize("coloring", ["pairs", "parity", "singletons", "one-group"])
@pytest.mark.parametrize("size", [2, 3, 4])
def test_intra_bytes(size, coloring):
    """Intra-group bytes follow the byte model (ring allreduce then broadcast from the leader); totals add up."""
    numel = 1000
    colors = colors_of(coloring, size)
    xs = inputs(size, numel, seed=32)
    engines, _ = run_engines(size, hierarchical("none", "auto", coloring, as_callable=False), xs)
    leaders = sorted({min(r for r in range(size) if colors[r] == c) for c in colors})
    nbytes = 4 * (numel + sequence.TAIL)  # every sum and the broadcast carry the call's sequence token
    for rank, engine in enumerate(engines):
        stats = engine.stats[-1]
        g = colors.count(colors[rank])
        ring = 2 * (g - 1) * nbytes // g
        is_leader = rank in leaders
        assert stats.intra_bytes_sent == ring + (g - 1) * nbytes * is_leader
        assert stats.intra_bytes_received == ring + nbytes * (not is_leader and g > 1)
        assert (stats.intra_bytes_sent > 0) == (g > 1)
        # between the groups: a dense ring allreduce of the group sums among the leaders, nothing elsewhere
        q = len(leaders)
        dense = 2 * (q - 1) * 4 * numel // q + 2 * (q - 1) * 4 * sequence.TAIL // q  # values, then the token
        between = dense if is_leader else 0
        assert stats.bytes_sent - stats.intra_bytes_sent == between
        assert stats.bytes_received - stats.intra_bytes_received == between
    all_stats = [e.stats[-1] for e in engines]
    assert sum(s.bytes_sent for s in all_stats) == sum(s.bytes_received for s in all_stats)
    assert sum(s.intra_bytes_sent for s in all_stats) == sum(s.intra_bytes_received for s in all_stats)


@pytest.mark.parametrize("size", [3, 4])
def test_intra_bytes_with_a_compressed_inner_algorithm(size):
    numel = 1000
    xs = inputs(size, numel, seed=33)
    engines, _ = run_engines(size, hierarchical("topk", "allgather", "parity", as_callable=False), xs)
    all_stats = [e.stats[-1] for e in engines]
    for rank, stats in enumerate(all_stats):
        assert stats.intra_bytes_sent > 0 or size == 3 and rank == 1  # P=3: rank 1 is alone in its group
        assert stats.bytes_sent >= stats.intra_bytes_sent
        if rank >= 2:  # not a leader: only the group's traffic
            assert stats.bytes_sent == stats.intra_bytes_sent
        else:  # a leader: the allgather of topk packets, under the byte model: its packet (behind the sequence
            # prefix) to the other leader + 8
            assert stats.bytes_sent - stats.intra_bytes_sent == stats.packet_bytes + sequence.PREFIX_SIZE + 8
    assert sum(s.bytes_sent for s in all_stats) == sum(s.bytes_received for s in all_stats)


@pytest.mark.parametrize("bad", [-1, "x", 1.5, True, np.int64(-3), [0]])
@pytest.mark.parametrize("size", [2, 3, 4])
def test_a_bad_color_on_one_rank_raises_everywhere(size, bad):
    def fn(t):
        color = bad if t.rank == size - 1 else 0
        CompressedAllreduce(t, "topk:ratio=0.1", groups=color)
        return "built"

    errors = collect_errors(size, fn)
    assert all(isinstance(e, ConfigError) for e in errors), errors


@pytest.mark.parametrize("size", [2, 3])
def test_a_callable_giving_a_bad_color_raises_everywhere(size):
    def fn(t):
        CompressedAllreduce(t, "none", groups=lambda rank: -1 if rank == 1 else rank // 2)

    errors = collect_errors(size, fn)
    assert all(isinstance(e, ConfigError) for e in errors), errors


@pytest.mark.parametrize("size", [2, 3])
def test_a_color_beyond_int64_raises_config_error_everywhere(size):
    """Regression: the colors travel as int64; a color >= 2**63 on one rank must not fail on that rank alone."""

    def fn(t):
        CompressedAllreduce(t, "none", groups=2**63 if t.rank == 1 else 0)

    errors = collect_errors(size, fn, timeout=2.0)
    assert all(isinstance(e, ConfigError) for e in errors), errors


@pytest.mark.parametrize("size", [2, 3])
def test_a_callable_returning_none_on_one_rank_raises_config_error_everywhere(size):
    def fn(t):
        CompressedAllreduce(t, "none", groups=lambda rank: None if rank == 1 else 0)

    errors = collect_errors(size, fn, timeout=2.0)
    assert all(isinstance(e, ConfigError) for e in errors), errors


@pytest.mark.parametrize("name,algorithm", [("topk", "allgather"), ("threshold", "scatter-reduce-allgather"), ("fp16", "allreduce")])
@pytest.mark.parametrize("size", [3, 4])
def test_sum(size, name, algorithm):
    colors = colors_of("pairs", size)
    xs = inputs(size, 1000, steps=STEPS, seed=34)
    engines, outs = run_engines(size, hierarchical(name, algorithm, "pairs", as_callable=False), xs, key=9, average=False)
    ref = HierarchicalReference(name, colors, algorithm, "residual")
    for step in range(STEPS):
        assert_same_bits([outs[r][step] for r in range(size)])
        assert_equal(outs[0][step], ref(xs[step], 9, step, average=False), f"sum {name}/{algorithm} P={size} step={step}")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("policy", ["propagate", "zero", "raise"])
@pytest.mark.parametrize("algorithm", ["allgather", "scatter-reduce-allgather"])
@pytest.mark.parametrize("size", [3, 4])
def test_nonfinite_on_a_group_member(size, algorithm, policy):
    """A NaN on a non-leader reaches every rank through its group sum; every rank applies the policy and resets."""
    key = "w"
    xs = inputs(size, 1000, steps=3, seed=35)

    def fn(t):
        engine = CompressedAllreduce(t, "topk:ratio=0.05", algorithm=algorithm, nonfinite=policy, groups=t.rank // 2)
        engine(xs[0][t.rank], key=key)
        keys = [key] if algorithm == "allgather" else [f"{key}/chunk{j}" for j in range(2)]
        before = [engine.feedback.memory(k) is not None for k in keys]
        x = xs[1][t.rank].copy()
        if t.rank == 1:
            x[10] = np.nan
        try:
            bad = engine(x, key=key)
        except NonFiniteError as exc:
            bad = exc
        after = [engine.feedback.memory(k) is not None for k in keys]
        after += [engine.server_feedback.memory(f"{key}/server") is not None]
        nxt = engine(xs[2][t.rank], key=key)
        engine.free()
        return before, bad, after, engine.stats[-2].nonfinite, nxt

    results = run_local(size, fn, timeout=20.0)
    leaders = [0, 2]
    for rank, (before, _, after, flagged, nxt) in enumerate(results):
        assert all(before) == (rank in leaders)  # only leaders keep memories
        assert flagged and not any(after)
        assert np.isfinite(nxt).all()
    bads = [r[1] for r in results]
    if policy == "raise":
        assert all(isinstance(b, NonFiniteError) for b in bads), bads
    else:
        assert_same_bits(bads)
        assert (not np.any(bads[0])) if policy == "zero" else np.isnan(bads[0][10])
    assert_same_bits([r[4] for r in results])
