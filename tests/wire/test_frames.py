"""Packet-backed compressed forms (gcomp.wire's module docstring, "Packet-backed forms").

A dense compressor's form of at least ``FRAME_MIN`` entries is written by its kernel straight into the payload of a
packet buffer, and ``wire.encode_array`` completes that buffer in place instead of copying the arrays.  Everything
here compares against the same compressor with frames off (``wire.FRAMES = False``): the packets must be the same
bytes, the residuals the same bits, the decoded forms equal.
"""

import copy
import dataclasses
import pickle
import tracemalloc

import numpy as np
import pytest
from gcomp.kernels import config

import gcomp
from gcomp import wire
from gcomp.collectives import CompressedAllreduce, sequence
from gcomp.decentralized import packets
from gcomp.transports import run_local

FRAME_MIN = wire.FRAME_MIN

#: every compressor that makes packet-backed forms, with settings that cover each code width and rounding
SPECS = [
    "qsgd:levels=1,seed=3",
    "qsgd:levels=4,seed=3",
    "qsgd:levels=20,bucket_size=128,seed=3",
    "uniform:bits=8",
    "uniform:bits=4,rounding=stochastic,seed=5",
    "uniform:bits=2,mode=absmax,bucket_size=64",
    "uniform:bits=1,rounding=stochastic,seed=5",
    "natural:seed=7",
    "sign",
    "terngrad:seed=9,bucket_size=128",
    "fp16",
    "bf16",
    "none",
]
#: around the threshold; FRAME_MIN + 1 puts every float array after the codes at an unaligned offset
SIZES = [FRAME_MIN - 8, FRAME_MIN, FRAME_MIN + 1, 2 * FRAME_MIN + 13]
#: reserve 0, each collective's prefix (8 and 32 = FRAME_ROOM) and one beyond the room (the copying path)
RESERVES = sorted({0, sequence.PREFIX_SIZE, packets.PREFIX_SIZE, wire.FRAME_ROOM, wire.FRAME_ROOM + 8})


def _vector(n, seed=0):
    x = np.random.default_rng([seed, n]).standard_normal(n).astype(np.float32)
    x[::97] *= 30.0  # a few large entries per bucket
    x[5::1031] = 0.0
    return x


def _compress(spec, x, residual, *, frames, monkeypatch, step=4, key=2):
    """``(compressed form, the residual after it)`` with frames on or off."""
    monkeypatch.setattr(wire, "FRAMES", frames)
    comp = gcomp.compressor(spec)
    if residual is None:
        return comp.compress(x, step=step, key=key), None
    r = residual.copy()
    return comp.compress_with_residual(x, r, step=step, key=key), r


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_same_bytes_as_without_frames(spec, with_residual, monkeypatch):
    for n in SIZES:
        x = _vector(n)
        residual = _vector(n, seed=1) * np.float32(0.1) if with_residual else None
        plain, r_plain = _compress(spec, x, residual, frames=False, monkeypatch=monkeypatch)
        assert plain.frame is None
        expected = wire.encode(plain)
        for reserve in RESERVES:
            framed, r_framed = _compress(spec, x, residual, frames=True, monkeypatch=monkeypatch)
            assert (framed.frame is not None) == (n >= FRAME_MIN), (spec, n)
            # each array at a multiple of its item size: the kernels see the types a fresh array has (no new compile)
            assert all(a.flags.aligned for a in framed.arrays.values()), (spec, n)
            if with_residual:
                assert r_framed.tobytes() == r_plain.tobytes(), (spec, n)
            for name, a in plain.arrays.items():
                assert framed.arrays[name].dtype == a.dtype and framed.arrays[name].tobytes() == a.tobytes()
            assert wire.encode(framed) == expected, (spec, n)  # bytes: its own path, the frame untouched
            out = wire.encode_array(framed, reserve=reserve)
            assert out.dtype == np.uint8 and out.shape == (reserve + len(expected),)
            assert out[reserve:].tobytes() == expected, (spec, n, reserve)
            assert wire.encode_array(plain, reserve=reserve)[reserve:].tobytes() == expected
            in_place = framed.frame is not None and reserve <= wire.FRAME_ROOM
            assert np.shares_memory(out, framed.frame.buf) if in_place else out.base is None, (spec, n, reserve)


@pytest.mark.parametrize("spec", ["qsgd:levels=4,seed=3", "uniform:bits=8", "uniform:bits=4,rounding=stochastic"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_parallel_kernels_write_the_same_bytes_into_views(spec, with_residual, monkeypatch):
    n = config.PARALLEL_MIN + 1  # the scales/norms after the codes are unaligned
    x = _vector(n, seed=2)
    residual = _vector(n, seed=3) * np.float32(0.1) if with_residual else None
    monkeypatch.setattr(config, "_force", "serial")
    plain, r_plain = _compress(spec, x, residual, frames=False, monkeypatch=monkeypatch)
    monkeypatch.setattr(config, "_force", "parallel")
    framed, r_framed = _compress(spec, x, residual, frames=True, monkeypatch=monkeypatch)
    assert framed.frame is not None
    out = wire.encode_array(framed, reserve=sequence.PREFIX_SIZE)
    assert np.shares_memory(out, framed.frame.buf)
    assert out[sequence.PREFIX_SIZE:].tobytes() == wire.encode(plain)
    if with_residual:
        assert r_framed.tobytes() == r_plain.tobytes()


def test_replaced_arrays_take_the_copying_path(monkeypatch):
    n = FRAME_MIN + 1
    x = _vector(n)
    q = gcomp.compressor("qsgd:levels=4,seed=1")
    expected = wire.encode(q.compress(x, step=1))

    # one array substituted (same values): not the frame's view any more; and dataclasses.replace (no frame)
    c = q.compress(x, step=1)
    c.arrays["norms"] = c.arrays["norms"].copy()
    out = wire.encode_array(c, reserve=8)
    assert not np.shares_memory(out, c.frame.buf) and out[8:].tobytes() == expected
    c = q.compress(x, step=1)
    other = dataclasses.replace(c, arrays=dict(c.arrays))
    assert other.frame is None and c.frame is not None
    out = wire.encode_array(other, reserve=8)
    assert not np.shares_memory(out, c.frame.buf) and out[8:].tobytes() == expected

    # a user's array put into the dict in place, with other values: those values are sent
    c = q.compress(x, step=1)
    norms = c.arrays["norms"] * np.float32(2.0)
    c.arrays["norms"] = norms
    out = wire.encode_array(c)
    assert not np.shares_memory(out, c.frame.buf)
    assert wire.decode(out).arrays["norms"].tobytes() == norms.tobytes()

    # a converted array (another dtype) is cast as on the normal path
    u = gcomp.compressor("uniform:bits=8")
    c = u.compress(x)
    want = wire.encode(c)
    c.arrays["scales"] = c.arrays["scales"].astype(np.float64)
    out = wire.encode_array(c)
    assert not np.shares_memory(out, c.frame.buf) and out.tobytes() == want

    # the frame is completed once: a second encode_array copies (and gives the same bytes)
    c = q.compress(x, step=1)
    first = wire.encode_array(c, reserve=32)
    second = wire.encode_array(c, reserve=8)
    assert np.shares_memory(first, c.frame.buf) and not np.shares_memory(second, c.frame.buf)
    assert first[32:].tobytes() == second[8:].tobytes() == expected

    # zstd keeps its path
    c = q.compress(x, step=1)
    z = wire.encode_array(c, zstd=True)
    assert not np.shares_memory(z, c.frame.buf)
    assert wire.decode(z).arrays["codes"].tobytes() == c.arrays["codes"].tobytes()

    # a copy or a pickle of the form carries no frame, and still encodes the same bytes
    c = q.compress(x, step=1)
    for twin in (copy.deepcopy(c), pickle.loads(pickle.dumps(c))):
        assert twin.frame is None and wire.encode_array(twin).tobytes() == expected
    # dataclasses.replace drops the frame (it is no constructor argument); the frame is neither compared nor shown
    bare = dataclasses.replace(c, arrays={})  # (numpy arrays make == ambiguous: compare without them)
    twin = dataclasses.replace(c, arrays={})
    twin.frame = c.frame
    assert bare.frame is None and bare == twin and repr(bare) == repr(twin) and "frame" not in repr(twin)
    with pytest.raises(TypeError):
        gcomp.Compressed("qsgd", 1, "float32", {}, frame=c.frame)


def test_encode_array_of_a_framed_packet_allocates_nothing_of_its_size():
    n = 1 << 20
    q = gcomp.compressor("qsgd:levels=4,seed=1")
    x = _vector(n)
    framed = q.compress(x, step=1)
    size = wire.HEADER_SIZE + sum(a.nbytes for a in framed.arrays.values())
    tracemalloc.start()
    try:
        out = wire.encode_array(framed, reserve=sequence.PREFIX_SIZE)
        _, peak_framed = tracemalloc.get_traced_memory()
        framed.frame.used = False
        framed.arrays["codes"] = framed.arrays["codes"].copy()  # now the copying path, measured the same way
        tracemalloc.reset_peak()
        copied_out = wire.encode_array(framed, reserve=sequence.PREFIX_SIZE)
        _, peak_copy = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.nbytes == copied_out.nbytes == size + sequence.PREFIX_SIZE
    assert out[sequence.PREFIX_SIZE:].tobytes() == copied_out[sequence.PREFIX_SIZE:].tobytes()
    assert peak_framed < 4096, peak_framed
    assert peak_copy >= size  # the measurement does see a packet-sized allocation where there is one


@pytest.mark.parametrize("spec", ["qsgd:levels=4,seed=3", "uniform:bits=4,rounding=stochastic,seed=5", "sign",
                                  "terngrad:seed=9", "natural:seed=7", "fp16", "bf16", "none"])
def test_decode_of_a_framed_packet(spec, monkeypatch):
    n = FRAME_MIN + 1
    x = _vector(n, seed=4)
    plain, _ = _compress(spec, x, None, frames=False, monkeypatch=monkeypatch)
    framed, _ = _compress(spec, x, None, frames=True, monkeypatch=monkeypatch)
    a = wire.decode(wire.encode_array(plain, reserve=8)[8:], expected_numel=n)
    b = wire.decode(wire.encode_array(framed, reserve=8)[8:], expected_numel=n)
    assert (a.codec, a.numel, a.dtype, a.params, a.count, a.step, a.seed) == \
           (b.codec, b.numel, b.dtype, b.params, b.count, b.step, b.seed)
    assert sorted(a.arrays) == sorted(b.arrays)
    for name in a.arrays:
        assert a.arrays[name].tobytes() == b.arrays[name].tobytes()
    comp = gcomp.compressor(spec)
    want = np.asarray(comp.decompress(a))
    assert np.asarray(comp.decompress(b)).tobytes() == want.tobytes()
    assert np.asarray(comp.decompress(framed)).tobytes() == want.tobytes()  # the form itself, after encoding


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["allgather", "scatter-reduce-allgather"])
def test_collective_gives_the_same_result_with_frames(algorithm, monkeypatch):
    size, n, steps = 3, 3 * FRAME_MIN + 5, 2  # odd world size; every chunk of scatter-reduce is framed too
    xs = [[_vector(n, seed=10 * s + r) for r in range(size)] for s in range(steps)]

    def run(frames):
        monkeypatch.setattr(wire, "FRAMES", frames)

        def fn(t):
            engine = CompressedAllreduce(t, gcomp.compressor("qsgd:levels=4,seed=11"), algorithm=algorithm,
                                         error_feedback="residual")
            outs = [engine(xs[s][t.rank], key=0) for s in range(steps)]
            return outs, engine.feedback.memory(0 if algorithm == "allgather" else "0/chunk0")

        return run_local(size, fn, timeout=60.0)

    plain, framed = run(False), run(True)
    for rank in range(size):
        for s in range(steps):
            assert framed[rank][0][s].tobytes() == plain[rank][0][s].tobytes(), (rank, s)
        assert framed[rank][1].tobytes() == plain[rank][1].tobytes()
    assert all(framed[r][0][-1].tobytes() == framed[0][0][-1].tobytes() for r in range(size))


@pytest.mark.parametrize("force", ["serial", "parallel"])
def test_bf16_and_none_decompress_add_in_place(force, monkeypatch):
    """bf16's and none's ``decompress_add`` add in one pass (no dense temporary): the bits of ``acc += dense``."""
    from gcomp.kernels.cast import add_bfloat16_bits, from_bfloat16_bits

    monkeypatch.setattr(config, "_force", force)
    n = FRAME_MIN + 3
    x = _vector(n, seed=6)
    x[:4] = [np.inf, -np.inf, np.nan, -0.0]
    acc0 = _vector(n, seed=7)
    acc0[4:6] = [0.0, -0.0]
    bits = gcomp.compressor("bf16").compress(x).arrays["values"]
    want = acc0 + from_bfloat16_bits(bits)
    assert add_bfloat16_bits(bits, acc0.copy()).tobytes() == want.tobytes()
    for spec in ("bf16", "none"):
        comp = gcomp.compressor(spec)
        packet = wire.decode(wire.encode_array(comp.compress(x)))
        acc = acc0.copy()
        assert comp.decompress_add(packet, acc) is acc
        assert acc.tobytes() == (acc0 + np.asarray(comp.decompress(packet), np.float32)).tobytes(), spec
    with pytest.raises(ValueError, match="expected acc"):
        add_bfloat16_bits(bits, np.zeros(n - 1, np.float32))
