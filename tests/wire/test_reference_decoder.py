"""The independent reference decoder of reference_decoder.py agrees with ``gcomp.wire.decode`` on every
sample packet and every frozen fixture, its float64 value formulas agree with gcomp's decompression, and its
randomk index generator reproduces the kernel's.
"""

import numpy as np
import pytest
from _packets import _decompressor, samples
from reference_decoder import _assert_same, _ref_decode, _ref_randomk, _ref_values

from gcomp import wire

pytestmark = pytest.mark.usefixtures("no_pickle")


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
