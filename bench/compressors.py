"""Every registered compressor on a gradient-like vector: speed, bytes on the wire, error, the full path against
GRACE-style torch code, the fixed cost per call, peak memory.

Usage::

    python bench/compressors.py --json /tmp/compressors.json [--sizes 1000,10000,100000,1000000,25000000]
                                [--threads 1] [--memory auto] [--markdown PATH]

The full run, with the 100M memory row the memory target is stated for::

    python bench/compressors.py --json /tmp/compressors.json --sizes 1000,10000,100000,1000000,25000000,100000000

For each compressor in ``gcomp.list_compressors()`` (parameters below; sparse
ones at 1% density, ``threshold`` with the tau that keeps 1% of this input) and
each size, one group of calls timed round-robin (warm-up, then interleaved
rounds; see ``bench/_common.py``; calls shorter than 200 us are repeated in a
loop and the loop's time divided):

* the stages: ``compress``, ``wire.encode``, ``wire.decode``, ``decompress``
  of the decoded packet into a fresh array, into a reused buffer (``out=``) and
  added into an accumulator (``decompress_add``);
* the **full path** ``decompress(decode(encode(compress(x))), out=buf)`` and its
  ``decompress_add`` variant (timed with ``wire.encode``'s bytes, as in every earlier
  round, so the rows stay comparable; the memory rows below use ``wire.encode_array``),
  and the same path in **GRACE-style torch code** (``bench/grace_style.py``: compress, the bytes of the tensors GRACE sends,
  zero-copy tensors back, decompress into a fresh tensor; ``acc.add_(...)`` for
  the add variant) for the compressors GRACE has;
* encoded bytes ``len(gcomp.wire.encode(c))`` (88-byte header included), the
  compression ratio ``4 * n / bytes``, relative error ``||C(x) - x|| / ||x||``
  (float64), and for ``dgc`` the recall against exact top-k at the same k.

**Fixed cost**: each stage's fastest sample (per call) is fitted by least squares with
``t(n) = a + b n`` (relative residuals) over the sizes up to 100,000 in the run
(1e3, 1e4, 1e5 by default); ``a`` is the fixed cost per call, ``b`` the cost per element.
The fastest sample, not the median: on a shared machine load only adds time, and medians
moved the intercept by 2 to 5 us between runs of the same code.

**Peak memory** (``--memory``): one child process per size (``MALLOC_MMAP_THRESHOLD_``
and ``MALLOC_TRIM_THRESHOLD_`` fixed at 128 KiB so freed memory goes back to the
system at once) measures every configuration in turn: the input and a touched
dense output exist, every configuration is warmed up on a 1M+1-entry vector,
then the kernel's resident-set high-water mark is reset (``/proc/self/clear_refs``
``5``), the full path as the collectives run it (gcomp:
``decompress(decode(encode_array(compress(x))), out=buf)``, the packet made by
``wire.encode_array`` as allgather, scatter-reduce-allgather and gossip make it, so a
large quantized vector's packet-backed form is sent without a copy; and, separately, its
``decompress_add`` variant into the same touched buffer) runs twice, and
``extra = VmHWM - VmRSS before`` (minus
the fresh dense output GRACE's ``decompress`` returns) as a fraction of the input's
``4n`` bytes.  ``auto`` (the default) measures the sizes of ``--sizes`` from
25M up; ``none`` skips it; a list of sizes measures those.

**Targets** (printed with PASS/FAIL and stored under ``"targets"``): full path
at 1e4 at least 2x faster than GRACE-style torch; fixed cost of the full path at
most 20 us; full path extra memory at most 0.2x the input at 100M (at the
largest size measured when 100M is not, said in the row).

Input ("gradient-like"): ``x_i = z_i * exp(w_i)`` with ``z, w`` independent
standard normals (a normal times a log-normal scale, heavier-tailed than a
normal), float32, seeded.  A compressor registered later without a default
here runs with its own defaults (or is skipped when it needs parameters).
"""

# ruff: noqa: E402  (the thread environment must be pinned before numpy, numba and torch are imported)

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common

_EARLY_THREADS = _common.early_threads_from_argv()
_common.use_checkout()  # measure this checkout's gcomp, not whatever an editable install points at

import argparse
import gc
import json
import math
import subprocess
import time

import grace_style
import numpy as np
import torch
from gcomp.kernels.topk import topk_exact

import gcomp
from gcomp import wire
from gcomp.errors import ConfigError

SEED = 2024
DENSITY = 0.01
DEFAULT_SIZES = "1000,10000,100000,1000000,25000000"
#: calls shorter than this are looped inside one timed sample
MIN_SAMPLE_S = 200e-6
#: sizes up to this feed the fixed-cost fit
FIT_MAX_N = 100_000
#: the size of the speed targets
TARGET_N = 10_000
#: the size of the memory target
MEMORY_TARGET_N = 100_000_000
#: the warm-up size of the memory child (above the parallel thresholds of every kernel family)
MEMORY_WARM_N = (1 << 20) + 1
TARGETS = {
    "speedup": ("full path at 1e4 >= 2x faster than GRACE-style torch", 2.0),
    "fixed": ("full path fixed cost <= 20 us (fit a + b n over 1e3..1e5)", 20e-6),
    "memory": ("full path extra memory <= 0.2x the input at 100M", 0.2),
}

#: compressor name -> the spec benchmarked (threshold's tau is filled in from the data)
DEFAULT_SPECS = {
    "none": "none",
    "fp16": "fp16",
    "bf16": "bf16",
    "topk": "topk:ratio=0.01",
    "dgc": "dgc:ratio=0.01",
    "randomk": "randomk:ratio=0.01",
    "threshold": "threshold:tau={tau}",
    "qsgd": "qsgd:levels=4,bucket_size=512",
    "uniform": "uniform:bits=8,bucket_size=512",
    "sign": "sign:bucket_size=512",
    "terngrad": "terngrad:bucket_size=512",
    "natural": "natural",
    "powersgd": "powersgd:rank=4",
}

#: extra variants worth a row
EXTRA_SPECS = ["uniform:bits=4,bucket_size=512"]

#: stages timed per compressor (gcomp), in table order
STAGES = ["compress", "wire_encode", "wire_decode", "decompress", "decompress_out", "decompress_add", "full",
          "full_add"]
GRACE_STAGES = ["grace_full", "grace_full_add"]
#: stages whose fixed cost is fitted
FIT_STAGES = ["compress", "wire_encode", "wire_decode", "decompress_out", "decompress_add", "full", "full_add",
              "grace_full"]


def gradient_like(n, seed=SEED):
    """float32 ``z * exp(w)``, z and w standard normal (normal times a log-normal scale)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n, dtype=np.float32)
    x *= np.exp(rng.standard_normal(n, dtype=np.float32))
    return x


def specs_for(x):
    n = x.shape[0]
    k = max(1, math.ceil(DENSITY * n))
    tau = float(np.partition(np.abs(x), n - k)[n - k])
    specs = []
    for name in gcomp.list_compressors():
        spec = DEFAULT_SPECS.get(name, name)
        specs.append(spec.format(tau=repr(tau)))
    specs += [s for s in EXTRA_SPECS if s.split(":")[0] in gcomp.list_compressors()]
    return specs


def rel_error(x, y):
    x64 = x.astype(np.float64)
    return float(np.linalg.norm(np.asarray(y, dtype=np.float64) - x64) / np.linalg.norm(x64))


# -- the paths ----------------------------------------------------------------------------------
def gcomp_paths(comp, x, out, acc):
    """The gcomp stage and full-path callables on ``x`` (``out``: reused dense output, ``acc``: accumulator)."""
    c = comp.compress(x, step=0, key=0)
    buf = wire.encode(c)
    d = wire.decode(buf)

    def full():
        comp.decompress(wire.decode(wire.encode(comp.compress(x, step=0, key=0))), out=out)

    def full_add():
        comp.decompress_add(wire.decode(wire.encode(comp.compress(x, step=0, key=0))), acc)

    fns = {
        "compress": lambda: comp.compress(x, step=0, key=0),
        "wire_encode": lambda: wire.encode(c),
        "wire_decode": lambda: wire.decode(buf),
        "decompress": lambda: comp.decompress(d),
        "decompress_out": lambda: comp.decompress(d, out=out),
        "decompress_add": lambda: comp.decompress_add(d, acc),
        "full": full,
        "full_add": full_add,
    }
    return fns, c, buf


def grace_paths(gc_, t, acc_t):
    """GRACE-style full path (fresh dense output) and its add variant on the tensor ``t``."""
    return {
        "grace_full": lambda: grace_style.full_path(gc_, t),
        "grace_full_add": lambda: acc_t.add_(grace_style.full_path(gc_, t)),
    }


def _looped(fn):
    """``fn`` and how many calls one timed sample makes (so a sample lasts at least MIN_SAMPLE_S)."""
    fn()  # warm-up (compile, first touch)
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    inner = max(1, min(10_000, math.ceil(MIN_SAMPLE_S / max(dt, 1e-9))))
    if inner == 1:
        return fn, 1

    def loop():
        for _ in range(inner):
            fn()

    return loop, inner


def bench_one(spec, x, repeat, budget, grace=True):
    n = x.shape[0]
    try:
        comp = gcomp.compressor(spec)
    except ConfigError as exc:
        return {"compressor": spec.split(":")[0], "spec": spec, "n": n, "skipped": str(exc)}
    out = np.zeros(n, np.float32)
    acc = np.zeros(n, np.float32)
    fns, c, buf = gcomp_paths(comp, x, out, acc)
    g = grace_style.make(comp) if grace else None
    if g is not None:
        fns.update(grace_paths(g, torch.from_numpy(x), torch.zeros(n)))
    looped = {name: _looped(fn) for name, fn in fns.items()}
    samples = _common.measure_group({name: f for name, (f, _) in looped.items()}, repeat, budget)
    t = {name: _common.median(ts) / looped[name][1] for name, ts in samples.items()}
    dense = comp.decompress(c)
    rec = {
        "compressor": comp.name,
        "spec": spec,
        "config": comp.get_config(),
        "n": n,
        **{f"{name}_s": t[name] for name in fns},
        # the fastest sample per call: the fixed-cost fit reads these (load on a shared box only adds time)
        **{f"{name}_min_s": min(samples[name]) / looped[name][1] for name in fns},
        "runs": len(samples["compress"]),
        "calls_per_sample": {name: inner for name, (_, inner) in looped.items()},
        "compress_gbps": 4 * n / t["compress"] / 1e9,
        "decompress_gbps": 4 * n / t["decompress_out"] / 1e9,
        "encoded_bytes": len(buf),
        "ratio": 4 * n / len(buf),
        "bits_per_element": 8 * len(buf) / n,
        "rel_error": rel_error(x, dense),
        "count": int(c.count),
        "density": c.count / n if c.count else None,
    }
    if g is not None:
        rec["grace"] = type(g).__name__
        rec["grace_bytes"] = sum(len(b) for _, _, b in grace_style.encode(g.compress(torch.from_numpy(x), "b0")[0]))
        rec["grace_rel_error"] = rel_error(x, grace_style.full_path(g, torch.from_numpy(x)).numpy())
        rec["full_vs_grace"] = t["full"] / t["grace_full"]
        rec["full_add_vs_grace"] = t["full_add"] / t["grace_full_add"]
    if comp.name == "dgc":
        k = comp.k(n)
        ref, _ = topk_exact(x, k)
        got = c.arrays["indices"]
        rec["k"] = k
        rec["recall"] = float(np.intersect1d(got, ref, assume_unique=True).shape[0] / k)
    return rec


# -- fixed cost ---------------------------------------------------------------------------------
def fit_fixed(ns, ts):
    """Least-squares ``t = a + b n`` over the points ``(ns, ts)``: ``(a, b)``; None with fewer than two sizes.

    Residuals are relative (each point weighted by ``1 / t``): timing noise grows with the time, and
    unweighted residuals would let the largest size's noise set the intercept.
    """
    pts = sorted({int(n): float(t) for n, t in zip(ns, ts, strict=True)}.items())
    if len(pts) < 2:
        return None
    xs = np.array([p[0] for p in pts], np.float64)
    ys = np.array([p[1] for p in pts], np.float64)
    w = 1.0 / np.maximum(np.abs(ys), 1e-12)
    A = np.stack([np.ones_like(xs), xs], axis=1)
    (a, b), *_ = np.linalg.lstsq(A * w[:, None], ys * w, rcond=None)
    return float(a), float(b)


def fixed_costs(records):
    """Per spec and stage, the fit over sizes <= FIT_MAX_N: ``[{spec, stage: {a_s, b_s_per_elem}}]``."""
    by_spec = {}
    for r in records:
        if "skipped" in r or r["n"] > FIT_MAX_N:
            continue
        by_spec.setdefault(r["spec_key"], []).append(r)
    out = []
    for key, recs in by_spec.items():
        row = {"spec": key, "compressor": recs[0]["compressor"], "sizes": sorted(r["n"] for r in recs)}
        for stage in FIT_STAGES:
            pts = [(r["n"], r.get(f"{stage}_min_s", r[f"{stage}_s"])) for r in recs if f"{stage}_s" in r]
            fit = fit_fixed(*zip(*pts, strict=True)) if len(pts) >= 2 else None
            if fit is not None:
                row[stage] = {"a_s": fit[0], "b_s_per_element": fit[1]}
        out.append(row)
    return out


# -- peak memory --------------------------------------------------------------------------------
def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure_memory_one(run, warm, n, output_is_fresh):
    """Peak extra resident memory of two calls of ``run`` (after ``warm``), in bytes beyond what is resident
    before (and beyond a fresh ``4n``-byte output when ``output_is_fresh``); also what stays resident after."""
    warm()
    gc.collect()
    _reset_hwm()
    base = _status_kb("VmRSS")
    for _ in range(2):
        result = run()
        del result
    peak = _status_kb("VmHWM")
    gc.collect()
    after = _status_kb("VmRSS")
    extra = 1024 * (peak - base) - (4 * n if output_is_fresh else 0)
    return {"extra_bytes": extra, "extra_x_input": extra / (4 * n), "retained_bytes": 1024 * (after - base)}


def memory_child(n, only, threads, grace=True):
    """Run in a fresh process: every configuration's peak extra memory at size ``n``; returns records."""
    _common.apply_threads(threads)
    x = gradient_like(n)
    xw = gradient_like(MEMORY_WARM_N, seed=SEED + 1)
    out = np.empty(n, np.float32)
    outw = np.empty(MEMORY_WARM_N, np.float32)
    out.fill(1.0)  # touched: the caller's dense output is resident before the call (np.zeros maps lazy zero pages)
    outw.fill(1.0)
    recs = []
    for spec in specs_for(x):
        name = spec.split(":")[0]
        if only and name not in only:
            continue
        try:
            comp = gcomp.compressor(spec)
        except ConfigError:
            continue

        def path(comp=comp, v=x, o=out, key=0):  # what the collectives run: encode_array, not encode's bytes
            comp.decompress(wire.decode(wire.encode_array(comp.compress(v, step=0, key=key))), out=o)

        m = measure_memory_one(path, lambda comp=comp: path(comp, xw, outw, 1), n, False)
        recs.append({"impl": "gcomp", "spec": spec, "compressor": name, "n": n, **m})

        def path_add(comp=comp, v=x, a=out, key=0):
            comp.decompress_add(wire.decode(wire.encode_array(comp.compress(v, step=0, key=key))), a)

        m = measure_memory_one(path_add, lambda comp=comp: path_add(comp, xw, outw, 1), n, False)
        recs.append({"impl": "gcomp-add", "spec": spec, "compressor": name, "n": n, **m})
        del comp
        g = grace_style.make(gcomp.compressor(spec)) if grace else None
        if g is not None:
            t, tw = torch.from_numpy(x), torch.from_numpy(xw)
            m = measure_memory_one(lambda g=g, t=t: grace_style.full_path(g, t),
                                   lambda g=g, tw=tw: grace_style.full_path(g, tw), n, True)
            recs.append({"impl": "grace-style", "spec": spec, "compressor": name, "n": n, **m})
        gc.collect()
    return recs


def run_memory(n, only, threads, grace=True):
    """Start the memory child for size ``n`` and return its records (or one record with the error)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, os.path.abspath(__file__), "--json", "-", "--threads", str(threads),
           "--memory-child", str(n), "--only", ",".join(sorted(only))] + ([] if grace else ["--no-grace"])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return [{"n": n, "error": (proc.stderr or proc.stdout)[-2000:]}]
    return json.loads(lines[-1])["memory"]


# -- targets ------------------------------------------------------------------------------------
def evaluate_targets(records, fixed, memory):
    rows = []
    title, goal = TARGETS["speedup"]
    for r in records:
        if r["n"] == TARGET_N and "grace_full_s" in r:
            v = r["grace_full_s"] / r["full_s"]
            rows.append({"target": title, "spec": r["spec_key"], "value": v, "unit": "x GRACE-style (full path)",
                         "goal": f">= {goal:g}", "pass": v >= goal})
    title, goal = TARGETS["fixed"]
    for f in fixed:
        if "full" in f:
            v = f["full"]["a_s"]
            rows.append({"target": title, "spec": f["spec"], "value": v * 1e6, "unit": "us fixed (full, out=)",
                         "goal": f"<= {goal * 1e6:g}", "pass": v <= goal})
    title, goal = TARGETS["memory"]
    gm = [m for m in memory if m.get("impl") == "gcomp"]
    if gm:
        n_mem = MEMORY_TARGET_N if any(m["n"] == MEMORY_TARGET_N for m in gm) else max(m["n"] for m in gm)
        for m in gm:
            if m["n"] == n_mem:
                rows.append({"target": title + ("" if n_mem == MEMORY_TARGET_N else f" (measured at {n_mem:,}: 100M not run)"),
                             "spec": m["spec"], "value": m["extra_x_input"], "unit": "x input",
                             "goal": f"<= {goal:g}", "pass": m["extra_x_input"] <= goal})
    return rows


# -- tables -------------------------------------------------------------------------------------
def table(records):
    cols = [("compressor", "compressor"), ("spec", "spec"), ("n", "n"), ("compress", "compress"),
            ("decompress", "decompress"), ("decompress_out", "decompress out="), ("decompress_add", "decompress_add"),
            ("wire", "wire.encode"), ("wdec", "wire.decode"), ("bytes", "encoded bytes"), ("ratio", "ratio"),
            ("err", "rel. error"), ("note", "note")]
    rows = []
    for r in records:
        if "skipped" in r:
            rows.append({"compressor": r["compressor"], "spec": r["spec"], "n": f"{r['n']:,}",
                         "note": "skipped: " + r["skipped"]})
            continue
        note = []
        if r.get("density") is not None:
            note.append(f"density {r['density']:.2%}")
        if r.get("recall") is not None:
            note.append(f"recall vs top-k {r['recall']:.4f} (count {r['count']:,} of k {r['k']:,})")
        f = _common.fmt_time
        rows.append({
            "compressor": r["compressor"], "spec": r["spec_key"], "n": f"{r['n']:,}",
            "compress": f(r["compress_s"]), "decompress": f(r["decompress_s"]), "decompress_out": f(r["decompress_out_s"]),
            "decompress_add": f(r["decompress_add_s"]), "wire": f(r["wire_encode_s"]), "wdec": f(r["wire_decode_s"]),
            "bytes": f"{r['encoded_bytes']:,}", "ratio": f"{r['ratio']:.1f}x", "err": f"{r['rel_error']:.4f}",
            "note": "; ".join(note),
        })
    return cols, rows


def full_table(records):
    cols = [("spec", "spec"), ("n", "n"), ("full", "gcomp full (out=)"), ("grace", "GRACE-style full"),
            ("ratio", "gcomp / GRACE"), ("full_add", "gcomp full (add)"), ("grace_add", "GRACE-style full (add)"),
            ("ratio_add", "gcomp / GRACE (add)"), ("bytes", "gcomp bytes"), ("gbytes", "GRACE bytes"),
            ("err", "rel. error gcomp / GRACE")]
    rows = []
    f = _common.fmt_time
    for r in records:
        if "skipped" in r:
            continue
        g = "grace_full_s" in r
        rows.append({
            "spec": r["spec_key"], "n": f"{r['n']:,}", "full": f(r["full_s"]), "full_add": f(r["full_add_s"]),
            "grace": f(r["grace_full_s"]) if g else "-", "grace_add": f(r["grace_full_add_s"]) if g else "-",
            "ratio": f"{r['full_vs_grace']:.2f}" if g else "-", "ratio_add": f"{r['full_add_vs_grace']:.2f}" if g else "-",
            "bytes": f"{r['encoded_bytes']:,}", "gbytes": f"{r['grace_bytes']:,}" if g else "-",
            "err": f"{r['rel_error']:.3f} / {r['grace_rel_error']:.3f}" if g else f"{r['rel_error']:.3f} / -",
        })
    return cols, rows


def fixed_table(fixed):
    names = {"compress": "compress", "wire_encode": "wire.encode", "wire_decode": "wire.decode",
             "decompress_out": "decompress out=", "decompress_add": "decompress_add", "full": "full (out=)",
             "full_add": "full (add)", "grace_full": "GRACE-style full"}
    cols = [("spec", "spec")] + [(s, names[s]) for s in FIT_STAGES] + [("b", "full: ns/element")]
    rows = []
    for fx in fixed:
        row = {"spec": fx["spec"]}
        for s in FIT_STAGES:
            row[s] = f"{fx[s]['a_s'] * 1e6:.1f} us" if s in fx else "-"
        row["b"] = f"{fx['full']['b_s_per_element'] * 1e9:.2f}" if "full" in fx else "-"
        rows.append(row)
    return cols, rows


def memory_table(memory):
    cols = [("spec", "spec"), ("n", "n"), ("gcomp", "gcomp extra x input"), ("gadd", "gcomp (add) extra x input"),
            ("gret", "gcomp kept after"), ("grace", "GRACE-style extra x input")]
    by = {}
    for m in memory:
        if "error" in m:
            continue
        by.setdefault((m["spec"], m["n"]), {})[m["impl"]] = m
    rows = []
    for (spec, n), d in by.items():
        gm, gr, ga = d.get("gcomp"), d.get("grace-style"), d.get("gcomp-add")
        rows.append({"spec": _short(spec), "n": f"{n:,}", "gcomp": f"{gm['extra_x_input']:.3f}" if gm else "-",
                     "gadd": f"{ga['extra_x_input']:.3f}" if ga else "-",
                     "gret": f"{gm['retained_bytes'] / 1e6:.1f} MB" if gm else "-",
                     "grace": f"{gr['extra_x_input']:.3f}" if gr else "-"})
    return cols, rows


def targets_table(targets):
    cols = [("target", "target"), ("spec", "spec"), ("value", "value"), ("goal", "goal"), ("result", "result")]
    rows = [{"target": t["target"], "spec": _short(t["spec"]), "value": f"{t['value']:.3g} {t['unit']}",
             "goal": t["goal"], "result": "PASS" if t["pass"] else "FAIL"} for t in targets]
    return cols, rows


def _short(spec):
    if spec.startswith("threshold:tau="):
        return "threshold:tau=<1%>"
    return spec


def main(argv=None):
    ap = _common.base_parser(__doc__.split("\n\n")[0].replace("\n", " "), repeat=10, budget=2.0, unit="compressor and size",
                             only_help="comma-separated compressor names to run (default: all)")
    for action in ap._actions:
        if action.dest == "sizes":
            action.default = DEFAULT_SIZES
            action.help = (f"comma-separated vector lengths (default {DEFAULT_SIZES}; add 100000000 for the memory "
                           "target: memory only, not timed)")
    ap.add_argument("--markdown", default="", help="also write the tables as Markdown to this path")
    ap.add_argument("--memory", default="auto",
                    help="sizes for peak memory (one child process per size): auto = the --sizes from 25M up, none = off, "
                         "or comma-separated sizes (default auto)")
    ap.add_argument("--no-grace", action="store_true", help="skip the GRACE-style torch rows (timing and memory)")
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = _common.parse_with_threads(ap, argv, _EARLY_THREADS)
    only = {s for s in args.only.split(",") if s}
    if args.memory_child:
        print(json.dumps({"memory": memory_child(args.memory_child, only, args.threads, grace=not args.no_grace)}))
        return 0
    sizes = _common.parse_sizes(args.sizes)
    if args.memory.strip().lower() == "auto":
        mem_sizes = [n for n in sizes if n >= 25_000_000]
    elif args.memory.strip().lower() in ("none", "off", ""):
        mem_sizes = []
    else:
        mem_sizes = _common.parse_sizes(args.memory)
    _common.apply_threads(args.threads)
    print(f"load average at start: {_common.LOADAVG_START}", flush=True)
    t_start = time.perf_counter()
    records = []
    bench_sizes = [n for n in sizes if n <= 25_000_000 or n not in mem_sizes]  # 100M: memory only
    for n in bench_sizes:
        x = gradient_like(n)
        print(f"n = {n:,}", flush=True)
        for spec in specs_for(x):
            if only and spec.split(":")[0] not in only:
                continue
            rec = bench_one(spec, x, max(args.repeat, 3), args.budget, grace=not args.no_grace)
            rec["spec_key"] = _short(spec)
            records.append(rec)
            if "skipped" in rec:
                print(f"  {_short(spec):<32} skipped: {rec['skipped']}", flush=True)
            else:
                vs = f"  x GRACE {rec['full_vs_grace']:.2f}" if "full_vs_grace" in rec else ""
                print(f"  {_short(spec):<32} compress {_common.fmt_time(rec['compress_s']):>10}  "
                      f"full {_common.fmt_time(rec['full_s']):>10}{vs}  ratio {rec['ratio']:7.1f}x  "
                      f"rel. error {rec['rel_error']:.4f}", flush=True)
        del x
    memory = []
    for n in mem_sizes:
        print(f"peak memory at n = {n:,} (child process)", flush=True)
        memory += run_memory(n, only, args.threads, grace=not args.no_grace)
        for m in memory:
            if "error" in m:
                print(f"  memory child failed: {m['error']}", flush=True)
    fixed = fixed_costs(records)
    targets = evaluate_targets(records, fixed, memory)
    head = _common.header(args.threads, sizes, repeat=args.repeat, budget_s=args.budget, density=DENSITY,
                          input=f"float32 z * exp(w), z, w standard normal, seed {SEED}", memory_sizes=mem_sizes,
                          min_sample_s=MIN_SAMPLE_S, fit_max_n=FIT_MAX_N, wall_s=round(time.perf_counter() - t_start, 1),
                          grace="bench/grace_style.py (GRACE's torch compressors, github.com/sands-lab/grace)")
    _common.write_json(args.json, head, records, fixed_cost=fixed, memory=memory, targets=targets)
    tables = [("Stages", table(records)), ("Full path against GRACE-style torch", full_table(records)),
              ("Fixed cost per call (a of t = a + b n over sizes <= 1e5)", fixed_table(fixed)),
              ("Peak memory of the full path decompress(decode(encode_array(compress(x))), out=)", memory_table(memory)),
              ("Targets", targets_table(targets))]
    md = []
    for title, (cols, rows) in tables:
        if not rows:
            continue
        print(f"\n{title}\n")
        print(_common.format_table(rows, cols))
        md.append(f"#### {title}\n\n" + _common.format_table(rows, cols, markdown=True) + "\n")
    print(f"\nload average at start {head['loadavg_start']}, at end {head['loadavg_end']}; {head['wall_s']} s")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(md))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
