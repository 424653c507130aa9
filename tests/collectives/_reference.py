"""Independent numpy references for the collective algorithms.

Everything here is computed from all ranks' inputs in one thread, from the
definitions in the algorithms' docstrings, using only the compressors'
public API (``compress``, ``decompress``, ``combine``, ``summands``,
``with_sums``, ``phases``), never ``gcomp.collectives``.  Each rank gets a
fresh compressor of the same configuration, as each rank's engine does.
"""

import numpy as np

import gcomp
from gcomp.compressors import REGISTRY
from gcomp.transports import run_local

#: world sizes every algorithm is checked at (odd sizes matter: MEAN rounding)
SIZES = (2, 3, 4)  # P = 1 is the identity for every algorithm: tests/collectives/test_engine.py
#: vector sizes (numel) every algorithm is checked on
NUMELS = (0, 1, 7, 1000)
#: configurations that make sense for the test vectors (standard normal entries)
CONFIGS = {
    "threshold": {"tau": 1.5},
    "dgc": {"ratio": 0.01},
    "topk": {"ratio": 0.05},
    "randomk": {"ratio": 0.1},
    "qsgd": {"bucket_size": 128},
    "uniform": {"bits": 4, "bucket_size": 64, "rounding": "stochastic"},
    "terngrad": {"bucket_size": 64},
    "sign": {"bucket_size": 64},
    "powersgd": {"rank": 2},
}
#: a key per vector size: ints and strings (the chunk and server keys derive from them)
KEYS = {0: "empty", 1: 1, 7: "conv.bias", 1000: 3, 5000: "fc.weight"}


def builtin_names():
    """gcomp's own compressors (other test modules may register third-party ones)."""
    return sorted(name for name, cls in REGISTRY.items() if cls.__module__.startswith("gcomp.compressors."))


def linear_names():
    return [name for name in builtin_names() if REGISTRY[name].linear]


def fresh(name):
    """A new compressor of ``name`` in the test configuration (one per rank: PowerSGD keeps state)."""
    return gcomp.compressor(name, **CONFIGS.get(name, {}))


def inputs(size, numel, steps=1, seed=0, scale=1.0):
    """``xs[step][rank]``: deterministic float32 standard-normal vectors."""
    return [
        [(np.random.default_rng([seed, numel, step, rank]).standard_normal(numel) * scale).astype(np.float32)
         for rank in range(size)]
        for step in range(steps)
    ]


def run_engines(size, make, xs, key=0, average=True):
    """Run ``make(transport)`` on every rank, then one call per step of ``xs``; returns ``(engines, outs[rank][step])``."""

    def fn(t):
        engine = make(t)
        return engine, [engine(steps[t.rank], key=key, average=average) for steps in xs]

    results = run_local(size, fn, timeout=30.0)
    return [r[0] for r in results], [r[1] for r in results]


def collect_errors(size, fn, *args, timeout=20.0):
    """Run ``fn`` on every rank; returns each rank's exception (or its result if it raised none).

    A rank's exception does not abort the others here: a rank left waiting in a collective shows up as a
    ``threading.BrokenBarrierError`` after ``timeout`` seconds.
    """

    def wrapped(t, *a):
        try:
            return fn(t, *a)
        except Exception as exc:  # noqa: BLE001 - the test inspects every rank's exception
            return exc

    return run_local(size, wrapped, *args, timeout=timeout)


# ---------------------------------------------------------------------------
# assertions
# ---------------------------------------------------------------------------
def assert_same_bits(arrays):
    """Every rank's result has exactly rank 0's bits."""
    first = np.asarray(arrays[0])
    for rank, a in enumerate(arrays[1:], 1):
        a = np.asarray(a)
        assert a.dtype == first.dtype and a.shape == first.shape, (rank, a.dtype, a.shape, first.dtype, first.shape)
        assert a.tobytes() == first.tobytes(), f"rank {rank} differs from rank 0 in {np.sum(a != first)} entries"


def assert_equal(out, ref, what=""):
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.dtype == np.float32, out.dtype
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if not np.array_equal(out, ref, equal_nan=True):
        bad = np.flatnonzero(~((out == ref) | (np.isnan(out) & np.isnan(ref))))
        raise AssertionError(f"{what}: {bad.size} of {out.size} entries differ from the reference, first at {bad[:5]}: "
                             f"{out[bad[:5]]} vs {ref[bad[:5]]} (max abs diff {np.max(np.abs(out - ref)):.3g})")


# ---------------------------------------------------------------------------
# error feedback, from its definition
# ---------------------------------------------------------------------------
class Memory:
    """One rank's memory: ``"none"`` compresses x; ``"residual"`` sends C(x + e) and keeps e <- x + e - D(C(x + e))."""

    def __init__(self, comp, kind):
        assert kind in ("none", "residual")
        self.comp, self.kind = comp, kind
        self.residual = {}

    def compress(self, x, key, step):
        if self.kind == "none":
            return self.comp.compress(x, step=step, key=key)
        e = self.residual.get(key)
        v = x + (np.zeros_like(x) if e is None else e)
        c = self.comp.compress(v, step=step, key=key)
        self.residual[key] = v - np.asarray(self.comp.decompress(c), np.float32)
        return c


# ---------------------------------------------------------------------------
# the algorithms
# ---------------------------------------------------------------------------
def dense_reference(xs, average=True):
    """Scale each rank's vector by 1/P (in float32), then sum in rank order."""
    size = len(xs)
    scale = np.float32(1.0 / size) if average else np.float32(1.0)
    total = xs[0] * scale
    for x in xs[1:]:
        total = total + x * scale
    return total


def chunk_bounds(numel, parts, align=64):
    """P contiguous chunks, chunk j ending at floor(numel * (j + 1) / P) rounded down to a multiple of ``align``."""
    bounds = [0]
    for j in range(1, parts):
        bounds.append(max(bounds[-1], (numel * j // parts) // align * align))
    return bounds + [numel]


def accumulation_bound(decoded, average):
    """Per-entry bound on how far a fused ``decompress_add`` accumulation may be from ``acc += decompress(c)``.

    The kernels are compiled with fast-math ``contract`` and ``reassoc`` (kernels/config.py), so adding a decoded
    packet into an accumulator may fuse or reorder the decoder's multiply-adds: a few float32 roundings of the
    largest magnitudes involved, per packet.
    """
    size = len(decoded)
    scale = sum(float(np.max(np.abs(d))) if d.size else 0.0 for d in decoded)
    bound = 4 * size * 2.0**-24 * scale
    return bound / size if average and size > 1 else bound


def assert_close(out, ref, bound, what=""):
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.dtype == np.float32 and out.shape == ref.shape, (out.dtype, out.shape, ref.shape)
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    same_nan = np.isnan(out) & np.isnan(ref)
    bad = np.flatnonzero(~same_nan & ~(diff <= bound))
    assert bad.size == 0, (f"{what}: {bad.size} of {out.size} entries off the reference by more than {np.max(bound):.3g}, "
                           f"first at {bad[:5]}: {out[bad[:5]]} vs {ref[bad[:5]]}")


class AllgatherReference:
    """``allgather``: every rank's C(x_r) decoded and summed in rank order, divided by P for a mean.

    ``__call__`` returns ``(result, bound)``: the allgather decodes with fused ``decompress_add`` kernels, so
    the result is within ``bound`` (see :func:`accumulation_bound`) of this one.
    """

    def __init__(self, name, size, feedback):
        self.size = size
        self.comps = [fresh(name) for _ in range(size)]
        self.memories = [Memory(c, feedback) for c in self.comps]

    def __call__(self, xs, key, step, average=True):
        acc = np.zeros(xs[0].shape[0], np.float32)
        decoded = []
        for rank, x in enumerate(xs):
            decoded.append(np.asarray(self.comps[rank].decompress(self.memories[rank].compress(x, key, step)), np.float32))
            acc += decoded[-1]
        if average and self.size > 1:
            acc /= np.float32(self.size)
        return acc, accumulation_bound(decoded, average)


class ScatterReduceAllgatherReference:
    """``scatter-reduce-allgather``: chunk j of every rank (keys "<key>/chunk<j>") reduced on rank j, which
    compresses the mean through its server memory (key "<key>/server"); chunk j of the result is that decoded.

    The reduction on rank j decodes with fused ``decompress_add`` kernels, and a rounding difference in the
    server's input may flip a quantization decision after it.  So ``__call__`` takes ``server_inputs`` (what each
    rank's server memory was actually given, recorded in the test), checks each against the reference mean within
    :func:`accumulation_bound`, and goes on from the actual input: the result is then exact.
    """

    def __init__(self, name, size, feedback):
        self.size = size
        self.comps = [fresh(name) for _ in range(size)]
        self.workers = [Memory(c, feedback) for c in self.comps]
        self.servers = [Memory(c, feedback) for c in self.comps]

    def __call__(self, xs, key, step, average=True, server_inputs=None):
        size, numel = self.size, xs[0].shape[0]
        bounds = chunk_bounds(numel, size)
        decoded = [[np.asarray(self.comps[r].decompress(
            self.workers[r].compress(xs[r][bounds[j]: bounds[j + 1]], f"{key}/chunk{j}", step)), np.float32)
            for j in range(size)] for r in range(size)]
        out = np.empty(numel, np.float32)
        for j in range(size):
            acc = np.zeros(bounds[j + 1] - bounds[j], np.float32)
            for r in range(size):
                acc += decoded[r][j]
            if average and size > 1:
                acc /= np.float32(size)
            if server_inputs is not None:
                bound = accumulation_bound([decoded[r][j] for r in range(size)], average)
                assert_close(server_inputs[j], acc, bound, f"server input of chunk {j} (rank {j})")
                acc = np.array(server_inputs[j], np.float32, copy=True)
            server = self.servers[j].compress(acc, f"{key}/server", step)
            out[bounds[j]: bounds[j + 1]] = self.comps[j].decompress(server)
        return out


class LinearReference:
    """``allreduce``: every rank compresses x / P; the compressed forms are summed; the sum is decoded.

    ``__call__`` returns ``(exact, combined, bound)``: ``exact`` sums :meth:`Compressor.summands` in rank order in
    the type they are summed in (what a wire sum does), ``combined`` decodes :meth:`Compressor.combine` of the
    ranks' forms (the mathematical sum), and ``bound`` is a per-entry bound on their difference (the wire rounds
    after every addition: fp16 loses up to half an fp16 ulp of a partial sum per rank).
    Phased compressors (PowerSGD) run their phases on fresh per-rank compressors in lockstep: ``combined`` is
    ``exact`` and ``bound`` is zero.
    """

    def __init__(self, name, size, feedback):
        self.size = size
        self.feedback = feedback
        self.comps = [fresh(name) for _ in range(size)]
        self.memories = [Memory(c, feedback) for c in self.comps]
        self.residuals = [{} for _ in range(size)]  # phased: e <- v - result / P

    def __call__(self, xs, key, step, average=True):
        scale = np.float32(1.0 / self.size) if average else np.float32(1.0)
        scaled = [x * scale for x in xs]
        if self.comps[0].phased:
            out = self._phases(scaled, key)
            return out, out, np.zeros_like(out)
        cs = [m.compress(x, key, step) for m, x in zip(self.memories, scaled, strict=True)]
        comp = self.comps[0]
        sums = None
        for rank, c in enumerate(cs):
            parts = self.comps[rank].summands(c)
            if sums is None:
                sums = {name: np.array(a, copy=True) for name, a in parts.items()}
            else:
                for name, a in parts.items():
                    sums[name] += a
        exact = np.asarray(comp.decompress(comp.with_sums(cs[0], sums)), np.float32)
        combined = np.asarray(comp.decompress(comp.combine(cs)), np.float32)
        magnitude = np.zeros(exact.shape, np.float64)
        for rank, c in enumerate(cs):
            magnitude += np.abs(np.asarray(self.comps[rank].decompress(c), np.float64))
        eps = 2.0**-11 if any(a.dtype == np.float16 for a in sums.values()) else 2.0**-24
        bound = self.size * eps * magnitude + self.size * 2.0**-24
        return exact, combined, bound

    def _phases(self, scaled, key):
        size = self.size
        vs = []
        for rank, x in enumerate(scaled):
            if self.feedback == "residual":
                e = self.residuals[rank].get(key)
                x = x + (np.zeros_like(x) if e is None else e)
            vs.append(x)
        gens = [comp.phases(v, key) for comp, v in zip(self.comps, vs, strict=True)]
        parts = [next(g) for g in gens]
        while True:
            total = np.array(parts[0], dtype=np.float32, copy=True)
            for p in parts[1:]:
                total += p
            results, parts = [], []
            for g in gens:
                try:
                    parts.append(g.send(total.copy()))
                except StopIteration as done:
                    results.append(np.asarray(done.value, np.float32))
            if results:
                assert len(results) == size
                break
        for r in range(1, size):
            assert results[r].tobytes() == results[0].tobytes(), "phases gave different results on different ranks"
        if self.feedback == "residual":
            for rank, v in enumerate(vs):
                self.residuals[rank][key] = v - results[0] / np.float32(size)
        return results[0]


FLAT = {"allgather": AllgatherReference, "scatter-reduce-allgather": ScatterReduceAllgatherReference,
        "allreduce": LinearReference}


class HierarchicalReference:
    """Dense sum inside each group (members by rank), the flat algorithm with SUM over the group sums among the
    leaders (the lowest rank of each group, ordered by rank) when there are several, then division by P."""

    def __init__(self, name, colors, algorithm, feedback):
        self.size = len(colors)
        self.groups = [[r for r in range(self.size) if colors[r] == c] for c in sorted(set(colors))]
        self.groups.sort(key=lambda members: members[0])
        self.algorithm = algorithm
        leaders = len(self.groups)
        self.inner = None if leaders == 1 or algorithm == "dense" else FLAT[algorithm](name, leaders, feedback)

    def __call__(self, xs, key, step, average=True):
        sums = []
        for members in self.groups:
            total = xs[members[0]].copy()
            for r in members[1:]:
                total += xs[r]
            sums.append(total)
        if len(sums) == 1:
            total = sums[0]
        elif self.inner is None:  # dense among the leaders
            total = dense_reference(sums, average=False)
        else:
            total = self.inner(sums, key, step, average=False)
            if isinstance(total, tuple):  # (result, bound) or (exact, combined, bound): the first is the result
                total = total[0]
        total = total.copy()
        if average:
            total /= np.float32(self.size)
        return total
