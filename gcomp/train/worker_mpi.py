"""One training worker of ``gcomp train --backend mpi`` (``mpiexec -n N python -m mpi4py -m gcomp.train.worker_mpi CONFIG``).

The same model, data and result format as the DDP worker, with a flat
gradient buffer reduced by ``gcomp.mpi.CompressedComm.Allreduce`` (op MEAN),
or by plain ``comm.Allreduce`` for ``none``.
"""

import json
import os
import sys
import time

import numpy as np
import torch
from mpi4py import MPI

from .data import epoch_batches, load_dataset
from .models import build_model
from .worker import _compute_seconds, _param_hash


def run(cfg):
    import gcomp.mpi

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = load_dataset(cfg)
    compute_s = _compute_seconds(cfg, x_train, y_train)
    model = build_model(cfg["model"], cfg["hidden"], cfg["seed"], inputs=x_train.shape[1])
    params = [p for p in model.parameters()]
    numel = sum(p.numel() for p in params)
    flat = np.zeros(numel, np.float32)
    spec = cfg["compressor"]
    ccomm = None if spec == "none" else gcomp.mpi.CompressedComm(comm, spec, error_feedback=cfg.get("error_feedback", "auto"),
                                                                 verify="first")
    # compile (or load) the kernels before the clock starts (see worker.py)
    warm_up_s = ccomm.warm_up(numel) if ccomm is not None else 0.0
    if rank == 0:
        print(f"READY {warm_up_s:.3f}", flush=True)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    xt, yt = torch.from_numpy(x_test), torch.from_numpy(y_test)
    epochs, step = [], 0
    bytes_sent = bytes_received = compress_s = comm_s = 0.0
    start = time.perf_counter()
    for epoch in range(cfg["epochs"]):
        losses = []
        for batch in epoch_batches(len(y_train), cfg["batch_size"], rank, world, epoch, cfg["seed"]):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x_train[batch])), torch.from_numpy(y_train[batch]))
            opt.zero_grad()
            loss.backward()
            offset = 0
            for p in params:
                flat[offset: offset + p.numel()] = p.grad.reshape(-1).numpy()
                offset += p.numel()
            if ccomm is None or step < cfg["start_iter"]:
                comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
                flat /= world
                b = 2 * (world - 1) * flat.nbytes / world
                bytes_sent += b
                bytes_received += b
            else:
                ccomm.Allreduce(MPI.IN_PLACE, flat, op=gcomp.mpi.MEAN, key="grads")
                st = ccomm.stats[-1]
                bytes_sent += st.bytes_sent
                bytes_received += st.bytes_received
                compress_s += st.compress_s + st.decompress_s
            offset = 0
            for p in params:
                p.grad.copy_(torch.from_numpy(flat[offset: offset + p.numel()]).view_as(p.grad))
                offset += p.numel()
            opt.step()
            comm_s += max(0.0, time.perf_counter() - t0 - compute_s)
            losses.append(float(loss))
            step += 1
        with torch.no_grad():
            acc = float((model(xt).argmax(1) == yt).float().mean())
        epochs.append({"epoch": epoch + 1, "steps": step, "loss": float(np.mean(losses)), "accuracy": acc,
                       "wall_s": time.perf_counter() - start, "bytes_sent": bytes_sent, "bytes_received": bytes_received,
                       "compute_s": compute_s * step, "compress_s": compress_s, "comm_s": max(0.0, comm_s - compress_s)})
        if rank == 0:
            print(f"PROGRESS {epoch + 1} {cfg['epochs']} {acc:.4f} {epochs[-1]['wall_s']:.2f}", flush=True)
    result = {"rank": rank, "config": cfg, "compute_s_per_step": compute_s, "dense_bytes_per_step": 4 * numel,
              "kernel_warm_up_s": warm_up_s,
              "steps_per_epoch": step // max(1, cfg["epochs"]), "epochs": epochs,
              "bytes_model": "gcomp byte counters" if ccomm is not None else "ring model 2(P-1)/P x payload",
              "final_params_sha": _param_hash(model)}
    with open(os.path.join(cfg["run_dir"], f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    if ccomm is not None:
        ccomm.Free()
    return result


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        run(json.load(f))
