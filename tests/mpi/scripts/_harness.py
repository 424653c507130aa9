"""Shared per-rank helpers for the scripts under tests/mpi/scripts: check markers and reference results.

Every reference here is computed with plain mpi4py *buffer* calls
(``Allgather``, ``Allgatherv``, ``Allreduce`` on numpy arrays) and with fresh
compressors built from the configuration under test; none of it goes through
``gcomp.collectives`` or ``gcomp.transports``.

* ``allgather``: every rank's packet (``wire.encode`` of its own compressed
  input) is allgathered; the result is the sum, in rank order, of
  ``compressor.decompress(wire.decode(packet))``, divided by P for MEAN.
* ``scatter-reduce-allgather``: every rank's input is allgathered and the two
  phases are simulated: chunk j (``gcomp.collectives.chunk_bounds``) of every
  rank is compressed with key ``"<key>/chunk<j>"``, the decompressions are
  summed in rank order (and divided by P for MEAN), that is compressed with key
  ``"<key>/server"`` by the chunk's owner, and the result is its decompression.
* linear ``allreduce``: each rank compresses ``x / P`` (MEAN) or ``x`` (SUM),
  the summable arrays are summed with ``comm.Allreduce`` and the summed form is
  decompressed (PowerSGD: the P and Q' phases are summed the same way).
* ``dense``: ``comm.Allreduce`` (divided by P for MEAN).

Compressors keep state in only one case (PowerSGD's warm-start Q per key), so a
:class:`Reference` keeps one compressor per (simulated) rank across steps.
"""

import contextlib
import sys
import traceback

import numpy as np
from mpi4py import MPI

import gcomp
from gcomp import wire
from gcomp.collectives import chunk_bounds
from gcomp.compressors import REGISTRY

#: parameters that make the default configuration of a compressor usable in these tests
OVERRIDES = {"threshold": {"tau": 1.5}, "dgc": {"ratio": 0.01}}


def all_configs():
    """``{name: config}`` for every registered compressor."""
    out = {}
    for name in sorted(REGISTRY):
        out[name] = gcomp.compressor({"name": name, **OVERRIDES.get(name, {})}).get_config()
    return out


def linear_names():
    return [name for name in sorted(REGISTRY) if REGISTRY[name].linear]


def make_input(rank, n, step=0, salt=0, dtype=np.float32):
    """A gradient-like vector, different per (rank, step, salt)."""
    rng = np.random.default_rng([int(salt), int(rank), int(step)])
    x = rng.standard_normal(n).astype(np.float32) * np.float32(1 + rank)
    return x.astype(dtype)


# ---------------------------------------------------------------------------
# markers
# ---------------------------------------------------------------------------
def emit(line):
    """Print one marker line with a single write (``print`` may write the text and the newline separately,
    and mpiexec merges the ranks' output streams: two writes can interleave with another rank's line)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Checks:
    """Prints ``CHECK <name> rank=<r> ok|FAIL ...`` per check and ``DONE`` at the end."""

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.failures = 0

    @contextlib.contextmanager
    def check(self, name):
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on
            self.failures += 1
            msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:900]
            emit(f"CHECK {name} rank={self.rank} FAIL {msg}")
            if self.rank == 0:
                traceback.print_exc(file=sys.stderr)
        else:
            emit(f"CHECK {name} rank={self.rank} ok")

    def done(self):
        emit(f"DONE rank={self.rank} failures={self.failures}")


def assert_same(got, want, what="result"):
    """Bit-for-bit equality (NaN equal to NaN) of two arrays or tensors, with a useful message."""
    got = _np(got)
    want = _np(want)
    if got.dtype != want.dtype or got.shape != want.shape:
        raise AssertionError(f"{what}: expected {want.dtype}{want.shape}, found {got.dtype}{got.shape}")
    if not np.array_equal(got, want, equal_nan=True):
        bad = ~((got == want) | (np.isnan(got) & np.isnan(want)))
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        raise AssertionError(f"{what}: {int(bad.sum())} of {got.size} entries differ, max |diff| {float(np.nanmax(diff)):.3g} "
                             f"(first at {int(np.argmax(bad))}: {got.flat[np.argmax(bad)]!r} vs {want.flat[np.argmax(bad)]!r})")


#: compressors whose fused accumulating decode (``decompress_add``, used by the collectives) rounds differently
#: from ``decompress`` followed by an add: gcomp's kernels are compiled with the fast-math flags "contract" and
#: "reassoc" (gcomp/kernels/config.py), so ``acc += offset + scale * code`` may become one fused multiply-add.
FUSED_DECODE = {"uniform"}


def assert_reference(name, got, want, what="result"):
    """:func:`assert_same`, or agreement to a few float32 ulps of the vector's scale for :data:`FUSED_DECODE`."""
    if name not in FUSED_DECODE:
        return assert_same(got, want, what)
    got, want = _np(got), _np(want)
    if got.dtype != want.dtype or got.shape != want.shape:
        raise AssertionError(f"{what}: expected {want.dtype}{want.shape}, found {got.dtype}{got.shape}")
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=0, atol=32 * float(np.finfo(np.float32).eps) * scale, err_msg=what)


def assert_raises(exc_type, fn, what):
    try:
        fn()
    except exc_type as exc:
        return exc
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"{what}: expected {exc_type.__name__}, found {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"{what}: expected {exc_type.__name__}, nothing was raised")


def _np(a):
    if type(a).__module__.startswith("torch"):
        import torch

        if a.dtype == torch.bfloat16:
            return a.float().numpy()
        return a.detach().numpy()
    return np.asarray(a)


def same_on_every_rank(comm, result, what="result"):
    """Every rank holds the same bits in ``result`` (checked with a buffer Allgather of the bytes)."""
    raw = np.frombuffer(np.ascontiguousarray(_np(result)).tobytes(), np.uint8)
    rows = np.empty((comm.Get_size(), raw.size), np.uint8)
    comm.Allgather(raw, rows)
    differing = [r for r in range(comm.Get_size()) if not np.array_equal(rows[r], raw)]
    if differing:
        raise AssertionError(f"{what}: ranks {differing} hold a different result than rank {comm.Get_rank()}")


def gather_rows(comm, x):
    """``(P, n)`` float32: every rank's vector, in rank order (a buffer Allgather)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows = np.empty((comm.Get_size(), x.shape[0]), np.float32)
    comm.Allgather(x, rows)
    return rows


def allgather_bytes(comm, data):
    """Every rank's uint8 buffer (sizes may differ), with Allgather + Allgatherv on MPI.BYTE."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    sizes = np.empty(comm.Get_size(), np.int64)
    comm.Allgather(np.array([data.size], np.int64), sizes)
    displs = np.zeros_like(sizes)
    np.cumsum(sizes[:-1], out=displs[1:])
    out = np.empty(int(sizes.sum()), np.uint8)
    comm.Allgatherv([data, MPI.BYTE], [out, (sizes, displs), MPI.BYTE])
    return [out[displs[r]: displs[r] + sizes[r]] for r in range(comm.Get_size())]


def _float16_mpi_sum(comm):
    """Whether this MPI sums float16 natively (MPICH's MPIX_C_FLOAT16); gcomp sums in float32 otherwise."""
    try:
        from mpi4py.util.dtlib import from_numpy_dtype

        probe = np.ones(1, np.float16)
        comm.Allreduce(MPI.IN_PLACE, [probe, from_numpy_dtype(np.float16)], op=MPI.SUM)
        return bool(probe[0] == comm.Get_size())
    except Exception:  # noqa: BLE001
        return False


def _bf16_bits_to_f32(bits):
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32).copy()


def _f32_to_bf16_bits(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


class Reference:
    """The documented result of each algorithm for one compressor configuration (see the module docstring)."""

    def __init__(self, comm, config, size=None):
        self.comm = comm
        self.config = dict(config)
        self.size = comm.Get_size() if size is None else size
        self.mine = gcomp.compressor(self.config)  # this rank's compressor (real-communication references)
        self.sims = [gcomp.compressor(self.config) for _ in range(self.size)]  # one per simulated rank
        self._f16 = None

    def decoded(self, packet, numel):
        """``decompress(wire.decode(packet))`` with a fresh compressor, as float32."""
        out = gcomp.compressor(self.config).decompress(wire.decode(packet, expected_numel=numel))
        return np.asarray(out, dtype=np.float32)

    def __call__(self, algorithm, x, key, step, average):
        if algorithm == "dense":
            return self.dense(x, average)
        if algorithm == "allgather":
            return self.allgather(x, key, step, average)
        if algorithm == "scatter-reduce-allgather":
            return self.sra_simulated(gather_rows(self.comm, x), key, step, average)
        if algorithm == "allreduce":
            return self.linear(x, key, step, average)
        raise ValueError(f"unknown algorithm {algorithm!r}")

    # -- dense ------------------------------------------------------------
    def dense(self, x, average):
        total = np.array(x, dtype=np.float32, copy=True)
        self.comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
        if average:
            total /= np.float32(self.size)
        return total

    # -- allgather (real packets) ------------------------------------------------
    def allgather(self, x, key, step, average):
        x = np.ascontiguousarray(x, dtype=np.float32)
        packet = np.frombuffer(wire.encode(self.mine.compress(x, step=step, key=key)), np.uint8)
        acc = np.zeros(x.shape[0], np.float32)
        for buf in allgather_bytes(self.comm, packet):
            acc += self.decoded(buf, x.shape[0])
        if average:
            acc /= np.float32(self.size)
        return acc

    def allgather_simulated(self, rows, key, step, average):
        acc = np.zeros(rows.shape[1], np.float32)
        for r in range(rows.shape[0]):
            acc += self.decoded(wire.encode(self.sims[r].compress(rows[r], step=step, key=key)), rows.shape[1])
        if average:
            acc /= np.float32(rows.shape[0])
        return acc

    # -- scatter-reduce-allgather (simulated from every rank's input) -------------
    def sra_simulated(self, rows, key, step, average):
        size, n = rows.shape
        bounds = chunk_bounds(n, size)
        out = np.empty(n, np.float32)
        for j in range(size):
            lo, hi = bounds[j], bounds[j + 1]
            acc = np.zeros(hi - lo, np.float32)
            for r in range(size):
                c = self.sims[r].compress(np.ascontiguousarray(rows[r, lo:hi]), step=step, key=f"{key}/chunk{j}")
                acc += self.decoded(wire.encode(c), hi - lo)
            if average:
                acc /= np.float32(size)
            server = self.sims[j].compress(acc, step=step, key=f"{key}/server")
            out[lo:hi] = self.decoded(wire.encode(server), hi - lo)
        return out

    # -- linear allreduce (summed with comm.Allreduce) ------------------------------
    def _sum(self, a):
        a = np.ascontiguousarray(a)
        if a.dtype == np.uint16:  # bfloat16 bit patterns: summed in float32, rounded once
            total = _bf16_bits_to_f32(a)
            self.comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
            return _f32_to_bf16_bits(total)
        if a.dtype == np.float16:
            if self._f16 is None:
                self._f16 = _float16_mpi_sum(self.comm)
            if self._f16:
                from mpi4py.util.dtlib import from_numpy_dtype

                total = a.copy()
                self.comm.Allreduce(MPI.IN_PLACE, [total, from_numpy_dtype(np.float16)], op=MPI.SUM)
                return total
            wide = a.astype(np.float32)
            self.comm.Allreduce(MPI.IN_PLACE, wide, op=MPI.SUM)
            return wide.astype(np.float16)
        total = a.copy()
        self.comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
        return total

    def linear(self, x, key, step, average):
        x = np.ascontiguousarray(x, dtype=np.float32)
        v = x * (np.float32(1.0 / self.size) if average else np.float32(1.0))
        comp = self.mine
        if self.config["name"] == "powersgd":
            p = self._sum(comp.p_phase(v, key))
            q = self._sum(comp.q_phase(v, p, key))
            return np.asarray(comp.finish(q, x.shape[0], key), dtype=np.float32)
        c = comp.compress(v, step=step, key=key)
        for name in comp.summable or ("values",):
            c.arrays[name] = self._sum(c.arrays[name])
        return np.asarray(gcomp.compressor(self.config).decompress(c), dtype=np.float32)
