"""Issue 10 item 19: the usual rank-0 checkpoint.

Most scripts save one file on rank 0.  ``state.gathered_state_dict()``
(collective) holds every rank's hook state, gathered without pickle; on resume
every rank loads rank 0's file and ``load_state_dict`` takes its own part.
Three gloo ranks: phase A trains ``TOTAL`` steps and saves on rank 0 alone at
``SAVE_AT``; phase B, in fresh processes, loads that one file on every rank and
must continue bit-identically to phase A.  Also: the codec round-trips every
kind of value a state holds, and refuses damaged bytes with StateError.
"""

import os

import numpy as np
import pytest
import torch
from ddp.launch import batch, capture, digest, launch, make_model, train_step
from torch.nn.parallel import DistributedDataParallel as DDP

import gcomp.ddp
from gcomp import statecodec
from gcomp.errors import StateError

WORLD, TOTAL, SAVE_AT = 3, 7, 4
CONFIGS = {"topk": ("topk:ratio=0.1", "residual", "auto"), "powersgd": ("powersgd:rank=2", "residual", "auto"),
           "qsgd-sra": ("qsgd", "none", "scatter-reduce-allgather")}


def _setup(init_seed, config):
    model = make_model(seed=init_seed)
    ddp = DDP(model, bucket_cap_mb=0.008)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    spec, ef, alg = config
    state = gcomp.ddp.CompressionState(spec, error_feedback=ef, algorithm=alg).attach(ddp)
    return model, ddp, opt, state


def _train(rank, label, root):
    model, ddp, opt, state = _setup(0, CONFIGS[label])
    ddp.register_comm_hook(state, gcomp.ddp.compression_hook)
    digests = []
    for step in range(TOTAL):
        train_step(ddp, opt, *batch(rank, step))
        digests.append(digest(model))
        if step + 1 == SAVE_AT:
            gathered = state.gathered_state_dict()  # collective: every rank calls it
            if rank == 0:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "gcomp": gathered},
                           os.path.join(root, f"{label}.pt"))
    state.close()
    return digests


def _resume(rank, label, root):
    model, ddp, opt, state = _setup(123, CONFIGS[label])
    ckpt = torch.load(os.path.join(root, f"{label}.pt"), weights_only=True)  # rank 0's file, on every rank
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    state.load_state_dict(ckpt["gcomp"])
    ddp.register_comm_hook(state, gcomp.ddp.compression_hook)
    digests = []
    for step in range(SAVE_AT, TOTAL):
        train_step(ddp, opt, *batch(rank, step))
        digests.append(digest(model))
    state.close()
    return digests


def save_worker(rank, world_size, root):
    return {label: capture(_train, rank, label, root) for label in CONFIGS}


def resume_worker(rank, world_size, root):
    out = {label: capture(_resume, rank, label, root) for label in CONFIGS}
    ckpt = torch.load(os.path.join(root, "topk.pt"), weights_only=True)["gcomp"]
    ckpt["world_size"] = 2
    _, _, _, state = _setup(0, CONFIGS["topk"])
    out["wrong-size"] = capture(state.load_state_dict, ckpt)
    state.close()
    return out


@pytest.mark.slow
def test_rank0_checkpoint_resumes_bit_identically(tmp_path):
    root = str(tmp_path)
    saved = launch(save_worker, WORLD, root, timeout=300)
    assert sorted(os.listdir(root)) == sorted(f"{label}.pt" for label in CONFIGS)  # one file per run, from rank 0
    resumed = launch(resume_worker, WORLD, root, timeout=300)
    for rank in range(WORLD):
        for label in CONFIGS:
            assert saved[rank][label][0] == "ok", saved[rank][label]
            assert resumed[rank][label][0] == "ok", resumed[rank][label]
            assert resumed[rank][label][1] == saved[rank][label][1][SAVE_AT:], f"rank {rank}, {label}: diverged"
        outcome = resumed[rank]["wrong-size"]
        assert outcome[0] == "raised" and outcome[1] == "StateError", outcome


def _same(a, b):
    if isinstance(a, dict):
        return list(a) == list(b) and all(type(k) is type(j) for k, j in zip(a, b, strict=True)) and all(
            _same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and _same(a.numpy(), b.numpy())
    if isinstance(a, np.ndarray):  # bit for bit, NaN payloads included
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return type(a) is type(b) and (a == b or (a != a and b != b))


SAMPLE = {"version": 1, 0: {"residual": torch.arange(5, dtype=torch.float32)}, "n7/chunk1": [1, 2.5, None, True, "x"],
          True: (1, (2, 3)), "arrays": [np.arange(6, dtype=np.int64).reshape(2, 3), np.zeros(0, np.float16),
                                        torch.tensor([float("nan"), float("inf")])], "nan": float("nan"), "big": 2**62}


def test_codec_round_trips_every_kind_of_value():
    assert _same(statecodec.unpack(statecodec.pack(SAMPLE)), SAMPLE)


def test_codec_refuses_what_it_cannot_hold():
    for bad in ({"f": lambda: 0}, {(1, 2): 3}, {"x": object()}, {"c": 1j}):
        with pytest.raises(TypeError):
            statecodec.pack(bad)


def test_damaged_bytes_raise_state_error_only():
    data = statecodec.pack(SAMPLE)
    for cut in range(len(data)):
        with pytest.raises(StateError):
            statecodec.unpack(data[:cut] if cut < 16 else data[:16] + data[16:cut])  # every truncation
    rng = np.random.default_rng(0)
    for bit in rng.integers(0, len(data) * 8, 600):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            statecodec.unpack(bytes(flipped))
        except StateError:
            pass
