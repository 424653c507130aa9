"""Hybrid (cloud-edge-device) training through the DDP hook on 4 real gloo ranks in 2 groups, and the adaptive policy.

* ``none`` with groups ``[[0, 1], [2, 3]]`` equals DDP without a hook bit for bit at every step (a dense bucket goes
  through one plain allreduce over every rank: ``hierarchical_dense="flat"``);
* hierarchical top-k 1% (groups by a callable) keeps every rank identical at every step, and sends at most half
  the bytes between groups that flat top-k 1% sends (counted from the counters: the hierarchical call's
  ``bytes_sent - intra_bytes_sent``; flat allgather sends its packet to each of the P - 1 others, 2 of them in the
  other group, under the transport's byte model), with the bytes inside groups counted apart;
* a checkpoint of hierarchical top-k (groups by a list of colors) continues bit-identically after a restore;
* the adaptive policy, with a scripted link per rank (rank r's link is r + 1 times faster, so the ranks' measurements
  differ), switches to compression on the slow link and back when it speeds up, the same way on every rank, and
  the ranks stay identical.
"""

import io
import threading

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import gcomp.ddp
from gcomp.adapt import AdaptivePolicy

from .launch import batch, digest, launch, make_model

pytestmark = pytest.mark.slow

WORLD = 4
STEPS = 5
LR = 0.1
PAIRS = [[0, 1], [2, 3]]


def _pair(rank):
    return rank // 2


def _train(ddp, model, opt, rank, steps, first=0):
    digests = []
    for step in range(first, first + steps):
        x, y = batch(rank, step)
        opt.zero_grad(set_to_none=True)
        ((ddp(x) - y) ** 2).mean().backward()
        opt.step()
        digests.append(digest(model))
    return digests


def _run(rank, spec, steps=STEPS, **options):
    model = make_model(seed=0)
    ddp = DDP(model)
    state = gcomp.ddp.register(ddp, spec, start_iter=1, min_numel=256, **options) if spec else None
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    out = {"digests": _train(ddp, model, opt, rank, steps)}
    if state is not None:
        state.wait()
        calls = list(state.engine.stats)
        out["algorithms"] = sorted({s.algorithm for s in calls})
        out["sent"] = sum(s.bytes_sent for s in calls)
        out["intra_sent"] = sum(s.intra_bytes_sent for s in calls)
        out["between_sent"] = out["sent"] - out["intra_sent"]
        out["calls"] = len(calls)
        out["step_intra"] = [s["intra_bytes_sent"] for s in state.steps]
        state.close()
    return out


def _checkpoint(rank):
    """Hierarchical top-k, groups as a list of colors: save after 3 steps, restore into fresh objects, go on."""
    options = {"hierarchical": [0, 0, 1, 1], "start_iter": 1, "min_numel": 256}
    model = make_model(seed=0)
    ddp = DDP(model)
    state = gcomp.ddp.register(ddp, "topk:ratio=0.01", **options)
    opt = torch.optim.SGD(ddp.parameters(), lr=LR, momentum=0.9)
    _train(ddp, model, opt, rank, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "gcomp": state.state_dict()}, buf)
    uninterrupted = _train(ddp, model, opt, rank, 4, first=3)
    state.close()

    saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    fresh = make_model(seed=1)  # other initial values: the load must do the work
    fresh.load_state_dict(saved["model"])
    fresh_ddp = DDP(fresh)
    fresh_state = gcomp.ddp.CompressionState("topk:ratio=0.01", **options).attach(fresh_ddp)
    fresh_state.load_state_dict(saved["gcomp"])
    fresh_ddp.register_comm_hook(fresh_state, gcomp.ddp.compression_hook)
    fresh_opt = torch.optim.SGD(fresh_ddp.parameters(), lr=LR, momentum=0.9)
    fresh_opt.load_state_dict(saved["optimizer"])
    restored = _train(fresh_ddp, fresh, fresh_opt, rank, 4, first=3)
    fresh_state.close()
    return {"uninterrupted": uninterrupted, "restored": restored}


class ScriptedLink:
    """A clock for the policy: each reading adds the bytes the engine sent since the last reading at this rank's
    rate (slow for the first ``SLOW`` iterations, fast afterwards), and each reading on the training thread 1 ms
    of compute (a link without latency: the readings around a collective add only its bytes)."""

    SLOW = 9

    def __init__(self, rank):
        self.rank, self.now, self.seen, self.state = rank, 0.0, 0, None

    def __call__(self):
        if self.state is not None:
            sent = self.state.engine.bottleneck_bytes()
            moved, self.seen = sent - self.seen, sent
            slow = self.state.iter < self.SLOW
            self.now += moved / ((2e4 if slow else 1e9) * (self.rank + 1))
        if not threading.current_thread().name.startswith("gcomp-comm"):
            self.now += 1e-3
        return self.now


def _adaptive(rank):
    link = ScriptedLink(rank)
    policy = AdaptivePolicy(every=2, dwell=3, start=0, clock=link)
    model = make_model(seed=0)
    ddp = DDP(model)
    state = gcomp.ddp.register(ddp, policy, start_iter=1, min_numel=256, hierarchical=_pair)
    link.state = state
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    digests = _train(ddp, model, opt, rank, 18)
    state.wait()
    out = {"digests": digests, "switches": [(s["step"], s["from"], s["to"]) for s in policy.switches],
           "settings": [s.get("setting") for s in state.steps], "history": len(policy.history)}
    state.close()
    return out


def hybrid_worker(rank, world_size):
    return {
        "baseline": _run(rank, None),
        "none-list": _run(rank, "none", hierarchical=PAIRS),
        "topk-hier": _run(rank, "topk:ratio=0.01", hierarchical=_pair),
        "topk-flat": _run(rank, "topk:ratio=0.01", algorithm="allgather"),
        "checkpoint": _checkpoint(rank),
        "adaptive": _adaptive(rank),
    }


@pytest.fixture(scope="module")
def four_ranks():
    return launch(hybrid_worker, WORLD, timeout=300)


def test_none_in_two_groups_is_ddp_bit_for_bit(four_ranks):
    for result in four_ranks:
        assert result["none-list"]["digests"] == result["baseline"]["digests"]
        assert result["none-list"]["algorithms"] == ["dense"]  # one plain allreduce over every rank


@pytest.mark.parametrize("label", ["none-list", "topk-hier", "topk-flat", "adaptive"])
def test_ranks_are_identical_every_step(four_ranks, label):
    first = four_ranks[0][label]["digests"]
    assert all(r[label]["digests"] == first for r in four_ranks)


def test_hierarchical_topk_halves_the_bytes_between_groups(four_ranks):
    hier = [r["topk-hier"] for r in four_ranks]
    flat = [r["topk-flat"] for r in four_ranks]
    assert [h["algorithms"] for h in hier] == [["hierarchical/allgather"], ["hierarchical"]] * 2
    # non-leaders send only inside their group; leaders send inside and between
    assert hier[1]["between_sent"] == hier[3]["between_sent"] == 0 < hier[1]["intra_sent"]
    assert hier[0]["between_sent"] > 0 and hier[0]["intra_sent"] > 0
    assert all(s > 0 for h in hier for s in h["step_intra"][1:])  # StepStats count them too (step 0: DDP warm-up)
    between_hier = sum(h["between_sent"] for h in hier)
    # flat allgather: each rank's packet (with its prefix and size) goes to each of the 3 others, 2 in the other pair
    assert all(f["algorithms"] == ["allgather"] and f["intra_sent"] == 0 for f in flat)
    between_flat = sum(f["sent"] * 2 // (WORLD - 1) for f in flat)
    assert between_hier <= between_flat / 2, (between_hier, between_flat)


def test_checkpoint_continues_bit_identically(four_ranks):
    for result in four_ranks:
        assert result["checkpoint"]["restored"] == result["checkpoint"]["uninterrupted"]


def test_adaptive_switches_the_same_way_on_every_rank(four_ranks):
    runs = [r["adaptive"] for r in four_ranks]
    assert all(r["switches"] == runs[0]["switches"] and r["settings"] == runs[0]["settings"] for r in runs)
    switches = runs[0]["switches"]
    assert len(switches) >= 2, switches
    assert switches[0][1] == "none" and switches[0][2] != "none"  # the slow link: compression
    assert switches[-1][2] == "none"  # the fast link: back to none
    assert all(b[0] - a[0] >= 3 for a, b in zip(switches, switches[1:], strict=False))  # dwell 3
    assert len(set(runs[0]["settings"])) >= 2


# ----------------------------------------------------------------------------
# The grouping forms and hierarchical_dense on in-process ranks (fast; the engine the hook drives)
# ----------------------------------------------------------------------------
def _engine_results(size, groups, spec="topk:ratio=0.01", **options):
    import numpy as np

    from gcomp.collectives import CompressedAllreduce
    from gcomp.transports import run_local

    def fn(t):
        engine = CompressedAllreduce(t, spec, error_feedback="residual", groups=groups(t.rank), **options)
        rng = np.random.default_rng([3, t.rank])
        outs = [engine(rng.standard_normal(3000).astype(np.float32), key="g") for _ in range(3)]
        algorithm = engine.stats[-1].algorithm
        engine.free()
        return outs, algorithm

    return run_local(size, fn)


def test_groups_by_list_by_colors_and_by_callable_agree():
    import numpy as np

    forms = {"list": lambda r: [[0, 1], [2, 3]], "colors": lambda r: [5, 5, 9, 9], "callable": lambda r: _pair,
             "color": _pair}
    results = {name: _engine_results(4, groups) for name, groups in forms.items()}
    first = results["list"]
    assert [a for _, a in first] == ["hierarchical/allgather", "hierarchical"] * 2
    for name, result in results.items():
        for (outs, _), (ref, _) in zip(result, first, strict=True):
            assert all(np.array_equal(o, r) for o, r in zip(outs, ref, strict=True)), name


@pytest.mark.parametrize("bad", [[[0, 1], [1, 2, 3]], [[0, 1]], [0, 0, 1], [[0, 1], []], "x"])
def test_a_bad_list_raises_config_error_on_every_rank(bad):
    from gcomp.collectives import CompressedAllreduce
    from gcomp.errors import ConfigError
    from gcomp.transports import run_local

    def fn(t):
        try:
            CompressedAllreduce(t, "topk", groups=bad)
        except ConfigError as exc:
            return exc
        return None

    assert all(isinstance(e, ConfigError) for e in run_local(4, fn))


def test_ranks_with_different_lists_raise_mismatch_on_every_rank():
    from gcomp.collectives import CompressedAllreduce
    from gcomp.errors import MismatchError
    from gcomp.transports import run_local

    def fn(t):
        try:
            CompressedAllreduce(t, "topk", groups=[[0, 1], [2, 3]] if t.rank else [[0, 2], [1, 3]])
        except MismatchError as exc:
            return exc
        return None

    assert all(isinstance(e, MismatchError) for e in run_local(4, fn))


def test_hierarchical_dense_flat_is_the_plain_allreduce():
    """``none`` with ``"flat"``: exactly the flat dense engine's result; with ``"groups"``: the group sums'."""
    import numpy as np

    flat = _engine_results(4, lambda r: None, "none")
    as_flat = _engine_results(4, lambda r: PAIRS, "none", hierarchical_dense="flat")
    as_groups = _engine_results(4, lambda r: PAIRS, "none", hierarchical_dense="groups")
    assert all(a == "dense" for _, a in as_flat) and all(a.startswith("hierarchical") for _, a in as_groups)
    for (f, _), (h, _), (g, _) in zip(flat, as_flat, as_groups, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(f, h, strict=True))
        assert all(np.allclose(x, y, rtol=1e-6, atol=1e-6) for x, y in zip(f, g, strict=True))
