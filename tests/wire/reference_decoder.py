"""An independent reference decoder for the gcomp wire format, written from docs/wire-format.md.

``_ref_decode`` parses a packet following the specification alone and raises
``RefError`` for anything the specification refuses; ``REF_CODECS`` is its own
codec table (section 3), ``_ref_values`` applies the value formulas of
section 3.1 in float64, and ``_ref_randomk`` regenerates randomk indices as
section 3.1 describes.  It must stay independent of ``gcomp.wire``: it does not
import ``gcomp.wire`` or its codec table (``wire.CODECS``), only the header
layout of _header.py (written from the same specification) and gcomp's dtype
names.  The wire tests compare it with ``gcomp.wire.decode`` on every sample,
every fixture and under fuzzing (``_ref_or_none``, ``_assert_same``).
"""

import math
import zlib

import numpy as np
import zstandard
from _header import BITMAP, CODEC_IDS, HEADER_SIZE, U64, ZSTD, header_fields

from gcomp.compressors.base import DTYPES


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
