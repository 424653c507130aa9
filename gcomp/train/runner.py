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

Across boxes (``launched_by``, ``gcomp train --launched-by torchrun|mpiexec``,
docs/deploy.md) the launcher starts the workers on every box instead: each
process is one worker, the workers agree on their options, train each run on
the launcher's group and exchange their records over it (JSON); worker 0
computes the same KPIs and writes results.json into its ``--out``.
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

from .data import DATASETS, input_size, mnist1d_cache, parse_dataset, train_samples
from .links import (
    DEFAULT_CPU_WATTS,
    describe_layout,
    energy_joules,
    groups_of,
    hierarchical_comm_seconds,
    links_summary,
    modelled_comm_seconds,
    parse_links,
)
from .netns import EmulatedNetwork, can_emulate
from .report import run_label
from .supervise import signals_raise, supervise

__all__ = ["TrainOptions", "train", "DEFAULT_COMPRESSOR", "BASELINES", "ARCHITECTURES", "DEFAULT_GOSSIP_GAMMA",
           "gossip_gamma", "LAUNCHERS"]

DEFAULT_COMPRESSOR = "dgc:ratio=0.01"
BASELINES = ("none", "torch-fp16", "torch-powersgd")
#: centralized: every step averages the gradients over all workers (DDP or MPI allreduce); decentralized: each
#: worker trains its own model and gossips its parameters with its neighbours (gcomp.decentralized.Gossip); hybrid:
#: DDP with gcomp's hierarchical hook over --groups (dense inside a group, compressed between the leaders);
#: federated: FedAvg on Flower's simulation engine (gcomp.train.federated)
ARCHITECTURES = ("centralized", "decentralized", "hybrid", "federated")
#: CHOCO's consensus step size when --gossip-gamma is not given (measured on the digits MLP with topk:ratio=0.01 on
#: a ring of 4: docs/decentralized.md); exact gossip (--compressor none) uses 1
DEFAULT_GOSSIP_GAMMA = 0.1
#: outside launchers whose workers ``gcomp train --launched-by`` runs as (one process per worker, on any box)
LAUNCHERS = ("torchrun", "mpiexec")


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
    architecture: str | list = "centralized"  # or several, compared side by side (not federated)
    topology: str = "ring"
    gossip_gamma: float | None = None  # None: 1 for exact gossip (none), DEFAULT_GOSSIP_GAMMA for CHOCO
    gossip_every: int = 1
    dataset: str = "digits"  # digits, or mnist1d[:samples=N,seed=S] (generated once, cached under out/data/)
    groups: str | None = None  # two-level network (issue 13): "2x2" or "0,1/2,3"; link then "intra=SPEC inter=SPEC"
    # federated (issue 14, gcomp.train.federated): Flower simulation, FedAvg over clients holding digits partitions
    clients: int = 20
    fraction: float = 0.25  # clients sampled per round
    rounds: int = 20
    local_epochs: int = 5
    non_iid: float | None = None  # Dirichlet alpha of the label split; None: IID
    local_dp: str | None = None  # Flower's LocalDpMod on every client: "clip=C,epsilon=E[,delta=D,sensitivity=S]"
    downlink: str | None = None  # compressor of the global model sent to clients (server-side EF); None: dense
    # across boxes (docs/deploy.md): this process is one worker of a run that torchrun (--backend ddp) or mpiexec
    # (--backend mpi) started on every box; workers None takes the launcher's world size
    launched_by: str | None = None


def gossip_gamma(opts, spec):
    """The consensus step size of a decentralized run of ``spec``: --gossip-gamma, else 1 (exact) or the default."""
    if opts.gossip_gamma is not None:
        return opts.gossip_gamma
    return 1.0 if spec == "none" else DEFAULT_GOSSIP_GAMMA



def _validate(opts):
    import math

    import gcomp

    if not 1 <= opts.workers <= 64:
        raise ValueError(f"expected 1 to 64 workers, found {opts.workers}")
    if opts.epochs < 1:
        raise ValueError(f"expected at least one epoch, found {opts.epochs}")
    if opts.batch_size < 1:
        raise ValueError(f"expected a batch size of at least 1, found {opts.batch_size}")
    dataset_name = _validate_dataset(opts)
    n_train = train_samples(opts.dataset)
    per_worker = n_train // opts.workers
    if opts.batch_size > per_worker:
        raise ValueError(f"expected a batch size of at most {per_worker} ({n_train} training samples over "
                         f"{opts.workers} workers), found {opts.batch_size}: an epoch would have no step")
    if not (math.isfinite(opts.lr) and opts.lr > 0):
        raise ValueError(f"expected a positive learning rate, found {opts.lr}")
    if opts.hidden < 1:
        raise ValueError(f"expected a hidden width of at least 1, found {opts.hidden}")
    if opts.start_iter is not None and opts.start_iter < 0:
        raise ValueError(f"expected --start-iter >= 0, found {opts.start_iter}")
    if not opts.timeout > 0:
        raise ValueError(f"expected a positive timeout, found {opts.timeout}")
    if not opts.compressors:
        raise ValueError("expected at least one --compressor")
    twice = sorted({spec for spec in opts.compressors if opts.compressors.count(spec) > 1})
    if twice:
        raise ValueError(f"expected each --compressor once, found {', '.join(twice)} more than once")
    if opts.backend not in ("ddp", "mpi"):
        raise ValueError(f"expected backend ddp or mpi, found {opts.backend!r}")
    if opts.model not in ("mlp", "cnn", "cnn1d"):
        raise ValueError(f"expected model mlp, cnn or cnn1d, found {opts.model!r}")
    if opts.model == "cnn" and dataset_name != "digits":
        raise ValueError(f"expected --model mlp or cnn1d for {dataset_name} because cnn takes 8x8 digit images")
    if not 0.0 < opts.target_accuracy <= 1.0:
        raise ValueError(f"expected a target accuracy in (0, 1], found {opts.target_accuracy}")
    archs = architectures(opts)
    for arch in archs:
        if arch not in ARCHITECTURES or arch == "federated":
            raise ValueError(f"expected --architecture centralized, decentralized or hybrid (federated runs alone: "
                             f"Flower's simulation engine has its own table), found {arch!r}")
    twice = sorted({arch for arch in archs if archs.count(arch) > 1})
    if twice:
        raise ValueError(f"expected each --architecture once, found {', '.join(twice)} more than once")
    if "decentralized" in archs:
        _validate_gossip(opts)
    if "hybrid" in archs:
        hooks = [spec for spec in opts.compressors if spec in BASELINES and spec != "none"]
        if hooks:
            raise ValueError(f"{hooks[0]} is a torch DDP hook; --architecture hybrid takes gcomp compressors "
                             "(hierarchical: dense inside each group, compressed between the group leaders) or none")
        if opts.backend != "ddp":
            raise ValueError("expected --backend ddp with --architecture hybrid (gcomp's hierarchical DDP hook)")
        if not opts.groups:
            raise ValueError("expected --groups with --architecture hybrid (e.g. --groups 2x2): it names the groups "
                             "whose members sum densely before their leaders exchange compressed packets")
    from gcomp.adapt import build_policy, is_adaptive

    for spec in opts.compressors:
        if spec in BASELINES:
            if opts.backend == "mpi" and spec != "none":
                raise ValueError(f"{spec} is a torch DDP hook; with --backend mpi use none or gcomp compressors")
            continue
        try:
            if is_adaptive(spec):
                if opts.backend != "ddp" or "decentralized" in archs:
                    raise ValueError(f"{spec}: the adaptive policy runs in the DDP hook (--backend ddp, --architecture "
                                     "centralized or hybrid)")
                build_policy(spec)
            else:
                gcomp.compressor(spec)
        except gcomp.errors.ConfigError as exc:
            raise ValueError(f"{exc} (or a baseline: {', '.join(BASELINES)})") from None
    links = parse_links(opts.link, opts.workers, opts.technology, groups=opts.groups)
    if opts.emulate and opts.backend != "ddp":
        raise ValueError("--emulate runs the DDP backend (mpiexec's launcher cannot reach into the namespaces)")
    _check_out(opts.out)
    _check_resources(opts)
    return links


def _local_workers(opts):
    """How many workers run on this box: all of them, or those the launcher started here (--launched-by)."""
    if opts.launched_by is None:
        return opts.workers
    for key in ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):  # torchrun, mpich, Open MPI
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return opts.workers


def _validate_gossip(opts):
    import math

    import gcomp.decentralized as gd
    from gcomp.errors import ConfigError

    hooks = [spec for spec in opts.compressors if spec in BASELINES and spec != "none"]
    if hooks:
        raise ValueError(f"{hooks[0]} is a torch DDP hook; --architecture decentralized takes gcomp compressors "
                         "(CHOCO-SGD) or none (exact gossip)")
    if opts.gossip_gamma is not None and not (math.isfinite(opts.gossip_gamma) and 0 < opts.gossip_gamma <= 1):
        raise ValueError(f"expected --gossip-gamma in (0, 1], found {opts.gossip_gamma}")
    if opts.gossip_every < 1:
        raise ValueError(f"expected --gossip-every >= 1, found {opts.gossip_every}")
    try:
        gd.topology(opts.topology, opts.workers)
    except ConfigError as exc:
        raise ValueError(f"--topology {opts.topology}: {exc}") from None


def _validate_dataset(opts):
    """The dataset's name; a ValueError for an unknown dataset or bad parameters (``--dataset``)."""
    if not isinstance(opts.dataset, str) or opts.dataset.partition(":")[0] not in DATASETS:
        raise ValueError(f"expected --dataset {' or '.join(DATASETS)}, found {opts.dataset!r}")
    try:
        return parse_dataset(opts.dataset)[0]
    except ValueError as exc:
        raise ValueError(f"--dataset {opts.dataset}: {exc}") from None


def _dataset_config(opts):
    """The workers' dataset fields: mnist1d is generated once into out/data/ (cached) and loaded from there."""
    name, params = parse_dataset(opts.dataset)
    if name == "digits":
        return {"dataset": name}
    return {"dataset": name, "dataset_params": params, "data_path": os.path.abspath(mnist1d_cache(opts.out, params))}


def _dataset_record(opts):
    """What results.json records about the data: its source and, for mnist1d, the generator, version and parameters."""
    name, params = parse_dataset(opts.dataset)
    if name == "digits":
        return {"source": "sklearn.datasets.load_digits", "split": "80/20 stratified", "split_seed": opts.seed}
    from importlib.metadata import version

    return {"source": "mnist1d.data.make_dataset (generated, no download)", "package_version": version("mnist1d"),
            "params": params, "cache": os.path.relpath(mnist1d_cache(opts.out, params), opts.out)}


def _check_out(out):
    """The output directory exists or can be made, and is writable (a one-line error otherwise)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"expected --out to be a directory, found a file: {out}")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".gcomp-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"cannot write the output directory {out}: {exc.strerror or exc}") from None


#: resident memory of one worker with torch, gloo, DDP and the data (a worker of the default 1.1M-parameter
#: model peaked at about 570 MB here), plus 12 float32 copies of the parameters (weights, gradients, DDP's
#: bucket, momentum, error-feedback memories, compression buffers)
WORKER_BASE_MB = 520
PARAM_COPIES = 12


def _memory_available_mb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _estimated_worker_mb(opts):
    import torch

    from .models import build_model

    with torch.device("meta"):  # shapes only, nothing allocated
        params = sum(p.numel() for p in build_model(opts.model, opts.hidden, inputs=input_size(opts.dataset)).parameters())
    return WORKER_BASE_MB + PARAM_COPIES * 4 * params / 2**20


def _check_resources(opts):
    """Refuse a run whose workers cannot fit in memory; warn when they far outnumber the cores."""
    per_worker = _estimated_worker_mb(opts)
    local = _local_workers(opts)
    need = local * per_worker
    available = _memory_available_mb()
    if available is not None and need > 0.9 * available:
        raise ValueError(f"{local} workers need about {need / 1024:.1f} GB ({per_worker:.0f} MB each) but "
                         f"{available / 1024:.1f} GB of memory is available: use fewer --workers or a smaller model")
    cores = os.cpu_count() or 1
    if local > 4 * cores:
        print(f"gcomp train: warning: {local} workers on {cores} cores will train slowly (each worker "
              "uses one thread)", file=sys.stderr)


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
        self._write("preparing: starting workers, compiling or loading kernels (not timed)")

    def _write(self, text):
        if self.enabled:
            sys.stderr.write(f"\r  {self.label:<28} {text}".ljust(100))  # spaces cover a longer previous line
            sys.stderr.flush()

    def ready(self, warm_up_s):
        """The workers are set up: the clock starts now."""
        self.start = time.time()
        self._write(f"[{'.' * 24}] epoch 0/{self.total} (kernels ready in {warm_up_s:.1f} s)")

    def update(self, done, acc):
        if not self.enabled:
            return
        width = 24
        filled = int(width * done / max(1, self.total))
        bar = "#" * filled + "." * (width - filled)
        self._write(f"[{bar}] epoch {done}/{self.total} acc {acc:.3f} {time.time() - self.start:5.1f}s")

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _launch(opts, cfg, cfg_path, links, progress):
    threads = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env = dict(os.environ, **threads)

    def on_line(rank, line):
        if rank == 0 and line.startswith("READY"):
            progress.ready(float(line.split()[1]))
        if rank == 0 and line.startswith("PROGRESS"):
            _, done, _total, acc, _wall = line.split()
            progress.update(int(done), float(acc))

    with contextlib.ExitStack() as stack:
        decentralized = cfg.get("architecture") == "decentralized"
        if opts.backend == "mpi":
            module = "gcomp.train.worker_gossip" if decentralized else "gcomp.train.worker_mpi"
            cmds = [["mpiexec", "-n", str(opts.workers), sys.executable, "-m", "mpi4py", "-m", module, cfg_path]]
            envs = [env]
        else:
            module = "gcomp.train.worker_gossip" if decentralized else "gcomp.train.worker"
            argv = [sys.executable, "-m", module, cfg_path]
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
        # --emulate --groups: bytes each group's uplink carried to the other groups in the whole run (issue 13)
        inter_group = ([network.group_counters(g)[0] for g in range(len(network.groups))]
                       if opts.emulate and network.groups else None)
    if run.timed_out:
        raise RuntimeError(f"run {cfg['compressor']!r} exceeded the {opts.timeout:.0f} s timeout")
    failed = [i for i, code in enumerate(run.returncodes) if code != 0]
    if failed:
        details = [f"--- worker {i} (exit {run.returncodes[i]}) ---\n" + run.outputs[i][-3000:] for i in failed]
        raise RuntimeError(f"run {cfg['compressor']!r} failed on worker(s) {failed}:\n" + "\n".join(details))
    return inter_group


def _start_iter(opts, spec):
    """Dense warm-up iterations: each hook's minimum unless --start-iter is given.

    torch's PowerSGD hook refuses fewer than 2 with error feedback or warm start;
    gcomp's hook can compress from iteration 1 (DDP has rebuilt its buckets by
    then, and memories are keyed by bucket layout).
    """
    if opts.start_iter is not None:
        return opts.start_iter
    return 2 if spec == "torch-powersgd" else 1


def _clear_stale_runs(out):
    """Remove the per-run folders (``runs/NN-*``) an earlier run left, so runs/ matches the new results.json."""
    runs = os.path.join(out, "runs")
    if os.path.isdir(runs):
        for name in os.listdir(runs):
            if re.fullmatch(r"\d{2}-.+", name) and os.path.isdir(os.path.join(runs, name)):
                shutil.rmtree(os.path.join(runs, name), ignore_errors=True)


def _run_config(opts, spec, index, links, out_dir, fresh=True):
    """A fresh (``fresh``; else existing) ``runs/NN-*`` folder of one run and the workers' configuration of that run."""
    prefix = "" if opts.architecture == "centralized" else f"{opts.architecture}-"
    run_dir = os.path.join(out_dir, "runs", f"{index:02d}-{prefix}{_safe(spec)}")
    if fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
        os.makedirs(run_dir)
    cfg = {"compressor": spec, "workers": opts.workers, "epochs": opts.epochs, "model": opts.model, "hidden": opts.hidden,
           "batch_size": opts.batch_size, "lr": opts.lr, "momentum": opts.momentum, "seed": opts.seed,
           "start_iter": _start_iter(opts, spec), "error_feedback": opts.error_feedback, "timeout": opts.timeout,
           "master_addr": "127.0.0.1", "master_port": _free_port(), "run_dir": run_dir, "ifname": None,
           "backend": opts.backend, "architecture": opts.architecture, **_dataset_config(opts)}
    if opts.architecture == "decentralized":
        cfg.update(topology=opts.topology, gossip_gamma=gossip_gamma(opts, spec), gossip_every=opts.gossip_every)
    cfg["groups"] = groups_of(links)  # --groups as rank lists ([[0, 1], [2, 3]]), None for a flat network
    return run_dir, cfg


def _run_one(opts, spec, index, links, out_dir):
    run_dir, cfg = _run_config(opts, spec, index, links, out_dir)
    progress = _Progress(opts.progress, run_label({"compressor": spec, **cfg}), opts.epochs)
    try:
        inter_group = _launch(opts, cfg, os.path.join(run_dir, "config.json"), links, progress)
    finally:
        progress.close()
    ranks = []
    for r in range(opts.workers):
        with open(os.path.join(run_dir, f"rank{r}.json")) as f:
            ranks.append(json.load(f))
    kpis = _kpis(opts, spec, ranks, links)
    if inter_group is not None:  # interface counters of the group uplinks: setup, training and evaluation together
        kpis["measured_inter_group_tx_bytes"] = inter_group
    return kpis


def _kpis(opts, spec, ranks, links):
    """Per-run KPIs from every rank's records (see the module docstring)."""
    r0 = ranks[0]
    epochs = []
    modelled_total = modelled_comm = 0.0
    world = len(ranks)
    decentralized = opts.architecture == "decentralized"
    # latencies per step: a ring allreduce's 2 (P-1) rounds, or one neighbour exchange per gossip round
    rounds = 1.0 / opts.gossip_every if decentralized else 2 * (world - 1)
    prev_steps, prev_sent, prev_wall = 0, [0.0] * world, 0.0
    prev_intra = [0.0] * world
    for e, rec in enumerate(r0["epochs"]):
        per_worker = [rank["epochs"][e] for rank in ranks]
        steps = rec["steps"] - prev_steps
        sent = [w.get("measured_tx_bytes", w["bytes_sent"]) if opts.emulate else w["bytes_sent"] for w in per_worker]
        per_step = [(s - p) / max(1, steps) for s, p in zip(sent, prev_sent, strict=True)]
        if opts.architecture == "hybrid" and spec not in BASELINES:  # reduce and broadcast inside, leaders between
            intra = [w.get("intra_bytes_sent", 0.0) - p for w, p in zip(per_worker, prev_intra, strict=True)]
            intra_step = [b / max(1, steps) for b in intra]
            inter_step = [max(0.0, b - i) for b, i in zip(per_step, intra_step, strict=True)]
            comm_model = steps * hierarchical_comm_seconds(intra_step, inter_step, links, intra_rounds=2,
                                                           inter_rounds=2 * (len(groups_of(links)) - 1))
            prev_intra = [w.get("intra_bytes_sent", 0.0) for w in per_worker]
        else:
            comm_model = steps * modelled_comm_seconds(per_step, links, rounds=rounds)
        # Modelled time: the measured local step time (compute, compression by any hook, loopback transfer)
        # plus the time the bytes actually sent take through the modelled links.
        wall = max(w["wall_s"] for w in per_worker)
        modelled_total += (wall - prev_wall) + comm_model
        modelled_comm += comm_model
        epochs.append({"epoch": rec["epoch"], "accuracy": rec["accuracy"], "loss": rec["loss"],
                       "measured_wall_s": rec["wall_s"], "modelled_s": modelled_total,
                       "bytes_sent_per_worker": sent, "bytes_received_per_worker": [w["bytes_received"] for w in per_worker]})
        if "consensus_distance" in rec:
            epochs[-1]["consensus_distance"] = rec["consensus_distance"]
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
    counted = sum(rank["epochs"][-1]["bytes_sent"] for rank in ranks) / world / max(1, total_steps)
    w0 = r0["epochs"][-1]
    gossip = {}
    if decentralized:
        gossip = {"topology": opts.topology, "gossip_gamma": gossip_gamma(opts, spec), "gossip_every": opts.gossip_every,
                  "algorithm": "exact gossip" if spec == "none" else "CHOCO-SGD",
                  "final_consensus_distance": epochs[-1].get("consensus_distance"),
                  "accuracy_of": "rank 0's local model",
                  "final_accuracy_per_rank": [rank["epochs"][-1]["accuracy"] for rank in ranks]}
    return {
        "compressor": spec, "kind": "baseline" if spec in BASELINES else "gcomp",
        "architecture": opts.architecture, "topology": opts.topology if decentralized else None, **gossip,
        "final_accuracy": last["accuracy"], "best_accuracy": max(ep["accuracy"] for ep in epochs),
        "time_to_target_s": time_to_target, "clock": "measured (emulated network)" if opts.emulate else "modelled (link model)",
        "measured_wall_s": last["measured_wall_s"], "modelled_s": last["modelled_s"],
        "steps": total_steps, "bytes_sent_per_worker_per_step": bytes_per_step,
        "compression_ratio": r0["dense_bytes_per_step"] * 2 * (world - 1) / world / bytes_per_step if bytes_per_step else None,
        # the same from the bytes gcomp's hook counted (ring model for the baselines), also when emulated, where
        # the interface counters behind compression_ratio include TCP/IP overhead
        "counted_compression_ratio": r0["dense_bytes_per_step"] * 2 * (world - 1) / world / counted if counted else None,
        # the part of modelled_s spent on the links (bytes through the link model)
        "modelled_comm_s": modelled_comm,
        "time_split_s": {"compute": w0["compute_s"], "compression": w0["compress_s"], "communication": w0["comm_s"]},
        "energy_joules_per_worker": energy, "energy_joules_total": sum(energy),
        "bytes_model": r0["bytes_model"], "epochs": epochs,
        # Numba's compile (or cache load) before the clock started; in no other figure
        "kernel_warm_up_s": max(rank.get("kernel_warm_up_s", 0.0) for rank in ranks),
        "ranks_agree": len({rank["final_params_sha"] for rank in ranks}) == 1,
        **({"groups": groups_of(links)} if opts.architecture == "hybrid" else {}),
        **({"intra_group_bytes_per_worker_per_step": sum(rank["epochs"][-1].get("intra_bytes_sent", 0.0)
                                                          for rank in ranks) / world / max(1, total_steps)}
           if opts.architecture == "hybrid" else {}),
        **({"adaptive": r0["adaptive"]} if "adaptive" in r0 else {}),
    }


def train(opts: TrainOptions) -> dict:
    """Run every configuration of ``opts``; write results.json and plots into ``opts.out``; return the results.

    SIGTERM and SIGHUP end it like Ctrl-C (:class:`gcomp.train.supervise.Interrupted`, a KeyboardInterrupt):
    workers are killed and networks torn down first.
    """
    with signals_raise():
        if opts.launched_by is not None:
            return _train_launched(opts)
        return _train(opts)


def architectures(opts):
    """``opts.architecture`` as a list: one name, or several (``--architecture`` repeated) compared side by side."""
    if isinstance(opts.architecture, str):
        return [opts.architecture]
    return list(opts.architecture)


def _train(opts):
    archs = architectures(opts)
    if archs == ["federated"]:  # Flower's simulation engine, not the worker launcher
        from .federated import train_federated

        return train_federated(dataclasses.replace(opts, architecture="federated"))
    links = _validate(opts)
    if opts.emulate:
        ok, reason = can_emulate()
        if not ok:
            print(f"gcomp train: cannot emulate the network here ({reason}); using the link model instead",
                  file=sys.stderr)
            opts = dataclasses.replace(opts, emulate=False)
    described = {"decentralized": f"decentralized ({opts.topology}, gossip every {opts.gossip_every})",
                 "hybrid": f"hybrid (groups {opts.groups})"}
    arch = " + ".join(described.get(a, a) for a in archs)
    print(f"gcomp train: {opts.workers} workers, {arch}, {opts.backend}, {opts.model}, links "
          f"{links_summary(links)}{' (emulated)' if opts.emulate else ' (link model)'}, "
          f"target accuracy {opts.target_accuracy:.2f}; {len(opts.compressors) * len(archs)} run(s): "
          f"{', '.join(opts.compressors)}", flush=True)
    _clear_stale_runs(opts.out)
    header = _header(opts, archs, links)
    runs = []
    for arch in archs:  # the same compressors under each architecture, one table
        for spec in opts.compressors:
            runs.append(_run_one(dataclasses.replace(opts, architecture=arch), spec, len(runs), links, opts.out))
    return _write_results(opts, {"header": header, "runs": runs})


def _header(opts, archs, links):
    """results.json's header: versions, date, options, dataset and network layout."""
    import torch

    import gcomp

    header = {"gcomp": gcomp.__version__, "torch": torch.__version__, "date": datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), "workers": opts.workers, "backend": opts.backend,
        "model": opts.model, "hidden": opts.hidden, "epochs": opts.epochs, "architecture": " + ".join(archs),
        "architectures": archs,
        "topology": opts.topology if "decentralized" in archs else None, "links": [link.spec for link in links],
        "emulated": opts.emulate, "target_accuracy": opts.target_accuracy, "seed": opts.seed,
        "options": dataclasses.asdict(opts), "dataset": opts.dataset, "dataset_generator": _dataset_record(opts)}
    header["layout"] = describe_layout(links)  # --groups: groups, intra (per worker) and inter (per group) links
    return header


def _write_results(opts, results):
    with open(os.path.join(opts.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if opts.plots:
        from .report import plot_results

        results["plots"] = plot_results(results, opts.out)
    return results


# ---------------------------------------------------------------------------------------------------------------
# across boxes: every process is one worker, started by torchrun or mpiexec on its box (docs/deploy.md)


class _Peers:
    """The workers of a run started by an outside launcher, and JSON exchanged among them (no pickle).

    torchrun: torch.distributed's default gloo group from torchrun's environment (``env://``);
    mpiexec: ``MPI.COMM_WORLD``.
    """

    def __init__(self, launched_by, timeout):
        self.launched_by = launched_by
        if launched_by == "torchrun":
            import torch.distributed as dist

            missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
            if missing:
                raise ValueError(f"expected torchrun's environment because of --launched-by torchrun, found "
                                 f"{', '.join(missing)} unset: start it as torchrun ... -m gcomp.cli train "
                                 "--launched-by torchrun (docs/deploy.md)")
            dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(seconds=timeout))
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            from mpi4py import MPI

            self.comm = MPI.COMM_WORLD
            self.rank, self.world = self.comm.Get_rank(), self.comm.Get_size()

    def allgather_bytes(self, data):
        """Every worker's ``data`` (bytes), in rank order, on every worker."""
        import numpy as np

        if self.launched_by == "torchrun":
            import torch
            import torch.distributed as dist

            sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
            dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64))
            sizes = [int(n) for n in sizes]
            mine = torch.zeros(max(sizes), dtype=torch.uint8)
            mine[:len(data)] = torch.from_numpy(np.frombuffer(data, np.uint8).copy())
            bufs = [torch.zeros(max(sizes), dtype=torch.uint8) for _ in range(self.world)]
            dist.all_gather(bufs, mine)
            return [bytes(b[:n].numpy()) for b, n in zip(bufs, sizes, strict=True)]
        from mpi4py import MPI

        sizes = np.zeros(self.world, np.int64)
        self.comm.Allgather(np.array([len(data)], np.int64), sizes)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        out = np.empty(int(sizes.sum()), np.uint8)
        self.comm.Allgatherv(np.frombuffer(data, np.uint8),
                             [out, ([int(n) for n in sizes], [int(o) for o in offsets]), MPI.BYTE])
        return [out[o:o + n].tobytes() for o, n in zip(offsets, sizes, strict=True)]

    def allgather_json(self, obj):
        return [json.loads(b) for b in self.allgather_bytes(json.dumps(obj).encode())]

    def close(self):
        if self.launched_by == "torchrun":
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


#: options that are each box's own business (not compared across boxes)
_LOCAL_OPTIONS = ("out", "progress", "plots")


def _validate_launched(opts, peers):
    """``opts`` with the launcher's world size, and the links; a ValueError for what cannot run across boxes."""
    if opts.launched_by not in LAUNCHERS:
        raise ValueError(f"expected --launched-by {' or '.join(LAUNCHERS)}, found {opts.launched_by!r}")
    if opts.workers is not None and opts.workers != peers.world:
        raise ValueError(f"expected --workers {peers.world} (or none) because {opts.launched_by} started "
                         f"{peers.world} workers, found {opts.workers}")
    opts = dataclasses.replace(opts, workers=peers.world)
    backend = "ddp" if opts.launched_by == "torchrun" else "mpi"
    if opts.backend != backend:
        raise ValueError(f"expected --backend {backend} with --launched-by {opts.launched_by}, found {opts.backend}")
    if opts.emulate:
        raise ValueError("--emulate is a one-box feature (it builds namespaces for workers it starts itself); "
                         "across real boxes the network is real")
    if "federated" in architectures(opts):
        raise ValueError("expected --architecture centralized, decentralized or hybrid across boxes (federated "
                         "runs on Flower's one-box simulation engine)")
    return opts, _validate(opts)


def _train_launched(opts):
    """``gcomp train --launched-by torchrun|mpiexec``: this process is one worker; rank 0 writes results.json.

    Every box checks its options, then all agree (every worker fails, with the
    same message, or none); each run trains in this process on the launcher's
    group, and the rank records come to every worker over that group (JSON,
    no shared filesystem): rank 0 writes ``results.json`` (and plots) into
    its ``--out``, the other boxes keep their own ``runs/*/rank<R>.json``.
    """
    peers = _Peers(opts.launched_by, opts.timeout)
    try:
        error = links = None
        try:
            opts, links = _validate_launched(opts, peers)
        except ValueError as exc:
            error = str(exc)
        shared = {k: v for k, v in dataclasses.asdict(opts).items() if k not in _LOCAL_OPTIONS}
        views = peers.allgather_json({"error": error, "options": shared, "host": socket.gethostname(),
                                      "out": os.path.abspath(opts.out)})
        hosts = [v["host"] for v in views]
        # the first worker of each box (host and --out) clears and creates the run folders there, the others wait
        peers.leader = all((v["host"], v["out"]) != (hosts[peers.rank], views[peers.rank]["out"])
                           for v in views[:peers.rank])
        for r, view in enumerate(views):  # agreement: every worker raises the same error, or none does
            if view["error"] is not None:
                raise ValueError(f"worker {r} (on {hosts[r]}): {view['error']}")
        for r, view in enumerate(views):
            differ = sorted(k for k in view["options"] if view["options"][k] != views[0]["options"].get(k))
            if differ:
                raise ValueError(f"expected the same gcomp train options on every box because all workers train one "
                                 f"model, found worker {r} (on {hosts[r]}) differs from worker 0 in {', '.join(differ)}")
        archs = architectures(opts)
        if peers.rank == 0:
            print(f"gcomp train: {opts.workers} workers on {len(set(hosts))} host(s) ({opts.launched_by}), "
                  f"{' + '.join(archs)}, {opts.backend}, {opts.model}, links {links_summary(links)} (link model); "
                  f"{len(opts.compressors) * len(archs)} run(s): {', '.join(opts.compressors)}", flush=True)
        if peers.leader:
            _clear_stale_runs(opts.out)
        header = _header(opts, archs, links)
        header.update(launched_by=opts.launched_by, hosts=hosts)
        runs = []
        for arch in archs:
            for spec in opts.compressors:
                runs.append(_run_launched(dataclasses.replace(opts, architecture=arch), spec, len(runs), links, peers))
        results = {"header": header, "runs": runs}
        if peers.rank == 0:
            results = _write_results(opts, results)
        results["rank"] = peers.rank  # not in results.json
        return results
    finally:
        peers.close()


def _run_launched(opts, spec, index, links, peers):
    """One run on the launcher's workers: train here, gather every rank's record, the run's KPIs."""
    if peers.leader:
        _run_config(opts, spec, index, links, opts.out)
    peers.allgather_bytes(b"-")  # barrier: the run folder exists on every box
    run_dir, cfg = _run_config(opts, spec, index, links, opts.out, fresh=False)
    cfg.update(master_addr=None, master_port=None, launched_by=opts.launched_by)
    if peers.leader:
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(cfg, f)
    decentralized = cfg["architecture"] == "decentralized"
    if opts.launched_by == "mpiexec":
        if decentralized:
            from .worker_gossip import run as run_worker
        else:
            from .worker_mpi import run as run_worker
        record = run_worker(cfg)
    else:
        if decentralized:
            from .worker_gossip import run as run_worker
        else:
            from .worker import run as run_worker
        record = run_worker(cfg, peers.rank)
    ranks = peers.allgather_json(record)
    return _kpis(opts, spec, ranks, links)
