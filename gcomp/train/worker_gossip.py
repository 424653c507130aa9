"""One decentralized worker of ``gcomp train --architecture decentralized``.

``python -m gcomp.train.worker_gossip CONFIG.json RANK`` (gloo: joins
torch.distributed's default group, no DDP) or ``mpiexec -n N python -m mpi4py
-m gcomp.train.worker_gossip CONFIG.json`` (``--backend mpi``: MPI.COMM_WORLD).

Each rank trains its own copy of the model (plain SGD on its shard, no
gradient averaging) and, after every ``optimizer.step()``, gossips its
parameters with its neighbours on the topology through
:class:`gcomp.decentralized.Gossip`: exact gossip for ``none``, CHOCO-SGD for a
gcomp compressor.  It writes ``rank<R>.json`` in the DDP worker's format
(bytes from the Gossip's counters, compression and communication seconds from
its stats) plus ``consensus_distance`` per epoch (the mean over ranks of
``||x_i - x̄||^2``, estimated from a CountSketch; every rank calls it at each
epoch end).  Accuracy is that of this rank's own model (the runner reports
rank 0's).
"""

import datetime
import json
import os
import sys
import time

import numpy as np
import torch

from .data import epoch_batches, load_dataset
from .models import build_model
from .worker import _compute_seconds, _param_hash


def _gossip_options(cfg):
    spec = cfg["compressor"]
    return {"topology": cfg["topology"], "compressor": None if spec == "none" else spec,
            "gamma": cfg["gossip_gamma"], "every": cfg["gossip_every"], "seed": cfg["seed"],
            "timeout": cfg["timeout"]}


def _warm_up(options, transport):
    """Compile (or load) the compressor's kernels on a throwaway vector before the clock starts (one round)."""
    t0 = time.perf_counter()
    if options["compressor"] is not None:
        import gcomp.decentralized as gd

        scratch = np.linspace(-1.0, 1.0, 4096, dtype=np.float32)
        gd.Gossip(scratch, **dict(options, every=1), transport=transport).gossip()
    return time.perf_counter() - t0


def run(cfg, rank=None):
    import gcomp.decentralized as gd

    torch.set_num_threads(1)
    if cfg.get("backend", "ddp") == "mpi":
        from mpi4py import MPI

        transport = MPI.COMM_WORLD
        rank, world = transport.Get_rank(), transport.Get_size()
        dist = None
    else:
        import torch.distributed as dist

        world = cfg["workers"]
        if dist.is_initialized():  # gcomp train --launched-by torchrun: train on its group, leave it open
            dist = None
        else:
            dist.init_process_group("gloo", init_method=f"tcp://{cfg['master_addr']}:{cfg['master_port']}", rank=rank,
                                    world_size=world, timeout=datetime.timedelta(seconds=cfg["timeout"]))
        transport = None  # torch.distributed's default group
    x_train, y_train, x_test, y_test = load_dataset(cfg)
    compute_s = _compute_seconds(cfg, x_train, y_train)
    model = build_model(cfg["model"], cfg["hidden"], cfg["seed"], inputs=x_train.shape[1])
    options = _gossip_options(cfg)
    warm_up_s = _warm_up(options, transport)
    g = gd.Gossip(model, **options, transport=transport)
    if rank == 0:
        print(f"READY {warm_up_s:.3f}", flush=True)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    xt, yt = torch.from_numpy(x_test), torch.from_numpy(y_test)
    epochs = []
    start = time.perf_counter()
    step = 0
    bytes_sent = bytes_received = compress_s = comm_s = 0.0
    for epoch in range(cfg["epochs"]):
        model.train()
        losses = []
        for batch in epoch_batches(len(y_train), cfg["batch_size"], rank, world, epoch, cfg["seed"]):
            xb, yb = torch.from_numpy(x_train[batch]), torch.from_numpy(y_train[batch])
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            st = g.step()
            bytes_sent += st.bytes_sent
            bytes_received += st.bytes_received
            if st.gossiped:
                # encode + decode + mixing outside the transfers; exact gossip has no compressor to time
                if options["compressor"] is not None:
                    compress_s += max(0.0, st.seconds - st.comm_seconds)
                comm_s += st.comm_seconds
            losses.append(float(loss))
            step += 1
        model.eval()
        with torch.no_grad():
            acc = float((model(xt).argmax(1) == yt).float().mean())
        consensus = g.consensus_distance()  # collective: every rank, same point
        epochs.append({"epoch": epoch + 1, "steps": step, "loss": float(np.mean(losses)), "accuracy": acc,
                       "wall_s": time.perf_counter() - start, "bytes_sent": bytes_sent,
                       "bytes_received": bytes_received, "compute_s": compute_s * step, "compress_s": compress_s,
                       "comm_s": comm_s, "consensus_distance": consensus})
        if rank == 0:
            print(f"PROGRESS {epoch + 1} {cfg['epochs']} {acc:.4f} {epochs[-1]['wall_s']:.2f}", flush=True)
    numel = sum(p.numel() for p in model.parameters())
    result = {"rank": rank, "config": cfg, "compute_s_per_step": compute_s, "dense_bytes_per_step": 4 * numel,
              "kernel_warm_up_s": warm_up_s, "steps_per_epoch": step // max(1, cfg["epochs"]), "epochs": epochs,
              "bytes_model": "gossip byte counters (neighbours only)", "final_params_sha": _param_hash(model)}
    with open(os.path.join(cfg["run_dir"], f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    if dist is not None:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        config = json.load(f)
    run(config, int(sys.argv[2]) if len(sys.argv) > 2 else None)
    sys.stdout.flush()
    sys.stderr.flush()
    if config.get("backend", "ddp") != "mpi":
        os._exit(0)  # skip the interpreter's teardown (see worker.py: a gloo thread can abort it)
