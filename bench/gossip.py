"""Gossip benchmark: bytes per rank per round and time per round against P, per topology and method.

In-process (P threads of one process, gcomp's LocalGroup; the default)::

    python bench/gossip.py --json out/gossip.json --md out/gossip.md

or one mpiexec job per P (real processes; the script relaunches itself)::

    python bench/gossip.py --mpi --json out/gossip-mpi.json --md out/gossip-mpi.md

For each P (default 2, 4, 8, 16), topology (ring, torus, exponential) and
method (exact gossip; CHOCO-SGD with top-k 1% and with sign) it runs warm-up
rounds, then timed rounds of ``Gossip.step()`` on a vector of ``--numel``
float32 entries, and records the bytes each rank sent per round (gcomp's
byte counters: payloads, the 32-byte gossip prefix, the 88-byte wire header
and 8 bytes of size per neighbour), their mean and spread over ranks, the
degree, and the time per round (median over rounds of the slowest rank).
For scale, each row also gives what a dense ring allreduce of the same
vector sends per rank, ``2 (P - 1) / P * 4 numel``.  In-process, the ranks
share this machine's cores and one interpreter, so the times say more about
the encoding cost than about a network; the bytes are exact either way.
Writes JSON (header + records) and a Markdown table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

DEFAULT_SIZES = "2,4,8,16"
DEFAULT_TOPOLOGIES = "ring,torus,exponential"
#: (label, compressor spec or None for exact gossip, gamma)
METHODS = [("exact", None, None), ("choco topk 1%", "topk:ratio=0.01", 0.05), ("choco sign", "sign", 0.1)]


def bench_one(transport, topology, spec, gamma, numel, rounds, warmup):
    """Run on one rank; returns (bytes sent per timed round, seconds per timed round, degree)."""
    import numpy as np

    from gcomp.decentralized import Gossip

    rng = np.random.default_rng([transport.rank, numel])
    x = rng.standard_normal(numel).astype(np.float32)
    kwargs = {} if spec is None else {"compressor": spec, "gamma": gamma}
    g = Gossip(x, topology=topology, transport=transport, timeout=300, **kwargs)
    for _ in range(warmup):
        g.step()
    sent, seconds = [], []
    for _ in range(rounds):
        transport.barrier()
        stats = g.step()
        sent.append(stats.bytes_sent)
        seconds.append(stats.seconds)
    return sent, seconds, g.topology.degree(transport.rank, g.round - 1)


def record(size, topology, label, spec, numel, per_rank):
    """One row from every rank's (sent, seconds, degree)."""
    import statistics

    from gcomp.decentralized import topology as build_topology

    sent = [statistics.mean(s) for s, _, _ in per_rank]
    slowest = [max(sec[k] for _, sec, _ in per_rank) for k in range(len(per_rank[0][1]))]
    topo = build_topology(topology, size)
    dense = 2 * (size - 1) * 4 * numel // size
    mean = statistics.mean(sent)
    return {"P": size, "topology": topo.name, "method": label, "compressor": spec or "none (exact)", "numel": numel,
            "degree": max(d for _, _, d in per_rank), "spectral_gap": round(topo.spectral_gap, 4),
            "bytes_per_rank_round": round(mean, 1), "bytes_min": min(sent), "bytes_max": max(sent),
            "bytes_per_neighbour": round(mean / max(1, max(d for _, _, d in per_rank)), 1),
            "allreduce_ring_bytes": dense, "ratio_vs_allreduce": round(mean / dense, 4) if dense else None,
            "seconds_per_round": statistics.median(slowest)}


def run_local_all(sizes, topologies, methods, numel, rounds, warmup):
    from gcomp.transports import run_local

    rows = []
    for size in sizes:
        for topology in topologies:
            for label, spec, gamma in methods:
                per_rank = run_local(size, bench_one, topology, spec, gamma, numel, rounds, warmup, timeout=600)
                rows.append(record(size, topology, label, spec, numel, per_rank))
                print(f"  P={size} {topology} {label}: {rows[-1]['bytes_per_rank_round']:.0f} B/rank/round, "
                      f"{1e3 * rows[-1]['seconds_per_round']:.1f} ms", file=sys.stderr, flush=True)
    return rows


def mpi_child(args):
    """Inside ``mpiexec -n P``: every configuration on COMM_WORLD; rank 0 writes the rows to ``args.child``."""
    import numpy as np
    from mpi4py import MPI

    from gcomp.transports.mpi import MPITransport

    comm = MPI.COMM_WORLD
    t = MPITransport(comm, timeout=300)
    rows = []
    for topology in args.topologies.split(","):
        for label, spec, gamma in selected_methods(args):
            mine = bench_one(t, topology, spec, gamma, args.numel, args.rounds, args.warmup)
            blob = np.frombuffer(json.dumps(mine).encode(), np.uint8)
            per_rank = [json.loads(bytes(b)) for b in t.allgatherv(blob)]
            if comm.Get_rank() == 0:
                rows.append(record(comm.Get_size(), topology, label, spec, args.numel, per_rank))
    if comm.Get_rank() == 0:
        with open(args.child, "w") as f:
            json.dump(rows, f)


def run_mpi_all(args, sizes):
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.json")
            cmd = ["mpiexec", "-n", str(size), sys.executable, "-m", "mpi4py", os.path.abspath(__file__),
                   "--child", out, "--numel", str(args.numel), "--rounds", str(args.rounds), "--warmup",
                   str(args.warmup), "--topologies", args.topologies, "--methods", args.methods]
            code = subprocess.call(cmd, env=env)
            if code != 0:
                raise SystemExit(f"mpiexec -n {size} failed with exit code {code}")
            with open(out) as f:
                rows += json.load(f)
        print(f"  P={size} done", file=sys.stderr, flush=True)
    return rows


def selected_methods(args):
    wanted = [m.strip() for m in args.methods.split(";") if m.strip()]
    out = [m for m in METHODS if m[0] in wanted]
    unknown = sorted(set(wanted) - {m[0] for m in METHODS})
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {[m[0] for m in METHODS]}")
    return out


COLUMNS = [("P", "P"), ("topology", "topology"), ("method", "method"), ("degree", "degree"),
           ("spectral_gap", "spectral gap"), ("bytes_per_rank_round", "bytes/rank/round"),
           ("spread", "min..max over ranks"), ("per_neighbour", "bytes/neighbour"),
           ("allreduce_ring_bytes", "dense ring allreduce bytes/rank"),
           ("ms", "ms/round")]


def table(rows, markdown):
    shown = [{**r, "spread": f"{r['bytes_min']:.0f}..{r['bytes_max']:.0f}", "ms": f"{1e3 * r['seconds_per_round']:.2f}",
              "bytes_per_rank_round": f"{r['bytes_per_rank_round']:.0f}", "per_neighbour": f"{r['bytes_per_neighbour']:.0f}"}
             for r in rows]
    return _common.format_table(shown, COLUMNS, markdown=markdown)


def flatness(rows):
    """Per (topology, method): bytes per rank per round at the largest P over those at the smallest P with the same
    degree (1.0: flat in P; a ring has degree 1 at P = 2, a 2 x 4 torus degree 3)."""
    out = {}
    for r in rows:
        out.setdefault((r["topology"].split(":")[0], r["method"]), []).append(r)
    flat = {}
    for (t, m), group in out.items():
        last = max(group, key=lambda r: r["P"])
        same = [r for r in group if r["degree"] == last["degree"] and r["P"] < last["P"]]
        if same:
            first = min(same, key=lambda r: r["P"])
            flat[f"{t} / {m} (P={last['P']} over P={first['P']})"] = round(
                last["bytes_per_rank_round"] / first["bytes_per_rank_round"], 4)
    return flat


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the header and records here")
    ap.add_argument("--md", help="write the Markdown table here")
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"numbers of ranks P (default {DEFAULT_SIZES})")
    ap.add_argument("--topologies", default=DEFAULT_TOPOLOGIES, help=f"default {DEFAULT_TOPOLOGIES}")
    ap.add_argument("--methods", default=";".join(m[0] for m in METHODS),
                    help="semicolon-separated, of: " + "; ".join(m[0] for m in METHODS))
    ap.add_argument("--numel", type=int, default=1_000_000, help="float32 entries per rank (default 1000000)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    ap.add_argument("--mpi", action="store_true", help="one mpiexec job per P instead of in-process threads")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        mpi_child(args)
        return 0
    if "numba" not in sys.modules:  # one thread per runtime (read when numba is imported); a caller's stays as is
        _common.set_thread_env(1)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    start = time.time()
    if args.mpi:
        rows = run_mpi_all(args, sizes)
    else:
        rows = run_local_all(sizes, args.topologies.split(","), selected_methods(args), args.numel, args.rounds,
                             args.warmup)
    head = _common.header(1, [args.numel], mode="mpiexec" if args.mpi else "in-process (LocalGroup threads)",
                          ranks=sizes, rounds=args.rounds, warmup=args.warmup, seconds=round(time.time() - start, 1),
                          bytes_model="gcomp byte counters: payload + 32-byte gossip prefix + 88-byte wire header + "
                                      "8 bytes of size, per neighbour; dense allreduce by the ring model 2(P-1)/P S")
    flat = flatness(rows)
    if args.json:
        _common.write_json(args.json, head, rows, flatness=flat)
    md = table(rows, markdown=True)
    if args.md:
        os.makedirs(os.path.dirname(os.path.abspath(args.md)) or ".", exist_ok=True)
        with open(args.md, "w") as f:
            f.write(f"<!-- {head['command']} ({head['mode']}, {args.numel} float32 entries, {head['date']}) -->\n")
            f.write(md + "\n\nBytes per rank per round at the largest P over the smallest P of the same degree:\n\n")
            f.write("\n".join(f"- {k}: {v}" for k, v in flat.items()) + "\n")
    print(table(rows, markdown=False))
    print("\nlargest P / smallest P, bytes per rank per round: " + ", ".join(f"{k} {v}" for k, v in flat.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
