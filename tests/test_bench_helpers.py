"""The logic of bench/compressors.py, bench/grace_style.py and bench/ddp.py (no timing asserted).

The GRACE-style torch code must do what gcomp's compressor does (same entries
kept, same codes, the expected error), the fixed-cost fit must recover a known
line, the peak-memory probe must see an allocation of known size, and the
targets must say PASS or FAIL from their figures.
"""

import importlib.util
import math
import os
import sys

import numpy as np
import pytest
import torch

import gcomp
from gcomp import wire

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _load(name):
    """Import bench/<name>.py without leaving bench/ on sys.path or its thread variables in os.environ."""
    saved_path, saved_env = list(sys.path), dict(os.environ)
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved_path  # bench/ddp.py would shadow tests/ddp for later imports
        os.environ.clear()
        os.environ.update(saved_env)
    return module


@pytest.fixture(scope="module")
def comps():
    return _load("compressors")


@pytest.fixture(scope="module")
def gs(comps):
    return comps.grace_style


def _x(n=4000, seed=7):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("spec", ["none", "fp16", "topk:ratio=0.01", "threshold:tau=2.0"])
def test_deterministic_grace_style_equals_gcomp(gs, spec):
    x = _x()
    comp = gcomp.compressor(spec)
    want = comp.decompress(wire.decode(wire.encode(comp.compress(x))))
    got = gs.full_path(gs.make(comp), torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want)


def test_randomk_keeps_k_exact_entries(gs):
    x = _x()
    comp = gcomp.compressor("randomk:ratio=0.05")
    got = gs.full_path(gs.make(comp), torch.from_numpy(x)).numpy()
    kept = np.flatnonzero(got)
    assert kept.size == comp.k(x.size)
    np.testing.assert_array_equal(got[kept], x[kept])  # GRACE's random-k does not rescale


def test_sign_agrees_with_gcomp_sign(gs):
    x = _x()
    comp = gcomp.compressor("sign:bucket_size=512")
    got = gs.full_path(gs.make(comp), torch.from_numpy(x)).numpy()
    assert set(np.unique(got)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(got > 0, comp.decompress(comp.compress(x)) >= 0)


@pytest.mark.parametrize("spec", ["natural", "qsgd:levels=4,bucket_size=512", "terngrad:bucket_size=512"])
def test_stochastic_grace_style_is_unbiased(gs, spec):
    x = np.random.default_rng(5).uniform(-1, 1, 2000).astype(np.float32)  # within 2.5 std: TernGrad clips nothing
    g = gs.make(gcomp.compressor(spec))
    t = torch.from_numpy(x)
    draws = 400
    mean = sum(gs.full_path(g, t).double() for _ in range(draws)) / draws  # the seed advances per call
    err = float((mean - t.double()).norm() / t.double().norm())
    one = float((gs.full_path(g, t).double() - t.double()).norm() / t.double().norm())
    assert err < 3 * one / math.sqrt(draws) + 1e-3  # the mean of unbiased draws converges like 1/sqrt(draws)


def test_natural_rounds_to_neighbouring_powers_of_two(gs):
    x = _x()
    got = gs.full_path(gs.make(gcomp.compressor("natural")), torch.from_numpy(x)).numpy()
    ax = np.abs(x)
    lo = 2.0 ** np.floor(np.log2(ax))
    assert np.all(np.sign(got) == np.sign(x))
    assert np.all((np.abs(got) == lo) | (np.abs(got) == 2 * lo))


def test_qsgd_codes_are_levels_of_the_norm(gs):
    x = _x()
    g = gs.make(gcomp.compressor("qsgd:levels=4,bucket_size=512"))
    got = gs.full_path(g, torch.from_numpy(x)).numpy().astype(np.float64)
    levels = got / (np.linalg.norm(x.astype(np.float64)) / 4)
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)


def test_powersgd_recovers_a_low_rank_matrix_like_gcomp(gs):
    rows, cols = 60, 61  # gcomp's flat view of 3660 entries: floor(sqrt(n)) = 60 rows
    rng = np.random.default_rng(3)
    m = (rng.standard_normal((rows, 4)) @ rng.standard_normal((4, cols))).astype(np.float32)  # rank r: exact
    x = m.reshape(-1)
    comp = gcomp.compressor("powersgd:rank=4")
    g = gs.make(comp)
    assert g.shape_of(x.size) == (rows, cols)
    got = gs.full_path(g, torch.from_numpy(x)).numpy()
    want = comp.decompress(comp.compress(x))
    scale = np.linalg.norm(x)
    assert np.linalg.norm(got - x) / scale < 1e-4
    assert np.linalg.norm(want - x) / scale < 1e-4
    assert np.linalg.matrix_rank(got.reshape(rows, cols), tol=1e-3 * scale) <= 4


def test_encode_decode_round_trip_counts_the_bytes(gs):
    tensors = [torch.arange(5, dtype=torch.float32), torch.tensor([3, 1], dtype=torch.int64),
               torch.zeros(0, dtype=torch.int8)]
    blobs = gs.encode(tensors)
    assert sum(len(b) for _, _, b in blobs) == 5 * 4 + 2 * 8
    for a, b in zip(tensors, gs.decode(blobs), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_every_grace_style_name_has_a_counterpart(gs, comps):
    for name in gs.GRACE_STYLE:
        spec = comps.DEFAULT_SPECS[name].format(tau="1.0")
        assert type(gs.make(gcomp.compressor(spec))).name == name
    assert gs.make(gcomp.compressor("bf16")) is None


def test_fit_recovers_a_line(comps):
    a, b = comps.fit_fixed([1000, 10000, 100000], [5e-6 + 2e-9 * n for n in (1000, 10000, 100000)])
    assert a == pytest.approx(5e-6, rel=1e-6) and b == pytest.approx(2e-9, rel=1e-9)
    assert comps.fit_fixed([1000], [1.0]) is None


def _rec(n, full, grace, spec="topk:ratio=0.01"):
    return {"spec": spec, "spec_key": spec, "compressor": spec.split(":")[0], "n": n, "full_s": full,
            "grace_full_s": grace, **{f"{s}_s": full for s in comps_stages()}}


def comps_stages():
    return ["compress", "wire_encode", "wire_decode", "decompress_out", "decompress_add", "full_add"]


def test_targets_pass_and_fail_from_their_figures(comps):
    # t(n) = 10 us + 1 ns * n for gcomp, 3x that for GRACE: fixed 10 us (PASS), 3x faster (PASS)
    recs = [_rec(n, 10e-6 + 1e-9 * n, 3 * (10e-6 + 1e-9 * n)) for n in (1000, 10000, 100000)]
    recs += [_rec(n, 30e-6 + 1e-9 * n, 1.5 * (30e-6 + 1e-9 * n), "qsgd") for n in (1000, 10000, 100000)]
    fixed = comps.fixed_costs(recs)
    assert {f["spec"]: round(f["full"]["a_s"] * 1e6, 6) for f in fixed} == {"topk:ratio=0.01": 10.0, "qsgd": 30.0}
    mem = [{"impl": "gcomp", "spec": "topk:ratio=0.01", "n": 25_000_000, "extra_x_input": 0.5},
           {"impl": "gcomp", "spec": "topk:ratio=0.01", "n": 100_000_000, "extra_x_input": 0.1},
           {"impl": "grace-style", "spec": "topk:ratio=0.01", "n": 100_000_000, "extra_x_input": 5.0}]
    got = {(t["target"].split(" ")[0] + t["target"].split(" ")[2], t["spec"]): t["pass"]
           for t in comps.evaluate_targets(recs, fixed, mem)}
    assert got == {("fullat", "topk:ratio=0.01"): True, ("fullat", "qsgd"): False,
                   ("fullfixed", "topk:ratio=0.01"): True, ("fullfixed", "qsgd"): False,
                   ("fullextra", "topk:ratio=0.01"): True}


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_memory_probe_sees_a_known_allocation(comps):
    n = 12_000_000  # 48 MB: above glibc's largest mmap threshold, so it is mapped and unmapped as a whole
    res = comps.measure_memory_one(lambda: np.ones(n, np.float32), lambda: None, n, False)
    assert 0.97 < res["extra_x_input"] < 1.1
    fresh = comps.measure_memory_one(lambda: np.ones(n, np.float32), lambda: None, n, True)
    assert abs(fresh["extra_x_input"]) < 0.1  # the fresh output is not extra


def test_ddp_model_sizes_and_targets():
    ddp = _load("ddp")
    assert ddp.n_params_of(1024) == 1_863_690
    assert 24e6 < ddp.n_params_of(4608) < 26e6
    assert [int(h) for h in ddp.DEFAULT_HIDDEN.split(",")] == [1024, 4608]
    n = ddp.n_params_of(4608)
    assert 4 * n <= ddp.bucket_cap_for(n, "auto") * 2**20  # one bucket: torch's powerSGD_hook needs it on gloo
    assert ddp.bucket_cap_for(n, "25") == 25.0
    recs = [{"config": c, "n_params": n, "threads": 1, "step_s_median": t}
            for c, t in [("nohook", 1.0), ("torch-powersgd", 1.2), ("gcomp-powersgd", 1.1), ("gcomp-topk", 1.4)]]
    recs.append({"config": "gcomp-topk", "n_params": 1_000_000, "threads": 1, "step_s_median": 9.0})  # not 25M
    got = [(t["config"], t["pass"]) for t in ddp.evaluate_targets(recs)]
    assert got == [("gcomp-powersgd", True), ("gcomp-powersgd", True), ("gcomp-topk", False)]
