"""gcomp.wire: round trips, corruption, hostile headers, fuzzing, no pickle, bounded memory.

The hostile-header tests rebuild packets with a *valid* CRC-32 (``make_packet`` /
``rewrite`` below) so that they exercise the field validation, not the checksum.
``_ref_decode`` is an independent decoder written from docs/wire-format.md; it
is compared with ``gcomp.wire.decode`` on every codec and under fuzzing.
"""

import ast
import functools
import inspect
import math
import pickle
import struct
import sys
import tracemalloc
import zlib

import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

import gcomp
from gcomp import wire
from gcomp.compressors.base import DTYPES, Compressed
from gcomp.errors import (
    ChecksumError,
    CodecError,
    IndexError_,
    MagicError,
    SizeError,
    TruncatedError,
    VersionError,
    WireFormatError,
)
from gcomp.testing import compressor_configs, gradients

# ---------------------------------------------------------------------------
# header helpers (the layout of docs/wire-format.md, section 1)
# ---------------------------------------------------------------------------

HEADER = struct.Struct("<4sBBBBB3xQQQQ4IQQQI")
HEADER_SIZE = 88
FIELDS = ("magic", "major", "minor", "codec", "flags", "dtype", "numel", "count", "step", "seed",
          "p0", "p1", "p2", "p3", "index_len", "raw_len", "payload_len", "crc")
CODEC_IDS = {"none": 1, "fp16": 2, "bf16": 3, "topk": 4, "dgc": 5, "randomk": 6, "threshold": 7, "qsgd": 8,
             "uniform": 9, "sign": 10, "terngrad": 11, "natural": 12, "powersgd": 13}
U64 = (1 << 64) - 1
ZSTD, BITMAP = 1, 2


def header_fields(buf):
    return dict(zip(FIELDS, HEADER.unpack_from(bytes(buf[:HEADER_SIZE]), 0), strict=True))


def make_packet(fields, payload=b"", *, reserved=b"\0\0\0", crc=None):
    """Header + payload with a valid CRC-32 (over the header with the CRC field zero, then the payload)."""
    values = [fields[name] for name in FIELDS[:-1]] + [0]
    head = bytearray(HEADER.pack(*values))
    head[9:12] = reserved
    if crc is None:
        crc = zlib.crc32(payload, zlib.crc32(bytes(head)))
    head[84:88] = struct.pack("<I", crc)
    return bytes(head) + bytes(payload)


def rewrite(buf, payload=None, *, reserved=None, **changes):
    """``buf`` with header fields / payload / reserved bytes replaced and the CRC recomputed."""
    fields = header_fields(buf)
    fields.update(changes)
    payload = bytes(buf[HEADER_SIZE:]) if payload is None else payload
    return make_packet(fields, payload, reserved=bytes(buf[9:12]) if reserved is None else reserved)


def fields_for(codec, numel=0, count=0, *, flags=0, dtype=0, step=0, seed=0, p=(0, 0, 0, 0), index_len=0,
               raw_len=0, payload_len=None):
    return dict(magic=b"GCMP", major=1, minor=0, codec=CODEC_IDS.get(codec, codec), flags=flags, dtype=dtype,
                numel=numel, count=count, step=step, seed=seed, p0=p[0], p1=p[1], p2=p[2], p3=p[3],
                index_len=index_len, raw_len=raw_len, payload_len=raw_len if payload_len is None else payload_len, crc=0)


def varint(values):
    out = bytearray()
    for g in values:
        g = int(g)
        while True:
            b = g & 0x7F
            g >>= 7
            out.append(b | (0x80 if g else 0))
            if not g:
                break
    return bytes(out)


def sparse_packet(numel, indices=None, index_bytes=None, *, count=None, bitmap=False, codec="topk", values=None):
    """A topk/dgc/threshold packet with the given index section (encoded here, or raw bytes), valid CRC."""
    if index_bytes is None:
        idx = list(indices)
        if bitmap:
            bits = np.zeros((numel + 7) // 8 * 8, np.uint8)
            bits[idx] = 1
            index_bytes = np.packbits(bits, bitorder="little").tobytes()
        else:
            index_bytes = varint(np.diff([-1, *idx]) - 1)
        count = len(idx) if count is None else count
    vals = np.arange(count, dtype="<f4").tobytes() if values is None else values
    raw = index_bytes + vals
    f = fields_for(codec, numel, count, flags=BITMAP if bitmap else 0, index_len=len(index_bytes), raw_len=len(raw))
    return make_packet(f, raw)


def frame_with_content_size(content_size, data):
    """A zstd frame (one raw block holding ``data``) whose header *claims* ``content_size``."""
    return (b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", content_size)
            + struct.pack("<I", (len(data) << 3) | 1)[:3] + data)


# ---------------------------------------------------------------------------
# no pickle, ever (numba's own kernel cache may unpickle its index; nobody else may)
# ---------------------------------------------------------------------------

PICKLE_CALLS = []


def _guard(name, original):
    def guarded(*args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if not caller.startswith("numba"):
            PICKLE_CALLS.append((name, caller))
            raise AssertionError(f"pickle.{name} called from {caller} during a wire test")
        return original(*args, **kwargs)

    return guarded


@pytest.fixture(scope="module", autouse=True)
def no_pickle():
    _warm_up()
    with pytest.MonkeyPatch.context() as mp:
        for name in ("load", "loads", "Unpickler"):
            mp.setattr(pickle, name, _guard(name, getattr(pickle, name)))
        yield
    assert not PICKLE_CALLS, f"pickle was called: {PICKLE_CALLS}"


def test_pickle_guard_is_active():
    with pytest.raises(AssertionError, match="pickle.loads called"):
        pickle.loads(pickle.dumps(1))
    PICKLE_CALLS.clear()


def test_wire_module_imports_no_deserialiser():
    tree = ast.parse(inspect.getsource(wire))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Attribute) and node.attr in ("load", "loads") and isinstance(node.value, ast.Name):
            assert node.value.id not in ("np", "numpy", "pickle", "marshal"), f"{node.value.id}.{node.attr} in gcomp.wire"
    assert not imported & {"pickle", "marshal", "dill", "cloudpickle", "shelve", "joblib", "copyreg"}


# ---------------------------------------------------------------------------
# sample packets
# ---------------------------------------------------------------------------

CONFIGS = {
    "none": {"name": "none"},
    "fp16": {"name": "fp16"},
    "bf16": {"name": "bf16"},
    "topk": {"name": "topk", "ratio": 0.05},
    "topk_bitmap": {"name": "topk", "ratio": 0.6},
    "dgc": {"name": "dgc", "ratio": 0.1, "sample_fraction": 0.5, "seed": 1},
    "randomk": {"name": "randomk", "ratio": 0.1, "seed": 2},
    "threshold": {"name": "threshold", "tau": 1.0},
    "qsgd": {"name": "qsgd", "levels": 4, "bucket_size": 64, "seed": 3},
    "qsgd_levels1": {"name": "qsgd", "levels": 1, "bucket_size": 8, "seed": 4},
    "qsgd_levels100": {"name": "qsgd", "levels": 100, "bucket_size": 512, "seed": 5},
    "uniform": {"name": "uniform", "bits": 4, "bucket_size": 64, "mode": "absmax"},
    "uniform_b1": {"name": "uniform", "bits": 1, "bucket_size": 8},
    "uniform_b2_stochastic": {"name": "uniform", "bits": 2, "bucket_size": 128, "rounding": "stochastic", "seed": 6},
    "sign": {"name": "sign", "bucket_size": 64},
    "terngrad": {"name": "terngrad", "bucket_size": 64, "seed": 7},
    "natural": {"name": "natural", "seed": 8},
    "powersgd": {"name": "powersgd", "rank": 2, "seed": 9},
}
assert {c["name"] for c in CONFIGS.values()} == set(CODEC_IDS)


def _input(n, seed=0, dtype=np.float32, sparse=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    if sparse:
        x[rng.random(n) < 0.85] = 0.0
        x = np.round(x * 2) / 2
    return x.astype(dtype)


def _compress(config_name, n, *, dtype=np.float32, seed=0, step=3, key=1, sparse=False):
    comp = gcomp.compressor(CONFIGS[config_name])
    return comp.compress(_input(n, seed, dtype, sparse), step=step, key=key)


@functools.cache
def samples():
    """name -> packet bytes: every config at n=64, plus zstd-flagged and bitmap-indexed variants."""
    out = {}
    for name in CONFIGS:
        out[name] = wire.encode(_compress(name, 64))
    for name in ("none", "topk_bitmap", "threshold", "qsgd", "natural", "fp16"):
        buf = wire.encode(_compress(name, 300, sparse=True), zstd=True)
        out[name + "_zstd"] = buf
    out["topk_tiny"] = wire.encode(_compress("topk", 1))
    out["none_empty"] = wire.encode(_compress("none", 0))
    out["powersgd_empty"] = wire.encode(_compress("powersgd", 0))
    out["none_f64"] = wire.encode(_compress("none", 5, dtype=np.float64))
    return out


def _warm_up():
    for buf in samples().values():
        c = wire.decode(buf)
        _decompressor(c.codec).decompress(c)
    for bitmap in (False, True):
        wire.decode(sparse_packet(16, [1, 3, 9], bitmap=bitmap))
    wire.decode(rewrite(samples()["randomk"], b"\0" * 4, numel=1 << 40, count=1, raw_len=4, payload_len=4))


def _decompressor(codec):
    """A compressor that decompresses ``codec`` packets (threshold's tau is irrelevant to decoding)."""
    return gcomp.compressor("threshold", tau=0.0) if codec == "threshold" else gcomp.compressor(codec)


def _bits(a):
    if not isinstance(a, np.ndarray):  # a torch tensor
        a = a.float().numpy()
    a = np.ascontiguousarray(a)
    return str(a.dtype), a.shape, a.view(np.uint8).tobytes()


def test_samples_cover_every_codec_and_flag():
    flags = {header_fields(b)["flags"] for b in samples().values()}
    assert flags >= {0, ZSTD, BITMAP, ZSTD | BITMAP}
    assert {wire.decode(b).codec for b in samples().values()} == set(CODEC_IDS)


# ---------------------------------------------------------------------------
# structural validity of a decoded Compressed
# ---------------------------------------------------------------------------


def assert_valid(c, *, decompress=True):
    assert isinstance(c, Compressed)
    codec = wire.CODECS[c.codec]
    assert c.dtype in DTYPES
    assert 0 <= c.numel <= wire.MAX_NUMEL and 0 <= c.count <= max(c.numel, 0)
    assert 0 <= c.step <= U64 and 0 <= c.seed <= U64
    assert set(c.params) == set(codec.param_names)
    codec.check(c.numel, c.count, c.params)
    specs = codec.arrays(c.numel, c.count, c.params)
    names = {name for name, _, _ in specs}
    if codec.sparse or codec.regenerate_indices is not None:
        names.add("indices")
        idx = c.arrays["indices"]
        assert idx.dtype == np.int64 and idx.shape == (c.count,)
        if c.count:
            assert idx[0] >= 0 and idx[-1] < c.numel
            assert np.all(np.diff(idx) > 0)
    else:
        assert c.count == 0
    assert set(c.arrays) == names
    for name, dtype, length in specs:
        a = c.arrays[name]
        assert a.dtype == dtype and a.size == length
    again = wire.decode(wire.encode(c))
    assert all(_bits(again.arrays[k]) == _bits(c.arrays[k]) for k in c.arrays)
    if decompress and c.numel <= 1 << 16:
        out = _decompressor(c.codec).decompress(c)
        assert tuple(out.shape) == (c.numel,)


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------


def _check_round_trip(c, comp, dtype_name, n):
    for use_zstd in (False, True):
        buf = wire.encode(c, zstd=use_zstd)
        h = header_fields(buf)
        assert len(buf) == HEADER_SIZE + h["payload_len"]
        if h["flags"] & ZSTD:
            assert use_zstd and 0 < h["payload_len"] < h["raw_len"]
        else:
            assert h["payload_len"] == h["raw_len"]
        d = wire.decode(buf, expected_numel=n)
        assert (d.codec, d.numel, d.dtype, d.count, d.step, d.seed) == (c.codec, n, dtype_name, c.count, c.step, c.seed)
        assert d.params == {k: int(v) for k, v in c.params.items()}
        assert h["dtype"] == DTYPES.index(dtype_name)
        for name, dtype, _ in wire.CODECS[c.codec].arrays(n, c.count, d.params):
            assert d.arrays[name].dtype == dtype
            sent = np.ascontiguousarray(c.arrays[name], dtype=dtype)
            assert d.arrays[name].tobytes() == sent.tobytes() and d.arrays[name].shape == sent.shape
        if "indices" in c.arrays:
            assert np.array_equal(d.arrays["indices"], c.arrays["indices"])
        assert wire.encode(d, zstd=use_zstd) == buf
        assert_valid(d, decompress=False)
        out_c, out_d = comp.decompress(c), comp.decompress(d)
        assert _bits(out_c) == _bits(out_d)
        if dtype_name == "bfloat16":
            import torch

            assert out_d.dtype == torch.bfloat16 and tuple(out_d.shape) == (n,)
        else:
            assert out_d.dtype == np.dtype(dtype_name) and out_d.shape == (n,)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", [0, 1, 7, 4099])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_round_trip(config, n, dtype):
    comp = gcomp.compressor(CONFIGS[config])
    c = comp.compress(_input(n, seed=n, dtype=dtype), step=5, key=2)
    _check_round_trip(c, comp, np.dtype(dtype).name, n)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_round_trip_bfloat16_tensor(config):
    import torch

    comp = gcomp.compressor(CONFIGS[config])
    x = torch.from_numpy(_input(130, seed=1)).to(torch.bfloat16)
    _check_round_trip(comp.compress(x, step=1), comp, "bfloat16", 130)


@given(config=compressor_configs(), x=gradients(max_size=600), step=st.integers(0, U64), use_zstd=st.booleans())
def test_round_trip_property(config, x, step, use_zstd):
    comp = gcomp.compressor(config)
    c = comp.compress(x, step=step, key=3)
    buf = wire.encode(c, zstd=use_zstd)
    d = wire.decode(buf, expected_numel=x.shape[0])
    assert wire.encode(d, zstd=use_zstd) == buf
    assert d.step == step
    assert _bits(gcomp.compressor(config).decompress(c)) == _bits(gcomp.compressor(config).decompress(d))


def test_extreme_step_and_seed_round_trip():
    c = _compress("randomk", 50)
    for step, seed in ((0, 0), (U64, U64), (1 << 63, 12345)):
        c2 = Compressed(c.codec, c.numel, c.dtype, {"values": c.arrays["values"],
                                                     "indices": gcomp.compressors.RandomK.indices_for(50, c.count, seed)},
                        count=c.count, step=step, seed=seed)
        d = wire.decode(wire.encode(c2))
        assert (d.step, d.seed) == (step, seed)
        assert np.array_equal(d.arrays["indices"], c2.arrays["indices"])


def test_decode_accepts_every_buffer_type():
    buf = samples()["qsgd"]
    ref = wire.decode(buf)
    for b in (buf, bytearray(buf), memoryview(buf), np.frombuffer(buf, np.uint8).copy()):
        d = wire.decode(b)
        assert all(_bits(d.arrays[k]) == _bits(ref.arrays[k]) for k in ref.arrays)
    for bad in ("text", [1, 2, 3], np.zeros(100, np.float32), np.zeros((2, 88), np.uint8)):
        with pytest.raises(TypeError):
            wire.decode(bad)


def test_decoded_arrays_do_not_let_the_receiver_write_into_its_buffer():
    """decode() documents 'read-only views where possible'; for a bytearray / numpy receive buffer they are writable."""
    buf = samples()["none"]
    for b in (bytearray(buf), np.frombuffer(buf, np.uint8).copy()):
        d = wire.decode(b)
        assert not d.arrays["values"].flags.writeable, f"decode({type(b).__name__}) returned a writable view of its buffer"


def test_peek_agrees_with_decode_and_does_not_decompress():
    for name, buf in samples().items():
        h = wire.peek(buf)
        f = header_fields(buf)
        d = wire.decode(buf)
        assert (h.codec.name, h.numel, h.count, h.step, h.seed, h.flags) == (d.codec, d.numel, d.count, d.step, d.seed,
                                                                               f["flags"]), name
        assert (h.index_len, h.raw_len, h.payload_len, h.checksum) == (f["index_len"], f["raw_len"], f["payload_len"], f["crc"])
        assert h.dtype == d.dtype and h.params == d.params


def test_encode_rejects_bad_input():
    c = _compress("none", 10)
    with pytest.raises(TypeError):
        wire.encode({"codec": "none"})
    with pytest.raises(CodecError):
        wire.encode(Compressed("nosuchcodec", 10, "float32", {"values": c.arrays["values"]}))
    with pytest.raises(CodecError):
        wire.encode(Compressed("none", 10, "int8", {"values": c.arrays["values"]}))
    with pytest.raises(SizeError):
        wire.encode(Compressed("none", 11, "float32", {"values": c.arrays["values"]}))
    with pytest.raises(SizeError):  # count > numel
        wire.encode(Compressed("randomk", 2, "float32", {"values": np.zeros(3, np.float32)}, count=3))


# ---------------------------------------------------------------------------
# index coding choice
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "numel, indices, flags, index_len",
    [
        (0, [], 0, 0),
        (100, [], 0, 0),
        (8, [0], 0, 1),  # varint 1 byte == bitmap 1 byte: a tie goes to varint
        (16, [0, 1], 0, 2),  # tie again
        (16, [0, 1, 2], BITMAP, 2),  # varint 3 > bitmap 2
        (1000, [999], 0, 2),  # gap 999 -> 2 varint bytes
        (1 << 20, [0, (1 << 20) - 1], 0, 4),
        (64, list(range(0, 64, 2)), BITMAP, 8),
    ],
)
def test_index_coding_is_the_smaller_one_ties_varint(numel, indices, flags, index_len):
    idx = np.array(indices, np.int64)
    c = Compressed("topk", numel, "float32", {"indices": idx, "values": np.ones(len(idx), np.float32)}, count=len(idx))
    buf = wire.encode(c)
    h = header_fields(buf)
    assert (h["flags"], h["index_len"]) == (flags, index_len)
    section = buf[HEADER_SIZE:HEADER_SIZE + index_len]
    if flags & BITMAP:
        bits = np.zeros(numel, np.uint8)
        bits[idx] = 1
        assert section == np.packbits(bits, bitorder="little").tobytes()
    else:
        assert section == varint(np.diff([-1, *indices]) - 1)
    assert np.array_equal(wire.decode(buf).arrays["indices"], idx)


def test_decoder_accepts_the_non_canonical_coding_too():
    """Either coding decodes, whatever its size; re-encoding picks the canonical (smaller) one."""
    buf = sparse_packet(64, [5], bitmap=True)  # bitmap 8 bytes, varint would be 1
    d = wire.decode(buf)
    assert list(d.arrays["indices"]) == [5]
    assert header_fields(wire.encode(d))["flags"] == 0


# ---------------------------------------------------------------------------
# truncation, bit flips, appended bytes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(samples()))
def test_truncation_at_every_length_raises(name):
    buf = samples()[name]
    wrong = []
    for cut in range(len(buf)):
        try:
            wire.decode(buf[:cut])
        except TruncatedError:
            continue
        except WireFormatError as exc:
            wrong.append((cut, type(exc).__name__))
        else:
            wrong.append((cut, "decoded"))
    assert not wrong, f"truncations not raising TruncatedError: {wrong[:10]}"


def _region_error(byte):
    """The error a single-bit flip at ``byte`` must raise (WireFormatError where several are possible)."""
    if byte < 4:
        return MagicError
    if byte < 6:
        return VersionError
    if 9 <= byte < 12:
        return CodecError
    if 28 <= byte < 44 or byte >= 84:  # step, seed: only the CRC covers them; the CRC field and the payload
        return ChecksumError
    return WireFormatError


@pytest.mark.parametrize("name", sorted(samples()))
def test_every_single_bit_flip_raises(name):
    buf = bytearray(samples()[name])
    wrong = []
    for bit in range(len(buf) * 8):
        byte = bit // 8
        buf[byte] ^= 1 << (bit % 8)
        want = _region_error(byte)
        try:
            wire.decode(bytes(buf))
        except want:
            pass
        except WireFormatError as exc:
            wrong.append((bit, type(exc).__name__))
        else:
            wrong.append((bit, "decoded"))
        buf[byte] ^= 1 << (bit % 8)
    assert not wrong, f"bit flips raising the wrong error or none: {wrong[:10]}"


@pytest.mark.parametrize("name", sorted(samples()))
def test_appended_bytes_raise(name):
    buf = samples()[name]
    for extra in (b"\0", b"\x01" * 7, bytes(4096), buf):
        with pytest.raises(TruncatedError):
            wire.decode(buf + extra)


# ---------------------------------------------------------------------------
# hostile headers with a valid CRC
# ---------------------------------------------------------------------------


def _base(name):
    return samples()[name]


ZSTD_STAGE = (CodecError, SizeError)

HOSTILE = [
    # (id, base sample, header changes, payload (None: keep), reserved (None: keep), error, message fragment)
    ("magic-lower", "none", {"magic": b"gcmp"}, None, None, MagicError, "magic"),
    ("magic-zero", "none", {"magic": b"\0\0\0\0"}, None, None, MagicError, "magic"),
    ("magic-pickle", "none", {"magic": b"\x80\x04\x95\x00"}, None, None, MagicError, "magic"),
    ("major-0", "none", {"major": 0}, None, None, VersionError, "version"),
    ("major-2", "none", {"major": 2}, None, None, VersionError, "version"),
    ("major-255", "none", {"major": 255}, None, None, VersionError, "version"),
    ("minor-1", "none", {"minor": 1}, None, None, VersionError, "version"),
    ("minor-255", "none", {"minor": 255}, None, None, VersionError, "version"),
    ("codec-0", "none", {"codec": 0}, None, None, CodecError, "codec"),
    ("codec-14", "none", {"codec": 14}, None, None, CodecError, "codec"),
    ("codec-127", "none", {"codec": 127}, None, None, CodecError, "codec"),
    ("codec-128", "none", {"codec": 128}, None, None, CodecError, "codec"),
    ("codec-255", "none", {"codec": 255}, None, None, CodecError, "codec"),
    ("dtype-4", "none", {"dtype": 4}, None, None, CodecError, "dtype"),
    ("dtype-255", "none", {"dtype": 255}, None, None, CodecError, "dtype"),
    ("reserved-0", "none", {}, None, b"\x01\0\0", CodecError, "reserved"),
    ("reserved-1", "none", {}, None, b"\0\x80\0", CodecError, "reserved"),
    ("reserved-2", "none", {}, None, b"\0\0\xff", CodecError, "reserved"),
    ("flag-4", "none", {"flags": 4}, None, None, CodecError, "flags"),
    ("flag-8", "topk", {"flags": 8}, None, None, CodecError, "flags"),
    ("flag-80", "none", {"flags": 0x80}, None, None, CodecError, "flags"),
    ("flag-ff", "topk", {"flags": 0xFF}, None, None, CodecError, "flags"),
    ("bitmap-on-none", "none", {"flags": BITMAP}, None, None, CodecError, "bitmap"),
    ("bitmap-on-qsgd", "qsgd", {"flags": BITMAP}, None, None, CodecError, "bitmap"),
    ("bitmap-on-powersgd", "powersgd", {"flags": BITMAP}, None, None, CodecError, "bitmap"),
    ("bitmap-on-randomk", "randomk", {"flags": BITMAP}, None, None, CodecError, "bitmap"),
    ("bitmap-zstd-on-natural", "natural", {"flags": BITMAP | ZSTD}, None, None, CodecError, "bitmap"),
    ("numel-2**63", "none", {"numel": 1 << 63}, None, None, SizeError, "numel"),
    ("numel-2**64-1", "none", {"numel": U64}, None, None, SizeError, "numel"),
    ("numel-2**40+1", "none", {"numel": (1 << 40) + 1}, None, None, SizeError, "numel"),
    ("numel-2**40-inconsistent", "none", {"numel": 1 << 40}, None, None, SizeError, "raw_len"),
    ("numel+1", "none", {"numel": 65}, None, None, SizeError, "raw_len"),
    ("numel-1", "none", {"numel": 63}, None, None, SizeError, "raw_len"),
    ("count-on-dense", "none", {"count": 1}, None, None, SizeError, "count"),
    ("count-on-qsgd", "qsgd", {"count": 3}, None, None, SizeError, "count"),
    ("count>numel-topk", "topk", {"count": 65}, None, None, SizeError, "count"),
    ("count>numel-randomk", "randomk", {"count": 65}, None, None, SizeError, "count"),
    ("count-2**64-1", "topk", {"count": U64}, None, None, SizeError, "count"),
    ("unused-param-none", "none", {"p0": 1}, None, None, CodecError, "param"),
    ("unused-param-sign", "sign", {"p1": 1}, None, None, CodecError, "param"),
    ("unused-param-qsgd", "qsgd", {"p3": 7}, None, None, CodecError, "param"),
    ("unused-param-powersgd", "powersgd", {"p3": 1}, None, None, CodecError, "param"),
    ("qsgd-bits-3", "qsgd", {"p2": 3}, None, None, SizeError, "bits"),
    ("qsgd-bits-8-for-4-levels", "qsgd", {"p2": 8}, None, None, SizeError, "bits"),
    ("qsgd-levels-0", "qsgd", {"p0": 0}, None, None, SizeError, "levels"),
    ("qsgd-levels-128", "qsgd", {"p0": 128}, None, None, SizeError, "levels"),
    ("qsgd-levels-2**32-1", "qsgd", {"p0": 2**32 - 1}, None, None, SizeError, "levels"),
    ("qsgd-bucket-12", "qsgd", {"p1": 12}, None, None, SizeError, "bucket"),
    ("qsgd-bucket-0", "qsgd", {"p1": 0}, None, None, SizeError, "bucket"),
    ("qsgd-bucket-other", "qsgd", {"p1": 8}, None, None, SizeError, "raw_len"),
    ("uniform-bits-3", "uniform", {"p0": 3}, None, None, SizeError, "bits"),
    ("uniform-bits-0", "uniform", {"p0": 0}, None, None, SizeError, "bits"),
    ("uniform-bucket-12", "uniform", {"p1": 12}, None, None, SizeError, "bucket"),
    ("uniform-mode-2", "uniform", {"p2": 2}, None, None, SizeError, "mode"),
    ("uniform-stochastic-2", "uniform", {"p3": 2}, None, None, SizeError, "stochastic"),
    ("uniform-absmax-1bit", "uniform_b1", {"p2": 1}, None, None, SizeError, "abs-max"),
    ("sign-bucket-12", "sign", {"p0": 12}, None, None, SizeError, "bucket"),
    ("sign-bucket-4", "sign", {"p0": 4}, None, None, SizeError, "bucket"),
    ("terngrad-bucket-12", "terngrad", {"p0": 12}, None, None, SizeError, "bucket"),
    ("terngrad-bucket-2**32-4", "terngrad", {"p0": 2**32 - 4}, None, None, SizeError, "bucket"),
    ("powersgd-rank>min", "powersgd", {"p2": 9}, None, None, SizeError, "rank"),
    ("powersgd-rank-0", "powersgd", {"p2": 0}, None, None, SizeError, "rank"),
    ("powersgd-rank-2**32-1", "powersgd", {"p2": 2**32 - 1}, None, None, SizeError, "rank"),
    ("powersgd-rows", "powersgd", {"p0": 4, "p1": 16}, None, None, SizeError, "matrix"),
    ("powersgd-empty-rank", "powersgd_empty", {"p2": 1}, None, None, SizeError, "rank"),
    ("index_len-on-dense", "none", {"index_len": 4}, None, None, SizeError, "index_len"),
    ("index_len-on-randomk", "randomk", {"index_len": 6}, None, None, SizeError, "index_len"),
    ("index_len<count", "topk", {"index_len": 2}, None, None, SizeError, "index_len"),
    ("index_len>10count", "topk", {"index_len": 41}, None, None, SizeError, "index_len"),
    ("index_len-2**64-1", "topk", {"index_len": U64}, None, None, SizeError, "index_len"),
    ("bitmap-index_len", "topk_bitmap", {"index_len": 9}, None, None, SizeError, "bitmap"),
    ("bitmap-index_len-2**64-1", "topk_bitmap", {"index_len": U64}, None, None, SizeError, "bitmap"),
    ("raw_len+1", "none", {"raw_len": 257}, None, None, SizeError, "raw_len"),
    ("raw_len-1", "none", {"raw_len": 255}, None, None, SizeError, "raw_len"),
    ("raw_len-2**64-1", "none", {"raw_len": U64}, None, None, SizeError, "raw_len"),
    ("payload_len-2**64-1", "none", {"payload_len": U64}, None, None, SizeError, "payload_len"),
    ("payload_len!=raw_len", "none", {"payload_len": 255}, None, None, SizeError, "payload_len"),
    ("payload_len-0", "qsgd", {"payload_len": 0}, b"", None, SizeError, "payload_len"),
    ("zstd-payload_len==raw_len", "none", {"flags": ZSTD}, None, None, SizeError, "zstd"),
    ("zstd-payload_len>raw_len", "none_zstd", {"payload_len": 4 * 300 + 1}, None, None, SizeError, "zstd"),
    ("zstd-payload_len-0", "none_zstd", {"payload_len": 0}, b"", None, SizeError, "zstd"),
    ("consistent-but-longer", "none", {"numel": 65, "raw_len": 260, "payload_len": 260}, None, None, TruncatedError,
     "exactly"),
    ("consistent-but-shorter", "none", {"numel": 63, "raw_len": 252, "payload_len": 252}, None, None, TruncatedError,
     "exactly"),
    ("huge-consistent", "none", {"numel": 1 << 40, "raw_len": 4 << 40, "payload_len": 4 << 40}, None, None,
     TruncatedError, "exactly"),
    # the zstd stage itself (decode only): an invalid frame is a CodecError, one of the wrong size a SizeError
    ("zstd-garbage", "none", {"flags": ZSTD, "payload_len": 50}, b"\x28\xb5\x2f\xfd" + bytes(range(46)), None,
     ZSTD_STAGE, "zstd"),
    ("zstd-not-a-frame", "none", {"flags": ZSTD, "payload_len": 200}, bytes(200), None, ZSTD_STAGE, "zstd"),
    ("zstd-bitmap-garbage", "topk_bitmap", {"flags": ZSTD | BITMAP, "payload_len": 64}, bytes(range(64)), None,
     ZSTD_STAGE, "zstd"),
]


def _hostile_cases():
    return [pytest.param(*case[1:], id=case[0]) for case in HOSTILE]


@pytest.mark.parametrize("base, changes, payload, reserved, error, fragment", _hostile_cases())
def test_hostile_header_with_valid_crc(base, changes, payload, reserved, error, fragment):
    buf = rewrite(_base(base), payload, reserved=reserved, **changes)
    assert zlib.crc32(buf[HEADER_SIZE:], zlib.crc32(buf[:84] + b"\0\0\0\0")) == header_fields(buf)["crc"]
    with pytest.raises(error) as info:
        wire.decode(buf)
    assert fragment.lower() in str(info.value).lower()
    if error is ZSTD_STAGE:  # the zstd stage is decode's job: peek accepts the header
        assert wire.peek(buf).flags & ZSTD
    else:  # peek stops at the same point
        with pytest.raises(error):
            wire.peek(buf)


def test_unknown_dtype_codec_and_flags_for_every_value():
    base = _base("none")
    known = set(CODEC_IDS.values()) | {c.codec_id for c in wire.CODECS.values()}
    for cid in range(256):
        if cid not in known:
            with pytest.raises(CodecError):
                wire.decode(rewrite(base, codec=cid))
    for dtype in range(4, 256):
        with pytest.raises(CodecError):
            wire.decode(rewrite(base, dtype=dtype))
    for flags in range(4, 256):
        with pytest.raises(CodecError):
            wire.decode(rewrite(_base("topk"), flags=flags))
    for major in range(256):
        if major != 1:
            with pytest.raises(VersionError):
                wire.decode(rewrite(base, major=major))
    for minor in range(1, 256):
        with pytest.raises(VersionError):
            wire.decode(rewrite(base, minor=minor))


def test_minor_versions_only_grow(monkeypatch):
    """A reader of minor m reads minors <= m and refuses newer ones (simulated 1.2 reader)."""
    monkeypatch.setattr(wire, "MINOR", 2)
    base = _base("none")
    for minor in (0, 1, 2):
        assert wire.decode(rewrite(base, minor=minor)).numel == 64
    for minor in (3, 255):
        with pytest.raises(VersionError):
            wire.decode(rewrite(base, minor=minor))


@pytest.mark.parametrize(
    "faults, error",
    [
        ({"magic": b"XXXX", "major": 9}, MagicError),
        ({"major": 9, "codec": 200}, VersionError),
        ({"codec": 200, "numel": U64}, CodecError),
        ({"dtype": 9, "numel": U64}, CodecError),
        ({"flags": 0x40, "numel": U64}, CodecError),
        ({"numel": U64, "payload_len": 1}, SizeError),
        ({"payload_len": 1000, "crc": 1}, SizeError),  # a size mismatch is found before the checksum
    ],
)
def test_validation_order(faults, error):
    faults = dict(faults)
    crc = faults.pop("crc", None)
    f = header_fields(_base("none"))
    f.update(faults)
    buf = make_packet(f, _base("none")[HEADER_SIZE:], crc=crc)
    with pytest.raises(error):
        wire.decode(buf)


def test_truncation_is_found_before_the_checksum_and_checksum_before_indices():
    buf = sparse_packet(100, [3, 7, 50])
    bad_crc = buf[:84] + struct.pack("<I", header_fields(buf)["crc"] ^ 1) + buf[HEADER_SIZE:]
    with pytest.raises(TruncatedError):
        wire.decode(bad_crc[:-1])
    bad_index = rewrite(buf, b"\x80\x00\x00" + buf[HEADER_SIZE + 3:])  # non-canonical first varint, CRC valid
    with pytest.raises(IndexError_):
        wire.decode(bad_index)
    corrupt = bytearray(bad_index)
    corrupt[HEADER_SIZE] ^= 0x01  # now the CRC does not match either: ChecksumError wins
    with pytest.raises(ChecksumError):
        wire.decode(bytes(corrupt))


def test_expected_numel():
    buf = _base("topk")
    assert wire.decode(buf, expected_numel=64).numel == 64
    for wrong in (0, 63, 65, 1 << 40):
        with pytest.raises(SizeError, match="expected numel"):
            wire.decode(buf, expected_numel=wrong)
        with pytest.raises(SizeError):
            wire.peek(buf, expected_numel=wrong)
    # checked before the payload sizes and the checksum
    with pytest.raises(SizeError, match="expected numel"):
        wire.decode(rewrite(buf, numel=1 << 40), expected_numel=64)


# ---------------------------------------------------------------------------
# sparse index sections with a valid CRC
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "numel, index_bytes, count, bitmap, error",
    [
        (10, varint([10]), 1, False, IndexError_),  # index == numel
        (10, varint([3, 6]), 2, False, IndexError_),  # second index 3 + 1 + 6 = 10 == numel
        (1 << 40, varint([(1 << 40) - 1, 0]), 2, False, IndexError_),  # idx >= numel at 2**40
        (1 << 40, varint([U64, 0]), 2, False, IndexError_),  # a gap of 2**64 - 1
        (100, b"\x80" * 10 + b"\x01" + b"\x00", 2, False, IndexError_),  # an 11-byte varint
        (100, b"\x80" * 9 + b"\x02" + b"\x00", 2, False, IndexError_),  # 10th byte > 1: over 64 bits
        (100, b"\xff" * 10 + b"\x00", 2, False, IndexError_),  # too long, continuation on the 10th byte
        (100, b"\x80\x00", 1, False, IndexError_),  # non-canonical 0
        (100, b"\x85\x80\x00", 1, False, IndexError_),  # non-canonical 5
        (100, b"\x00\x00", 1, False, IndexError_),  # trailing byte after the last varint
        (100, b"\x00" * 5, 3, False, IndexError_),  # two trailing bytes
        (100, b"\x80", 1, False, IndexError_),  # truncated varint
        (100, b"\x00\x80", 2, False, IndexError_),  # truncated second varint
        (100, b"\x80\x80", 2, False, IndexError_),  # truncated, never terminates
        (16, b"\x0f\x00", 3, True, IndexError_),  # bitmap popcount 4 != 3
        (16, b"\x03\x00", 3, True, IndexError_),  # bitmap popcount 2 != 3
        (16, b"\x00\x00", 1, True, IndexError_),  # empty bitmap, count 1
        (10, b"\x01\x04", 2, True, IndexError_),  # padding bit 10 set (popcount matches)
        (10, b"\x01\x80", 2, True, IndexError_),  # padding bit 15 set
        (10, b"\x01\x02", 3, True, IndexError_),  # count 3, two bits
        (10, b"\xff\x03\x00", 10, True, SizeError),  # bitmap one byte too long
        (10, b"\xff", 8, True, SizeError),  # bitmap one byte too short
        (4, b"\x0f", 5, True, SizeError),  # count > numel
        (0, b"", 1, False, SizeError),  # count > numel = 0
        (5, b"\x00" * 11, 1, False, SizeError),  # index_len > 10 * count
    ],
)
def test_hostile_index_section(numel, index_bytes, count, bitmap, error):
    buf = sparse_packet(numel, index_bytes=index_bytes, count=count, bitmap=bitmap)
    with pytest.raises(error):
        wire.decode(buf)
    for codec in ("dgc", "threshold"):
        with pytest.raises(error):
            wire.decode(rewrite(buf, codec=CODEC_IDS[codec]))


@pytest.mark.parametrize("bitmap", [False, True])
def test_valid_hand_built_index_sections(bitmap):
    for numel, idx in ((1, [0]), (8, [7]), (9, [8]), (100, [0, 1, 2, 99]), (1000, list(range(0, 1000, 3)))):
        d = wire.decode(sparse_packet(numel, idx, bitmap=bitmap))
        assert list(d.arrays["indices"]) == idx
        assert_valid(d)
    # varint: the largest index a 2**40 vector can carry, and a 10-byte varint for a gap >= 2**63 is refused as >= numel
    d = wire.decode(sparse_packet(1 << 40, [(1 << 40) - 1]))
    assert list(d.arrays["indices"]) == [(1 << 40) - 1]


# ---------------------------------------------------------------------------
# the zstd stage with a valid CRC
# ---------------------------------------------------------------------------


def _zstd_packet(base_name, frame):
    return rewrite(_base(base_name), frame, flags=header_fields(_base(base_name))["flags"] | ZSTD, payload_len=len(frame))


def test_zstd_frame_of_the_wrong_size():
    raw = _base("none")[HEADER_SIZE:]  # 256 bytes
    for content in (raw[:-4], raw + b"\0\0\0\0", b"", raw[:1]):
        frame = zstandard.ZstdCompressor().compress(content)
        if len(frame) >= len(raw):
            continue
        with pytest.raises((SizeError, CodecError)):
            wire.decode(_zstd_packet("none", frame))
    # the right size but a different content decodes (the CRC covers the compressed form)
    frame = zstandard.ZstdCompressor().compress(bytes(256))
    d = wire.decode(_zstd_packet("none", frame))
    assert not d.arrays["values"].any()


def test_zstd_garbage_never_crashes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 255))
        junk = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        if rng.random() < 0.5:
            junk = b"\x28\xb5\x2f\xfd" + junk
        try:
            d = wire.decode(_zstd_packet("none", junk[:255]))
        except WireFormatError:
            continue
        assert_valid(d)


def test_zstd_trailing_bytes_after_the_frame_are_refused():
    """The payload must be exactly one zstd frame (docs/wire-format.md, section 5)."""
    d = wire.decode(_base("none_zstd"))
    frame = zstandard.ZstdCompressor().compress(d.arrays["values"].tobytes())
    assert wire.decode(_zstd_packet("none_zstd", frame)).numel == 300
    accepted = []
    for label, extra in (("trailing zeros", b"\0\0\0"), ("second frame", zstandard.ZstdCompressor().compress(b"")),
                         ("skippable frame", b"\x50\x2a\x4d\x18\0\0\0\0")):
        try:
            wire.decode(_zstd_packet("none_zstd", frame + extra))
        except WireFormatError:
            continue
        accepted.append(label)
    assert not accepted, f"decode accepted a zstd payload with {accepted} after the frame"


def test_zstd_frame_claiming_a_huge_content_size_raises_wireformaterror():
    """A 100-byte packet whose zstd frame header claims 2**40 bytes must raise WireFormatError, not MemoryError."""
    frame = frame_with_content_size(1 << 40, bytes(100))
    buf = _zstd_packet("none", frame)  # numel 64, raw_len 256: a perfectly ordinary header
    with pytest.raises(WireFormatError):
        wire.decode(buf, expected_numel=64)


def _peak_during(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            fn()
        except WireFormatError:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


LIMIT = 8 << 20  # bytes: far above anything a hostile small packet justifies, far below the sizes it claims


def test_zstd_frame_content_size_does_not_drive_allocation():
    """raw_len (256) bounds the output buffer, not the frame header's claimed content size (256 MiB)."""
    frame = frame_with_content_size(1 << 28, bytes(100))
    buf = _zstd_packet("none", frame)
    peak = _peak_during(lambda: wire.decode(buf, expected_numel=64))
    assert peak < LIMIT, f"decoding a {len(buf)}-byte packet allocated {peak} bytes"


def test_zstd_frame_without_content_size_does_not_preallocate_raw_len():
    """A header claiming raw_len 256 MiB with a tiny streaming frame must fail without allocating 256 MiB."""
    numel = 1 << 26
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(100))
    f = fields_for("none", numel, flags=ZSTD, raw_len=4 * numel, payload_len=len(frame))
    buf = make_packet(f, frame)
    peak = _peak_during(lambda: wire.decode(buf))
    assert peak < LIMIT, f"decoding a {len(buf)}-byte packet allocated {peak} bytes"


# ---------------------------------------------------------------------------
# hostile sizes: nothing big is allocated
# ---------------------------------------------------------------------------

HUGE = 1 << 40


def _huge_cases():
    garbage = b"\x28\xb5\x2f\xfd" + bytes(range(60))
    return [
        ("none-2**40-short", make_packet(fields_for("none", HUGE, raw_len=4 * HUGE, payload_len=16), bytes(16))),
        ("none-2**40-consistent-sizes", make_packet(fields_for("none", HUGE, raw_len=4 * HUGE), bytes(16))),
        ("none-2**63", make_packet(fields_for("none", 1 << 63, raw_len=4 << 63 & U64), bytes(16))),
        ("natural-2**40", make_packet(fields_for("natural", HUGE, raw_len=HUGE + HUGE // 8), bytes(16))),
        ("topk-bitmap-2**40", make_packet(fields_for("topk", HUGE, HUGE, flags=BITMAP, index_len=HUGE // 8,
                                                     raw_len=HUGE // 8 + 4 * HUGE), bytes(16))),
        ("topk-varint-2**40", make_packet(fields_for("topk", HUGE, HUGE, index_len=HUGE, raw_len=5 * HUGE), bytes(16))),
        ("randomk-2**40", make_packet(fields_for("randomk", HUGE, HUGE, raw_len=4 * HUGE), bytes(16))),
        ("powersgd-2**40", make_packet(fields_for("powersgd", HUGE, p=(1 << 20, 1 << 20, 1024, 0),
                                                  raw_len=4 * 1024 * (2 << 20)), bytes(16))),
        ("qsgd-2**40", make_packet(fields_for("qsgd", HUGE, p=(127, 8, 8, 0), raw_len=HUGE + 4 * HUGE // 8), bytes(16))),
        ("none-2**40-zstd-garbage", make_packet(fields_for("none", HUGE, flags=ZSTD, raw_len=4 * HUGE,
                                                           payload_len=len(garbage)), garbage)),
        ("randomk-2**40-zstd-garbage", make_packet(fields_for("randomk", HUGE, HUGE, flags=ZSTD, raw_len=4 * HUGE,
                                                              payload_len=len(garbage)), garbage)),
        ("topk-2**40-bitmap-zstd-garbage", make_packet(fields_for("topk", HUGE, 5, flags=ZSTD | BITMAP, index_len=HUGE // 8,
                                                                  raw_len=HUGE // 8 + 20, payload_len=len(garbage)),
                                                       garbage)),
    ]


@pytest.mark.parametrize("buf", [pytest.param(b, id=i) for i, b in _huge_cases()])
def test_hostile_sizes_raise_before_allocating(buf):
    def run():
        with pytest.raises(WireFormatError):
            wire.decode(buf)

    peak = _peak_during(run)
    assert peak < LIMIT, f"decoding a {len(buf)}-byte packet allocated {peak} bytes before failing"


def test_valid_packets_for_huge_vectors_allocate_only_what_they_carry():
    """A 2**40-entry top-1 or random-1 vector is a legitimate 100-byte packet; decoding it stays small."""
    topk = sparse_packet(HUGE, [HUGE - 5, HUGE - 1])
    randomk = make_packet(fields_for("randomk", HUGE, 3, seed=99, raw_len=12), bytes(12))
    for buf in (topk, randomk):
        out = {}
        peak = _peak_during(lambda b=buf, o=out: o.setdefault("c", wire.decode(b)))
        c = out["c"]
        assert peak < LIMIT
        assert c.numel == HUGE and c.count == len(c.arrays["indices"])
        assert_valid(c, decompress=False)
        assert c.arrays["indices"][-1] < HUGE


# ---------------------------------------------------------------------------
# fuzzing
# ---------------------------------------------------------------------------


def _decode_or_wire_error(buf, expected_numel=None):
    try:
        c = wire.decode(buf, expected_numel=expected_numel)
    except WireFormatError:
        return None
    assert_valid(c)
    return c


@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    _decode_or_wire_error(data)


@given(st.binary(max_size=300), st.sampled_from([b"GCMP\x01\x00", b"GCMP\x01\x00\x01\x00\x00\0\0\0", b"GCMP"]))
def test_fuzz_random_bytes_after_a_valid_prefix(data, prefix):
    _decode_or_wire_error(prefix + data)


@st.composite
def mutated(draw):
    buf = bytearray(draw(st.sampled_from(sorted(samples().items())))[1])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate", "swap"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del buf[pos:pos + draw(st.integers(1, 16))]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "truncate":
            del buf[pos:]
        elif op == "swap" and len(buf) > 1:
            other = draw(st.integers(0, len(buf) - 1))
            buf[pos], buf[other] = buf[other], buf[pos]
    return bytes(buf)


@given(mutated())
def test_fuzz_mutations_of_valid_packets(buf):
    _decode_or_wire_error(buf)


_INTERESTING = [0, 1, 2, 3, 4, 7, 8, 12, 63, 64, 65, 127, 128, 255, 256, 1000, 2**31, 2**32 - 1, 2**32, 2**40,
                2**40 + 1, 2**63, U64]
_WIDTH = {"major": 8, "minor": 8, "codec": 8, "flags": 8, "dtype": 8, "p0": 32, "p1": 32, "p2": 32, "p3": 32}


@st.composite
def recrc_mutated(draw):
    """A valid packet with header fields and/or payload bytes changed, then the CRC recomputed."""
    buf = draw(st.sampled_from(sorted(samples().items())))[1]
    f = header_fields(buf)
    payload = bytearray(buf[HEADER_SIZE:])
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(["major", "minor", "codec", "flags", "dtype", "numel", "count", "seed", "p0", "p1",
                                      "p2", "p3", "index_len", "raw_len", "payload_len", "payload"]))
        if field == "payload":
            if payload:
                payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
            continue
        bits = _WIDTH.get(field, 64)
        how = draw(st.sampled_from(["interesting", "delta", "random"]))
        if how == "interesting":
            value = draw(st.sampled_from(_INTERESTING))
        elif how == "delta":
            value = f[field] + draw(st.integers(-9, 9))
        else:
            value = draw(st.integers(0, (1 << bits) - 1))
        f[field] = value % (1 << bits)
    return make_packet(f, bytes(payload))


@given(recrc_mutated())
def test_fuzz_hostile_headers_with_valid_crc(buf):
    c = _decode_or_wire_error(buf)
    ref = _ref_or_none(buf)
    assert (c is None) == (ref is None), f"gcomp.wire {'rejected' if c is None else 'accepted'} a packet the spec " \
                                         f"{'accepts' if c is None else 'rejects'}"
    if c is not None:
        _assert_same(c, ref)


@given(numel=st.integers(0, 300), count=st.integers(0, 40), bitmap=st.booleans(), data=st.data())
def test_fuzz_index_sections_with_valid_crc(numel, count, bitmap, data):
    if bitmap:
        section = data.draw(st.binary(min_size=(numel + 7) // 8, max_size=(numel + 7) // 8))
    else:
        section = data.draw(st.lists(st.sampled_from([0x00, 0x01, 0x05, 0x7F, 0x80, 0x81, 0xFF]), min_size=count,
                                     max_size=max(count, min(10 * count, count + 12))).map(bytes))
    buf = sparse_packet(numel, index_bytes=section, count=count, bitmap=bitmap)
    c = _decode_or_wire_error(buf)
    ref = _ref_or_none(buf)
    assert (c is None) == (ref is None)
    if c is not None:
        _assert_same(c, ref)
        assert np.all(np.diff(c.arrays["indices"]) > 0)


@given(index=st.lists(st.integers(0, 10**6), max_size=30, unique=True), bitmap=st.booleans())
def test_fuzz_any_valid_index_set_round_trips_by_hand(index, bitmap):
    index = sorted(index)
    numel = (index[-1] + 1 + len(index)) if index else 5
    if bitmap and numel > 20000:
        numel = 20000
        index = [i for i in index if i < numel]
    d = wire.decode(sparse_packet(numel, index, bitmap=bitmap))
    assert list(d.arrays["indices"]) == index


# ---------------------------------------------------------------------------
# an independent reference decoder, written from docs/wire-format.md
# ---------------------------------------------------------------------------


class RefError(Exception):
    pass


def _mshape(n):
    if n == 0:
        return 0, 0
    rows = max(1, math.isqrt(n))
    return rows, -(-n // rows)


def _nb(n, b):
    return -(-n // b)


def _pk(n, w):
    return -(-n * w // 8)


REF_CODECS = {
    1: ("none", 0, "dense", lambda n, k, p: [("values", "<f4", n)]),
    2: ("fp16", 0, "dense", lambda n, k, p: [("values", "<f2", n)]),
    3: ("bf16", 0, "dense", lambda n, k, p: [("values", "<u2", n)]),
    4: ("topk", 0, "sparse", lambda n, k, p: [("values", "<f4", k)]),
    5: ("dgc", 0, "sparse", lambda n, k, p: [("values", "<f4", k)]),
    6: ("randomk", 0, "regen", lambda n, k, p: [("values", "<f4", k)]),
    7: ("threshold", 0, "sparse", lambda n, k, p: [("values", "<f4", k)]),
    8: ("qsgd", 3, "dense", lambda n, k, p: [("codes", "u1", _pk(n, p[2])), ("norms", "<f4", _nb(n, p[1]))]),
    9: ("uniform", 4, "dense", lambda n, k, p: [("codes", "u1", _pk(n, p[0])), ("scales", "<f4", _nb(n, p[1])),
                                                ("offsets", "<f4", _nb(n, p[1]))]),
    10: ("sign", 1, "dense", lambda n, k, p: [("codes", "u1", _pk(n, 1)), ("scales", "<f4", _nb(n, p[0]))]),
    11: ("terngrad", 1, "dense", lambda n, k, p: [("codes", "u1", _pk(n, 2)), ("scales", "<f4", _nb(n, p[0]))]),
    12: ("natural", 0, "dense", lambda n, k, p: [("exponents", "u1", n), ("signs", "u1", _pk(n, 1))]),
    13: ("powersgd", 3, "dense", lambda n, k, p: [("p", "<f4", p[0] * p[2]), ("q", "<f4", p[1] * p[2])]),
}
PARAM_NAMES = {"qsgd": ("levels", "bucket_size", "bits"), "uniform": ("bits", "bucket_size", "mode", "stochastic"),
               "sign": ("bucket_size",), "terngrad": ("bucket_size",), "powersgd": ("rows", "cols", "rank")}


def _ref_params_ok(name, n, k, p):
    kind = REF_CODECS[CODEC_IDS[name]][2]
    if kind == "dense" and k:
        return False
    if k > n:
        return False
    bucket_ok = p[1] >= 8 and p[1] % 8 == 0 if name in ("qsgd", "uniform") else p[0] >= 8 and p[0] % 8 == 0
    if name == "qsgd":
        return bucket_ok and 1 <= p[0] <= 127 and p[2] == (2 if p[0] == 1 else 4 if p[0] <= 7 else 8)
    if name == "uniform":
        return bucket_ok and p[0] in (1, 2, 4, 8) and p[2] in (0, 1) and p[3] in (0, 1) and not (p[2] == 1 and p[0] == 1)
    if name in ("sign", "terngrad"):
        return bucket_ok
    if name == "powersgd":
        rows, cols = _mshape(n)
        if (p[0], p[1]) != (rows, cols):
            return False
        return 1 <= p[2] <= min(rows, cols, 1024) if n else p[2] == 0
    return True


def _ref_varint(section, count, n):
    out, pos, prev = [], 0, -1
    for _ in range(count):
        g = shift = used = 0
        while True:
            if pos >= len(section) or used == 10:
                raise RefError("truncated or too long varint")
            b = section[pos]
            pos += 1
            used += 1
            g |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                if used > 1 and b == 0:
                    raise RefError("non-canonical varint")
                break
        if g >= 1 << 64 or prev + 1 + g >= n:
            raise RefError("index out of range")
        prev += 1 + g
        out.append(prev)
    if pos != len(section):
        raise RefError("trailing bytes")
    return out


def _ref_bitmap(section, count, n):
    if len(section) != -(-n // 8):
        raise RefError("bitmap length")
    bits = np.unpackbits(np.frombuffer(section, np.uint8), bitorder="little")
    if bits[n:].any() or int(bits.sum()) != count:
        raise RefError("bitmap padding or popcount")
    return np.flatnonzero(bits).tolist()


def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & U64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & U64
    return x ^ (x >> 31)


def _ref_randomk(n, k, seed):
    state, chosen = seed, set()
    for j in range(n - k, n):
        bound = j + 1
        while True:
            state = (state + 1) & U64
            z = _splitmix64(state)
            if bound < 1 << 32:
                m = (z >> 32) * bound
                if (m & 0xFFFFFFFF) >= ((1 << 32) - bound) % bound:
                    t = m >> 32
                    break
            else:
                m = z * bound
                if (m & U64) >= ((1 << 64) - bound) % bound:
                    t = m >> 64
                    break
        chosen.add(j if t in chosen else t)
    return sorted(chosen)


def _ref_decode(buf):
    buf = bytes(buf)
    if len(buf) < HEADER_SIZE:
        raise RefError("short")
    f = header_fields(buf)
    if f["magic"] != b"GCMP" or f["major"] != 1 or f["minor"] != 0 or f["codec"] not in REF_CODECS or f["dtype"] > 3:
        raise RefError("magic, version, codec or dtype")
    if buf[9:12] != b"\0\0\0" or f["flags"] & ~3:
        raise RefError("reserved or flags")
    name, nparams, kind, arrays = REF_CODECS[f["codec"]]
    if f["flags"] & BITMAP and kind != "sparse":
        raise RefError("bitmap on a codec without indices")
    n, k = f["numel"], f["count"]
    p = [f["p0"], f["p1"], f["p2"], f["p3"]]
    if n > 1 << 40 or any(p[nparams:]) or not _ref_params_ok(name, n, k, p):
        raise RefError("sizes or params")
    if kind == "sparse":
        want = -(-n // 8) if f["flags"] & BITMAP else None
        if (want is not None and f["index_len"] != want) or (want is None and not k <= f["index_len"] <= 10 * k):
            raise RefError("index_len")
    elif f["index_len"]:
        raise RefError("index_len")
    specs = arrays(n, k, p)
    if f["raw_len"] != f["index_len"] + sum(length * np.dtype(dt).itemsize for _, dt, length in specs):
        raise RefError("raw_len")
    if f["flags"] & ZSTD:
        if not 0 < f["payload_len"] < f["raw_len"]:
            raise RefError("payload_len")
    elif f["payload_len"] != f["raw_len"]:
        raise RefError("payload_len")
    if len(buf) != HEADER_SIZE + f["payload_len"]:
        raise RefError("length")
    payload = buf[HEADER_SIZE:]
    if zlib.crc32(payload, zlib.crc32(buf[:84] + b"\0\0\0\0")) != f["crc"]:
        raise RefError("crc")
    raw = payload
    if f["flags"] & ZSTD:
        try:
            if zstandard.get_frame_parameters(payload).content_size != f["raw_len"]:
                raise RefError("zstd content size")
        except zstandard.ZstdError as exc:
            raise RefError("zstd frame header") from exc
        dobj = zstandard.ZstdDecompressor().decompressobj()
        try:
            raw = dobj.decompress(payload)
        except zstandard.ZstdError as exc:
            raise RefError("zstd") from exc
        if not dobj.eof or dobj.unused_data or len(raw) != f["raw_len"]:
            raise RefError("zstd size")
    out = {}
    pos = 0
    if kind == "sparse":
        section = raw[:f["index_len"]]
        out["indices"] = (_ref_bitmap if f["flags"] & BITMAP else _ref_varint)(section, k, n)
        pos = f["index_len"]
    for aname, dt, length in specs:
        out[aname] = np.frombuffer(raw, dtype=dt, count=length, offset=pos)
        pos += length * np.dtype(dt).itemsize
    if kind == "regen":
        out["indices"] = _ref_randomk(n, k, f["seed"])
    params = dict(zip(PARAM_NAMES.get(name, ()), p, strict=False))
    return {"codec": name, "numel": n, "count": k, "dtype": DTYPES[f["dtype"]], "step": f["step"], "seed": f["seed"],
            "params": params, "arrays": out}


def _ref_or_none(buf):
    try:
        return _ref_decode(buf)
    except RefError:
        return None


def _assert_same(c, ref):
    assert (c.codec, c.numel, c.count, c.dtype, c.step, c.seed, c.params) == (
        ref["codec"], ref["numel"], ref["count"], ref["dtype"], ref["step"], ref["seed"], ref["params"])
    assert set(c.arrays) == set(ref["arrays"])
    for name, a in ref["arrays"].items():
        if name == "indices":
            assert c.arrays[name].tolist() == list(a)
        else:
            assert c.arrays[name].reshape(-1).tobytes() == a.tobytes()


def _unpack(codes, n, w):
    bits = np.unpackbits(np.frombuffer(codes, np.uint8), bitorder="little")[: n * w].reshape(n, w).astype(np.int64)
    return (bits << np.arange(w)).sum(axis=1)


def _ref_values(r):
    """The float64 values of a reference-decoded packet (docs/wire-format.md, section 3.1)."""
    n, a, p, name = r["numel"], r["arrays"], r["params"], r["codec"]
    if name == "none":
        return a["values"].astype(np.float64)
    if name == "fp16":
        return a["values"].astype(np.float64)
    if name == "bf16":
        return (a["values"].astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if name in ("topk", "dgc", "randomk", "threshold"):
        out = np.zeros(n)
        out[np.array(a["indices"], np.int64)] = a["values"]
        return out
    if name == "powersgd":
        if n == 0:
            return np.zeros(0)
        pm = a["p"].astype(np.float64).reshape(p["rows"], p["rank"])
        qm = a["q"].astype(np.float64).reshape(p["cols"], p["rank"])
        return (pm @ qm.T).reshape(-1)[:n]
    if name == "natural":
        e = a["exponents"].astype(np.int64)
        s = _unpack(a["signs"].tobytes(), n, 1)
        mag = np.where(e == 0, 0.0, np.exp2(e.astype(np.float64) - 127))
        mag[e == 255] = np.nan
        return np.where(s == 1, -mag, mag)
    bucket = p["bucket_size"]

    def per(v):
        return np.repeat(v.astype(np.float64), bucket)[:n]

    if name == "qsgd":
        code = _unpack(a["codes"].tobytes(), n, p["bits"])
        return per(a["norms"]) / p["levels"] * (code - p["levels"])
    if name == "uniform":
        code = _unpack(a["codes"].tobytes(), n, p["bits"])
        return per(a["offsets"]) + per(a["scales"]) * code
    if name == "sign":
        code = _unpack(a["codes"].tobytes(), n, 1)
        return np.where(code == 1, 1.0, -1.0) * per(a["scales"])
    if name == "terngrad":
        code = _unpack(a["codes"].tobytes(), n, 2)
        return per(a["scales"]) * (code - 1)
    raise AssertionError(name)


def _all_packets():
    from pathlib import Path

    fixture_dir = Path(__file__).resolve().parent.parent / "fixtures" / "wire" / "v1"
    packets = dict(samples())
    packets.update({p.stem: p.read_bytes() for p in sorted(fixture_dir.glob("*.bin"))})
    return packets


def test_reference_decoder_agrees_on_every_sample_and_fixture():
    for _name, buf in _all_packets().items():
        c = wire.decode(buf)
        ref = _ref_decode(buf)
        _assert_same(c, ref)


def test_reference_values_match_decompress():
    """The value formulas of the spec (float64) agree with gcomp's float32 decompression."""
    for name, buf in _all_packets().items():
        c = wire.decode(buf)
        ref = _ref_values(_ref_decode(buf))
        got = _decompressor(c.codec).decompress(c)
        got = got.float().numpy() if not isinstance(got, np.ndarray) else got
        tol = {"float16": 2e-3, "bfloat16": 1e-2}.get(c.dtype, 2e-6)
        scale = float(np.nanmax(np.abs(ref))) if ref.size and np.isfinite(ref).any() else 1.0
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=tol, atol=tol * scale, equal_nan=True,
                                   err_msg=name)


@pytest.mark.parametrize("n, k, seed", [(0, 0, 0), (1, 1, 5), (10, 10, 1), (100, 7, 2**64 - 1), (4099, 409, 12345),
                                        ((1 << 32) + 10, 3, 7), (1 << 40, 5, 42)])
def test_reference_randomk_matches_the_kernel(n, k, seed):
    """randomk's indices are part of the format: the spec's Floyd/SplitMix64/Lemire description reproduces them."""
    from gcomp.kernels.randomk import randomk_indices

    assert randomk_indices(n, k, seed).tolist() == _ref_randomk(n, k, seed)

