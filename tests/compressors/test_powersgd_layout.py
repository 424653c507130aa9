"""PowerSGD per tensor (issue 11): with a layout, each weight matrix is factorized on its own, biases are exact."""

import numpy as np
import pytest

import gcomp
from gcomp.errors import ConfigError


def _run_phases(comps, xs, key):
    """Drive every rank's phases in lockstep, summing each phase's arrays as an allreduce would; the results."""
    gens = [c.phases(x, key=key) for c, x in zip(comps, xs, strict=True)]
    parts = [next(g) for g in gens]
    while True:
        total = sum(np.asarray(p, np.float64) for p in parts).astype(np.float32)
        parts, results = [], []
        for g in gens:
            try:
                parts.append(g.send(total.copy()))
            except StopIteration as done:
                results.append(done.value)
        if results:
            assert len(results) == len(gens)  # every rank finishes at the same phase
            return results


SHAPES = [(32, 16), (32,), (8, 3, 3), (7,)]


def _bucket(rank1_weights, ranks=3, seed=0):
    """Every rank's flat bucket: a rank-1 32x16 weight (the same u v^T scaled per rank), a bias, a conv weight."""
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal(32), rng.standard_normal(16)
    xs = []
    for r in range(ranks):
        w = np.outer(u, v) * (1 + r) if rank1_weights else rng.standard_normal((32, 16))
        parts = [w.ravel(), rng.standard_normal(32), rng.standard_normal(72), rng.standard_normal(7)]
        xs.append(np.concatenate(parts).astype(np.float32))
    return xs


def test_a_rank_one_weight_comes_back_exactly_and_biases_are_exact():
    xs = _bucket(rank1_weights=True)
    comps = [gcomp.compressor("powersgd:rank=1") for _ in xs]
    for c in comps:
        c.set_layout("b", SHAPES)
    outs = _run_phases(comps, xs, "b")
    total = sum(x.astype(np.float64) for x in xs)
    for out in outs:
        np.testing.assert_array_equal(out, outs[0])  # the same bits on every rank
        w, want = out[:512].reshape(32, 16), total[:512].reshape(32, 16)
        assert np.linalg.norm(w - want) <= 1e-5 * np.linalg.norm(want)  # rank 1: recovered exactly
        np.testing.assert_allclose(out[512:544], total[512:544], rtol=1e-6, atol=1e-6)  # bias: uncompressed sum
        np.testing.assert_allclose(out[-7:], total[-7:], rtol=1e-6, atol=1e-6)
    # the flat view mixes the weight with the biases: the same rank-1 weight is far from exact
    flat = [gcomp.compressor("powersgd:rank=1") for _ in xs]
    w_flat = _run_phases(flat, xs, "b")[0][:512].reshape(32, 16)
    assert np.linalg.norm(w_flat - total[:512].reshape(32, 16)) > 0.1 * np.linalg.norm(total[:512])


def test_only_matrices_that_pay_are_factorized():
    c = gcomp.compressor("powersgd:rank=4")
    c.set_layout(0, [(32, 16), (32,), (3, 3), (2, 2, 2)])
    n = 512 + 32 + 9 + 8
    p = c.p_phase(np.ones(n, np.float32), key=0)
    # (3x3 at rank 3: 18 >= 9) and (2x4 at rank 2: 12 >= 8) travel uncompressed, with the bias: 32 + 9 + 8 entries,
    # then the 32x4 P of the weight
    assert p.shape == (32 + 9 + 8 + 32 * 4,)


def test_warm_start_is_per_tensor_and_a_new_layout_starts_over():
    xs = _bucket(rank1_weights=False)
    comps = [gcomp.compressor("powersgd:rank=2") for _ in xs]
    for c in comps:
        c.set_layout("b", SHAPES)
    _run_phases(comps, xs, "b")
    assert sorted(comps[0].state_dict()["q"]) == ["b/t0", "b/t2"]
    comps[0].set_layout("b", SHAPES)  # unchanged: kept
    assert sorted(comps[0].state_dict()["q"]) == ["b/t0", "b/t2"]
    comps[0].set_layout("b", [(16, 32), (32,), (72,), (7,)])
    assert comps[0].state_dict()["q"] == {}


def test_a_layout_that_does_not_cover_the_vector_is_refused():
    c = gcomp.compressor("powersgd")
    c.set_layout(0, [(32, 16)])
    with pytest.raises(ConfigError, match="expected 512 entries"):
        c.p_phase(np.ones(600, np.float32), key=0)


def test_compress_keeps_the_flat_codec_form_with_a_layout():
    x = _bucket(rank1_weights=False)[0]
    with_layout, plain = gcomp.compressor("powersgd"), gcomp.compressor("powersgd")
    with_layout.set_layout("b", SHAPES)
    a, b = with_layout.compress(x, key="b"), plain.compress(x, key="b")
    np.testing.assert_array_equal(with_layout.decompress(a), plain.decompress(b))
