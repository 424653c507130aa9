"""Registry, spec parsing, config round trip and parameter validation."""

import numpy as np
import pytest
from hypothesis import given

import gcomp
from gcomp.errors import ConfigError
from gcomp.testing import compressor_configs

REQUIRED = ["none", "fp16", "bf16", "topk", "dgc", "randomk", "threshold", "qsgd", "uniform", "sign", "terngrad", "natural",
            "powersgd"]


def test_every_required_name_is_registered_with_a_description():
    listed = gcomp.list_compressors()
    for name in REQUIRED:
        assert name in listed
        assert listed[name] and "\n" not in listed[name]


def test_three_ways_to_build_agree():
    a = gcomp.compressor("topk:ratio=0.05")
    b = gcomp.compressor("topk", ratio=0.05)
    c = gcomp.compressor({"name": "topk", "ratio": 0.05})
    assert a == b == c
    assert a.get_config() == {"name": "topk", "ratio": 0.05}


def test_spec_parses_types():
    c = gcomp.compressor("uniform:bits=4,mode=absmax,rounding=stochastic,seed=7")
    assert c.bits == 4 and c.mode == "absmax" and c.rounding == "stochastic" and c.seed == 7
    assert gcomp.compressor("randomk:rescale=false").rescale is False


@given(compressor_configs())
def test_get_config_round_trips(config):
    c = gcomp.compressor(config)
    again = gcomp.compressor(c.get_config())
    assert again.get_config() == c.get_config()
    assert all(c.get_config()[key] == value for key, value in config.items())


def test_unknown_name_lists_known():
    with pytest.raises(ConfigError) as info:
        gcomp.compressor("topkk")
    assert "topk" in str(info.value) and "qsgd" in str(info.value)


@pytest.mark.parametrize(
    "spec",
    [
        "topk:ratio=0", "topk:ratio=1.5", "topk:ratio=abc", "topk:k=3", "qsgd:levels=0", "qsgd:levels=200",
        "qsgd:bucket_size=12", "uniform:bits=3", "uniform:mode=odd", "uniform:bits=1,mode=absmax", "threshold:tau=nan",
        "threshold:tau=-1", "sign:bucket_size=0", "powersgd:rank=0", "randomk:seed=-1", "dgc:warmup_steps=-2",
        "topk:ratio", "randomk:rescale=3",
    ],
)
def test_invalid_parameters_raise_config_error(spec):
    with pytest.raises(ConfigError):
        gcomp.compressor(spec)


def test_bad_spec_types():
    with pytest.raises(ConfigError):
        gcomp.compressor(3)
    with pytest.raises(ConfigError):
        gcomp.compressor({"ratio": 0.1})


def test_register_rejects_duplicates_and_non_compressors():
    from gcomp.compressors import register
    from gcomp.compressors.topk import TopK

    class Other(TopK):
        name = "topk"

    with pytest.raises(ConfigError):
        register(Other)
    with pytest.raises(ConfigError):
        register(int)


def test_declared_properties():
    assert gcomp.compressor("topk:ratio=0.1").contraction(1000) == pytest.approx(0.1)
    assert gcomp.compressor("qsgd").unbiased and not gcomp.compressor("sign").unbiased
    assert gcomp.compressor("fp16").linear and gcomp.compressor("randomk").linear and gcomp.compressor("powersgd").linear
    assert not gcomp.compressor("topk").linear
    assert gcomp.compressor("uniform:rounding=stochastic").unbiased
    assert not gcomp.compressor("uniform").unbiased
    assert gcomp.compressor("randomk:rescale=false").contraction(100) is None  # only in expectation
    for name in REQUIRED:
        c = gcomp.compressor(name) if name != "threshold" else gcomp.compressor("threshold:tau=0.1")
        assert c.max_payload_bytes(10_000) > 0


@pytest.mark.parametrize("name", REQUIRED)
def test_accepts_torch_and_numpy_without_touching_input(name):
    import torch

    spec = "threshold:tau=0.5" if name == "threshold" else name
    comp = gcomp.compressor(spec)
    x = np.random.default_rng(0).standard_normal(300).astype(np.float32)
    before = x.copy()
    out_np = comp.decompress(comp.compress(x))
    assert np.array_equal(x, before)
    t = torch.from_numpy(x.copy())
    out_t = gcomp.compressor(spec).decompress(gcomp.compressor(spec).compress(t))
    assert out_np.shape == out_t.shape == (300,)


def test_rejects_bad_inputs():
    import torch

    comp = gcomp.compressor("topk")
    for bad in (np.zeros((3, 3), np.float32), np.zeros(3, np.int64), [1.0, 2.0], torch.zeros(3, dtype=torch.int32)):
        with pytest.raises((TypeError, ValueError)):
            comp.compress(bad)
    with pytest.raises(ConfigError):
        gcomp.compressor("qsgd").decompress(comp.compress(np.ones(4, np.float32)))
