"""Per-rank checkpoints of the DDP hook continue bit-identically, on 3 real gloo ranks.

Phase A trains uninterrupted for ``TOTAL`` steps and, after ``SAVE_AT`` steps,
saves on every rank one file holding the model, the optimizer (SGD with
momentum, so its state matters) and ``state.state_dict()``.  Phase B runs in
*fresh processes*: a fresh model (initialised differently, so the load must
do the work), a fresh optimizer, a fresh ``CompressionState`` (load_state_dict
before ``register_comm_hook``), then continues; its parameters must match
phase A bit for bit after every step.

Covered: topk (residual error feedback), qsgd (randomized: seeds and steps),
powersgd (warm-started Q) and dgc with dgc error feedback (momentum and
velocity), each with ``algorithm="auto"`` and ``"scatter-reduce-allgather"``
(whose worker and server memories are all per rank).
"""

import os

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import gcomp.ddp
from gcomp.errors import StateError

from .launch import batch, capture, digest, launch, make_model, train_step

pytestmark = pytest.mark.slow

WORLD = 3
TOTAL = 7
SAVE_AT = 4  # steps 0-1 are the dense warm-up (start_iter=2), 2-3 compressed before the save
BUCKET_CAP_MB = 0.008  # two buckets after DDP's rebuild

#: label -> (spec, error_feedback, algorithm)
CONFIGS = {
    f"{name}-{alg_label}": (spec, ef, alg)
    for name, spec, ef in (
        ("topk", "topk:ratio=0.1", "residual"),
        ("qsgd", "qsgd", "residual"),
        ("powersgd", "powersgd:rank=2", "residual"),
        ("dgc", "dgc:ratio=0.1", "dgc"),
    )
    for alg_label, alg in (("auto", "auto"), ("sra", "scatter-reduce-allgather"))
}


def _setup(init_seed):
    model = make_model(seed=init_seed)
    ddp = DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    return model, ddp, opt


def _state(config):
    spec, ef, alg = config
    return gcomp.ddp.CompressionState(spec, error_feedback=ef, algorithm=alg)


def _path(root, label, rank):
    return os.path.join(root, label, f"rank{rank}.pt")


def _uninterrupted(rank, label, config, root):
    model, ddp, opt = _setup(init_seed=0)
    state = _state(config).attach(ddp)
    ddp.register_comm_hook(state, gcomp.ddp.compression_hook)
    digests, algorithms = [], set()
    for step in range(TOTAL):
        train_step(ddp, opt, *batch(rank, step))
        digests.append(digest(model))
        algorithms.update(state.last_step()["algorithms"])
        if step + 1 == SAVE_AT:
            os.makedirs(os.path.join(root, label), exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "gcomp": state.state_dict()},
                       _path(root, label, rank))
    state.close()
    return {"digests": digests, "algorithms": sorted(algorithms)}


def save_worker(rank, world_size, root):
    return {label: capture(_uninterrupted, rank, label, config, root) for label, config in CONFIGS.items()}


def _resume(rank, label, config, root, variant):
    model, ddp, opt = _setup(init_seed=123)
    state = _state(config).attach(ddp)
    ckpt = torch.load(_path(root, label, rank), weights_only=True)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    if variant != "fresh_state":
        state.load_state_dict(ckpt["gcomp"])
    if variant in ("primed", "fresh_state"):
        # Also valid: one throw-away backward without the hook lets DDP
        # rebuild its buckets before the hook sees any; parameters and optimizer are untouched.
        ddp(batch(rank, 10_000)[0]).sum().backward()
        opt.zero_grad(set_to_none=True)
    ddp.register_comm_hook(state, gcomp.ddp.compression_hook)
    digests = []
    for step in range(SAVE_AT, TOTAL):
        train_step(ddp, opt, *batch(rank, step))
        digests.append(digest(model))
    state.close()
    return digests


def _bad_loads(rank, root):
    label, config = next(iter(CONFIGS.items()))
    out = {}
    other = torch.load(_path(root, label, (rank + 1) % WORLD), weights_only=True)["gcomp"]
    out["other_rank"] = capture(_state(config).load_state_dict, other)
    mine = torch.load(_path(root, label, rank), weights_only=True)["gcomp"]
    spec, ef, alg = config
    out["other_config"] = capture(gcomp.ddp.CompressionState(spec, error_feedback=ef, algorithm="allgather",
                                                             start_iter=3).load_state_dict, mine)
    return out


def resume_worker(rank, world_size, root):
    out = {}
    for variant in ("documented", "primed", "fresh_state"):
        for label, config in CONFIGS.items():
            out[(variant, label)] = capture(_resume, rank, label, config, root, variant)
    out["bad_loads"] = _bad_loads(rank, root)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gcomp-ddp-ckpt"))
    saved = launch(save_worker, WORLD, root, timeout=300)
    resumed = launch(resume_worker, WORLD, root, timeout=300)
    return saved, resumed


def _saved(saved, label):
    out = []
    for rank, result in enumerate(saved):
        assert result[label][0] == "ok", f"rank {rank}, {label}: {result[label][1:3]}"
        out.append(result[label][1])
    return out


def _resumed(resumed, variant, label):
    out = []
    for rank, result in enumerate(resumed):
        r = result[(variant, label)]
        assert r[0] == "ok", f"rank {rank}, {variant} {label}: {r[1]}: {r[2]}"
        out.append(r[1])
    return out


@pytest.mark.parametrize("label", list(CONFIGS))
def test_uninterrupted_run_compresses_and_ranks_agree(runs, label):
    saved, _ = runs
    results = _saved(saved, label)
    assert results[0]["digests"] == results[1]["digests"] == results[2]["digests"]
    algorithms = results[0]["algorithms"]
    assert "dense" in algorithms and len(algorithms) == 2, algorithms  # warm-up, then compressed
    if label.endswith("-sra"):
        assert "scatter-reduce-allgather" in algorithms


@pytest.mark.parametrize("label", list(CONFIGS))
def test_restore_continues_bit_identically(runs, label):
    """The documented flow: a fresh state attached to the fresh DDP model, load_state_dict, register, train.

    A fresh DDP model reduces all parameters in one bucket on its first
    iteration and only then rebuilds its buckets; the attached state maps the
    saved bucket memories onto that first bucket by parameter index.
    """
    saved, resumed = runs
    expected = [r["digests"][SAVE_AT:] for r in _saved(saved, label)]
    got = _resumed(resumed, "documented", label)
    for rank in range(WORLD):
        assert got[rank] == expected[rank], f"rank {rank}: {label} diverged after restore"


@pytest.mark.parametrize("label", list(CONFIGS))
def test_restore_after_bucket_rebuild_continues_bit_identically(runs, label):
    # Residuals, momenta, PowerSGD's Q, seeds and steps all come back: bit-identical continuation.
    saved, resumed = runs
    expected = [r["digests"][SAVE_AT:] for r in _saved(saved, label)]
    got = _resumed(resumed, "primed", label)
    for rank in range(WORLD):
        assert got[rank] == expected[rank], f"rank {rank}: {label} diverged after restore"


@pytest.mark.parametrize("label", list(CONFIGS))
def test_without_the_hook_state_the_run_differs(runs, label):
    # Sensitivity check: restoring only model and optimizer (a fresh hook state restarts with a
    # dense warm-up and empty memories) does not reproduce the uninterrupted run.
    saved, resumed = runs
    expected = [r["digests"][SAVE_AT:] for r in _saved(saved, label)]
    got = _resumed(resumed, "fresh_state", label)
    assert got[0] != expected[0]


def test_loading_another_ranks_or_configs_state_raises(runs):
    _, resumed = runs
    for rank, result in enumerate(resumed):
        for case in ("other_rank", "other_config"):
            r = result["bad_loads"][case]
            assert r[0] == "raised" and r[1] == StateError.__name__, (rank, case, r)
