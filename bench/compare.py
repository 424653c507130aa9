"""Two checkouts of gcomp in one process: every compressor's hot calls, old against new, same run.

Usage::

    git worktree add /tmp/gcomp-base <baseline commit>
    python bench/compare.py --old /tmp/gcomp-base --new . --json /tmp/compare.json \\
        [--sizes 1000,10000,1000000] [--ops compress,decompress,decompress_add,wire_encode,wire_decode] [--only topk,qsgd]

Separate runs of bench/compressors.py cannot resolve a 5% change on a loaded
2-core machine (ratios of identical code spread from 0.7 to 1.3 there).  Here
both checkouts are imported side by side, as the packages ``gcomp_old`` and
``gcomp_new`` (each with its own ``kernels/``), and each (compressor, size,
operation) is timed in rounds that alternate old and new calls, the order
flipped every round, so both see the same load.  Reported per cell: the median
old and new time and the median over rounds of the new/old ratio (wall clock
and process CPU time).  An old-against-old run (``--new`` = a copy of the old
checkout) is the control: its ratios stay within about 0.87 to 1.02.

Input: the gradient-like vector of bench/compressors.py (seeded); sparse
compressors at 1% density, ``threshold`` with the tau that keeps 1%.
"""

# ruff: noqa: E402  (the thread environment must be pinned before numpy, numba and torch are imported)

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common

_common.set_thread_env(1)

import argparse
import gc
import importlib.abc
import importlib.util
import math
import statistics
import time

import numpy as np

SPECS = {"topk": "topk:ratio=0.01", "dgc": "dgc:ratio=0.01", "randomk": "randomk:ratio=0.01",
         "threshold": "threshold:tau={tau}", "qsgd": "qsgd:levels=4,bucket_size=512", "uniform": "uniform:bits=8,bucket_size=512",
         "sign": "sign:bucket_size=512", "terngrad": "terngrad:bucket_size=512", "powersgd": "powersgd:rank=4"}
OPS = ("compress", "decompress", "decompress_add", "wire_encode", "wire_decode")


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Imports ``gcomp_old`` / ``gcomp_new`` (and their ``.kernels``) from the given checkouts."""

    def __init__(self, roots):
        self.dirs = {}
        for package, root in roots.items():
            self.dirs[package] = os.path.join(root, "gcomp")
            self.dirs[package + ".kernels"] = os.path.join(root, "kernels")

    def find_spec(self, fullname, path=None, target=None):
        directory = self.dirs.get(fullname)
        if directory is None:
            return None
        return importlib.util.spec_from_file_location(fullname, os.path.join(directory, "__init__.py"),
                                                      submodule_search_locations=[directory])


def gradient_like(n, seed=2024):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n, dtype=np.float32)
    x *= np.exp(rng.standard_normal(n, dtype=np.float32))
    return x


def calls(g, spec, x):
    comp = g.compressor(spec)
    c = comp.compress(x, step=0, key=0)
    packet = g.wire.encode(c)
    acc = np.zeros(x.shape[0], np.float32)
    return {"compress": lambda: comp.compress(x, step=0, key=0), "decompress": lambda: comp.decompress(c),
            "decompress_add": lambda: comp.decompress_add(c, acc), "wire_encode": lambda: g.wire.encode(c),
            "wire_decode": lambda: g.wire.decode(packet)}, packet


def timed(fn, inner):
    cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
    for _ in range(inner):
        fn()
    return (time.perf_counter_ns() - wall0) * 1e-9 / inner, (time.process_time_ns() - cpu0) * 1e-9 / inner


def compare(old_fn, new_fn, budget):
    for _ in range(2):
        old_fn(), new_fn()
    one = min(timed(old_fn, 1)[0], timed(new_fn, 1)[0])
    inner = max(1, min(100, int(2e-4 / max(one, 1e-9))))
    rounds = max(15, min(400, int(budget / max(2 * one * inner, 1e-9))))
    wall, cpu = {"old": [], "new": []}, {"old": [], "new": []}
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for tag in ("old", "new") if r % 2 == 0 else ("new", "old"):
                w, c = timed(old_fn if tag == "old" else new_fn, inner)
                wall[tag].append(w)
                cpu[tag].append(c)
    finally:
        gc.enable()
    ratio_wall = statistics.median(n / o for n, o in zip(wall["new"], wall["old"], strict=True))
    cpu_ratios = [n / o for n, o in zip(cpu["new"], cpu["old"], strict=True) if o > 0]
    return {"rounds": rounds, "inner": inner, "old_s": statistics.median(wall["old"]), "new_s": statistics.median(wall["new"]),
            "ratio_wall": ratio_wall, "ratio_cpu": statistics.median(cpu_ratios) if cpu_ratios else float("nan")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="the baseline checkout (a git worktree)")
    ap.add_argument("--new", default=_common.REPO_ROOT, help="the checkout measured against it (default: this one)")
    ap.add_argument("--json", required=True, help="where to write the records")
    ap.add_argument("--sizes", default="1000,10000,1000000", help="vector sizes (default 1000,10000,1000000)")
    ap.add_argument("--ops", default=",".join(OPS), help=f"operations (default {','.join(OPS)})")
    ap.add_argument("--only", default="", help="compressor names to run (default: every one both checkouts register)")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per cell (default 1)")
    args = ap.parse_args(argv)
    sys.meta_path.insert(0, _CheckoutFinder({"gcomp_old": os.path.abspath(args.old), "gcomp_new": os.path.abspath(args.new)}))
    import gcomp_new
    import gcomp_new.wire  # noqa: F401
    import gcomp_old
    import gcomp_old.wire  # noqa: F401

    assert "gcomp" not in sys.modules, "a plain 'gcomp' was imported: the results would mix checkouts"
    _common.apply_threads(1)
    ops = [op for op in args.ops.split(",") if op]
    only = {name for name in args.only.split(",") if name}
    names = [n for n in gcomp_new.list_compressors() if n in gcomp_old.list_compressors() and (not only or n in only)]
    records = []
    for n in _common.parse_sizes(args.sizes):
        x = gradient_like(n)
        k = max(1, math.ceil(0.01 * n))
        tau = float(np.partition(np.abs(x), n - k)[n - k])
        for name in names:
            spec = SPECS.get(name, name).format(tau=repr(tau))
            old_calls, old_packet = calls(gcomp_old, spec, x)
            new_calls, new_packet = calls(gcomp_new, spec, x)
            for op in ops:
                rec = {"compressor": name, "spec": spec, "n": n, "op": op, "same_packet": old_packet == new_packet,
                       **compare(old_calls[op], new_calls[op], args.budget)}
                records.append(rec)
                print(f"{name:10} n={n:>9} {op:15} old {_common.fmt_time(rec['old_s']):>10} new {_common.fmt_time(rec['new_s']):>10}"
                      f"  new/old wall {rec['ratio_wall']:.3f} cpu {rec['ratio_cpu']:.3f}", flush=True)
    head = _common.header(1, _common.parse_sizes(args.sizes), old=os.path.abspath(args.old), new=os.path.abspath(args.new))
    _common.write_json(args.json, head, records)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
