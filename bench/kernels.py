"""Kernel speed against torch / numpy baselines measured in the same run.

Usage::

    python bench/kernels.py --json /tmp/gcomp-kernels.json [--sizes 1000000,25000000] [--threads 1] [--repeat 15]
                            [--scaling 1,2]

The thread count is pinned (``NUMBA_NUM_THREADS``, ``OMP_NUM_THREADS``, ...)
before numpy, numba and torch are imported, then ``numba.set_num_threads`` and
``torch.set_num_threads`` are applied; gcomp is imported from this checkout
(``_common.use_checkout``).  With ``--scaling A,B`` (default ``1,2``; ``""``
turns it off) ``NUMBA_NUM_THREADS`` is raised to the largest count so that the
*thread scaling* family can time every parallel kernel at A and at B Numba
threads in the same group (``numba.set_num_threads`` around each call; the
other families stay at ``--threads``) at n = 25M (or the largest size run), with
the read pass (one thread) in the group: same-run ratios, plus read passes.  A
parallel read pass in the same family shows the memory-bandwidth ceiling of any
parallel kernel.  ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` in this process,
so that GNU OpenMP's workers do not spin into the one-thread runs.

Input: float32 standard normal (seeded).  Every
kernel is timed in one group with its baselines and the read pass (warm-up,
then round-robin timed runs, median; see ``bench/_common.py``); records also
carry the median process CPU time (meaningful with one thread) and the ratio
to the read pass of the same group.  The performance targets are evaluated at
n = 25M (or the largest size run) and written under ``"targets"``.

Families and baselines:

* selection at 1% (``topk_exact``, ``topk_sampled``, ``threshold_select`` at the
  tau that keeps 1%, ``randomk``): ``torch.topk(x.abs(), k, sorted=False)`` and
  ``np.argpartition(np.abs(x), n - k)``, plus the *read pass* (a plain Numba sum
  over x: the memory-bandwidth floor), recorded as its own row;
* quantizer encoders and ``pack_bits``: a straightforward vectorized numpy
  implementation of the same quantizer (in this file, ``np_*``);
* decode paths (quantizer decoders, ``unpack_bits``, ``scatter_add`` of 1%,
  ``sparse_to_dense``, varint / bitmap index decoding): numpy equivalents.
  Decoders write into a preallocated output (the steady-state use, e.g.
  ``decompress_add``); the time with a freshly allocated output is recorded too.

``gbps`` is ``4 * n / median_s``: float32 input bytes per second for encoders
and selection, dense float32 output bytes per second for decode paths (for
``pack_bits`` / ``unpack_bits`` it is the float32 vector the n codes stand for).
"""

# ruff: noqa: E402  (the thread environment must be pinned before numpy, numba and torch are imported)

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common

_EARLY_THREADS = _common.early_threads_from_argv()


def _early_scaling(argv=None):
    """``--scaling A,B`` read before numba is imported: NUMBA_NUM_THREADS must cover the largest count."""
    argv = sys.argv[1:] if argv is None else argv
    text = "1,2"
    for i, arg in enumerate(argv):
        if arg == "--scaling" and i + 1 < len(argv):
            text = argv[i + 1]
        elif arg.startswith("--scaling="):
            text = arg.split("=", 1)[1]
    try:
        counts = sorted({max(1, int(v)) for v in text.split(",") if v.strip()})
    except ValueError:
        return []  # argparse reports it
    if counts and max(counts) > _EARLY_THREADS:
        os.environ["NUMBA_NUM_THREADS"] = str(max(counts))
    return counts


_EARLY_SCALING = _early_scaling()
# GNU OpenMP (Numba's omp layer) keeps its workers spinning for a few ms after each parallel
# kernel; the one-thread runs of the scaling family would share the machine with that spin.
# Passive workers sleep at once (a wake-up costs tens of microseconds per launch).  An explicit
# OMP_WAIT_POLICY in the environment wins; the header records the value used.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_common.use_checkout()  # measure this checkout's gcomp, not whatever an editable install points at

import math

import numba
import numpy as np
import torch
from gcomp.kernels import (
    bitpack,
    config,
    error_feedback,
    index_coding,
    natural,
    qsgd,
    randomk,
    sampled_topk,
    scatter,
    sign,
    terngrad,
    threshold,
    topk,
    uniform,
)

SEED = 12345
BUCKET = 512
DENSITY = 0.01
TARGET_N = 25_000_000

# ---------------------------------------------------------------------------
# the read pass: the memory-bandwidth floor
# ---------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, fastmath=True)
def read_pass(x):
    """One plain pass over x (a float32 sum; fastmath lets LLVM vectorize it)."""
    acc = np.float32(0.0)
    for i in range(x.shape[0]):
        acc += x[i]
    return acc


@numba.njit(cache=True, nogil=True, fastmath=True, parallel=True)
def read_pass_par(x):
    """The read pass on Numba's threads (per-unit sums, then their sum): the memory-bandwidth ceiling of a
    parallel kernel, for the thread-scaling family."""
    n = x.shape[0]
    unit = 1 << 16
    nu = (n + unit - 1) // unit
    part = np.zeros(nu, np.float32)
    for u in numba.prange(nu):
        xb = x[u * unit : min(n, (u + 1) * unit)]  # a slice: indices from 0 vectorize
        acc = np.float32(0.0)
        for i in range(xb.shape[0]):
            acc += xb[i]
        part[u] = acc
    return part.sum()


# ---------------------------------------------------------------------------
# numpy baselines: straightforward vectorized implementations of the same quantizers
# ---------------------------------------------------------------------------


def split_buckets(a, bucket):
    """(full buckets as a 2-D view, tail as a 1 x r view or None): no copies."""
    n = a.shape[0]
    m = n // bucket
    main = a[: m * bucket].reshape(m, bucket)
    tail = a[m * bucket :].reshape(1, -1) if n % bucket else None
    return main, tail


def _blocks(a, bucket):
    main, tail = split_buckets(a, bucket)
    return [main] if tail is None else [main, tail]


def np_pack(codes, bits):
    """Pack uint8 codes LSB-first at 1/2/4/8 bits (numpy)."""
    n = codes.shape[0]
    if bits == 8:
        return codes.copy()
    if bits == 1:
        return np.packbits(codes & 1, bitorder="little")
    per = 8 // bits
    if n % per:
        codes = np.concatenate([codes, np.zeros(per - n % per, np.uint8)])
    c = codes.reshape(-1, per)
    mask = np.uint8((1 << bits) - 1)
    out = c[:, 0] & mask
    for j in range(1, per):
        out |= (c[:, j] & mask) << np.uint8(j * bits)
    return out


def np_unpack(packed, bits, n):
    """Unpack n codes of 1/2/4/8 bits, LSB-first (numpy)."""
    if bits == 8:
        return packed[:n].copy()
    if bits == 1:
        return np.unpackbits(packed, count=n, bitorder="little")
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    out = np.empty((packed.shape[0], per), np.uint8)
    for j in range(per):
        out[:, j] = (packed >> np.uint8(j * bits)) & mask
    return out.reshape(-1)[:n]


def np_qsgd_encode(x, levels, bucket, rng):
    bits = qsgd.qsgd_code_bits(levels)
    codes, norms = [], []
    lv = np.float32(levels)
    for blk in _blocks(x, bucket):
        norm = np.sqrt(np.einsum("ij,ij->i", blk, blk))
        inv = np.divide(lv, norm, out=np.zeros_like(norm), where=norm > 0)
        lvl = np.abs(blk) * inv[:, None]
        fl = np.floor(lvl)
        lev = fl + (rng.random(blk.shape, dtype=np.float32) < lvl - fl)
        codes.append(np.where(blk >= 0, lv + lev, lv - lev).astype(np.uint8).reshape(-1))
        norms.append(norm)
    return np_pack(np.concatenate(codes) if len(codes) > 1 else codes[0], bits), np.concatenate(norms)


def np_qsgd_decode(packed, norms, levels, bucket, n, out):
    bits = qsgd.qsgd_code_bits(levels)
    vals = np_unpack(packed, bits, n).astype(np.float32)
    vals -= np.float32(levels)
    sc = norms / np.float32(levels)
    for j, (v, o) in enumerate(zip(_blocks(vals, bucket), _blocks(out, bucket), strict=True)):
        s = sc[: v.shape[0]] if j == 0 else sc[-1:]
        np.multiply(v, s[:, None], out=o)
    return out


def np_uniform_encode(x, bits, bucket, stochastic, rng):
    top = np.float32((1 << bits) - 1)
    codes, scales, offsets = [], [], []
    for blk in _blocks(x, bucket):
        lo = blk.min(axis=1)
        hi = blk.max(axis=1)
        scale = ((hi.astype(np.float64) - lo) / top).astype(np.float32)
        inv = np.divide(np.float32(1.0), scale, out=np.zeros_like(scale), where=scale > 0)
        t = (blk - lo[:, None]) * inv[:, None]
        if stochastic:
            fl = np.floor(t)
            q = fl + (rng.random(blk.shape, dtype=np.float32) < t - fl)
        else:
            q = np.rint(t)
        codes.append(np.clip(q, 0, top).astype(np.uint8).reshape(-1))
        scales.append(scale)
        offsets.append(lo)
    return np_pack(np.concatenate(codes) if len(codes) > 1 else codes[0], bits), np.concatenate(scales), np.concatenate(offsets)


def np_uniform_decode(packed, scales, offsets, bits, bucket, n, out):
    vals = np_unpack(packed, bits, n).astype(np.float32)
    for j, (v, o) in enumerate(zip(_blocks(vals, bucket), _blocks(out, bucket), strict=True)):
        s = scales[: v.shape[0]] if j == 0 else scales[-1:]
        f = offsets[: v.shape[0]] if j == 0 else offsets[-1:]
        np.multiply(v, s[:, None], out=o)
        o += f[:, None]
    return out


def np_sign_encode(x, bucket):
    scales = np.concatenate([np.abs(blk).mean(axis=1) for blk in _blocks(x, bucket)])
    return np.packbits(x >= 0, bitorder="little"), scales


def np_sign_decode(packed, scales, bucket, n, out):
    b = np.unpackbits(packed, count=n, bitorder="little")
    for j, (v, o) in enumerate(zip(_blocks(b, bucket), _blocks(out, bucket), strict=True)):
        s = scales[: v.shape[0]] if j == 0 else scales[-1:]
        np.copyto(o, np.where(v.astype(bool), s[:, None], -s[:, None]))
    return out


def np_terngrad_encode(x, bucket, rng):
    codes, scales = [], []
    for blk in _blocks(x, bucket):
        a = np.abs(blk)
        scale = a.max(axis=1)
        keep = rng.random(blk.shape, dtype=np.float32) * scale[:, None] < a
        codes.append(np.where(keep, np.where(blk >= 0, 2, 0), 1).astype(np.uint8).reshape(-1))
        scales.append(scale)
    return np_pack(np.concatenate(codes) if len(codes) > 1 else codes[0], 2), np.concatenate(scales)


def np_terngrad_decode(packed, scales, bucket, n, out):
    vals = np_unpack(packed, 2, n).astype(np.float32)
    vals -= np.float32(1.0)
    for j, (v, o) in enumerate(zip(_blocks(vals, bucket), _blocks(out, bucket), strict=True)):
        s = scales[: v.shape[0]] if j == 0 else scales[-1:]
        np.multiply(v, s[:, None], out=o)
    return out


def np_natural_encode(x, rng):
    b = x.view(np.uint32)
    e = (b >> np.uint32(23)) & np.uint32(0xFF)
    m = b & np.uint32(0x7FFFFF)
    up = rng.integers(0, 1 << 23, size=x.shape[0], dtype=np.uint32) < m
    exps = np.minimum(e + up, 255).astype(np.uint8)
    signs = np.packbits((b >> np.uint32(31)).astype(np.uint8), bitorder="little")
    return exps, signs


def np_natural_decode(exps, signs, n, out):
    s = np.unpackbits(signs, count=n, bitorder="little").astype(np.uint32)
    e = exps.astype(np.uint32)
    bits = out.view(np.uint32)
    np.bitwise_or(s << np.uint32(31), e << np.uint32(23), out=bits)
    bits |= np.where(e == 255, np.uint32(0x400000), np.uint32(0))
    return out


def np_varint_decode(buf, count):
    """Vectorized LEB128 gaps -> ascending indices (numpy)."""
    b = buf.astype(np.uint64)
    ends = np.flatnonzero(buf < 0x80)
    starts = np.empty(count, np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    pos = np.arange(buf.shape[0], dtype=np.int64) - np.repeat(starts, lengths)
    contrib = (b & np.uint64(0x7F)) << (np.uint64(7) * pos.astype(np.uint64))
    gaps = np.add.reduceat(contrib, starts)
    return np.cumsum(gaps.astype(np.int64) + 1) - 1


def np_varint_encode(idx):
    """Vectorized delta + LEB128 encoding of ascending indices (numpy)."""
    gaps = np.diff(idx, prepend=-1).astype(np.uint64) - np.uint64(1)
    sizes = np.ones(gaps.shape[0], np.int64)
    for j in range(1, 10):
        sizes += gaps >= np.uint64(1 << (7 * j))
    offsets = np.cumsum(sizes) - sizes
    out = np.empty(int(sizes.sum()), np.uint8)
    for j in range(int(sizes.max()) if sizes.size else 0):
        sel = sizes > j
        byte = (gaps[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
        byte |= np.where(sizes[sel] > j + 1, np.uint64(0x80), np.uint64(0))
        out[offsets[sel] + j] = byte.astype(np.uint8)
    return out


def np_bitmap_decode(buf, n):
    return np.flatnonzero(np.unpackbits(buf, count=n, bitorder="little"))


# ---------------------------------------------------------------------------
# sanity checks: the baselines compute the same thing as the kernels
# ---------------------------------------------------------------------------


def verify(n=100_003):
    """Cheap agreement checks between kernels and their numpy baselines (raises AssertionError)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(n, dtype=np.float32)
    for bits in (1, 2, 4, 8):
        codes = rng.integers(0, 256, n, dtype=np.uint8)
        p = bitpack.pack_bits(codes, bits)
        assert np.array_equal(p, np_pack(codes, bits)), f"pack_bits {bits}"
        assert np.array_equal(bitpack.unpack_bits(p, bits, n), np_unpack(p, bits, n)), f"unpack_bits {bits}"
    for bits in (8, 4, 2):
        p, s, o = uniform.uniform_encode(x, bits, BUCKET)
        q, s2, o2 = np_uniform_encode(x, bits, BUCKET, False, rng)
        assert np.allclose(s, s2) and np.array_equal(o, o2), f"uniform {bits} scales"
        mism = np.mean(bitpack.unpack_bits(p, bits, n) != np_unpack(q, bits, n))
        assert mism < 1e-3, f"uniform {bits} codes differ on {mism:.2%}"
        assert np.allclose(uniform.uniform_decode(p, s, o, bits, BUCKET, n),
                           np_uniform_decode(p, s, o, bits, BUCKET, n, np.empty(n, np.float32)), atol=1e-6)
    p, s = sign.sign_encode(x, BUCKET)
    q, s2 = np_sign_encode(x, BUCKET)
    assert np.array_equal(p, q) and np.allclose(s, s2, rtol=1e-5), "sign"
    assert np.array_equal(sign.sign_decode(p, s, BUCKET, n), np_sign_decode(p, s, BUCKET, n, np.empty(n, np.float32)))
    p, nm = qsgd.qsgd_encode(x, 4, BUCKET, 1)
    q, nm2 = np_qsgd_encode(x, 4, BUCKET, rng)
    assert np.allclose(nm, nm2, rtol=1e-5), "qsgd norms"
    assert np.allclose(qsgd.qsgd_decode(p, nm, 4, BUCKET, n), np_qsgd_decode(p, nm, 4, BUCKET, n, np.empty(n, np.float32)))
    p, sc = terngrad.terngrad_encode(x, BUCKET, 1)
    q, sc2 = np_terngrad_encode(x, BUCKET, rng)
    assert np.array_equal(sc, sc2), "terngrad scales"
    assert np.array_equal(terngrad.terngrad_decode(p, sc, BUCKET, n),
                          np_terngrad_decode(p, sc, BUCKET, n, np.empty(n, np.float32))), "terngrad decode"
    e, sg = natural.natural_encode(x, 1)
    e2, sg2 = np_natural_encode(x, rng)
    assert np.array_equal(sg, sg2) and np.mean(e != e2) < 0.6 and np.all(np.abs(e.astype(int) - e2) <= 1), "natural"
    assert np.array_equal(natural.natural_decode(e, sg, n).view(np.uint32),
                          np_natural_decode(e, sg, n, np.empty(n, np.float32)).view(np.uint32)), "natural decode"
    k = max(1, n // 100)
    idx, _ = topk.topk_exact(x, k)
    ref = np.sort(np.argpartition(np.abs(x), n - k)[n - k :])
    assert np.array_equal(idx, ref), "topk_exact"
    buf = index_coding.varint_encode(idx)
    assert np.array_equal(np_varint_encode(idx), buf), "varint encode"
    assert np.array_equal(np_varint_decode(buf, k), idx), "varint"
    bm = index_coding.bitmap_encode(idx, n)
    assert np.array_equal(np_bitmap_decode(bm, n), idx), "bitmap"


# ---------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------


class Bench:
    def __init__(self, repeat, budget):
        self.repeat = repeat
        self.budget = budget
        self.records = []
        #: thread-scaling records (:meth:`scaling`), kept apart from the per-kernel rows
        self.scaling_records = []
        #: the input vector of the current size (for the read pass timed in every group)
        self.x = None

    def group(self, fns, budget=None, min_repeat=3):
        """name -> (median wall s, min wall s, runs, median CPU s)."""
        cpu = {}
        samples = _common.measure_group(fns, self.repeat, self.budget if budget is None else budget, min_repeat, cpu=cpu)
        return {name: (_common.median(ts), min(ts), len(ts), _common.median(cpu[name])) for name, ts in samples.items()}

    def record(self, category, kernel, n, param, t, base_name=None, base=None, others=None, **extra):
        med, best, runs, cpu_med = t
        rec = {
            "category": category,
            "kernel": kernel,
            "n": n,
            "param": param,
            "median_s": med,
            "min_s": best,
            "runs": runs,
            "gbps": 4 * n / med / 1e9,
            "baseline": base_name,
            "baseline_median_s": None if base is None else base[0],
            "speedup": None if base is None else base[0] / med,
            "cpu_median_s": cpu_med,
            "cpu_gbps": 4 * n / cpu_med / 1e9 if cpu_med > 0 else None,
            "baseline_cpu_median_s": None if base is None else base[3],
            "cpu_speedup": None if base is None or cpu_med <= 0 else base[3] / cpu_med,
        }
        if others:
            rec["other_baselines"] = {name: {"median_s": o[0], "speedup": o[0] / med} for name, o in others.items()}
        rec.update(extra)
        self.records.append(rec)
        return rec

    def pair(self, category, kernel, n, param, fn, base_name, base_fn, others=None, alloc_fn=None):
        """Time a kernel with its baseline(s) in one group and record it."""
        fns = {"kernel": fn, "baseline": base_fn}
        x = self.x
        if x is not None and x.shape[0] == n:
            # the read pass in every group: a yardstick that shows how contended the machine was
            fns["read_pass"] = lambda: read_pass(x)
        if alloc_fn is not None:
            fns["alloc"] = alloc_fn
        for name, f in (others or {}).items():
            fns["other:" + name] = f
        t = self.group(fns)
        extra = {}
        if alloc_fn is not None:
            extra["alloc_median_s"] = t["alloc"][0]
            extra["alloc_gbps"] = 4 * n / t["alloc"][0] / 1e9
        if "read_pass" in t:
            extra["read_pass_ratio"] = t["kernel"][0] / t["read_pass"][0]
            extra["cpu_read_pass_ratio"] = t["kernel"][3] / t["read_pass"][3]
            extra["read_pass_gbps"] = 4 * n / t["read_pass"][0] / 1e9
        oth = {name: t["other:" + name] for name in (others or {})}
        rec = self.record(category, kernel, n, param, t["kernel"], base_name, t["baseline"], oth, **extra)
        if category == "encode":
            rec["_fn"] = fn  # encoders() times it again with the read pass alone (and removes this)
        ratio = rec.get("read_pass_ratio")
        print(f"  {kernel:<18} {param:<28} {_common.fmt_time(rec['median_s']):>10}  {rec['gbps']:6.2f} GB/s  "
              f"x{rec['speedup']:.1f} vs {base_name}" + (f"  ({ratio:.2f} x read pass)" if ratio else ""), flush=True)
        return rec

    # -- families ----------------------------------------------------------
    def selection(self, x):
        n = x.shape[0]
        k = max(1, math.ceil(DENSITY * n))
        tau = float(np.partition(np.abs(x), n - k)[n - k])
        xt = torch.from_numpy(x)
        rng = np.random.default_rng(SEED)
        kernels = {
            "topk_exact": lambda: topk.topk_exact(x, k),
            "topk_sampled": lambda: sampled_topk.topk_sampled(x, k, SEED),
            "threshold_select": lambda: threshold.threshold_select(x, tau),
            "randomk_indices": lambda: randomk.randomk_indices(n, k, SEED),
            "randomk_select": lambda: randomk.randomk_select(x, k, SEED),
        }
        # Group A: the kernels with the read pass; cheap, so many rounds: steady read-pass ratios.
        ta = self.group({"read_pass": lambda: read_pass(x), **kernels})
        # Group B: the kernels again with the slow baselines (torch.topk takes ~1 s at 25M), so each
        # speedup compares times taken under the same conditions; a larger budget buys more rounds.
        t = self.group({
            **kernels,
            "np.sum": lambda: np.sum(x),
            "read_pass": lambda: read_pass(x),
            "torch.topk": lambda: torch.topk(xt.abs(), k, sorted=False),
            "np.argpartition": lambda: np.argpartition(np.abs(x), n - k),
            "rng.choice": lambda: np.sort(rng.choice(n, k, replace=False)),
        }, budget=3 * self.budget, min_repeat=5)
        read = ta["read_pass"]
        self.record("read", "read_pass", n, "numba float32 sum", read, "np.sum(x)", t["np.sum"])
        torch_name = "torch.topk(|x|, k, sorted=False)"
        ap = "np.argpartition(|x|, n-k)"
        got_thr = threshold.threshold_count(x, tau)
        params = {
            "topk_exact": f"k={k} (1%)",
            "topk_sampled": f"k={k} (1%), sample 1%",
            "threshold_select": f"tau={tau:.4g} ({got_thr / n:.2%})",
            "randomk_indices": f"k={k} (1%)",
            "randomk_select": f"k={k} (1%), +gather",
        }
        for name, param in params.items():
            others = {ap: t["np.argpartition"]}
            if name.startswith("randomk"):
                others["sort(rng.choice(n, k))"] = t["rng.choice"]
            self.record("selection", name, n, param, t[name], torch_name, t["torch.topk"], others,
                        read_pass_ratio=ta[name][0] / read[0], read_pass_gbps=4 * n / read[0] / 1e9,
                        cpu_read_pass_ratio=ta[name][3] / read[3], read_group_median_s=ta[name][0])
        for rec in self.records[-6:]:
            ratio = rec.get("read_pass_ratio")
            print(f"  {rec['kernel']:<18} {rec['param']:<28} {_common.fmt_time(rec['median_s']):>10}  "
                  f"{rec['gbps']:6.2f} GB/s  x{rec['speedup']:.1f} vs {rec['baseline']}"
                  + (f"  ({ratio:.2f} x read pass)" if ratio else ""), flush=True)

    def encoders(self, x):
        n = x.shape[0]
        rng = np.random.default_rng(SEED)
        start = len(self.records)
        self._encoders(x, rng)
        # Read passes from a group of the encoders and the read pass alone (as selection's group A): next to a
        # numpy baseline that allocates and frees hundreds of MB, each kernel call would also pay page faults on
        # its freshly mapped outputs.
        recs = self.records[start:]
        fns = {"read_pass": lambda: read_pass(x)}
        for j, rec in enumerate(recs):
            fns[j] = rec.pop("_fn")
        t = self.group(fns)
        for j, rec in enumerate(recs):
            rec["read_pass_ratio"] = t[j][0] / t["read_pass"][0]
            rec["cpu_read_pass_ratio"] = t[j][3] / t["read_pass"][3]
            rec["read_pass_gbps"] = 4 * n / t["read_pass"][0] / 1e9
            rec["read_group_median_s"] = t[j][0]

    def _encoders(self, x, rng):
        n = x.shape[0]
        self.pair("encode", "qsgd_encode", n, f"levels=4 bucket={BUCKET} (4-bit)",
                  lambda: qsgd.qsgd_encode(x, 4, BUCKET, SEED), "numpy", lambda: np_qsgd_encode(x, 4, BUCKET, rng))
        for bits in (8, 4, 2):
            self.pair("encode", "uniform_encode", n, f"{bits}-bit maxmin nearest b={BUCKET}",
                      lambda bits=bits: uniform.uniform_encode(x, bits, BUCKET),
                      "numpy", lambda bits=bits: np_uniform_encode(x, bits, BUCKET, False, rng))
        self.pair("encode", "uniform_encode", n, f"4-bit maxmin stochastic b={BUCKET}",
                  lambda: uniform.uniform_encode(x, 4, BUCKET, rounding="stochastic", seed=SEED),
                  "numpy", lambda: np_uniform_encode(x, 4, BUCKET, True, rng))
        self.pair("encode", "sign_encode", n, f"bucket={BUCKET}",
                  lambda: sign.sign_encode(x, BUCKET), "numpy", lambda: np_sign_encode(x, BUCKET))
        self.pair("encode", "terngrad_encode", n, f"bucket={BUCKET}",
                  lambda: terngrad.terngrad_encode(x, BUCKET, SEED), "numpy", lambda: np_terngrad_encode(x, BUCKET, rng))
        self.pair("encode", "natural_encode", n, "8-bit exp + sign bit",
                  lambda: natural.natural_encode(x, SEED), "numpy", lambda: np_natural_encode(x, rng))
        for bits in (1, 2, 4, 8):
            codes = rng.integers(0, 1 << bits, n, dtype=np.uint8)
            self.pair("encode", "pack_bits", n, f"{bits}-bit from uint8 codes",
                      lambda bits=bits, codes=codes: bitpack.pack_bits(codes, bits),
                      "numpy", lambda bits=bits, codes=codes: np_pack(codes, bits))

    def decoders(self, x):
        n = x.shape[0]
        out = np.empty(n, np.float32)
        ref = np.empty(n, np.float32)
        p, nm = qsgd.qsgd_encode(x, 4, BUCKET, SEED)
        self.pair("decode", "qsgd_decode", n, f"levels=4 bucket={BUCKET} (4-bit)",
                  lambda: qsgd.qsgd_decode(p, nm, 4, BUCKET, n, out=out),
                  "numpy", lambda: np_qsgd_decode(p, nm, 4, BUCKET, n, ref),
                  alloc_fn=lambda: qsgd.qsgd_decode(p, nm, 4, BUCKET, n))
        for bits in (8, 4, 2):
            pu, su, ou = uniform.uniform_encode(x, bits, BUCKET)
            self.pair("decode", "uniform_decode", n, f"{bits}-bit b={BUCKET}",
                      lambda pu=pu, su=su, ou=ou, bits=bits: uniform.uniform_decode(pu, su, ou, bits, BUCKET, n, out=out),
                      "numpy", lambda pu=pu, su=su, ou=ou, bits=bits: np_uniform_decode(pu, su, ou, bits, BUCKET, n, ref),
                      alloc_fn=lambda pu=pu, su=su, ou=ou, bits=bits: uniform.uniform_decode(pu, su, ou, bits, BUCKET, n))
        ps, ss = sign.sign_encode(x, BUCKET)
        self.pair("decode", "sign_decode", n, f"bucket={BUCKET}",
                  lambda: sign.sign_decode(ps, ss, BUCKET, n, out=out),
                  "numpy", lambda: np_sign_decode(ps, ss, BUCKET, n, ref),
                  alloc_fn=lambda: sign.sign_decode(ps, ss, BUCKET, n))
        pt, st = terngrad.terngrad_encode(x, BUCKET, SEED)
        self.pair("decode", "terngrad_decode", n, f"bucket={BUCKET}",
                  lambda: terngrad.terngrad_decode(pt, st, BUCKET, n, out=out),
                  "numpy", lambda: np_terngrad_decode(pt, st, BUCKET, n, ref),
                  alloc_fn=lambda: terngrad.terngrad_decode(pt, st, BUCKET, n))
        ex, sg = natural.natural_encode(x, SEED)
        self.pair("decode", "natural_decode", n, "8-bit exp + sign bit",
                  lambda: natural.natural_decode(ex, sg, n, out=out),
                  "numpy", lambda: np_natural_decode(ex, sg, n, ref),
                  alloc_fn=lambda: natural.natural_decode(ex, sg, n))
        rng = np.random.default_rng(SEED + 1)
        codes_out = np.empty(n, np.uint8)
        for bits in (1, 2, 4, 8):
            packed = bitpack.pack_bits(rng.integers(0, 1 << bits, n, dtype=np.uint8), bits)
            self.pair("decode", "unpack_bits", n, f"{bits}-bit to uint8 codes",
                      lambda packed=packed, bits=bits: bitpack.unpack_bits(packed, bits, n, out=codes_out),
                      "numpy", lambda packed=packed, bits=bits: np_unpack(packed, bits, n),
                      alloc_fn=lambda packed=packed, bits=bits: bitpack.unpack_bits(packed, bits, n))
        k = max(1, math.ceil(DENSITY * n))
        idx, val = topk.topk_exact(x, k)
        dense = np.zeros(n, np.float32)
        dense_np = np.zeros(n, np.float32)
        dense_at = np.zeros(n, np.float32)
        self.pair("decode", "scatter_add", n, f"k={k} (1%) into dense",
                  lambda: scatter.scatter_add(idx, val, dense), "dense[idx] += v",
                  lambda: dense_np.__setitem__(idx, dense_np[idx] + val),
                  others={"np.add.at": lambda: np.add.at(dense_at, idx, val)})
        self.pair("decode", "sparse_to_dense", n, f"k={k} (1%)",
                  lambda: scatter.sparse_to_dense(idx, val, n, out=out), "out[:] = 0; out[idx] = v",
                  lambda: (ref.fill(0.0), ref.__setitem__(idx, val)),
                  others={"np.zeros; z[idx] = v": lambda: np.zeros(n, np.float32).__setitem__(idx, val)},
                  alloc_fn=lambda: scatter.sparse_to_dense(idx, val, n))
        vbuf = index_coding.varint_encode(idx)
        bbuf = index_coding.bitmap_encode(idx, n)
        idx_out = np.empty(k, np.int64)
        self.pair("decode", "varint_decode", n, f"k={k} (1%), {vbuf.shape[0]} bytes",
                  lambda: index_coding.varint_decode(vbuf, k, n, out=idx_out), "numpy (vectorized LEB128)",
                  lambda: np_varint_decode(vbuf, k), alloc_fn=lambda: index_coding.varint_decode(vbuf, k, n))
        self.pair("decode", "bitmap_decode", n, f"k={k} (1%), {bbuf.shape[0]} bytes",
                  lambda: index_coding.bitmap_decode(bbuf, n, k, out=idx_out), "flatnonzero(unpackbits)",
                  lambda: np_bitmap_decode(bbuf, n), alloc_fn=lambda: index_coding.bitmap_decode(bbuf, n, k))

    def misc(self, x):
        n = x.shape[0]
        k = max(1, math.ceil(DENSITY * n))
        idx, _ = topk.topk_exact(x, k)
        self.pair("misc", "count_nonfinite", n, "float32", lambda: scatter.count_nonfinite(x),
                  "count_nonzero(~isfinite)", lambda: np.count_nonzero(~np.isfinite(x)))
        self.pair("misc", "varint_encode", n, f"k={k} (1%)", lambda: index_coding.varint_encode(idx),
                  "numpy (vectorized LEB128)", lambda: np_varint_encode(idx))
        self.pair("misc", "bitmap_encode", n, f"k={k} (1%)", lambda: index_coding.bitmap_encode(idx, n),
                  "packbits(zeros; z[idx]=1)", lambda: _np_bitmap_encode(idx, n))

    def scaling(self, x, counts):
        """Every parallel kernel at ``counts`` Numba threads (e.g. 1 and 2), timed in one group with the read pass.

        ``numba.set_num_threads`` is applied around each call (the count is per
        Python thread; this is the only thread calling).  Records go to
        ``self.scaling_records``: medians per count, their ratio (lowest count's
        time over each other count's) and the read passes of each (read pass:
        one thread, same group).
        """
        n = x.shape[0]
        k = max(1, math.ceil(DENSITY * n))
        tau = float(np.partition(np.abs(x), n - k)[n - k])
        residual = np.zeros(n, np.float32)
        res_q = np.zeros(n, np.float32)
        out = np.empty(n, np.float32)
        pq, nq = qsgd.qsgd_encode(x, 4, BUCKET, SEED)
        pu, su, ou = uniform.uniform_encode(x, 4, BUCKET)
        ps, ss = sign.sign_encode(x, BUCKET)
        pt, st = terngrad.terngrad_encode(x, BUCKET, SEED)
        ex, sg = natural.natural_encode(x, SEED)
        codes = np.random.default_rng(SEED).integers(0, 4, n, dtype=np.uint8)
        packed = bitpack.pack_bits(codes, 2)
        codes_out = np.empty(n, np.uint8)

        def ef_topk():
            # the residual carries over from call to call, as in training (the same for both thread counts)
            return error_feedback.ef_topk(x, residual, k)

        kernels = [
            ("read", "read_pass", "parallel float32 sum: the memory-bandwidth ceiling", lambda: read_pass_par(x)),
            ("selection", "topk_exact", f"k={k} (1%)", lambda: topk.topk_exact(x, k)),
            ("selection", "topk_sampled", f"k={k} (1%), sample 1%", lambda: sampled_topk.topk_sampled(x, k, SEED)),
            ("selection", "threshold_select", "1%", lambda: threshold.threshold_select(x, tau)),
            ("selection", "ef_topk", f"k={k} (1%), fused residual += x", ef_topk),
            ("encode", "qsgd_encode", f"levels=4 bucket={BUCKET} (4-bit)", lambda: qsgd.qsgd_encode(x, 4, BUCKET, SEED)),
            ("encode", "qsgd_encode", f"levels=4 bucket={BUCKET} (4-bit), EF",
             lambda: qsgd.qsgd_encode(x, 4, BUCKET, SEED, residual=res_q)),
            ("encode", "uniform_encode", f"8-bit maxmin nearest b={BUCKET}", lambda: uniform.uniform_encode(x, 8, BUCKET)),
            ("encode", "uniform_encode", f"4-bit maxmin nearest b={BUCKET}", lambda: uniform.uniform_encode(x, 4, BUCKET)),
            ("encode", "uniform_encode", f"2-bit maxmin nearest b={BUCKET}", lambda: uniform.uniform_encode(x, 2, BUCKET)),
            ("encode", "uniform_encode", f"4-bit maxmin stochastic b={BUCKET}",
             lambda: uniform.uniform_encode(x, 4, BUCKET, rounding="stochastic", seed=SEED)),
            ("encode", "sign_encode", f"bucket={BUCKET}", lambda: sign.sign_encode(x, BUCKET)),
            ("encode", "terngrad_encode", f"bucket={BUCKET}", lambda: terngrad.terngrad_encode(x, BUCKET, SEED)),
            ("encode", "natural_encode", "8-bit exp + sign bit", lambda: natural.natural_encode(x, SEED)),
            ("encode", "pack_bits", "2-bit from uint8 codes", lambda: bitpack.pack_bits(codes, 2)),
            ("decode", "qsgd_decode", f"levels=4 bucket={BUCKET} (4-bit)", lambda: qsgd.qsgd_decode(pq, nq, 4, BUCKET, n, out=out)),
            ("decode", "uniform_decode", f"4-bit b={BUCKET}", lambda: uniform.uniform_decode(pu, su, ou, 4, BUCKET, n, out=out)),
            ("decode", "sign_decode", f"bucket={BUCKET}", lambda: sign.sign_decode(ps, ss, BUCKET, n, out=out)),
            ("decode", "terngrad_decode", f"bucket={BUCKET}", lambda: terngrad.terngrad_decode(pt, st, BUCKET, n, out=out)),
            ("decode", "natural_decode", "8-bit exp + sign bit", lambda: natural.natural_decode(ex, sg, n, out=out)),
            ("decode", "unpack_bits", "2-bit to uint8 codes", lambda: bitpack.unpack_bits(packed, 2, n, out=codes_out)),
        ]
        base = numba.get_num_threads()

        def at(threads, fn):
            def call():
                numba.set_num_threads(threads)
                try:
                    return fn()
                finally:
                    numba.set_num_threads(base)
            return call

        for category, name, param, fn in kernels:
            fns = {f"t{c}": at(c, fn) for c in counts}
            fns["read_pass"] = at(1, lambda: read_pass(x))
            t = self.group(fns)
            read = t["read_pass"]
            lo = counts[0]
            rec = {"category": category, "kernel": name, "param": param, "n": n, "counts": list(counts),
                   "read_pass_median_s": read[0], "read_pass_gbps": 4 * n / read[0] / 1e9,
                   "threading_layer": _threading_layer()}
            for c in counts:
                rec[f"median_s_{c}"] = t[f"t{c}"][0]
                rec[f"runs_{c}"] = t[f"t{c}"][2]
                rec[f"cpu_median_s_{c}"] = t[f"t{c}"][3]
                rec[f"read_passes_{c}"] = t[f"t{c}"][0] / read[0]
                rec[f"speedup_{c}"] = t[f"t{lo}"][0] / t[f"t{c}"][0]
            self.scaling_records.append(rec)
            print(f"  {name:<18} {param:<36} " + "  ".join(
                f"{c} thr {_common.fmt_time(rec[f'median_s_{c}']):>9} ({rec[f'read_passes_{c}']:.2f} rp)" for c in counts)
                + "  " + "  ".join(f"x{rec[f'speedup_{c}']:.2f} at {c}" for c in counts[1:]), flush=True)


def _np_bitmap_encode(idx, n):
    z = np.zeros(n, np.uint8)
    z[idx] = 1
    return np.packbits(z, bitorder="little")


# ---------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------


#: the 2-thread speed-up goal at n = 25M, and the kernels it applies to (top-k, sampled top-k, quantizer encoders)
SCALING_GOAL = 1.7
SCALING_KERNELS = ("topk_exact", "topk_sampled", "qsgd_encode", "uniform_encode", "sign_encode", "terngrad_encode",
                   "natural_encode")


def evaluate_targets(records, sizes, scaling_records=()):
    """Pass/fail of the performance targets at n = 25M (or the largest size run)."""
    n = TARGET_N if TARGET_N in sizes else max(sizes)
    at = [r for r in records if r["n"] == n]
    out = []

    def add(target, kernel, param, value, goal, ok, unit):
        rec = next(r for r in at if r["kernel"] == kernel and r["param"] == param)
        cpu_value = {"x speedup": rec.get("cpu_speedup"), "x read pass time": rec.get("cpu_read_pass_ratio"),
                     "GB/s": rec.get("cpu_gbps")}[unit]
        cpu_ok = None if cpu_value is None else (cpu_value <= goal if unit == "x read pass time" else cpu_value >= goal)
        out.append({"target": target, "n": n, "kernel": kernel, "param": param, "value": value, "goal": goal,
                    "unit": unit, "pass": bool(ok), "cpu_value": cpu_value, "cpu_pass": cpu_ok,
                    "read_pass_gbps": rec.get("read_pass_gbps")})

    for r in at:
        if r["kernel"] == "topk_exact":
            add("exact top-k 1% >= 19x faster than torch.topk (one thread)", r["kernel"], r["param"], r["speedup"], 19.0,
                r["speedup"] >= 19.0, "x speedup")
            add("exact top-k 1% within 3.5 read passes (one thread)", r["kernel"], r["param"], r["read_pass_ratio"], 3.5,
                r["read_pass_ratio"] <= 3.5, "x read pass time")
        if r["kernel"] == "topk_sampled":
            add("sampled top-k 1% within 3x of the read pass", r["kernel"], r["param"], r["read_pass_ratio"], 3.0,
                r["read_pass_ratio"] <= 3.0, "x read pass time")
    for r in at:
        if r["kernel"] == "qsgd_encode" or (r["kernel"] == "uniform_encode" and "stochastic" in r["param"]):
            add("QSGD and stochastic uniform within 3 read passes (one thread)", r["kernel"], r["param"],
                r["read_pass_ratio"], 3.0, r["read_pass_ratio"] <= 3.0, "x read pass time")
    for r in at:
        if r["category"] == "encode":
            add("every quantizer (bit packing included) >= 2 GB/s", r["kernel"], r["param"], r["gbps"], 2.0,
                r["gbps"] >= 2.0, "GB/s")
    for r in at:
        if r["category"] == "decode":
            add("decode paths >= 2 GB/s of dense output", r["kernel"], r["param"], r["gbps"], 2.0, r["gbps"] >= 2.0,
                "GB/s")
    for r in scaling_records:
        counts = r["counts"]
        if r["kernel"] not in SCALING_KERNELS or len(counts) < 2 or r["n"] != n:
            continue
        hi = counts[-1]
        value = r[f"speedup_{hi}"]
        cpu_ratio = r[f"cpu_median_s_{hi}"] / r[f"cpu_median_s_{counts[0]}"] if r[f"cpu_median_s_{counts[0]}"] else None
        out.append({"target": f"{hi} threads >= {SCALING_GOAL}x {counts[0]} thread (same group)", "n": n,
                    "kernel": r["kernel"], "param": r["param"], "value": value, "goal": SCALING_GOAL,
                    "unit": f"x at {hi} threads", "pass": bool(value >= SCALING_GOAL),
                    "cpu_value": None, "cpu_pass": None, "read_pass_gbps": r["read_pass_gbps"],
                    "cpu_time_ratio": cpu_ratio})
    return out


#: columns of the kernel table: (row key, title)
TABLE_COLUMNS = [("kernel", "kernel"), ("param", "param"), ("n", "n"), ("time", "median"), ("gbps_s", "GB/s"),
                 ("cpu_gbps_s", "GB/s by CPU time"), ("xread", "x read pass"), ("baseline", "baseline"), ("base_time", "baseline median"),
                 ("speedup_s", "speedup"), ("note", "note")]

#: columns of the target table
TARGET_COLUMNS = [("target", "target"), ("kernel", "kernel"), ("param", "param"), ("value_s", "value"), ("goal_s", "goal"),
                  ("result", "result"), ("cpu_s", "by CPU time"), ("read_s", "read pass GB/s (same group)")]


def scaling_columns(counts):
    cols = [("kernel", "kernel"), ("param", "param"), ("n", "n")]
    for c in counts:
        cols += [(f"t{c}", f"{c} thread{'s' if c > 1 else ''}"), (f"rp{c}", f"read passes ({c})")]
    cols += [(f"x{c}", f"x at {c}") for c in counts[1:]]
    cols += [("read", "read pass GB/s (1 thread, same group)")]
    return cols


def scaling_rows(records):
    rows = []
    for r in records:
        row = {"kernel": r["kernel"], "param": r["param"], "n": f"{r['n']:,}", "read": f"{r['read_pass_gbps']:.1f}"}
        for c in r["counts"]:
            row[f"t{c}"] = _common.fmt_time(r[f"median_s_{c}"])
            row[f"rp{c}"] = f"{r[f'read_passes_{c}']:.2f}"
            row[f"x{c}"] = f"{r[f'speedup_{c}']:.2f}x"
        rows.append(row)
    return rows


def load_line():
    start, end = _common.LOADAVG_START, _common._loadavg()
    return (f"load average (1, 5, 15 min): {start} at the start, {end} at the end, on {os.cpu_count()} logical CPUs; "
            "speed-ups need a quiet machine (1-minute load well below the CPU count)")


def ceiling_line(scaling_records):
    """The parallel read pass's speed-up: what a kernel bound by memory bandwidth can gain from more threads."""
    rec = next((r for r in scaling_records if r["kernel"] == "read_pass"), None)
    if rec is None or len(rec["counts"]) < 2:
        return ""
    lo, hi = rec["counts"][0], rec["counts"][-1]
    gbps_lo = 4 * rec["n"] / rec[f"median_s_{lo}"] / 1e9
    gbps_hi = 4 * rec["n"] / rec[f"median_s_{hi}"] / 1e9
    return (f"memory-bandwidth ceiling: the read pass on {hi} threads is x{rec[f'speedup_{hi}']:.2f} the one on {lo} "
            f"here ({gbps_hi:.1f} against {gbps_lo:.1f} GB/s); kernels near one read pass cannot scale further than that")


def print_tables(records, targets, scaling_records=()):
    cols = TABLE_COLUMNS
    rows = table_rows(records)
    print()
    print(_common.format_table(rows, cols))
    if scaling_records:
        print()
        print(_common.format_table(scaling_rows(scaling_records), scaling_columns(scaling_records[0]["counts"])))
    print()
    tcols = TARGET_COLUMNS
    print(_common.format_table(target_rows(targets), tcols))
    print()
    if ceiling_line(scaling_records):
        print(ceiling_line(scaling_records))
    print(load_line())


def write_markdown(path, records, targets, scaling_records=()):
    """The kernel table (one per size), the thread-scaling table and the target table, as Markdown."""
    parts = []
    for n in sorted({r["n"] for r in records}):
        parts.append(f"#### n = {n:,}\n")
        parts.append(_common.format_table(table_rows([r for r in records if r["n"] == n]), TABLE_COLUMNS, markdown=True))
        parts.append("")
    if scaling_records:
        parts.append("#### Thread scaling\n")
        parts.append(_common.format_table(scaling_rows(scaling_records), scaling_columns(scaling_records[0]["counts"]),
                                          markdown=True))
        parts.append("")
    parts.append("#### Targets\n")
    parts.append(_common.format_table(target_rows(targets), TARGET_COLUMNS, markdown=True))
    parts.append("")
    if ceiling_line(scaling_records):
        parts.append(ceiling_line(scaling_records))
        parts.append("")
    parts.append(load_line())
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def table_rows(records):
    rows = []
    for r in records:
        note = []
        for name, o in (r.get("other_baselines") or {}).items():
            note.append(f"x{o['speedup']:.1f} vs {name}")
        if r.get("alloc_median_s") is not None:
            note.append(f"alloc out: {r['alloc_gbps']:.2f} GB/s")
        rows.append({
            "kernel": r["kernel"], "param": r["param"], "n": f"{r['n']:,}",
            "time": _common.fmt_time(r["median_s"]), "gbps_s": f"{r['gbps']:.2f}",
            "cpu_gbps_s": f"{r['cpu_gbps']:.2f}" if r.get("cpu_gbps") else "-",
            "xread": f"{r['read_pass_ratio']:.2f}" if r.get("read_pass_ratio") is not None else "-",
            "baseline": r["baseline"] or "-",
            "base_time": _common.fmt_time(r["baseline_median_s"]) if r["baseline_median_s"] is not None else "-",
            "speedup_s": f"{r['speedup']:.1f}x" if r["speedup"] is not None and r["baseline"] != "-" else "-",
            "note": "; ".join(note),
        })
    return rows


def target_rows(targets):
    rows = []
    for t in targets:
        rows.append({
            "target": t["target"], "kernel": t["kernel"], "param": t["param"],
            "value_s": f"{t['value']:.2f} {t['unit']}", "goal_s": f"{'<=' if 'read pass' in t['unit'] else '>='} {t['goal']:g}",
            "result": "PASS" if t["pass"] else "FAIL",
            "read_s": f"{t['read_pass_gbps']:.1f}" if t.get("read_pass_gbps") else "-",
            "cpu_s": (f"CPU time x{t['cpu_time_ratio']:.2f}" if t.get("cpu_time_ratio") else "-")
            if t.get("cpu_value") is None else f"{t['cpu_value']:.2f} {'PASS' if t['cpu_pass'] else 'FAIL'}",
        })
    return rows


def main(argv=None):
    ap = _common.base_parser(__doc__.split("\n\n")[0], repeat=15, budget=3.0, unit="group",
                             only_help="comma-separated families to run: selection,encode,decode,misc,scaling")
    ap.add_argument("--no-verify", action="store_true", help="skip the kernel-vs-baseline agreement checks")
    ap.add_argument("--markdown", default="", help="also write the tables as Markdown to this path")
    ap.add_argument("--scaling", default="1,2",
                    help="Numba thread counts for the thread-scaling family at n = 25M (or the largest size), "
                         "timed in the same groups (default 1,2; empty: off)")
    args = _common.parse_with_threads(ap, argv, _EARLY_THREADS)
    sizes = _common.parse_sizes(args.sizes)
    counts = sorted({max(1, int(v)) for v in args.scaling.split(",") if v.strip()})
    if counts != _EARLY_SCALING:
        ap.error("--scaling must be given on the command line (it is read before numba is imported)")
    _common.apply_threads(args.threads)
    if not args.no_verify:
        verify()
        print("baseline agreement checks: ok", flush=True)
    families = [f for f in args.only.split(",") if f] or ["selection", "encode", "decode", "misc", "scaling"]
    scaling_n = TARGET_N if TARGET_N in sizes else max(sizes)
    bench = Bench(max(args.repeat, 3), args.budget)
    for n in sizes:
        x = np.random.default_rng(SEED).standard_normal(n, dtype=np.float32)
        print(f"n = {n:,}", flush=True)
        bench.x = x
        if "selection" in families:
            bench.selection(x)
        if "encode" in families:
            bench.encoders(x)
        if "decode" in families:
            bench.decoders(x)
        if "misc" in families:
            bench.misc(x)
        if "scaling" in families and len(counts) > 1 and n == scaling_n:
            print(f"thread scaling at n = {n:,}: Numba threads {counts} (layer {_threading_layer()})", flush=True)
            bench.scaling(x, counts)
        bench.x = None
        del x
    targets = evaluate_targets(bench.records, sizes, bench.scaling_records)
    head = _common.header(args.threads, sizes, repeat=args.repeat, budget_s=args.budget, bucket_size=BUCKET,
                          density=DENSITY, input="float32 standard normal, seed 12345",
                          numba_threading_layer=_threading_layer(), numba_max_threads=numba.config.NUMBA_NUM_THREADS,
                          omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                          scaling_threads=counts, parallel_min=config.PARALLEL_MIN, par_chunk=config.PAR_CHUNK)
    _common.write_json(args.json, head, bench.records, targets=targets, scaling=bench.scaling_records)
    print_tables(bench.records, targets, bench.scaling_records)
    if args.markdown:
        write_markdown(args.markdown, bench.records, targets, bench.scaling_records)
    print(f"\nwrote {args.json}")
    return 0


def _threading_layer():
    try:
        return numba.threading_layer()
    except ValueError:
        return f"{numba.config.THREADING_LAYER} (not initialised)"


if __name__ == "__main__":
    sys.exit(main())
