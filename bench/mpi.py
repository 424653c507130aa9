"""OSU-style benchmark of gcomp's compressed Allreduce under MPI.

Run on one machine (it re-launches itself under mpiexec)::

    python bench/mpi.py --np 4 --json out/mpi.json

or under your own launcher across edge boxes::

    mpiexec -n 4 -f hosts python -m mpi4py bench/mpi.py --json out/mpi.json

For message sizes from 1 KB to 100 MB of float32 it times the dense
``comm.Allreduce`` (the baseline) and every compressor with every algorithm
that applies, measured in the same run: warm-up calls, then repeated timed
calls, the median across iterations of the slowest rank's time.  It records
bytes sent and received per rank (gcomp's byte counters; the dense baseline
by the ring model 2 (P-1)/P S), and writes JSON plus a table.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

DEFAULT_SIZES = "1KB,10KB,100KB,1MB,10MB,100MB"
DEFAULT_SPECS = ("topk:ratio=0.01", "dgc:ratio=0.01", "randomk:ratio=0.01", "qsgd", "uniform:bits=4", "sign", "terngrad",
                 "natural", "fp16", "powersgd:rank=4")


def parse_size(text):
    text = text.strip().upper()
    for suffix, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def algorithms_for(spec):
    import gcomp

    comp = gcomp.compressor(spec)
    algs = ["allgather", "scatter-reduce-allgather"]
    if comp.linear:
        algs.insert(0, "allreduce")
    return algs


def iterations_for(nbytes):
    return 20 if nbytes <= 1 << 20 else 8 if nbytes <= 16 << 20 else 3


def timed(comm, fn, iterations, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        elapsed = np.array([time.perf_counter() - t0])
        comm.Allreduce(elapsed.copy(), elapsed, op=__import__("mpi4py").MPI.MAX)
        times.append(float(elapsed[0]))
    return float(np.median(times))


def run(args):
    from mpi4py import MPI

    import gcomp
    import gcomp.mpi

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    specs = args.compressors.split(";") if args.compressors else list(DEFAULT_SPECS)
    records = []
    rng = np.random.default_rng(rank)
    for nbytes in sizes:
        n = max(1, nbytes // 4)
        x = (rng.standard_normal(n) * np.exp(rng.standard_normal(n))).astype(np.float32)
        out = np.empty_like(x)
        iters = iterations_for(nbytes)
        dense_s = timed(comm, lambda x=x, out=out: comm.Allreduce(x, out, op=MPI.SUM), iters)
        dense_bytes = 2 * (size - 1) * x.nbytes // size
        records.append({"compressor": "dense (comm.Allreduce)", "algorithm": "mpi", "bytes": x.nbytes, "numel": n,
                        "median_s": dense_s, "bytes_sent": dense_bytes, "bytes_received": dense_bytes,
                        "speedup_vs_dense": 1.0, "bytes_ratio_vs_dense": 1.0})
        for spec in specs:
            for alg in algorithms_for(spec):
                ccomm = gcomp.mpi.CompressedComm(comm, spec, algorithm=alg, verify="first")
                median = timed(comm, lambda c=ccomm, x=x, out=out: c.Allreduce(x, out, op=gcomp.mpi.MEAN), iters)
                st = ccomm.stats[-1]
                records.append({"compressor": spec, "algorithm": st.algorithm, "bytes": x.nbytes, "numel": n,
                                "median_s": median, "bytes_sent": st.bytes_sent, "bytes_received": st.bytes_received,
                                "speedup_vs_dense": dense_s / median if median else float("inf"),
                                "bytes_ratio_vs_dense": dense_bytes / st.bytes_sent if st.bytes_sent else float("inf")})
                ccomm.Free()
        if rank == 0:
            print(f"  done {nbytes} bytes", file=sys.stderr, flush=True)
    if rank == 0:
        header = {"gcomp": gcomp.__version__, "numpy": np.__version__, "mpi": MPI.Get_library_version().splitlines()[0],
                  "world": size, "machine": platform.machine(), "cpu": _cpu_model(), "cores": os.cpu_count(),
                  "sizes": sizes, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "timing": "median over iterations of the slowest rank's time, after 2 warm-up calls",
                  "bytes_model": "gcomp byte counters per rank; dense by the ring model 2(P-1)/P S"}
        doc = {"header": header, "records": records}
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=1)
        print(table(doc))


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(doc):
    h = doc["header"]
    lines = [f"gcomp {h['gcomp']} | {h['mpi']} | P = {h['world']} | {h['cpu']}",
             f"{'size':>9} {'compressor':<24} {'algorithm':<25} {'median ms':>10} {'speedup':>8} {'sent/rank':>12} {'bytes x':>8}"]
    for r in doc["records"]:
        lines.append(f"{_fmt(r['bytes']):>9} {r['compressor']:<24} {r['algorithm']:<25} {1e3 * r['median_s']:>10.3f} "
                     f"{r['speedup_vs_dense']:>8.2f} {r['bytes_sent']:>12d} {r['bytes_ratio_vs_dense']:>8.1f}")
    return "\n".join(lines)


def _fmt(nbytes):
    for suffix, factor in (("MB", 1 << 20), ("KB", 1 << 10)):
        if nbytes >= factor:
            return f"{nbytes / factor:g}{suffix}"
    return f"{nbytes}B"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the records here")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated message sizes (default {DEFAULT_SIZES})")
    parser.add_argument("--compressors", default="", help="semicolon-separated specs (default: a representative set)")
    parser.add_argument("--np", type=int, default=4, help="ranks when launching mpiexec ourselves (default 4)")
    args = parser.parse_args(argv)
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_size() == 1 and args.np > 1 and not os.environ.get("GCOMP_BENCH_CHILD"):
        cmd = ["mpiexec", "-n", str(args.np), sys.executable, "-m", "mpi4py", os.path.abspath(__file__)] + sys.argv[1:]
        env = dict(os.environ, GCOMP_BENCH_CHILD="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        return subprocess.call(cmd, env=env)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
