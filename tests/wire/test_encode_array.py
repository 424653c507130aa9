"""wire.encode_array: the packet written once into one array, with room in front for the caller."""

import numpy as np
import pytest

import gcomp
from gcomp import wire

# topk:ratio=0.5 sends a bitmap index section, 0.01 a varint one; encode (no zstd) joins its pieces itself
SPECS = ["topk:ratio=0.01", "topk:ratio=0.5", "randomk:ratio=0.05", "qsgd", "uniform:bits=2", "sign", "fp16", "bf16",
         "natural", "terngrad", "dgc:ratio=0.05", "powersgd", "none"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("reserve", [0, 8, 13])
@pytest.mark.parametrize("zstd", [False, True])
def test_encode_array_is_encode_behind_the_reserve(spec, reserve, zstd):
    x = np.random.default_rng(5).standard_normal(4099).astype(np.float32)
    c = gcomp.compressor(spec).compress(x, step=3, key="k")
    out = wire.encode_array(c, reserve=reserve, zstd=zstd)
    assert out.dtype == np.uint8 and out.ndim == 1
    assert out[reserve:].tobytes() == wire.encode(c, zstd=zstd)
    back = wire.decode(out[reserve:], expected_numel=x.shape[0])
    np.testing.assert_array_equal(gcomp.compressor(spec).decompress(back), gcomp.compressor(spec).decompress(c))


def test_encode_returns_bytes_and_rejects_a_bad_reserve():
    c = gcomp.compressor("sign").compress(np.ones(10, np.float32))
    assert isinstance(wire.encode(c), bytes)
    for bad in (-1, 1.5, True, None):
        with pytest.raises(ValueError, match="reserve"):
            wire.encode_array(c, reserve=bad)
