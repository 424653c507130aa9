"""The property battery over every registered compressor, and on broken compressors (it must catch them)."""

import numpy as np
import pytest

import gcomp
from gcomp.compressors import REGISTRY
from gcomp.compressors.topk import TopK
from gcomp.testing import check_compressor

SPECS = {name: name for name in REGISTRY}
SPECS["threshold"] = "threshold:tau=0.5"
EXTRA = ["uniform:bits=4,rounding=stochastic", "uniform:bits=2,mode=absmax", "uniform:bits=1", "qsgd:levels=1",
         "qsgd:levels=100,bucket_size=64", "randomk:rescale=false,ratio=0.1", "dgc:ratio=0.05,warmup_steps=3",
         "topk:ratio=1.0", "powersgd:rank=1,warm_start=false"]


@pytest.mark.parametrize("spec", sorted(SPECS.values()) + EXTRA)
def test_battery_passes(spec):
    report = check_compressor(gcomp.compressor(spec), trials=200)
    assert report.passed


class _BiasedTopK(TopK):
    """Claims a contraction it does not have: returns a random half of the top-k."""

    name = "broken-topk"

    def contraction(self, numel):
        return 1.0


class _NotUnbiased(TopK):
    name = "claims-unbiased"
    unbiased = True


def test_battery_catches_false_contraction():
    with pytest.raises(AssertionError, match="contraction"):
        check_compressor(_BiasedTopK(ratio=0.1), wire_check=False)


def test_battery_catches_false_unbiasedness():
    with pytest.raises(AssertionError, match="unbiased"):
        check_compressor(_NotUnbiased(ratio=0.1), wire_check=False, trials=50)


def test_battery_catches_global_rng_use():
    class UsesGlobalRng(TopK):
        name = "global-rng"

        def _compress(self, x, *, step, seed):
            np.random.random()
            return super()._compress(x, step=step, seed=seed)

    with pytest.raises(AssertionError, match="global"):
        check_compressor(UsesGlobalRng(ratio=0.1), wire_check=False)
