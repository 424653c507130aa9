"""``decompress(c, out=)`` writes the same bits as ``decompress(c)``, straight into float32 buffers."""

import numpy as np
import pytest
import torch

import gcomp
from gcomp import wire

SPECS = ["none", "fp16", "bf16", "topk:ratio=0.1", "randomk:ratio=0.1", "dgc:ratio=0.1", "qsgd", "uniform:bits=4",
         "sign", "terngrad", "natural", "powersgd:rank=2"]


def _x(n=4099, seed=0):
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    x[7] = 0.0
    return x


@pytest.mark.parametrize("spec", SPECS)
def test_numpy_and_torch_out_get_the_same_bits(spec):
    c = gcomp.compressor(spec)
    for packet in (c.compress(_x(), step=3, key=1), wire.decode(wire.encode(c.compress(_x(), step=3, key=1)))):
        want = c.decompress(packet)
        out = np.full(want.shape[0], np.nan, np.float32)
        assert c.decompress(packet, out=out) is out
        np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))
        t = torch.full((want.shape[0],), float("nan"))
        assert c.decompress(packet, out=t) is t
        np.testing.assert_array_equal(t.numpy().view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("spec", ["topk:ratio=0.1", "fp16", "qsgd"])
def test_other_out_dtypes_still_take_the_cast(spec):
    c = gcomp.compressor(spec)
    packet = c.compress(_x(), step=0, key=0)
    want = c.decompress(packet)
    out64 = np.zeros(want.shape[0], np.float64)
    assert c.decompress(packet, out=out64) is out64
    np.testing.assert_array_equal(out64, want.astype(np.float64))
    strided = np.zeros(2 * want.shape[0], np.float32)[::2]
    c.decompress(packet, out=strided)
    np.testing.assert_array_equal(strided, want)
    with pytest.raises(gcomp.errors.ConfigError, match="shape"):
        c.decompress(packet, out=np.zeros(want.shape[0] + 1, np.float32))


@pytest.mark.parametrize("spec", ["topk:ratio=0.01", "qsgd", "sign", "powersgd:rank=2"])
def test_decompress_into_out_allocates_nothing_of_the_vector_size(spec):
    """Decoding into the caller's float32 buffer needs no dense temporary (traced by tracemalloc)."""
    import tracemalloc

    n = 200_003
    c = gcomp.compressor(spec)
    packet = wire.decode(wire.encode(c.compress(_x(n), step=0, key=0)))
    out = np.empty(n, np.float32)
    c.decompress(packet, out=out)  # compiled and warm
    tracemalloc.start()
    try:
        c.decompress(packet, out=out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n, f"{spec}: {peak} bytes traced while decoding {n} entries into out"
