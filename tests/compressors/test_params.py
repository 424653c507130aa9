"""Declared parameters: what ``gcomp list NAME`` prints is what the constructor enforces; threshold's required tau."""

import numpy as np
import pytest

import gcomp
from gcomp import compressors, wire
from gcomp.compressors import REGISTRY, describe
from gcomp.compressors._params import Param
from gcomp.compressors.base import Compressor
from gcomp.compressors.topk import TopK
from gcomp.errors import ConfigError

BUILTIN = sorted(name for name, cls in REGISTRY.items() if cls.__module__.startswith("gcomp.compressors."))

#: per (compressor, parameter): values outside what is declared allowed; every declared parameter needs one
BAD = {
    ("topk", "ratio"): [0, 1.5, -0.1, "0.1", True, float("nan")],
    ("dgc", "ratio"): [0, 2.0],
    ("dgc", "sample_fraction"): [0, 1.01],
    ("dgc", "min_fraction"): [0.0, 3],
    ("dgc", "warmup_steps"): [-1, 1.5, True],
    ("dgc", "warmup_start"): [0, 1.5],
    ("dgc", "seed"): [-1, 2**64, 1.0],
    ("randomk", "ratio"): [0, 1.0001],
    ("randomk", "rescale"): [1, "yes", None],
    ("randomk", "seed"): [-1, "0"],
    ("threshold", "tau"): [-1e-9, float("nan"), "1", True],
    ("qsgd", "levels"): [0, 128, 4.0],
    ("qsgd", "bucket_size"): [0, 12, 2**32, 512.0],
    ("qsgd", "seed"): [-5],
    ("uniform", "bits"): [3, 0, 16, True, 8.0],
    ("uniform", "bucket_size"): [4, 100],
    ("uniform", "mode"): ["odd", "MAXMIN"],
    ("uniform", "rounding"): ["floor"],
    ("uniform", "seed"): [2**64],
    ("sign", "bucket_size"): [0, 7],
    ("terngrad", "bucket_size"): [9],
    ("terngrad", "seed"): [-1],
    ("natural", "seed"): [-1, 0.5],
    ("powersgd", "rank"): [0, 1025, 2.0],
    ("powersgd", "warm_start"): [0, "true"],
    ("powersgd", "seed"): [-1],
}
#: a value for each required parameter (threshold's tau)
REQUIRED = {"threshold": {"tau": 1.0}}


def _declared():
    return [(name, key) for name in BUILTIN for key in REGISTRY[name].params]


@pytest.mark.parametrize("name", BUILTIN)
def test_every_parameter_is_declared_with_type_range_and_help(name):
    cls = REGISTRY[name]
    assert set(cls.param_specs) == set(cls.params), f"{name}: undeclared parameters {set(cls.params) - set(cls.param_specs)}"
    for key, spec in cls.param_specs.items():
        assert isinstance(spec, Param) and spec.type in ("int", "float", "bool", "str") and spec.allowed and spec.help
        assert cls.params[key] == spec.default
        if spec.required:
            assert spec.example is not None and spec.hint, f"{name}.{key} is required: it needs an example and a hint"
            spec.validate(name, key, spec.example)
        else:
            assert type(spec.default).__name__ == spec.type, (name, key, spec.default, spec.type)
            spec.validate(name, key, spec.default)  # the default is allowed
        if spec.choices is not None:
            assert spec.default in spec.choices


def test_every_declared_parameter_has_bad_values_below():
    assert set(_declared()) == set(BAD)


@pytest.mark.parametrize("name,key", sorted(BAD))
def test_declared_range_is_enforced(name, key):
    spec = REGISTRY[name].param_specs[key]
    for value in BAD[name, key]:
        with pytest.raises(ConfigError, match=key) as info:
            gcomp.compressor(name, **{**REQUIRED.get(name, {}), key: value})
        assert isinstance(info.value, ValueError)
        with pytest.raises(ConfigError):  # the declaration alone refuses it too
            spec.validate(name, key, value)


@pytest.mark.parametrize("name", BUILTIN)
def test_choices_are_all_accepted(name):
    for key, spec in REGISTRY[name].param_specs.items():
        for value in spec.choices or ():
            config = {**REQUIRED.get(name, {}), key: value}
            if name == "uniform" and key == "bits" and value == 1:
                config["mode"] = "maxmin"
            assert gcomp.compressor(name, **config).get_config()[key] == value


def test_a_rule_between_parameters_still_applies():
    with pytest.raises(ConfigError, match="absmax"):
        gcomp.compressor("uniform:bits=1,mode=absmax")


def test_subclasses_inherit_or_redefine_declarations():
    class Wider(TopK):
        name = "wider-topk"

    assert Wider.param_specs is TopK.param_specs and Wider.params == {"ratio": 0.01}
    with pytest.raises(ConfigError, match="ratio"):
        Wider(ratio=2.0)

    class Plain(Compressor):
        name = "plain"
        params = {"k": 3, "must": None}

    assert Plain.params == {"k": 3, "must": None} and Plain.param_specs == {}
    with pytest.raises(ConfigError, match="needs parameter 'must'"):
        Plain(k=1)
    assert Plain(must="x").get_config() == {"name": "plain", "k": 3, "must": "x"}


# ----------------------------------------------------------------------------
# threshold: tau is required
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["threshold", {"name": "threshold"}])
def test_threshold_without_tau_is_refused_with_a_hint(spec):
    with pytest.raises(ConfigError) as info:
        gcomp.compressor(spec)
    text = str(info.value)
    assert "tau" in text and "threshold:tau=" in text and "quantile" in text and "\n" not in text


def test_threshold_with_tau_round_trips():
    c = gcomp.compressor("threshold:tau=0.5")
    assert c.tau == 0.5 and gcomp.compressor(c.get_config()) == c


def test_threshold_hint_numbers_hold_on_normal_data():
    """The hint's claims: tau=0.001 on N(0, 1) data makes a packet larger than dense; tau=2.58 keeps about 1%."""
    n = 100_000
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    small = gcomp.compressor("threshold:tau=0.001").compress(x)
    assert small.count > 0.998 * n
    assert len(wire.encode(small)) > len(wire.encode(gcomp.compressor("none").compress(x)))
    assert 0.008 * n < gcomp.compressor("threshold:tau=2.58").compress(x).count < 0.012 * n


def test_threshold_decoding_ignores_tau():
    x = np.random.default_rng(1).standard_normal(500).astype(np.float32)
    c = wire.decode(wire.encode(gcomp.compressor("threshold:tau=1.0").compress(x)))
    a = gcomp.compressor("threshold:tau=1.0").decompress(c)
    b = gcomp.compressor("threshold:tau=0").decompress(c)
    assert np.array_equal(a, b) and np.count_nonzero(a) == np.count_nonzero(np.abs(x) >= 1.0)


# ----------------------------------------------------------------------------
# describe(): what gcomp list NAME prints
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN)
def test_describe_matches_an_instance(name):
    info = describe(name)
    comp = gcomp.compressor(name, **REQUIRED.get(name, {}))
    assert info["name"] == name and info["description"] == comp.description
    assert info["default_feedback"] == comp.default_feedback
    assert info["unbiased"] == comp.unbiased and info["linear"] == comp.linear
    assert info["codec_id"] == type(comp).codec.codec_id
    assert [p["name"] for p in info["params"]] == list(comp.params)
    for p in info["params"]:
        assert p["required"] == (p["default"] is None)
        if not p["required"]:
            assert comp.get_config()[p["name"]] == p["default"]


def test_describe_reports_what_parameters_change():
    randomk = describe("randomk")
    assert randomk["unbiased"] is True and randomk["default_feedback"] == "none"
    assert randomk["depends"] == {"unbiased": [("rescale", False, False)], "default_feedback": [("rescale", False, "residual")]}
    uniform = describe("uniform")
    assert uniform["depends"]["unbiased"] == [("rounding", "stochastic", True)]
    assert describe("topk")["depends"] == {}
    threshold = describe("threshold")
    assert threshold["default_feedback"] == "residual" and threshold["params"][0]["required"]


def test_describe_a_plugin_without_declarations(monkeypatch):
    monkeypatch.setattr(compressors, "REGISTRY", dict(REGISTRY))

    class Bare(Compressor):
        name = "bare-plugin"
        description = "a compressor declaring plain defaults"
        unbiased = True
        params = {"k": 3, "must": None}

    compressors.register(Bare)
    info = describe("bare-plugin")
    assert info["params"] == [
        {"name": "k", "type": "int", "default": 3, "required": False, "allowed": "-", "help": "", "hint": ""},
        {"name": "must", "type": "-", "default": None, "required": True, "allowed": "-", "help": "", "hint": ""},
    ]
    assert info["default_feedback"] == "none" and info["unbiased"] is True and info["codec_id"] is None


def test_describe_unknown_name():
    with pytest.raises(ConfigError, match="unknown compressor 'nope'; known compressors: .*topk"):
        describe("nope")
