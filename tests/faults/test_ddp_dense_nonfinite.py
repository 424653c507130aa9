"""Issue 10 item 1: the non-finite policy holds on the DDP hook's dense path too (warm-up and small buckets).

Three real gloo ranks; rank 1 alone puts a NaN into its gradient.  For every
policy, every rank must do the same thing: receive NaN (propagate), zeros
(zero) or raise NonFiniteError from backward (raise), and the step's
``nonfinite`` stat must say so.
"""

import pytest
import torch
from ddp.launch import batch, launch, make_model
from torch.nn.parallel import DistributedDataParallel as DDP

import gcomp.ddp

pytestmark = pytest.mark.slow

CASES = [  # (label, options): both put the bucket on the dense path
    ("warmup", {"start_iter": 5, "min_numel": 0}),
    ("small-bucket", {"start_iter": 0, "min_numel": 10**9}),
]


def _one(rank, policy, options):
    model = make_model(seed=0)
    ddp = DDP(model)
    state = gcomp.ddp.register(ddp, "topk:ratio=0.1", nonfinite=policy, **options)
    x, y = batch(rank, 0)
    loss = ((ddp(x) - y) ** 2).mean()
    if rank == 1:
        loss = loss * torch.tensor(float("nan"))
    out = {}
    try:
        loss.backward()
        out["raised"] = None
    except RuntimeError as exc:
        out["raised"] = "NonFiniteError" if "NaN or Inf" in str(exc) else str(exc)
    state.wait()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    out["all_nan"] = bool(grads) and all(bool(torch.isnan(g).all()) for g in grads)
    out["all_zero"] = bool(grads) and all(bool((g == 0).all()) for g in grads)
    last = state.last_step()
    out["stat"] = None if last is None else last["nonfinite"]
    out["algorithms"] = None if last is None else last["algorithms"]
    state.close()
    return out


def dense_nonfinite_worker(rank, world_size):
    return {(policy, label): _one(rank, policy, options) for policy in ("propagate", "zero", "raise")
            for label, options in CASES}


@pytest.fixture(scope="module")
def results():
    return launch(dense_nonfinite_worker, 3, timeout=240)


@pytest.mark.parametrize("label", [c[0] for c in CASES])
@pytest.mark.parametrize("policy", ["propagate", "zero", "raise"])
def test_every_rank_applies_the_policy_on_the_dense_path(results, policy, label):
    for rank, result in enumerate(results):
        r = result[(policy, label)]
        if policy == "raise":
            assert r["raised"] == "NonFiniteError", (rank, r)
            continue
        assert r["raised"] is None, (rank, r)
        assert r["algorithms"] == ["dense"], (rank, r)
        assert r["stat"] is True, (rank, r)
        if policy == "propagate":
            assert r["all_nan"], (rank, r)
        else:
            assert r["all_zero"], (rank, r)
