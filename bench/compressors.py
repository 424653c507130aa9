"""Every registered compressor on a gradient-like vector: speed, bytes on the wire, error.

Usage::

    python bench/compressors.py --json /tmp/compressors.json [--sizes 1000000,25000000] [--threads 1]

For each compressor in ``gcomp.list_compressors()`` (parameters below; sparse
ones at 1% density, ``threshold`` with the tau that keeps 1% of this input):

* ``compress`` / ``decompress`` / ``decompress_add`` median times (warm-up, then
  round-robin timed runs; see ``bench/_common.py``), and ``wire.encode`` time;
* encoded bytes ``len(gcomp.wire.encode(c))`` (88-byte header included) and the
  compression ratio ``4 * n / bytes``;
* relative error ``||C(x) - x|| / ||x||`` (float64);
* for ``dgc``, recall against exact top-k at the same k:
  ``|dgc indices & topk indices| / k``.

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

import math

import numpy as np
from gcomp.kernels.topk import topk_exact

import gcomp
from gcomp import wire
from gcomp.errors import ConfigError

SEED = 2024
DENSITY = 0.01

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


def bench_one(spec, x, repeat, budget):
    n = x.shape[0]
    try:
        comp = gcomp.compressor(spec)
    except ConfigError as exc:
        return {"compressor": spec.split(":")[0], "spec": spec, "n": n, "skipped": str(exc)}
    c = comp.compress(x, step=0, key=0)
    dense = comp.decompress(c)
    buf = wire.encode(c)
    acc = np.zeros(n, np.float32)
    fns = {
        "compress": lambda: comp.compress(x, step=0, key=0),
        "decompress": lambda: comp.decompress(c),
        "decompress_add": lambda: comp.decompress_add(c, acc),
        "wire_encode": lambda: wire.encode(c),
    }
    samples = _common.measure_group(fns, repeat, budget)
    t = {name: _common.median(ts) for name, ts in samples.items()}
    rec = {
        "compressor": comp.name,
        "spec": spec,
        "config": comp.get_config(),
        "n": n,
        "compress_s": t["compress"],
        "decompress_s": t["decompress"],
        "decompress_add_s": t["decompress_add"],
        "wire_encode_s": t["wire_encode"],
        "runs": len(samples["compress"]),
        "compress_gbps": 4 * n / t["compress"] / 1e9,
        "decompress_gbps": 4 * n / t["decompress"] / 1e9,
        "encoded_bytes": len(buf),
        "ratio": 4 * n / len(buf),
        "bits_per_element": 8 * len(buf) / n,
        "rel_error": rel_error(x, dense),
        "count": int(c.count),
        "density": c.count / n if c.count else None,
    }
    if comp.name == "dgc":
        k = comp.k(n)
        ref, _ = topk_exact(x, k)
        got = c.arrays["indices"]
        rec["k"] = k
        rec["recall"] = float(np.intersect1d(got, ref, assume_unique=True).shape[0] / k)
    return rec


def table(records):
    cols = [("compressor", "compressor"), ("spec", "spec"), ("n", "n"), ("compress", "compress"),
            ("decompress", "decompress"), ("decompress_add", "decompress_add"), ("wire", "wire.encode"),
            ("bytes", "encoded bytes"), ("ratio", "ratio"), ("err", "rel. error"), ("note", "note")]
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
        rows.append({
            "compressor": r["compressor"], "spec": _short(r["spec"]), "n": f"{r['n']:,}",
            "compress": _common.fmt_time(r["compress_s"]), "decompress": _common.fmt_time(r["decompress_s"]),
            "decompress_add": _common.fmt_time(r["decompress_add_s"]), "wire": _common.fmt_time(r["wire_encode_s"]),
            "bytes": f"{r['encoded_bytes']:,}", "ratio": f"{r['ratio']:.1f}x", "err": f"{r['rel_error']:.4f}",
            "note": "; ".join(note),
        })
    return cols, rows


def _short(spec):
    if spec.startswith("threshold:tau="):
        return f"threshold:tau={float(spec.split('=', 1)[1]):.4g}"
    return spec


def main(argv=None):
    ap = _common.base_parser(__doc__.split("\n\n")[0], repeat=10, budget=2.0, unit="compressor",
                             only_help="comma-separated compressor names to run (default: all)")
    ap.add_argument("--markdown", default="", help="also write the table as Markdown to this path")
    args = _common.parse_with_threads(ap, argv, _EARLY_THREADS)
    sizes = _common.parse_sizes(args.sizes)
    _common.apply_threads(args.threads)
    only = {s for s in args.only.split(",") if s}
    records = []
    for n in sizes:
        x = gradient_like(n)
        print(f"n = {n:,}", flush=True)
        for spec in specs_for(x):
            if only and spec.split(":")[0] not in only:
                continue
            rec = bench_one(spec, x, max(args.repeat, 3), args.budget)
            records.append(rec)
            if "skipped" in rec:
                print(f"  {_short(spec):<32} skipped: {rec['skipped']}", flush=True)
            else:
                print(f"  {_short(spec):<32} compress {_common.fmt_time(rec['compress_s']):>10}  "
                      f"decompress {_common.fmt_time(rec['decompress_s']):>10}  ratio {rec['ratio']:7.1f}x  "
                      f"rel. error {rec['rel_error']:.4f}", flush=True)
        del x
    head = _common.header(args.threads, sizes, repeat=args.repeat, budget_s=args.budget, density=DENSITY,
                          input=f"float32 z * exp(w), z, w standard normal, seed {SEED}")
    _common.write_json(args.json, head, records)
    cols, rows = table(records)
    print()
    print(_common.format_table(rows, cols))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(_common.format_table(rows, cols, markdown=True) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
