"""Round trips through gcomp.wire: every configuration, length and dtype encodes, decodes and re-encodes to
the same bytes and decompresses to the same bits; ``decode`` accepts every buffer type, ``peek`` agrees with
it, and ``encode`` refuses malformed input.
"""

import numpy as np
import pytest
from _header import HEADER_SIZE, U64, ZSTD, header_fields
from _packets import CONFIGS, _bits, _compress, _input, assert_valid, samples
from hypothesis import given
from hypothesis import strategies as st

import gcomp
from gcomp import wire
from gcomp.compressors.base import DTYPES, Compressed
from gcomp.errors import CodecError, SizeError
from gcomp.testing import compressor_configs, gradients

pytestmark = pytest.mark.usefixtures("no_pickle")


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
