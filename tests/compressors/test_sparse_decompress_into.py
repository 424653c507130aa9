"""decompress(out=) of the sparse codecs: the direct kernel call for a packet's own arrays, the checked
wrapper (conversions and errors as before) for anything else."""

import numpy as np
import pytest

import gcomp
from gcomp import wire
from gcomp.compressors.base import Compressed


@pytest.mark.parametrize("spec", ["topk:ratio=0.1", "dgc:ratio=0.1", "randomk:ratio=0.1", "threshold:tau=0.5"])
def test_out_equals_a_fresh_decompress(spec):
    comp = gcomp.compressor(spec)
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    for c in (comp.compress(x, step=2, key=1), wire.decode(wire.encode(comp.compress(x, step=2, key=1)))):
        out = np.full(1000, 7.0, np.float32)
        assert comp.decompress(c, out=out) is out
        np.testing.assert_array_equal(out, comp.decompress(c))
        dense = np.zeros(1000, np.float32)
        dense[c.arrays["indices"]] = c.arrays["values"]
        np.testing.assert_array_equal(out, dense)


def test_hand_built_packets_take_the_checked_path():
    topk = gcomp.compressor("topk:ratio=0.1")
    out = np.full(6, 7.0, np.float32)
    # int32 indices and float64 values: converted, as before
    c = Compressed("topk", 6, "float32", {"indices": np.array([1, 4], np.int32), "values": np.array([2.0, -3.0])})
    np.testing.assert_array_equal(topk.decompress(c, out=out), [0, 2, 0, 0, -3, 0])
    # an index out of range: refused before out is written
    out[:] = 7.0
    bad = Compressed("topk", 6, "float32", {"indices": np.array([1, 6], np.int64), "values": np.ones(2, np.float32)})
    with pytest.raises(ValueError, match="range"):
        topk.decompress(bad, out=out)
    assert (out == 7.0).all()
    # as many values as indices, or an error
    odd = Compressed("topk", 6, "float32", {"indices": np.array([1, 2], np.int64), "values": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match="as many values"):
        topk.decompress(odd, out=out)
