"""Faults on real gloo process groups: disagreeing ranks, NaN/Inf on one rank, a killed rank.

Whatever goes wrong on one rank, every rank must do the same documented thing
(raise, or see the same values) and nobody may hang: each launch has a hard
timeout and the groups a short one.
"""

import datetime
import os
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import gcomp.ddp
from gcomp.collectives import CompressedAllreduce
from gcomp.errors import CollectiveError, MismatchError, NonFiniteError
from gcomp.transports import TorchTransport

from .launch import DIED, LaunchError, batch, capture, digest, launch, make_model, train_step

pytestmark = pytest.mark.slow

SHORT = datetime.timedelta(seconds=10)
BUCKET_CAP_MB = 0.008  # two buckets after DDP's rebuild: 4225 entries (last two layers) and 1088 (first layer)


# ----------------------------------------------------------------------------
# ranks that disagree
# ----------------------------------------------------------------------------
#: label -> (options of rank 0, options of rank 1); each pair differs in one thing
CONSTRUCTION_MISMATCHES = {
    "spec": ({"compressor": "topk:ratio=0.1"}, {"compressor": "topk:ratio=0.2"}),
    "compressor": ({"compressor": "topk:ratio=0.1"}, {"compressor": "qsgd"}),
    "error_feedback": ({"compressor": "topk", "error_feedback": "residual"}, {"compressor": "topk", "error_feedback": "ef21"}),
    "algorithm": ({"compressor": "topk", "algorithm": "auto"}, {"compressor": "topk", "algorithm": "allgather"}),
    "nonfinite": ({"compressor": "qsgd", "nonfinite": "zero"}, {"compressor": "qsgd", "nonfinite": "raise"}),
    "start_iter": ({"compressor": "qsgd", "start_iter": 2}, {"compressor": "qsgd", "start_iter": 3}),
    "min_numel": ({"compressor": "qsgd", "min_numel": 1024}, {"compressor": "qsgd", "min_numel": 0}),
}


def _construct(options):
    options = dict(options)
    state = gcomp.ddp.CompressionState(options.pop("compressor"), timeout=SHORT, **options)
    state.close()
    return "constructed"


def _engine_mismatch(rank, case):
    transport = TorchTransport(dist.new_group(backend="gloo", timeout=SHORT))
    if case == "numel":
        engine = CompressedAllreduce(transport, "topk:ratio=0.1")
        x = np.linspace(-1, 1, 100 if rank == 0 else 120).astype(np.float32)
    elif case == "compressor":
        engine = CompressedAllreduce(transport, "topk:ratio=0.1" if rank == 0 else "sign")
        x = np.linspace(-1, 1, 256).astype(np.float32)
    else:  # dtype tag
        engine = CompressedAllreduce(transport, "qsgd")
        x = np.linspace(-1, 1, 256).astype(np.float32)
    dtype = "float32" if case != "dtype" or rank == 0 else "bfloat16"
    out = engine(x, key="w", dtype=dtype)
    return out.tolist()


def _engine_agreement_then_success(rank):
    # After agreeing once, later calls of the key do not re-verify and still work.
    transport = TorchTransport(dist.new_group(backend="gloo", timeout=SHORT))
    engine = CompressedAllreduce(transport, "topk:ratio=0.5")
    outs = [engine(np.full(64, float(rank + step), np.float32), key="k").tolist() for step in range(2)]
    return outs


def mismatch_worker(rank, world_size):
    out = {}
    for label, pair in CONSTRUCTION_MISMATCHES.items():
        out[("construct", label)] = capture(_construct, pair[rank])
    out[("construct", "same")] = capture(_construct, {"compressor": "topk:ratio=0.1"})
    for case in ("numel", "compressor", "dtype"):
        out[("engine", case)] = capture(_engine_mismatch, rank, case)
    out[("engine", "same")] = capture(_engine_agreement_then_success, rank)
    return out


# ----------------------------------------------------------------------------
# NaN / Inf on one rank
# ----------------------------------------------------------------------------
POLICIES = ("propagate", "zero", "raise")
NONFINITE_SPECS = ("none", "fp16", "topk:ratio=0.05", "qsgd", "powersgd:rank=2")
BAD_STEP = 2
NAN_AT, INF_AT = 5, 7  # flat positions in the second layer's weight, injected on rank 1 only


def _nonfinite_case(rank, spec, policy):
    model = make_model(seed=0)
    ddp = DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
    state = gcomp.ddp.register(ddp, spec, start_iter=1, min_numel=256, nonfinite=policy, timeout=SHORT)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    target = model[2].weight  # in the 4225-entry bucket
    inject = {"on": False}

    def poison(grad):
        if inject["on"] and rank == 1:
            grad = grad.clone()
            grad.view(-1)[NAN_AT] = float("nan")
            grad.view(-1)[INF_AT] = float("inf")
        return grad

    target.register_hook(poison)
    steps = []
    for step in range(BAD_STEP + 2):
        inject["on"] = step == BAD_STEP
        x, y = batch(rank, step)
        opt.zero_grad(set_to_none=True)
        try:
            ((ddp(x) - y) ** 2).mean().backward()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            state.wait()
            entries = state.engine.state_dict()["feedback"]["entries"]
            steps.append({"raised": (type(exc).__name__, str(exc)[:2000]), "memories_finite": _finite(entries)})
            continue
        grad = target.grad.detach().reshape(-1).clone()
        state.wait()
        entries = state.engine.state_dict()["feedback"]["entries"]
        steps.append({
            "nan": torch.isnan(grad).nonzero().reshape(-1).tolist(),
            "inf": torch.isinf(grad).nonzero().reshape(-1).tolist(),
            "finite_values": grad[torch.isfinite(grad)].numpy().tobytes(),
            "all_zero": bool((grad == 0).all()),
            "memories_finite": _finite(entries),
            "stats_nonfinite": state.last_step()["nonfinite"],
        })
        if all(bool(torch.isfinite(p.grad).all()) for p in model.parameters()):
            opt.step()
    finite_params = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    state.close()
    return {"steps": steps, "finite_params": finite_params, "digest": digest(model)}


def _finite(entries):
    return all(bool(torch.isfinite(t).all()) for bufs in entries.values() for t in bufs.values())


def nonfinite_worker(rank, world_size):
    return {(spec, policy): capture(_nonfinite_case, rank, spec, policy)
            for policy in POLICIES for spec in NONFINITE_SPECS}


def agreement_worker(rank, world_size):
    """Both groups of cases in one launch (one spawn of two ranks importing torch instead of two): the mismatches
    first, then, after a barrier on the default group, the NaN/Inf cases (each builds its own DDP and state)."""
    mismatches = mismatch_worker(rank, world_size)
    dist.barrier()
    return mismatches, nonfinite_worker(rank, world_size)


@pytest.fixture(scope="module")
def agreement():
    results = launch(agreement_worker, 2, timeout=360, pg_timeout=30)
    return [r[0] for r in results], [r[1] for r in results]


@pytest.mark.parametrize("label", list(CONSTRUCTION_MISMATCHES))
def test_construction_mismatch_raises_on_every_rank(agreement, label):
    mismatches, _ = agreement
    for rank, result in enumerate(mismatches):
        r = result[("construct", label)]
        assert r[0] == "raised" and r[1] == MismatchError.__name__, (rank, r)
        assert "disagree" in r[2]
    # the same configuration everywhere still constructs (the group is usable after a mismatch)
    assert [r[("construct", "same")] for r in mismatches] == [("ok", "constructed")] * 2


@pytest.mark.parametrize("case", ["numel", "compressor", "dtype"])
def test_engine_fingerprint_mismatch_over_torch_transport(agreement, case):
    # Through DDP a per-bucket mismatch is hard to provoke: DDP checks parameter shapes at construction
    # and broadcasts rank 0's rebuilt bucket assignment, so the engine's per-key fingerprint is tested
    # directly on the torch transport (the same code path the hook's comm thread runs).
    mismatches, _ = agreement
    for rank, result in enumerate(mismatches):
        r = result[("engine", case)]
        assert r[0] == "raised" and r[1] == MismatchError.__name__, (rank, r)
        assert "CollectiveError" in r[3]  # MismatchError is a CollectiveError (and a RuntimeError)
    same = [r[("engine", "same")] for r in mismatches]
    assert same[0][0] == "ok" and same[0] == same[1]


def _case(nonfinite, spec, policy):
    out = []
    for rank, result in enumerate(nonfinite):
        r = result[(spec, policy)]
        assert r[0] == "ok", f"rank {rank}, {spec}, {policy}: {r[1]}: {r[2]}"
        out.append(r[1])
    return out


@pytest.mark.parametrize("spec", NONFINITE_SPECS)
def test_nonfinite_propagate_same_positions_on_every_rank(agreement, spec):
    _, nonfinite = agreement
    r0, r1 = _case(nonfinite, spec, "propagate")
    bad0, bad1 = r0["steps"][BAD_STEP], r1["steps"][BAD_STEP]
    for key in ("nan", "inf", "finite_values"):
        assert bad0[key] == bad1[key], (spec, key)
    # the injected entries are non-finite on every rank (dense codecs keep them in place; QSGD's
    # bucket norm and PowerSGD's factors spread them further, identically on every rank)
    assert NAN_AT in bad0["nan"] + bad0["inf"] and INF_AT in bad0["nan"] + bad0["inf"], (bad0["nan"], bad0["inf"])
    assert bad0["stats_nonfinite"] is True


@pytest.mark.parametrize("spec", NONFINITE_SPECS)
def test_nonfinite_zero_gives_zeros_on_every_rank(agreement, spec):
    _, nonfinite = agreement
    r0, r1 = _case(nonfinite, spec, "zero")
    for r in (r0, r1):
        bad = r["steps"][BAD_STEP]
        assert bad["nan"] == [] and bad["inf"] == [] and bad["all_zero"], spec
        assert bad["stats_nonfinite"] is True
    assert r0["digest"] == r1["digest"] and r0["finite_params"]


@pytest.mark.parametrize("spec", NONFINITE_SPECS)
def test_nonfinite_raise_raises_on_every_rank(agreement, spec):
    _, nonfinite = agreement
    for r in _case(nonfinite, spec, "raise"):
        bad = r["steps"][BAD_STEP]
        assert "raised" in bad, bad
        name, message = bad["raised"]
        # DDP's C++ reducer turns any hook error into a RuntimeError; NonFiniteError is one too.
        assert issubclass(NonFiniteError, RuntimeError) and name in ("RuntimeError", "NonFiniteError")
        assert "NaN or Inf" in message, message


@pytest.mark.parametrize("spec", NONFINITE_SPECS)
def test_nonfinite_raise_names_the_gcomp_error(agreement, spec):
    """The error that leaves backward() should say it is gcomp's NonFiniteError.

    Known gcomp bug when it fails: ``compression_hook`` completes its Future
    with ``Future.set_exception``; DDP's C++ reducer reads that as a *value*
    and raises "Unable to cast <message> to Tensor", losing the error's type.
    """
    _, nonfinite = agreement
    for r in _case(nonfinite, spec, "raise"):
        name, message = r["steps"][BAD_STEP]["raised"]
        assert "Unable to cast" not in message, message
        assert name == "NonFiniteError" or "NonFiniteError" in message, message


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("spec", NONFINITE_SPECS)
def test_nonfinite_resets_memories_and_next_step_is_clean(agreement, spec, policy):
    _, nonfinite = agreement
    r0, r1 = _case(nonfinite, spec, policy)
    for r in (r0, r1):
        # after the bad step every error-feedback memory is finite (the poisoned key was reset)
        assert r["steps"][BAD_STEP]["memories_finite"], (spec, policy)
        clean = r["steps"][BAD_STEP + 1]
        assert "raised" not in clean, clean
        assert clean["nan"] == [] and clean["inf"] == [] and clean["memories_finite"]
        assert clean["stats_nonfinite"] is False
    assert r0["steps"][BAD_STEP + 1]["finite_values"] == r1["steps"][BAD_STEP + 1]["finite_values"]
    assert r0["digest"] == r1["digest"] and r0["finite_params"]


# ----------------------------------------------------------------------------
# a rank dies
# ----------------------------------------------------------------------------
KILLED_RANK = 2
KILL_STEP = 3


def killed_worker(rank, world_size, spec, algorithm):
    model = make_model(seed=0)
    ddp = DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
    gcomp.ddp.register(ddp, spec, start_iter=1, min_numel=256, algorithm=algorithm, timeout=SHORT)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    for step in range(KILL_STEP + 3):
        if step == KILL_STEP and rank == KILLED_RANK:
            os._exit(17)  # dies without a word, mid-training
        start = time.monotonic()
        try:
            train_step(ddp, opt, *batch(rank, step))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            return {"step": step, "seconds": time.monotonic() - start, "error": type(exc).__name__,
                    "is_collective": isinstance(exc, (CollectiveError, RuntimeError)), "message": str(exc)[:500]}
    return {"step": None}


@pytest.mark.parametrize("spec,algorithm", [("topk:ratio=0.1", "scatter-reduce-allgather")])
def test_killed_rank_makes_the_others_raise_within_the_timeout(spec, algorithm):
    start = time.monotonic()
    results = launch(killed_worker, 3, spec, algorithm, timeout=120, pg_timeout=SHORT.total_seconds(),
                     may_die=[KILLED_RANK])
    assert results[KILLED_RANK] == DIED
    for rank in range(3):
        if rank == KILLED_RANK:
            continue
        r = results[rank]
        assert r["step"] == KILL_STEP, (rank, r)
        assert r["is_collective"], r
        # within the group's timeout, plus a generous margin: a loaded machine must not fail this (issue 10 item 15)
        assert r["seconds"] < SHORT.total_seconds() + 60, r
    assert time.monotonic() - start < 240


# ----------------------------------------------------------------------------
# the launcher itself: a raising rank and a hanging rank are reported, nothing is left behind
# ----------------------------------------------------------------------------
def misbehaving_worker(rank, world_size):
    import torch.distributed as dist

    # Both ranks finish setting up first: on a loaded box rank 1 could still be connecting when rank 0 raises and
    # exits, and would then fail with a reset connection instead of hanging (what this test is about).
    dist.barrier()
    if rank == 0:
        raise ValueError("boom from rank 0")
    time.sleep(600)  # hangs far past the launch timeout


def test_launcher_reports_tracebacks_and_kills_hung_ranks():
    import multiprocessing

    start = time.monotonic()
    # The watchdog is generous: on a loaded machine two spawned ranks importing torch can take tens of seconds
    # before rank 0 even raises (a 20 s watchdog once killed it first; issue 10 item 15).  Once rank 0 has failed,
    # rank 1 gets 3 s (grace) before it counts as hung: the test does not wait the whole watchdog.
    with pytest.raises(LaunchError) as info:
        launch(misbehaving_worker, 2, timeout=150, grace=3)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "ValueError: boom from rank 0" in message and "misbehaving_worker" in message, message
    assert "rank 1: still running 3 s after another rank failed, killed" in message, message
    assert elapsed < 180, elapsed
    assert multiprocessing.active_children() == []
