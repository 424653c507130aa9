"""Shared state and helpers of the wire tests: sample packets, structural validity, memory peaks.

``samples()`` encodes every compressor configuration (plus zstd, bitmap and
empty variants) with ``gcomp.wire.encode``; ``assert_valid`` checks that a
decoded ``Compressed`` is structurally sound; ``PICKLE_CALLS`` / ``_guard`` back
the ``no_pickle`` fixture of conftest.py.
"""

import functools
import sys
import tracemalloc

import numpy as np
from _header import CODEC_IDS, U64, rewrite, sparse_packet

import gcomp
from gcomp import wire
from gcomp.compressors.base import DTYPES, Compressed
from gcomp.errors import WireFormatError

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


def _base(name):
    return samples()[name]


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
    codec.validate(c.numel, c.count, c.params)
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
# bounded memory
# ---------------------------------------------------------------------------

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
