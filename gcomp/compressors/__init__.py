"""Compressors: configuration plus compress/decompress, built by name.

``gcomp.compressor("topk:ratio=0.01")``, ``gcomp.compressor("topk", ratio=0.01)``
and ``gcomp.compressor({"name": "topk", "ratio": 0.01})`` build the same
compressor; ``get_config()`` round-trips.  Adding a compressor is one file in
this package plus one line in ``_BUILTIN`` below; it is then usable from the
DDP hook, MPI, the CLI and the property battery.
"""

import ast

from ..errors import ConfigError
from .base import Compressed, Compressor
from .bf16 import BF16
from .dgc import DGC
from .fp16 import FP16
from .natural import Natural
from .none import NoCompression
from .powersgd import PowerSGD
from .qsgd import QSGD
from .randomk import RandomK
from .sign import Sign
from .terngrad import TernGrad
from .threshold import Threshold
from .topk import TopK
from .uniform import Uniform

__all__ = ["Compressed", "Compressor", "compressor", "list_compressors", "register", "REGISTRY"]

_BUILTIN = [NoCompression, FP16, BF16, TopK, DGC, RandomK, Threshold, QSGD, Uniform, Sign, TernGrad, Natural, PowerSGD]

#: name -> Compressor subclass
REGISTRY: dict = {}


def register(cls):
    """Register a Compressor subclass under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Compressor)):
        raise ConfigError(f"expected a Compressor subclass, found {cls!r}")
    if not cls.name or not isinstance(cls.name, str):
        raise ConfigError(f"expected {cls.__name__}.name to be a non-empty string")
    existing = REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ConfigError(f"a compressor named {cls.name!r} is already registered ({existing.__name__})")
    REGISTRY[cls.name] = cls
    return cls


for _cls in _BUILTIN:
    register(_cls)


def _parse_value(text):
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_spec(spec: str):
    """``"name:key=value,key=value"`` -> ``(name, params)``."""
    name, _, rest = spec.partition(":")
    params = {}
    if rest.strip():
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"expected 'key=value' in compressor spec {spec!r}, found {part!r}")
            params[key.strip()] = _parse_value(value)
    return name.strip(), params


def compressor(spec, **params) -> Compressor:
    """Build a compressor from a name, a spec string, a config dict or a Compressor."""
    if isinstance(spec, Compressor):
        if params:
            return compressor({**spec.get_config(), **params})
        return spec
    if isinstance(spec, dict):
        config = dict(spec)
        if "name" not in config:
            raise ConfigError(f"expected a config dict with a 'name' key, found keys {sorted(config)}")
        name = config.pop("name")
        config.update(params)
        params = config
    elif isinstance(spec, str):
        name, parsed = parse_spec(spec)
        parsed.update(params)
        params = parsed
    else:
        raise ConfigError(f"expected a compressor name, spec string, config dict or Compressor, found {type(spec).__name__}")
    cls = REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown compressor {name!r}; known compressors: {', '.join(sorted(REGISTRY))}")
    return cls(**params)


def list_compressors() -> dict:
    """``{name: one-line description}`` for every registered compressor."""
    return {name: REGISTRY[name].description for name in sorted(REGISTRY)}
