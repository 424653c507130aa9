"""DDP training throughput and bytes per step: no hook, torch's hooks and gcomp's hooks, on a 2M and a 25M model.

Usage::

    python bench/ddp.py --json /tmp/ddp.json [--world 2] [--steps 20] [--warmup 5] [--model mlp]
                        [--hidden 1024,4608] [--threads 1] [--batch 64] [--link 20mbit,100mbit]
                        [--markdown PATH] [--timeout 1800]

One run (a fresh set of spawned ranks) per model width in ``--hidden`` (default
1024 and 4608: 1.86M and 24.9M parameters) and per thread count in
``--threads`` (threads per rank for torch and numba; ``1,2`` adds the thread
scaling rows).  Targets (issue 11), printed with PASS/FAIL and stored under
``"targets"``, on the model nearest 25M parameters: gcomp's PowerSGD hook step
at most torch's ``powerSGD_hook`` step, every gcomp hook at most 1.3x the
no-hook step.  The load average is printed at the start and the end.

``--world`` gloo ranks are spawned on localhost (multiprocessing "spawn"
context, a free port).  Every rank builds one DDP copy of the *same* seeded
model per configuration (same initial weights, same seeded batches) and the
configurations are stepped *round-robin*: round ``r`` runs one training step
(forward, backward with the configuration's communication hook, SGD step) of
every configuration, in an order rotated each round, so background load on
the machine hits every configuration alike.  The first ``--warmup`` rounds are
not timed (DDP rebuilds its buckets after step 0; torch's PowerSGD and gcomp
compress from step 2 on; gcomp checks rank agreement once per bucket on its
first compressed step; Numba compiles or loads its cache).

Configurations:

* ``nohook``: DDP's built-in fp32 allreduce;
* ``torch-fp16``: ``default_hooks.fp16_compress_hook``;
* ``torch-powersgd``: ``powerSGD_hook`` with its own ``PowerSGDState``
  (``matrix_approximation_rank=4, start_powerSGD_iter=2``; defaults otherwise:
  error feedback, warm start, ``min_compression_rate=2``);
* ``gcomp-<name>``: ``gcomp.ddp.register(model, spec)`` for topk, dgc, qsgd,
  sign and powersgd (specs in ``GCOMP_SPECS``; hook defaults otherwise:
  residual error feedback, ``algorithm="auto"``, ``start_iter=2``).

Columns (per rank; the step time of a round is the slowest rank's):

* *measured* (on loopback, where communication is nearly free):
  ``step_s_median`` (median over the timed rounds), ``steps_per_s`` = 1 /
  median, ``speedup_vs_nohook_measured``;
* ``bytes_per_step``: bytes this rank sends per step.  gcomp: ``bytes_sent``
  of ``state.last_step()`` (gcomp's transports count a ring allreduce of B
  bytes as ``2(P-1)/P * B`` and an allgather as ``(P-1) * B``).  torch's hooks
  and no hook: the same ring model ``2(P-1)/P * payload`` with payload = 4
  bytes/parameter (no hook), 2 bytes/parameter (fp16), and for PowerSGD
  ``4 * r * (rows + cols)`` per 2-D parameter it compresses plus ``4 * numel``
  for the tensors it sends uncompressed (1-D biases, and matrices where
  ``(rows + cols) * r * min_compression_rate >= rows * cols``), counted from
  the hook state's ``total_numel_after_compression``;
* *modelled* (a slow link): ``modelled_step_s_<link> = step_s_median +
  8 * bytes_per_step / bandwidth``, i.e. the measured loopback step plus the
  time to push this rank's bytes through a full-duplex link of that bandwidth,
  with no overlap of communication and computation (pessimistic for all, most
  for the dense configurations); ``speedup_vs_nohook_<link>``.

Buckets: every configuration gets ``DDP(model, bucket_cap_mb=--bucket-cap-mb)``
(``auto`` by default: the model's fp32 gradients plus 1 MiB, passed explicitly so
DDP's 1 MiB first-bucket cap does not apply): each model is then *one* bucket.  With
two or more buckets, torch's ``powerSGD_hook`` on gloo aborts a rank within a
few steps ("op.preamble.length <= op.nbytes ... collective mismatch"): it
launches its P/Q allreduces from future callbacks (gloo's worker threads)
while the main thread launches the next bucket's allreduce on the same group,
so the ranks can enqueue them in different orders.  gcomp's hook does not do
this (compressed traffic runs on one communication thread over its own group).

JSON: ``{"header": {...}, "records": [...]}``; a table is printed.
"""

# ruff: noqa: E402  (the thread environment must be pinned before numpy, numba and torch are imported)

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))



def _max_threads_from_argv(argv):
    """The largest of ``--threads A,B`` (read before numba is imported; argparse validates it later)."""
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--threads" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--threads=") else None)
        if value is not None:
            try:
                return max(1, *(int(v) for v in value.split(",") if v.strip()))
            except ValueError:
                return 1
    return 1


def _set_thread_env(threads):
    """The most threads a rank uses, for numba, OpenMP and BLAS; spawned ranks inherit it, each run sets its own count."""
    os.environ["GCOMP_BENCH_DDP_THREADS"] = str(int(threads))
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(int(threads))


# a spawned rank re-imports this module: it keeps what main() set for it
_set_thread_env(os.environ.get("GCOMP_BENCH_DDP_THREADS") or _max_threads_from_argv(sys.argv[1:]))

import argparse
import datetime
import json
import math
import platform
import queue
import re
import socket
import statistics
import time
import traceback

try:  # shared helpers of the other benchmarks (read-only); this script also runs without them
    import _common
except ImportError:  # pragma: no cover
    _common = None

SEED = 1234
N_BATCHES = 8  # distinct seeded batches per rank, cycled

#: gcomp configurations: row name -> spec given to gcomp.ddp.register
GCOMP_SPECS = {
    "gcomp-topk": "topk:ratio=0.01",
    "gcomp-dgc": "dgc:ratio=0.01",
    "gcomp-qsgd": "qsgd:levels=4,bucket_size=512",
    "gcomp-sign": "sign:bucket_size=512",
    "gcomp-powersgd": "powersgd:rank=4",
}
TORCH_CONFIGS = ["nohook", "torch-fp16", "torch-powersgd"]
CONFIGS = TORCH_CONFIGS + list(GCOMP_SPECS)
#: default MLP widths: 784-H-H-10 with H = 1024 has 1.86M parameters, H = 4608 has 24.9M
DEFAULT_HIDDEN = "1024,4608"
#: the targets (issue 11), checked on the model nearest 25M parameters
TARGET_PARAMS = 25_000_000
HOOK_OVER_NOHOOK = 1.3
POWERSGD_RANK = 4
POWERSGD_START = 2


# -- links ------------------------------------------------------------------------
_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


def parse_links(text):
    """``"20mbit,100mbit"`` -> ``[("20mbit", 20e6), ("100mbit", 100e6)]`` (bits/s); ``"none"`` -> ``[]``."""
    links = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part or part == "none":
            continue
        m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit)(?:/s|ps)?", part)
        if not m:
            raise argparse.ArgumentTypeError(f"expected a bandwidth like 20mbit, 1gbit or 500kbit, found {part!r}")
        bps = float(m.group(1)) * _UNITS[m.group(2)]
        if bps <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive bandwidth, found {part!r}")
        name = (m.group(1) + m.group(2)).replace(".", "p")
        links.append((name, bps))
    return links


# -- model --------------------------------------------------------------------------
def build_model(args):
    import torch

    torch.manual_seed(SEED)
    if args.model == "mlp":
        h = args.hidden
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(784, h), torch.nn.ReLU(), torch.nn.Linear(h, h), torch.nn.ReLU(),
            torch.nn.Linear(h, 10),
        )
    raise ValueError(f"unknown model {args.model!r}")


def make_batches(args, rank):
    import torch

    g = torch.Generator().manual_seed(SEED + 1000 * (rank + 1))
    return [(torch.randn(args.batch, 784, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
            for _ in range(N_BATCHES)]


def _n_params(args):
    return n_params_of(args.hidden)


def n_params_of(h):
    """Parameters of the MLP 784-h-h-10 (weights and biases)."""
    return 784 * h + h + h * h + h + 10 * h + 10


def bucket_cap_for(n_params, cap):
    """``--bucket-cap-mb``: ``"auto"`` gives one bucket for the whole model (fp32 gradients plus 1 MiB)."""
    if str(cap).strip().lower() == "auto":
        return math.ceil(4 * n_params / 2**20) + 1.0
    value = float(cap)
    if value <= 0:
        raise ValueError(f"expected a positive --bucket-cap-mb or auto, found {cap!r}")
    return value


def ring_bytes(payload, world):
    """Bytes each rank sends in a ring allreduce of ``payload`` bytes."""
    return 2 * (world - 1) * payload // world


def powersgd_payload_numel(model, rank=POWERSGD_RANK, min_compression_rate=2):
    """Elements torch's powerSGD_hook sends per step (its per-tensor rule, as in powerSGD_hook.py)."""
    total = 0
    for p in model.parameters():
        rows = p.shape[0]
        cols = p.numel() // rows
        r = min(rows, cols, rank)
        if (rows + cols) * r * min_compression_rate < rows * cols:
            total += (rows + cols) * r
        else:
            total += rows * cols
    return total


# -- one rank -----------------------------------------------------------------------------
def _worker(rank, world, port, args, results):
    try:
        results.put({"rank": rank, "ok": True, "data": _run_rank(rank, world, port, args)})
    except BaseException:  # noqa: BLE001 - report anything to the parent, which stops the others
        results.put({"rank": rank, "ok": False, "error": traceback.format_exc()})
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass


def _run_rank(rank, world, port, args):
    import numba
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
    from torch.nn.parallel import DistributedDataParallel as DDP

    import gcomp.ddp

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    timeout = datetime.timedelta(seconds=args.op_timeout)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timeout)

    batches = make_batches(args, rank)
    loss_fn = torch.nn.CrossEntropyLoss()
    runs = {}
    configs = args.configs
    for name in configs:
        model = build_model(args)
        ddp = DDP(model, bucket_cap_mb=args.bucket_cap_mb)
        run = {"model": ddp, "opt": torch.optim.SGD(ddp.parameters(), lr=args.lr), "times": [], "bytes": [],
               "compress_s": [], "decompress_s": [], "comm_s": [], "algorithms": set(), "buckets": [], "psgd": [],
               "ratio": [], "losses": []}
        if name == "torch-fp16":
            ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        elif name == "torch-powersgd":
            run["state"] = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=POWERSGD_RANK,
                                              start_powerSGD_iter=POWERSGD_START)
            ddp.register_comm_hook(run["state"], psgd.powerSGD_hook)
        elif name in GCOMP_SPECS:
            run["state"] = gcomp.ddp.register(ddp, GCOMP_SPECS[name], timeout=timeout)
        runs[name] = run

    rounds = args.warmup + args.steps
    for r in range(rounds):
        shift = r % len(configs)
        for name in configs[shift:] + configs[:shift]:
            run = runs[name]
            x, y = batches[r % N_BATCHES]
            state = run.get("state")
            before = state.total_numel_after_compression if name == "torch-powersgd" else 0
            t0 = time.perf_counter()
            run["opt"].zero_grad(set_to_none=False)
            loss = loss_fn(run["model"](x), y)
            loss.backward()
            run["opt"].step()
            dt = time.perf_counter() - t0
            run["losses"].append(loss.item())
            if r < args.warmup:
                continue
            run["times"].append(dt)
            if name == "torch-powersgd":
                run["psgd"].append(state.total_numel_after_compression - before)
            elif name in GCOMP_SPECS:
                last = state.last_step()
                if last is None or last["step"] != r:
                    raise RuntimeError(f"{name}: expected gcomp's last_step() to be step {r}, found "
                                       f"{None if last is None else last['step']}")
                run["bytes"].append(int(last["bytes_sent"]))
                run["compress_s"].append(last["compress_s"])
                run["decompress_s"].append(last["decompress_s"])
                run["comm_s"].append(last["comm_s"])
                run["ratio"].append(last["compression_ratio"])
                run["buckets"].append(last["buckets"])
                run["algorithms"].update(last["algorithms"])
    for run in runs.values():
        if hasattr(run.get("state"), "close"):
            run["state"].close()
    dist.barrier()

    model = build_model(args)
    out = {"n_params": sum(p.numel() for p in model.parameters()),
           "threads_seen": {"torch": torch.get_num_threads(), "numba": numba.get_num_threads()},
           "psgd_model_numel": powersgd_payload_numel(model), "configs": {}}
    for name, run in runs.items():
        out["configs"][name] = {k: (sorted(v) if isinstance(v, set) else v) for k, v in run.items()
                                if k not in ("model", "opt", "state")}
    return out


# -- the parent ---------------------------------------------------------------------------
def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs):
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 10
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)


def _failures(first, results, procs, wait_s=5.0):
    """Every failure report that arrives within ``wait_s`` (the first one seen may be a peer's echo of the
    cause), and the ranks that died without one (a C++ abort: see their stderr above)."""
    msgs = [] if first is None else [first]
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            msg = results.get(timeout=max(0.05, deadline - time.monotonic()))
        except queue.Empty:
            if all(not p.is_alive() for p in procs):
                break
            continue
        if not msg["ok"]:
            msgs.append(msg)
    reported = {m["rank"] for m in msgs}
    lines = [f"rank {m['rank']} failed:\n{m['error']}" for m in sorted(msgs, key=lambda m: m["rank"])]
    lines += [f"rank {rank} exited with code {p.exitcode} without a report (see its stderr above)"
              for rank, p in enumerate(procs) if rank not in reported and p.exitcode not in (0, None)]
    return "\n".join(lines)


def run_ranks(args):
    """Spawn the ranks, collect their results; stop every rank on an error or on ``--timeout``."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(rank, args.world, port, args, results), name=f"bench-ddp-rank{rank}", daemon=True)
             for rank in range(args.world)]
    out = {}
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + args.timeout
        while len(out) < args.world:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"ranks {sorted(set(range(args.world)) - set(out))} did not finish within "
                                   f"--timeout {args.timeout:g} s")
            try:
                msg = results.get(timeout=min(1.0, left))
            except queue.Empty:
                if any(not p.is_alive() and p.exitcode not in (0, None) for p in procs):
                    raise RuntimeError(_failures(None, results, procs)) from None
                continue
            if not msg["ok"]:
                raise RuntimeError(_failures(msg, results, procs))
            out[msg["rank"]] = msg["data"]
        for p in procs:
            p.join(30)
    finally:
        _stop(procs)
        results.close()
    return [out[r] for r in range(args.world)]


def summarize(ranks, args, links):
    world = args.world
    n_params = ranks[0]["n_params"]
    records = []
    for name in args.configs:
        per_rank = [r["configs"][name] for r in ranks]
        # a round's step time is its slowest rank's
        step_times = [max(ts) for ts in zip(*(c["times"] for c in per_rank), strict=True)]
        step_s = statistics.median(step_times)
        c0 = per_rank[0]
        rec = {"config": name, "spec": GCOMP_SPECS.get(name, name), "steps_per_s": 1.0 / step_s, "step_s_median": step_s,
               "step_s_min": min(step_times), "step_s_max": max(step_times)}
        if name == "nohook":
            payload = 4 * n_params
            rec["bytes_source"] = "modelled: ring 2(P-1)/P x 4 B/param"
        elif name == "torch-fp16":
            payload = 2 * n_params
            rec["bytes_source"] = "modelled: ring 2(P-1)/P x 2 B/param"
        elif name == "torch-powersgd":
            numel = statistics.median(c0["psgd"])
            if numel != ranks[0]["psgd_model_numel"]:
                rec["warning"] = f"PowerSGDState counted {numel} elements per step, the per-tensor rule {ranks[0]['psgd_model_numel']}"
            payload = 4 * numel
            rec["bytes_source"] = (f"modelled: ring 2(P-1)/P x 4 B x (r(rows+cols) per compressed matrix + numel of "
                                   f"uncompressed tensors), r={POWERSGD_RANK}")
        if name in GCOMP_SPECS:
            sent = [max(b) for b in zip(*(c["bytes"] for c in per_rank), strict=True)]
            rec["bytes_per_step"] = int(statistics.median(sent))
            rec["bytes_source"] = "measured: gcomp state.last_step()['bytes_sent'] (max over ranks, median over steps)"
            rec["compression_ratio"] = statistics.median(c0["ratio"])
            rec["compress_s"] = statistics.median(c0["compress_s"])
            rec["decompress_s"] = statistics.median(c0["decompress_s"])
            rec["comm_thread_s"] = statistics.median(c0["comm_s"])
            rec["algorithms"] = c0["algorithms"]
            rec["buckets"] = int(statistics.median(c0["buckets"]))
            if min(c0["buckets"]) != max(c0["buckets"]):
                rec["warning"] = (f"gcomp's last_step() counted between {min(c0['buckets'])} and {max(c0['buckets'])} "
                                  "buckets per step: its step totals may miss buckets")
        else:
            rec["bytes_per_step"] = ring_bytes(int(payload), world)
            rec["compression_ratio"] = 4 * n_params / payload
        rec["loss_first"] = c0["losses"][0]
        rec["loss_last"] = c0["losses"][-1]
        for link, bps in links:
            rec[f"modelled_step_s_{link}"] = step_s + 8 * rec["bytes_per_step"] / bps
        rec["hidden"] = args.hidden
        rec["n_params"] = n_params
        rec["threads"] = args.threads
        rec["threads_seen"] = ranks[0]["threads_seen"]  # what rank 0's torch and numba ran with
        rec["bucket_cap_mb"] = args.bucket_cap_mb
        records.append(rec)
    base = next((rec for rec in records if rec["config"] == "nohook"), None)
    for rec in records:
        rec["speedup_vs_nohook_measured"] = base["step_s_median"] / rec["step_s_median"] if base else None
        for link, _ in links:
            rec[f"speedup_vs_nohook_{link}"] = (base[f"modelled_step_s_{link}"] / rec[f"modelled_step_s_{link}"]
                                                if base else None)
    return records


def make_header(args, links, runs):
    import numpy
    import torch

    import gcomp

    extra = {
        "benchmark": "ddp",
        "world": args.world, "backend": "gloo (localhost)",
        "models": [{"model": f"mlp 784-{h}-{h}-10", "hidden": h, "model_params": n_params_of(h)} for h in args.hidden_list],
        "threads_per_rank": args.thread_list, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
        "lr": args.lr, "bucket_cap_mb": {str(r["hidden"]): r["bucket_cap_mb"] for r in runs},
        "schedule": "round-robin over configurations, order rotated each round; one spawned run per model and thread count",
        "step_time": "wall clock of zero_grad+forward+backward+optimizer step; a round's time is the slowest rank's; median",
        "bytes_model": ("bytes sent per rank per step; ring allreduce of B bytes = 2(P-1)/P*B, allgather = (P-1)*B; "
                        "gcomp measured from state.last_step(), torch hooks and no hook modelled"),
        "links_bps": {name: bps for name, bps in links},
        "modelled_step": "step_s_median (measured, loopback) + 8*bytes_per_step/bandwidth (no overlap)",
        "gcomp_specs": GCOMP_SPECS,
        "torch_powersgd": {"matrix_approximation_rank": POWERSGD_RANK, "start_powerSGD_iter": POWERSGD_START},
        "runs": runs,
    }
    if _common is not None:
        head = _common.header(args.thread_list[0], [n_params_of(h) for h in args.hidden_list], **extra)
        head.pop("sizes", None)
        head["threads"] = args.thread_list
        return head
    return {"gcomp": gcomp.__version__, "python": platform.python_version(), "numpy": numpy.__version__,
            "torch": torch.__version__, "cpu": platform.processor() or "unknown", "logical_cpus": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python"] + sys.argv), **extra}


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _table(rows, cols, markdown=False):
    if _common is not None:
        return _common.format_table(rows, cols, markdown=markdown)
    lines = ["  ".join(title for _, title in cols)]
    lines += ["  ".join(str(r.get(k, "")) for k, _ in cols) for r in rows]
    return "\n".join(lines)


def table(records, links, markdown=False):
    cols = [("params", "params"), ("threads", "threads"), ("config", "config"), ("steps", "steps/s (meas)"),
            ("ms", "ms/step (meas)"), ("x", "speedup (meas)"), ("mb", "MB/step/rank"), ("ratio", "ratio")]
    for link, _ in links:
        cols += [(f"m_{link}", f"s/step @{link} (model)"), (f"x_{link}", f"speedup @{link} (model)")]
    rows = []
    for rec in records:
        row = {"params": f"{rec['n_params'] / 1e6:.2f}M", "threads": rec["threads"], "config": rec["config"],
               "steps": _fmt(rec["steps_per_s"], ".2f"), "ms": _fmt(1e3 * rec["step_s_median"], ".1f"),
               "x": _fmt(rec["speedup_vs_nohook_measured"], ".2f"), "mb": _fmt(rec["bytes_per_step"] / 1e6, ".4f"),
               "ratio": _fmt(rec["compression_ratio"], ".1f")}
        for link, _ in links:
            row[f"m_{link}"] = _fmt(rec[f"modelled_step_s_{link}"], ".3f")
            row[f"x_{link}"] = _fmt(rec[f"speedup_vs_nohook_{link}"], ".2f")
        rows.append(row)
    return _table(rows, cols, markdown)


def evaluate_targets(records):
    """Issue 11's DDP targets on the model nearest 25M parameters, per thread count: PASS/FAIL rows."""
    if not records:
        return []
    n_target = min({r["n_params"] for r in records}, key=lambda n: abs(n - TARGET_PARAMS))
    out = []
    for threads in sorted({r["threads"] for r in records}):
        by = {r["config"]: r for r in records if r["n_params"] == n_target and r["threads"] == threads}
        where = f"{n_target / 1e6:.1f}M params, {threads} thread(s)"
        if "gcomp-powersgd" in by and "torch-powersgd" in by:
            v = by["gcomp-powersgd"]["step_s_median"] / by["torch-powersgd"]["step_s_median"]
            out.append({"target": "gcomp PowerSGD hook step <= torch powerSGD_hook step", "where": where,
                        "config": "gcomp-powersgd", "value": v, "unit": "x torch-powersgd", "goal": "<= 1",
                        "pass": v <= 1.0})
        if "nohook" in by:
            for name, rec in by.items():
                if name in GCOMP_SPECS:
                    v = rec["step_s_median"] / by["nohook"]["step_s_median"]
                    out.append({"target": f"every gcomp hook <= {HOOK_OVER_NOHOOK:g}x the no-hook step", "where": where,
                                "config": name, "value": v, "unit": "x nohook", "goal": f"<= {HOOK_OVER_NOHOOK:g}",
                                "pass": v <= HOOK_OVER_NOHOOK})
    return out


def targets_table(targets, markdown=False):
    cols = [("target", "target"), ("where", "model"), ("config", "config"), ("value", "value"), ("goal", "goal"),
            ("result", "result")]
    rows = [{"target": t["target"], "where": t["where"], "config": t["config"], "value": f"{t['value']:.2f} {t['unit']}",
             "goal": t["goal"], "result": "PASS" if t["pass"] else "FAIL"} for t in targets]
    return _table(rows, cols, markdown)


def _int_list(text, what):
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers for {what}, found {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers for {what}, found {text!r}")
    return values


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="where to write the JSON results")
    ap.add_argument("--markdown", default="", help="also write the tables (results and targets) as Markdown to this path")
    ap.add_argument("--world", type=int, default=2, help="gloo ranks on localhost (default 2)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration (default 20)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first, at least 3 (default 5)")
    ap.add_argument("--model", default="mlp", choices=["mlp"], help="model (default mlp: 784-H-H-10)")
    ap.add_argument("--hidden", default=DEFAULT_HIDDEN,
                    help=f"comma-separated MLP hidden widths H, one run each (default {DEFAULT_HIDDEN}: 1.86M and 24.9M "
                         "parameters)")
    ap.add_argument("--threads", default="1",
                    help="comma-separated threads per rank (torch and numba), one run each, e.g. 1,2 (default 1)")
    ap.add_argument("--batch", type=int, default=64, help="batch size per rank (default 64)")
    ap.add_argument("--bucket-cap-mb", default="auto",
                    help="DDP bucket_cap_mb, passed explicitly so the first bucket has the same cap; auto: the whole model in "
                         "one bucket (default auto; see the module docstring on torch's powerSGD_hook and gloo)")
    ap.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    ap.add_argument("--link", type=parse_links, default="20mbit,100mbit",
                    help="comma-separated link bandwidths for the modelled columns, or none (default 20mbit,100mbit)")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated configurations, nohook first for the speedups (default all: {','.join(CONFIGS)})")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds before every rank of one run is stopped (default 1800)")
    ap.add_argument("--op-timeout", type=float, default=300.0, help="gloo collective timeout in seconds (default 300)")
    args = ap.parse_args(argv)
    try:
        args.hidden_list = _int_list(args.hidden, "--hidden")
        args.thread_list = _int_list(args.threads, "--threads")
        for h in args.hidden_list:
            bucket_cap_for(n_params_of(h), args.bucket_cap_mb)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        ap.error(str(exc))
    _set_thread_env(max(args.thread_list))  # before the ranks are spawned (numba reads it once, at import)
    if args.world < 2:
        ap.error("--world must be at least 2")
    if args.steps < 1 or args.batch < 1:
        ap.error("--steps and --batch must be positive")
    if args.warmup < POWERSGD_START + 1:
        ap.error(f"--warmup must be at least {POWERSGD_START + 1} (compression starts at step {POWERSGD_START})")
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown or not args.configs or len(set(args.configs)) != len(args.configs):
        ap.error(f"expected distinct configurations from {', '.join(CONFIGS)}, found {args.configs}")
    links = args.link
    if not isinstance(links, list):
        links = parse_links(links)

    loadavg = _common.LOADAVG_START if _common is not None else None
    print(f"load average at start: {loadavg}", flush=True)
    t0 = time.perf_counter()
    records, runs = [], []
    for hidden in args.hidden_list:
        for threads in args.thread_list:
            run_args = argparse.Namespace(**vars(args))
            run_args.hidden, run_args.threads = hidden, threads
            run_args.bucket_cap_mb = bucket_cap_for(n_params_of(hidden), args.bucket_cap_mb)
            n = n_params_of(hidden)
            if "torch-powersgd" in args.configs and 4 * n > run_args.bucket_cap_mb * 2**20:
                print(f"warning: the model's gradients exceed --bucket-cap-mb {run_args.bucket_cap_mb:g}, so DDP uses "
                      "several buckets; torch's powerSGD_hook on gloo may then abort with a collective mismatch "
                      "(module docstring)", file=sys.stderr)
            t_run = time.perf_counter()
            print(f"run: mlp 784-{hidden}-{hidden}-10 ({n:,} params), {threads} thread(s) per rank, "
                  f"bucket_cap_mb {run_args.bucket_cap_mb:g}", flush=True)
            ranks = run_ranks(run_args)
            recs = summarize(ranks, run_args, links)
            records += recs
            runs.append({"hidden": hidden, "threads": threads, "n_params": ranks[0]["n_params"],
                         "bucket_cap_mb": run_args.bucket_cap_mb, "wall_s": round(time.perf_counter() - t_run, 1)})
            print(table(recs, links), flush=True)
    targets = evaluate_targets(records)
    head = make_header(args, links, runs)
    head["wall_s"] = round(time.perf_counter() - t0, 1)
    if _common is not None:
        _common.write_json(args.json, head, records, targets=targets)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"header": head, "records": records, "targets": targets}, f, indent=1)
            f.write("\n")
    print(f"\nDDP benchmark: world {args.world} gloo on localhost, batch {args.batch}, {args.steps} timed steps after "
          f"{args.warmup} warm-up, torch {head['torch']}, {head['cpu']}")
    print("meas = measured on loopback; model = measured step + bytes/bandwidth (no overlap); MB = 1e6 bytes sent per rank")
    print(table(records, links))
    if targets:
        print()
        print(targets_table(targets))
    print(f"\nload average at start {loadavg}, at end {head.get('loadavg_end')}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table(records, links, markdown=True) + "\n\n")
            if targets:
                f.write(targets_table(targets, markdown=True) + "\n")
    print(f"wrote {args.json} ({head['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
