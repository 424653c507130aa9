"""One training worker of ``gcomp train`` (``python -m gcomp.train.worker CONFIG.json RANK``).

Joins a gloo process group, trains the model with DDP and the configured
communication (no hook, torch's fp16 or PowerSGD hook, or a gcomp compressor),
and writes ``rank<R>.json`` with per-epoch loss, accuracy, wall-clock time,
bytes sent/received, and the split of time between compute, compression and
communication.  Rank 0 prints one ``PROGRESS`` line per epoch for the parent.
"""

import datetime
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from .data import epoch_batches, load_dataset
from .models import build_model

BASELINES = ("none", "torch-fp16", "torch-powersgd")


def _interface_counters(ifname):
    try:
        base = f"/sys/class/net/{ifname}/statistics/"
        with open(base + "tx_bytes") as tx, open(base + "rx_bytes") as rx:
            return int(tx.read()), int(rx.read())
    except OSError:
        return None


def modelled_bytes_per_step(spec, model, world, powersgd_rank=4):
    """Bytes one rank sends per step for the non-gcomp configurations (ring model 2 (P-1)/P S)."""
    ring = 2 * (world - 1) / world
    params = [p for p in model.parameters() if p.requires_grad]
    if spec == "none":
        return ring * 4 * sum(p.numel() for p in params)
    if spec == "torch-fp16":
        return ring * 2 * sum(p.numel() for p in params)
    if spec == "torch-powersgd":
        total = 0
        for p in params:
            if p.dim() >= 2:
                n, m = p.shape[0], p.numel() // p.shape[0]
                r = min(powersgd_rank, n, m)
                total += 4 * (n + m) * r if (n + m) * r < n * m else 4 * n * m
            else:
                total += 4 * p.numel()
        return ring * total
    raise ValueError(spec)


def _setup_hook(cfg, ddp, world):
    spec = cfg["compressor"]
    if spec == "none":
        return None
    if spec == "torch-fp16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return None
    if spec == "torch-powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=4,
                                            start_powerSGD_iter=cfg["start_iter"], use_error_feedback=True,
                                            warm_start=True, random_seed=cfg["seed"])
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        return None
    import gcomp.ddp

    feedback = cfg.get("error_feedback", "auto")
    if feedback == "dgc":
        # DGC's momentum correction keeps the momentum in the feedback memory (the optimizer runs without it).
        from gcomp.feedback import DGCFeedback

        feedback = DGCFeedback(spec, momentum=cfg["momentum"])
    # hybrid: a dense sum inside each --groups group, the compressed collective among the group leaders, a broadcast
    hierarchical = cfg.get("groups") if cfg.get("architecture") == "hybrid" else None
    return gcomp.ddp.register(ddp, spec, start_iter=cfg["start_iter"], error_feedback=feedback,
                              timeout=datetime.timedelta(seconds=cfg["timeout"]), hierarchical=hierarchical)


def _compute_seconds(cfg, x, y):
    """Median seconds of one local forward+backward+step on a copy (the compute part of a step)."""
    model = build_model(cfg["model"], cfg["hidden"], cfg["seed"], inputs=x.shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    times = []
    for i in range(6):
        xb = torch.from_numpy(x[i * cfg["batch_size"]: (i + 1) * cfg["batch_size"]])
        yb = torch.from_numpy(y[i * cfg["batch_size"]: (i + 1) * cfg["batch_size"]])
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def run(cfg, rank):
    """Train one rank of the run ``cfg``; write ``rank<R>.json`` into ``cfg["run_dir"]`` and return its record.

    Joins (and leaves) the gloo group at ``master_addr:master_port``, unless a default process group exists
    already (``gcomp train --launched-by torchrun``): then it trains on that group and leaves it open.
    """
    world = cfg["workers"]
    torch.set_num_threads(1)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo", init_method=f"tcp://{cfg['master_addr']}:{cfg['master_port']}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=cfg["timeout"]))
    x_train, y_train, x_test, y_test = load_dataset(cfg)
    compute_s = _compute_seconds(cfg, x_train, y_train)
    model = build_model(cfg["model"], cfg["hidden"], cfg["seed"], inputs=x_train.shape[1])
    # One bucket for the whole model: torch's powerSGD_hook can deadlock on gloo with several buckets
    # (its P/Q allreduces run from future callbacks), and it keeps every configuration comparable.
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=cfg.get("bucket_cap_mb", 64))
    state = _setup_hook(cfg, ddp, world)
    # Numba compiles a kernel on its first call (or loads it from the cache): do that now, before the clock starts,
    # so that the first run and every later one report the same compression times.
    warm_up_s = state.warm_up() if state is not None else 0.0
    if rank == 0:
        print(f"READY {warm_up_s:.3f}", flush=True)
    momentum = 0.0 if state is not None and cfg.get("error_feedback") == "dgc" else cfg["momentum"]
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg["lr"], momentum=momentum)
    xt, yt = torch.from_numpy(x_test), torch.from_numpy(y_test)
    ifname = cfg.get("ifname")
    counters0 = _interface_counters(ifname) if ifname else None
    epochs = []
    start = time.perf_counter()
    step = 0
    bytes_sent = bytes_received = intra_bytes_sent = 0.0
    compress_s = comm_s = 0.0
    dense_bytes = 4 * sum(p.numel() for p in model.parameters())
    for epoch in range(cfg["epochs"]):
        ddp.train()
        losses = []
        for batch in epoch_batches(len(y_train), cfg["batch_size"], rank, world, epoch, cfg["seed"]):
            xb, yb = torch.from_numpy(x_train[batch]), torch.from_numpy(y_train[batch])
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(ddp(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            elapsed = time.perf_counter() - t0
            losses.append(float(loss))
            if state is not None:
                state.wait()
                last = state.last_step()
                if last is not None and last["step"] == step:
                    bytes_sent += last["bytes_sent"]
                    bytes_received += last["bytes_received"]
                    intra_bytes_sent += last.get("intra_bytes_sent", 0)
                    compress_s += last["compress_s"] + last["decompress_s"]
            else:
                dense = step < cfg["start_iter"] and cfg["compressor"] == "torch-powersgd"
                b = modelled_bytes_per_step("none" if dense else cfg["compressor"], model, world)
                bytes_sent += b
                bytes_received += b
            comm_s += max(0.0, elapsed - compute_s)
            step += 1
        ddp.eval()
        with torch.no_grad():
            acc = float((ddp.module(xt).argmax(1) == yt).float().mean())
        record = {"epoch": epoch + 1, "steps": step, "loss": float(np.mean(losses)), "accuracy": acc,
                  "wall_s": time.perf_counter() - start, "bytes_sent": bytes_sent, "bytes_received": bytes_received,
                  "compute_s": compute_s * step, "compress_s": compress_s, "comm_s": max(0.0, comm_s - compress_s),
                  "intra_bytes_sent": intra_bytes_sent}
        if counters0 is not None:
            now = _interface_counters(ifname)
            record["measured_tx_bytes"] = now[0] - counters0[0]
            record["measured_rx_bytes"] = now[1] - counters0[1]
        epochs.append(record)
        if rank == 0:
            print(f"PROGRESS {epoch + 1} {cfg['epochs']} {acc:.4f} {record['wall_s']:.2f}", flush=True)
    result = {"rank": rank, "config": cfg, "compute_s_per_step": compute_s, "dense_bytes_per_step": dense_bytes,
              "kernel_warm_up_s": warm_up_s,
              "steps_per_epoch": step // max(1, cfg["epochs"]), "epochs": epochs,
              "bytes_model": "gcomp byte counters" if state is not None else "ring model 2(P-1)/P x payload",
              "final_params_sha": _param_hash(model)}
    if state is not None:
        if state.policy is not None:  # the adaptive policy: its ladder, every decision and every switch
            result["adaptive"] = state.policy.summary()
        state.close()
    with open(os.path.join(cfg["run_dir"], f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    if owned:
        dist.destroy_process_group()
    return result


def _param_hash(model):
    import hashlib

    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().numpy().tobytes())
    return h.hexdigest()[:16]


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        config = json.load(f)
    run(config, int(sys.argv[2]))
    # The results are written and closed.  Leave without the interpreter's teardown: a gloo thread still
    # joinable in a C++ static destructor can abort the process ("terminate called without an active
    # exception", exit -6) after a successful run, and the runner would report the run as failed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
