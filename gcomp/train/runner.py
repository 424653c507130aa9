"""``gcomp train``: run one training per compressor across N local workers and report edge KPIs.

Each run launches N worker processes (DDP on gloo, or mpiexec for the MPI
backend), on loopback or, with ``emulate=True``, each in its own network
namespace behind a shaped uplink (:mod:`gcomp.train.netns`), through the
worker supervisor of :mod:`gcomp.train.supervise` (timeout, killing, output).
The parent follows rank 0's progress, collects every rank's per-epoch records
and computes, per run:

* accuracy and loss per epoch, final accuracy;
* bytes sent and received per worker (gcomp's counters; the ring model for
  torch's hooks and no hook; interface counters when emulated), compression
  ratio against dense float32;
* the split of time into compute, compression and communication;
* time to the target accuracy: *measured* when emulated, otherwise *modelled*:
  the measured local step time (compute, any hook's compression, loopback
  transfer) plus the time the bytes actually sent take through the link model
  (gcomp.train.links);
* modelled energy: radio joules per bit plus CPU seconds times power.
"""

import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import socket
import sys
import time

from .links import DEFAULT_CPU_WATTS, energy_joules, modelled_comm_seconds, parse_links
from .netns import EmulatedNetwork, can_emulate
from .supervise import supervise

__all__ = ["TrainOptions", "train", "DEFAULT_COMPRESSOR", "BASELINES"]

DEFAULT_COMPRESSOR = "dgc:ratio=0.01"
BASELINES = ("none", "torch-fp16", "torch-powersgd")


@dataclasses.dataclass
class TrainOptions:
    workers: int = 4
    compressors: list = dataclasses.field(default_factory=lambda: [DEFAULT_COMPRESSOR])
    epochs: int = 8
    model: str = "mlp"
    hidden: int = 1024
    backend: str = "ddp"
    link: str = "20mbit"
    emulate: bool = False
    target_accuracy: float = 0.95
    out: str = "gcomp-train"
    seed: int = 0
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    start_iter: int | None = None  # None: 1 for gcomp's hook, 2 for torch's PowerSGD (its minimum)
    error_feedback: str = "auto"
    timeout: float = 600.0
    cpu_watts: float = DEFAULT_CPU_WATTS
    technology: str | None = None
    progress: bool = True
    plots: bool = True


def _validate(opts):
    import gcomp

    if not 1 <= opts.workers <= 64:
        raise ValueError(f"expected 1 to 64 workers, found {opts.workers}")
    if opts.epochs < 1:
        raise ValueError(f"expected at least one epoch, found {opts.epochs}")
    if opts.backend not in ("ddp", "mpi"):
        raise ValueError(f"expected backend ddp or mpi, found {opts.backend!r}")
    if opts.model not in ("mlp", "cnn"):
        raise ValueError(f"expected model mlp or cnn, found {opts.model!r}")
    if not 0.0 < opts.target_accuracy <= 1.0:
        raise ValueError(f"expected a target accuracy in (0, 1], found {opts.target_accuracy}")
    for spec in opts.compressors:
        if spec in BASELINES:
            if opts.backend == "mpi" and spec != "none":
                raise ValueError(f"{spec} is a torch DDP hook; with --backend mpi use none or gcomp compressors")
            continue
        gcomp.compressor(spec)  # raises ConfigError naming the valid ones
    links = parse_links(opts.link, opts.workers, opts.technology)
    if opts.emulate and opts.backend != "ddp":
        raise ValueError("--emulate runs the DDP backend (mpiexec's launcher cannot reach into the namespaces)")
    return links


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _safe(name):
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


class _Progress:
    def __init__(self, enabled, label, total):
        self.enabled, self.label, self.total = enabled, label, total
        self.start = time.time()

    def update(self, done, acc):
        if not self.enabled:
            return
        width = 24
        filled = int(width * done / max(1, self.total))
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r  {self.label:<28} [{bar}] epoch {done}/{self.total} acc {acc:.3f} "
                         f"{time.time() - self.start:5.1f}s")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _launch(opts, cfg, cfg_path, links, progress):
    threads = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env = dict(os.environ, **threads)

    def on_line(rank, line):
        if rank == 0 and line.startswith("PROGRESS"):
            _, done, _total, acc, _wall = line.split()
            progress.update(int(done), float(acc))

    with contextlib.ExitStack() as stack:
        if opts.backend == "mpi":
            cmds = [["mpiexec", "-n", str(opts.workers), sys.executable, "-m", "mpi4py", "-m", "gcomp.train.worker_mpi",
                     cfg_path]]
            envs = [env]
        else:
            argv = [sys.executable, "-m", "gcomp.train.worker", cfg_path]
            if opts.emulate:
                network = stack.enter_context(EmulatedNetwork(links))
                cfg["master_addr"], cfg["ifname"] = network.addresses[0], network.ifname
                port = cfg["master_port"]
                cmds = [network.command(r, argv + [str(r)]) for r in range(opts.workers)]
                envs = [{**network.env(r, port), **threads} for r in range(opts.workers)]
            else:
                cmds = [argv + [str(r)] for r in range(opts.workers)]
                envs = [dict(env, GLOO_SOCKET_IFNAME="lo") for _ in range(opts.workers)]
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        run = supervise(cmds, envs, timeout=opts.timeout, on_line=on_line)
    if run.timed_out:
        raise RuntimeError(f"run {cfg['compressor']!r} exceeded the {opts.timeout:.0f} s timeout")
    failed = [i for i, code in enumerate(run.returncodes) if code != 0]
    if failed:
        details = [f"--- worker {i} (exit {run.returncodes[i]}) ---\n" + run.outputs[i][-3000:] for i in failed]
        raise RuntimeError(f"run {cfg['compressor']!r} failed on worker(s) {failed}:\n" + "\n".join(details))


def _start_iter(opts, spec):
    """Dense warm-up iterations: each hook's minimum unless --start-iter is given.

    torch's PowerSGD hook refuses fewer than 2 with error feedback or warm start;
    gcomp's hook can compress from iteration 1 (DDP has rebuilt its buckets by
    then, and memories are keyed by bucket layout).
    """
    if opts.start_iter is not None:
        return opts.start_iter
    return 2 if spec == "torch-powersgd" else 1


def _run_one(opts, spec, index, links, out_dir):
    run_dir = os.path.join(out_dir, "runs", f"{index:02d}-{_safe(spec)}")
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    cfg = {"compressor": spec, "workers": opts.workers, "epochs": opts.epochs, "model": opts.model, "hidden": opts.hidden,
           "batch_size": opts.batch_size, "lr": opts.lr, "momentum": opts.momentum, "seed": opts.seed,
           "start_iter": _start_iter(opts, spec), "error_feedback": opts.error_feedback, "timeout": opts.timeout,
           "master_addr": "127.0.0.1", "master_port": _free_port(), "run_dir": run_dir, "ifname": None}
    progress = _Progress(opts.progress, spec, opts.epochs)
    try:
        _launch(opts, cfg, os.path.join(run_dir, "config.json"), links, progress)
    finally:
        progress.close()
    ranks = []
    for r in range(opts.workers):
        with open(os.path.join(run_dir, f"rank{r}.json")) as f:
            ranks.append(json.load(f))
    return _kpis(opts, spec, ranks, links)


def _kpis(opts, spec, ranks, links):
    """Per-run KPIs from every rank's records (see the module docstring)."""
    r0 = ranks[0]
    epochs = []
    modelled_total = 0.0
    world = len(ranks)
    rounds = 2 * (world - 1)
    prev_steps, prev_sent, prev_wall = 0, [0.0] * world, 0.0
    for e, rec in enumerate(r0["epochs"]):
        per_worker = [rank["epochs"][e] for rank in ranks]
        steps = rec["steps"] - prev_steps
        sent = [w.get("measured_tx_bytes", w["bytes_sent"]) if opts.emulate else w["bytes_sent"] for w in per_worker]
        per_step = [(s - p) / max(1, steps) for s, p in zip(sent, prev_sent, strict=True)]
        comm_model = steps * modelled_comm_seconds(per_step, links, rounds=rounds)
        # Modelled time: the measured local step time (compute, compression by any hook, loopback transfer)
        # plus the time the bytes actually sent take through the modelled links.
        wall = max(w["wall_s"] for w in per_worker)
        modelled_total += (wall - prev_wall) + comm_model
        epochs.append({"epoch": rec["epoch"], "accuracy": rec["accuracy"], "loss": rec["loss"],
                       "measured_wall_s": rec["wall_s"], "modelled_s": modelled_total,
                       "bytes_sent_per_worker": sent, "bytes_received_per_worker": [w["bytes_received"] for w in per_worker]})
        prev_steps, prev_sent, prev_wall = rec["steps"], sent, wall
    clock = "measured_wall_s" if opts.emulate else "modelled_s"
    time_to_target = next((ep[clock] for ep in epochs if ep["accuracy"] >= opts.target_accuracy), None)
    last = epochs[-1]
    total_steps = r0["epochs"][-1]["steps"]
    sent_last = last["bytes_sent_per_worker"]
    energy = [energy_joules(sent_last[i], last["bytes_received_per_worker"][i], links[i],
                            ranks[i]["epochs"][-1]["compute_s"] + ranks[i]["epochs"][-1]["compress_s"], opts.cpu_watts)
              for i in range(world)]
    bytes_per_step = sum(sent_last) / world / max(1, total_steps)
    w0 = r0["epochs"][-1]
    return {
        "compressor": spec, "kind": "baseline" if spec in BASELINES else "gcomp",
        "final_accuracy": last["accuracy"], "best_accuracy": max(ep["accuracy"] for ep in epochs),
        "time_to_target_s": time_to_target, "clock": "measured (emulated network)" if opts.emulate else "modelled (link model)",
        "measured_wall_s": last["measured_wall_s"], "modelled_s": last["modelled_s"],
        "steps": total_steps, "bytes_sent_per_worker_per_step": bytes_per_step,
        "compression_ratio": r0["dense_bytes_per_step"] * 2 * (world - 1) / world / bytes_per_step if bytes_per_step else None,
        "time_split_s": {"compute": w0["compute_s"], "compression": w0["compress_s"], "communication": w0["comm_s"]},
        "energy_joules_per_worker": energy, "energy_joules_total": sum(energy),
        "bytes_model": r0["bytes_model"], "epochs": epochs,
        "ranks_agree": len({rank["final_params_sha"] for rank in ranks}) == 1,
    }


def train(opts: TrainOptions) -> dict:
    """Run every configuration of ``opts``; write results.json and plots into ``opts.out``; return the results."""
    links = _validate(opts)
    if opts.emulate:
        ok, reason = can_emulate()
        if not ok:
            print(f"gcomp train: cannot emulate the network here ({reason}); using the link model instead",
                  file=sys.stderr)
            opts = dataclasses.replace(opts, emulate=False)
    os.makedirs(opts.out, exist_ok=True)
    import torch

    import gcomp

    header = {"gcomp": gcomp.__version__, "torch": torch.__version__, "date": datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), "workers": opts.workers, "backend": opts.backend,
        "model": opts.model, "hidden": opts.hidden, "epochs": opts.epochs, "links": [link.spec for link in links],
        "emulated": opts.emulate, "target_accuracy": opts.target_accuracy, "seed": opts.seed,
        "options": dataclasses.asdict(opts)}
    runs = []
    for i, spec in enumerate(opts.compressors):
        runs.append(_run_one(opts, spec, i, links, opts.out))
    results = {"header": header, "runs": runs}
    with open(os.path.join(opts.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if opts.plots:
        from .report import plot_results

        results["plots"] = plot_results(results, opts.out)
    return results
