"""Every registered compressor trains a small model through the DDP hook on a real gloo group.

Plus the hook's other promises: bfloat16/float16 models, tiny and empty
buckets going dense, the dense warm-up (``start_iter``) counted in the stats,
the stats and logging API, the compressors' seed, and the global RNGs left
untouched.
"""

import logging
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gcomp
import gcomp.ddp

from .launch import batch, capture, digest, eval_loss, launch, make_model, train_step

pytestmark = pytest.mark.slow

STEPS = 15
LR = 0.1
BUCKET_CAP_MB = 0.008  # two buckets after DDP's rebuild: 4225 and 1088 entries
#: parameters for a quick descent in STEPS steps; every other compressor runs with its defaults
OVERRIDES = {
    "topk": "topk:ratio=0.1",
    "dgc": "dgc:ratio=0.1",
    "randomk": "randomk:ratio=0.25,rescale=false",  # rescaled (unbiased) random-k is not contractive: EF diverges
    "threshold": "threshold:tau=0.002",
    "powersgd": "powersgd:rank=2",
}


def spec_for(name):
    return OVERRIDES.get(name, name)


def _train(rank, spec, steps=STEPS, **options):
    model = make_model(seed=0)
    ddp = DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
    state = gcomp.ddp.register(ddp, spec, start_iter=1, min_numel=256, **options)
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    losses, digests = [eval_loss(model)], []
    for step in range(steps):
        train_step(ddp, opt, *batch(rank, step))
        digests.append(digest(model))
        losses.append(eval_loss(model))
    state.wait()
    last = dict(state.last_step())
    state.close()
    return {"losses": losses, "digests": digests, "last": last}


def train_all_worker(rank, world_size, names):
    return {name: capture(_train, rank, spec_for(name)) for name in names}


def all_cases_worker(rank, world_size, names):
    """Every compressor's training run, then the feature cases (features_worker), in one launch: one spawn of two
    ranks importing torch instead of two.  Each case builds its own model, DDP and state."""
    return train_all_worker(rank, world_size, names), features_worker(rank, world_size)


@pytest.fixture(scope="module")
def _launched():
    names = sorted(gcomp.list_compressors())
    return names, launch(all_cases_worker, 2, names, timeout=420)


@pytest.fixture(scope="module")
def trained(_launched):
    names, results = _launched
    return names, [r[0] for r in results]


def _ok(results, name):
    for rank, result in enumerate(results):
        assert result[name][0] == "ok", f"rank {rank}, {name}: {result[name][1]}: {result[name][2]}"
    return [r[name][1] for r in results]


def test_every_registered_compressor_is_covered(trained):
    names, _ = trained
    assert set(names) == set(gcomp.list_compressors())
    assert {"none", "topk", "qsgd", "powersgd", "threshold", "dgc"} <= set(names)


@pytest.mark.parametrize("name", sorted(gcomp.list_compressors()))
def test_compressor_trains_and_ranks_agree_every_step(trained, name):
    _, results = trained
    r0, r1 = _ok(results, name)
    # identical parameters on every rank after every step
    assert len(r0["digests"]) == STEPS
    for step, (a, b) in enumerate(zip(r0["digests"], r1["digests"], strict=True)):
        assert a == b, f"{name}: ranks hold different parameters after step {step}"
    # the loss falls (held-out loss, identical on both ranks since the parameters are)
    losses = r0["losses"]
    assert np.isfinite(losses).all(), losses
    assert min(losses[-3:]) < 0.7 * losses[0], f"{name}: held-out loss did not fall: {losses}"
    # the compressed path ran (not only the dense warm-up)
    last = r0["last"]
    assert last["algorithms"] != ["dense"] or name == "none", last
    if name != "none":
        assert last["compression_ratio"] > 1.0, last


# ----------------------------------------------------------------------------
# dtypes, bucket sizes, warm-up, stats, logging, seeds, RNG
# ----------------------------------------------------------------------------
def _dtype_case(rank, dtype_name, spec):
    dtype = getattr(torch, dtype_name)
    model = make_model(seed=0, dtype=dtype)
    ddp = DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
    state = gcomp.ddp.register(ddp, spec, start_iter=1, min_numel=256)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    digests = []
    for step in range(4):
        train_step(ddp, opt, *batch(rank, step, dtype=dtype))
        digests.append(digest(model))
    grads_dtype = {str(p.grad.dtype) for p in model.parameters()}
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    out = {"digests": digests, "params_dtype": {str(p.dtype) for p in model.parameters()}, "grads_dtype": grads_dtype,
           "finite": finite, "algorithms": state.last_step()["algorithms"]}
    state.close()
    return out


class OddModel(nn.Module):
    """A model with a tiny (3 entries) and an empty (0 entries) parameter besides a normal layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.empty = nn.Parameter(torch.zeros(0))
        self.tiny = nn.Parameter(torch.ones(3))
        self.body = nn.Linear(16, 64)
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        # The empty parameter is used first, so its gradient is ready last: after DDP's rebuild it
        # sits alone in the last bucket (0 entries).
        x = x + self.empty.sum()
        h = torch.tanh(self.body(x)) * self.tiny.mean()
        return self.head(h)


def _small_buckets_case(rank, min_numel):
    model = OddModel()
    ddp = DDP(model, bucket_cap_mb=0.0002)  # about 50 floats a bucket: nearly one parameter each
    state = gcomp.ddp.register(ddp, "topk:ratio=0.1", start_iter=1, min_numel=min_numel)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    digests = []
    for step in range(4):
        train_step(ddp, opt, *batch(rank, step))
        digests.append(digest(model))
    state.wait()
    calls = [(s.key, s.numel, s.algorithm) for s in state.stats if s.step == 3]
    out = {"digests": digests, "calls": calls, "last": dict(state.last_step())}
    state.close()
    return out


def _warmup_stats_case(rank):
    model = make_model(seed=0)
    ddp = DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
    records = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("gcomp.ddp")
    handler = Grab()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    state = gcomp.ddp.register(ddp, "topk:ratio=0.05", start_iter=3, min_numel=256, log_every=2)
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    per_step = []
    for step in range(6):
        train_step(ddp, opt, *batch(rank, step))
        per_step.append(dict(state.last_step()))  # read right after backward: the step's totals are closed
    state.wait()
    logger.removeHandler(handler)
    out = {"per_step": per_step, "steps": [dict(s) for s in state.steps], "iter": state.iter, "records": records,
           "stats_fields": sorted(vars(state.stats[-1])), "n_stats": len(state.stats)}
    state.close()
    return out


def _step_totals_case(rank):
    # The first layer (1088 entries) is the *last* bucket DDP reduces; with min_numel=2000 it goes
    # dense while the other bucket (4225 entries) is compressed on the comm thread.
    model = make_model(seed=0)
    ddp = DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
    state = gcomp.ddp.register(ddp, "qsgd", start_iter=1, min_numel=2000)
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    seen = []
    for step in range(8):
        train_step(ddp, opt, *batch(rank, step))
        state.wait()
        last = state.last_step()
        seen.append((last["step"], last["buckets"], last["algorithms"]))
    state.close()
    return seen


def _rng_case(rank):
    model = make_model(seed=0)
    ddp = DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
    state = gcomp.ddp.register(ddp, "qsgd", start_iter=1, min_numel=256)  # randomized compressor
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    train_step(ddp, opt, *batch(rank, 0))  # warm-up step
    torch.manual_seed(1234 + rank)
    np.random.seed(1234 + rank)
    random.seed(1234 + rank)
    before = (torch.random.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate())
    for step in range(1, 4):
        train_step(ddp, opt, *batch(rank, step))
    state.wait()
    after = (torch.random.get_rng_state(), np.random.get_state()[1], random.getstate())
    state.close()
    return {"torch": bool(torch.equal(before[0], after[0])), "numpy": bool((before[1] == after[1]).all()),
            "python": before[2] == after[2]}


def _seed_case(rank):
    out = {}
    for label, kwargs in (("spec_seed", {}), ("explicit", {"seed": 7})):
        state = gcomp.ddp.CompressionState("qsgd:seed=5", **kwargs)
        out[label] = state.compressor.get_config()["seed"]
        state.close()
    return out


def features_worker(rank, world_size):
    out = {}
    for dtype_name in ("bfloat16", "float16"):
        for spec in ("topk:ratio=0.1", "qsgd"):
            out[f"dtype-{dtype_name}-{spec}"] = capture(_dtype_case, rank, dtype_name, spec)
    for min_numel in (100, 0):
        out[f"small_buckets-{min_numel}"] = capture(_small_buckets_case, rank, min_numel)
    out["warmup_stats"] = capture(_warmup_stats_case, rank)
    out["step_totals"] = capture(_step_totals_case, rank)
    out["rng"] = capture(_rng_case, rank)
    out["seed"] = capture(_seed_case, rank)
    return out


@pytest.fixture(scope="module")
def features(_launched):
    return [r[1] for r in _launched[1]]


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("spec", ["topk:ratio=0.1", "qsgd"])
def test_low_precision_models(features, dtype_name, spec):
    r0, r1 = _ok(features, f"dtype-{dtype_name}-{spec}")
    assert r0["digests"] == r1["digests"]
    assert r0["params_dtype"] == r0["grads_dtype"] == {f"torch.{dtype_name}"}
    assert r0["finite"]
    assert r0["algorithms"] != ["dense"], r0["algorithms"]


@pytest.mark.parametrize("min_numel", [100, 0])
def test_tiny_and_empty_buckets_go_dense(features, min_numel):
    r0, r1 = _ok(features, f"small_buckets-{min_numel}")
    assert r0["digests"] == r1["digests"]
    calls = r0["calls"]
    # torch 2.x buckets: 1024 (body.weight), 65 (head), 67 (body.bias + tiny) and 0 (empty alone)
    numels = [numel for _, numel, _ in calls]
    assert 0 in numels and any(0 < n < 100 for n in numels) and any(n >= 100 for n in numels), calls
    for key, numel, algorithm in calls:
        if numel == 0 or numel < min_numel:
            assert algorithm == "dense", (key, numel, algorithm)
        else:
            assert algorithm != "dense", (key, numel, algorithm)
    assert sorted(r0["last"]["algorithms"]) == sorted({a for _, _, a in calls})


def test_start_iter_warmup_is_dense_and_counted(features):
    r0, _ = _ok(features, "warmup_stats")
    steps = r0["steps"]
    assert r0["iter"] == 6
    assert [s["step"] for s in steps] == list(range(6))
    for s in steps[:3]:
        assert s["algorithms"] == ["dense"], s
        assert s["compression_ratio"] == 1.0, s
    for s in steps[3:]:
        assert "dense" not in s["algorithms"], s
        assert s["compression_ratio"] > 5, s  # topk 5 %: about 10x fewer bytes than float32
        assert s["bytes_sent"] < steps[0]["bytes_sent"], (s, steps[0])


def test_stats_fields_and_logging(features):
    r0, _ = _ok(features, "warmup_stats")
    for s in r0["steps"]:
        for field in ("step", "buckets", "bytes_sent", "bytes_received", "dense_bytes", "compression_ratio",
                      "compress_s", "decompress_s", "comm_s", "algorithms", "nonfinite"):
            assert field in s, (field, s)
        # DDP reduces everything in one bucket on its first iteration, then rebuilds: two buckets here
        assert s["bytes_sent"] > 0 and s["buckets"] == (1 if s["step"] == 0 else 2) and s["nonfinite"] is False, s
    # last_step() right after backward is the step just finished
    assert [s["step"] for s in r0["per_step"]] == list(range(6))
    assert {"key", "step", "algorithm", "numel", "bytes_sent", "bytes_received", "packet_bytes"} <= set(r0["stats_fields"])
    # log_every=2: steps 0, 2, 4 logged to the gcomp.ddp logger
    logged = [m for m in r0["records"] if m.startswith("gcomp step")]
    assert len(logged) == 3 and logged[0].startswith("gcomp step 0"), r0["records"]


def test_step_totals_include_every_bucket(features):
    """A dense last bucket must not close the step before the compressed buckets have reported.

    Known gcomp bug when it fails: ``_close_after`` runs from the dense bucket's
    gloo callback as soon as the last bucket is done, while earlier compressed
    buckets may still be on the comm thread, so the step's totals miss them.
    """
    r0, r1 = _ok(features, "step_totals")
    for step, (n, buckets, algorithms) in enumerate(r0 + r1):
        if n == 0:
            continue  # warm-up: one bucket before DDP's rebuild
        assert buckets == 2 and len(algorithms) == 2 and "dense" in algorithms, (step, n, buckets, algorithms)


def test_hook_leaves_global_rngs_untouched(features):
    for result in _ok(features, "rng"):
        assert result == {"torch": True, "numpy": True, "python": True}


def test_spec_seed_is_kept_unless_seed_given(features):
    """``CompressionState("qsgd:seed=5")`` should keep seed 5; ``seed=7`` overrides it.

    Known gcomp bug when it fails: ``CompressionState(seed=0)`` is a default that
    silently overwrites the seed written in the spec.
    """
    r0, _ = _ok(features, "seed")
    assert r0["explicit"] == 7
    assert r0["spec_seed"] == 5
