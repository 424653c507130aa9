"""Compressors: configuration plus compress/decompress, built by name.

``gcomp.compressor("topk:ratio=0.01")``, ``gcomp.compressor("topk", ratio=0.01)``
and ``gcomp.compressor({"name": "topk", "ratio": 0.01})`` build the same
compressor; ``get_config()`` round-trips.

Adding a compressor is one class (with its wire ``codec`` and hypothesis
``strategy``) and one registration: a line in ``_BUILTIN`` below inside
gcomp, or, from another package, ``gcomp.register(MyCompressor)`` or an entry
point in the ``gcomp.compressors`` group (as numcodecs does), loaded on first
use.  It is then usable from the wire format, the DDP hook, MPI, the CLI and
the property battery with no other edit.  Codec ids 1-127 belong to gcomp's
own compressors; compressors registered from outside take 128-254.

A compressor declares its parameters in ``params``, each as a default or a
:class:`Param` (type, allowed values, help, the check the constructor runs);
:func:`describe` (what ``gcomp list NAME`` prints) reports them with the
compressor's default error feedback, whether it is unbiased and linear, and
its codec id.
"""

import ast
import dataclasses
import inspect

from ..errors import ConfigError
from ._params import Param, short
from .base import Compressed, Compressor
from .bf16 import BF16
from .codec import MINOR, Codec
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

__all__ = ["Compressed", "Compressor", "Codec", "Param", "compressor", "list_compressors", "describe", "register",
           "REGISTRY", "codec_by_id", "with_seed", "load_plugins", "ENTRY_POINT_GROUP"]

_BUILTIN = [NoCompression, FP16, BF16, TopK, DGC, RandomK, Threshold, QSGD, Uniform, Sign, TernGrad, Natural, PowerSGD]

#: name -> Compressor subclass
REGISTRY: dict = {}
#: wire codec id -> Compressor subclass
_BY_CODEC_ID: dict = {}
#: the entry point group other packages declare their compressors in (see :func:`load_plugins`)
ENTRY_POINT_GROUP = "gcomp.compressors"
_plugins_loaded = False


def _check_codec(cls, builtin):
    codec = cls.codec
    if not isinstance(codec, Codec):
        raise ConfigError(f"expected {cls.__name__}.codec to be a gcomp.compressors.Codec or None, found {codec!r}")
    lo, hi = (1, 127) if builtin else (128, 254)
    if isinstance(codec.codec_id, bool) or not isinstance(codec.codec_id, int) or not lo <= codec.codec_id <= hi:
        where = "gcomp's own compressors" if builtin else "compressors registered from outside gcomp"
        raise ConfigError(f"expected a codec id in [{lo}, {hi}] for {cls.__name__} ({where}), found {codec.codec_id!r}")
    if len(codec.params) > 4:
        raise ConfigError(f"expected at most 4 codec parameters for {cls.__name__}, found {len(codec.params)}")
    if not 0 <= codec.since <= MINOR:
        raise ConfigError(f"expected codec since-version in [0, {MINOR}] for {cls.__name__}, found {codec.since}")
    owner = _BY_CODEC_ID.get(codec.codec_id)
    if owner is not None and owner is not cls:
        raise ConfigError(f"codec id {codec.codec_id} of {cls.__name__} is already used by compressor {owner.name!r}; "
                          "give the class its own `codec = Codec(<unused id>, ...)`")


def register(cls, *, _builtin=False):
    """Register a Compressor subclass under ``cls.name`` (usable as a decorator); its codec joins the wire format.

    Registering the same class again is a no-op; another class under a taken
    name or codec id raises ConfigError (so import a plugin module under one
    name only: a reloaded module defines a new class).

    Parameters
    ----------
    cls : type
        A subclass of :class:`gcomp.Compressor` with a non-empty ``name``; its
        ``codec`` (if not None) needs an unused codec id in 128-254 (1-127 are
        gcomp's own).
    _builtin : bool, optional
        Internal: gcomp's own compressors take codec ids 1-127.

    Returns
    -------
    type
        ``cls`` itself, so ``register`` works as a class decorator.

    Raises
    ------
    gcomp.errors.ConfigError
        ``cls`` is not a Compressor subclass, its name or codec id is taken by
        another class, or its codec is malformed.

    Examples
    --------
    A compressor of your own (the ``HalfTopK`` of :class:`gcomp.Compressor`'s
    example), from then on usable by name from every adapter, the CLI and
    :func:`gcomp.testing.check_compressor`::

        import gcomp

        @gcomp.register
        class HalfTopK(gcomp.Compressor):
            name = "half-topk"
            ...

        gcomp.compressor("half-topk")

    Its packets travel through :func:`gcomp.wire.encode` once it declares a
    ``codec`` with an unused id in 128-254.
    """
    if not (isinstance(cls, type) and issubclass(cls, Compressor)):
        raise ConfigError(f"expected a Compressor subclass, found {cls!r}")
    if not cls.name or not isinstance(cls.name, str):
        raise ConfigError(f"expected {cls.__name__}.name to be a non-empty string")
    existing = REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ConfigError(f"a compressor named {cls.name!r} is already registered ({existing.__name__})")
    if cls.codec is not None:
        _check_codec(cls, _builtin)
        if cls.codec.name != cls.name:
            cls.codec = dataclasses.replace(cls.codec, name=cls.name)
        _BY_CODEC_ID[cls.codec.codec_id] = cls
    REGISTRY[cls.name] = cls
    return cls


def load_plugins():
    """Import the compressors other packages declare in the ``gcomp.compressors`` entry point group (once).

    An entry point names a Compressor subclass (registered here) or a module
    that registers its compressors when imported.  A plugin that fails to load
    gives a RuntimeWarning and does not hide the others.  :func:`gcomp.compressor`,
    :func:`gcomp.list_compressors` and the wire decoder call it on first need.

    Examples
    --------
    A package declares its compressors in its ``pyproject.toml``:

    .. code-block:: toml

        [project.entry-points."gcomp.compressors"]
        halve = "mypackage.compressors:Halve"

    and gcomp finds them after

    >>> from gcomp.compressors import load_plugins
    >>> load_plugins()
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import warnings
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, Compressor) and REGISTRY.get(obj.name) is not obj:
                register(obj)
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the others or escape wire.decode
            warnings.warn(f"gcomp: could not load compressor entry point {ep.name!r} ({ep.value}): "
                          f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)


def codec_by_id(codec_id):
    """The Compressor class whose wire codec has ``codec_id``, or None.

    Parameters
    ----------
    codec_id : int
        A wire codec id (the header field of docs/wire-format.md).

    Returns
    -------
    type or None
        The registered Compressor subclass, or None for an unknown id.

    Examples
    --------
    >>> import gcomp
    >>> from gcomp.compressors import codec_by_id
    >>> codec_by_id(gcomp.compressor("topk:ratio=0.01").codec.codec_id).name
    'topk'
    >>> codec_by_id(255) is None
    True
    """
    cls = _BY_CODEC_ID.get(codec_id)
    if cls is None and not _plugins_loaded:
        load_plugins()
        cls = _BY_CODEC_ID.get(codec_id)
    return cls


def codec_ids():
    """Every registered codec id, sorted."""
    return sorted(_BY_CODEC_ID)


for _cls in _BUILTIN:
    register(_cls, _builtin=True)


#: longest compressor spec string accepted (a spec is a name and a few numbers)
MAX_SPEC_LENGTH = 1024


def _parse_value(text):
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, RecursionError, MemoryError):
        return text


def parse_spec(spec: str):
    """``"name:key=value,key=value"`` -> ``(name, params)``."""
    if len(spec) > MAX_SPEC_LENGTH:
        raise ConfigError(f"expected a compressor spec of at most {MAX_SPEC_LENGTH} characters, found {len(spec)}: "
                          f"{short(spec)}")
    name, _, rest = spec.partition(":")
    params = {}
    if rest.strip():
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"expected 'key=value' in compressor spec {short(spec)}, found {short(part)}")
            params[key.strip()] = _parse_value(value)
    return name.strip(), params


def compressor(spec, **params) -> Compressor:
    """Build a compressor from a name, a spec string, a config dict or a Compressor.

    Parameters
    ----------
    spec : str or dict or gcomp.Compressor
        A registered name (``"topk"``), a spec string ``"name:key=value,..."``
        (``"topk:ratio=0.01"``), a config dict with a ``"name"`` key (what
        :meth:`Compressor.get_config` returns), or a Compressor (returned as it
        is when no ``params`` are given).
    **params
        Parameters that override those in ``spec``.

    Returns
    -------
    gcomp.Compressor
        A new compressor (``gcomp list NAME`` prints its parameters).

    Raises
    ------
    gcomp.errors.ConfigError
        An unknown name (the message lists the known ones), an unknown or
        missing parameter, or a value out of range.

    Examples
    --------
    >>> import numpy as np
    >>> import gcomp
    >>> c = gcomp.compressor("topk:ratio=0.25")
    >>> c == gcomp.compressor("topk", ratio=0.25) == gcomp.compressor({"name": "topk", "ratio": 0.25})
    True
    >>> x = np.array([0.5, -3.0, 0.25, 2.0, 0.0, 1.0, -0.5, 0.1], np.float32)
    >>> c.decompress(c.compress(x)).tolist()
    [0.0, -3.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    """
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
    return _lookup(name)(**params)


def _lookup(name):
    """The registered class of ``name`` (loading plugins if needed), or ConfigError listing the known names."""
    cls = REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        load_plugins()
        cls = REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"unknown compressor {short(name)}; known compressors: {', '.join(sorted(REGISTRY))}")
    return cls


def list_compressors() -> dict:
    """``{name: one-line description}`` for every registered compressor, sorted by name (what ``gcomp list`` prints).

    Returns
    -------
    dict
        ``{name: description}``, including compressors registered by plugins.

    Examples
    --------
    >>> import gcomp
    >>> names = gcomp.list_compressors()
    >>> "topk" in names and "qsgd" in names
    True
    >>> names["topk"]
    'exact top-k by magnitude (O(n) radix select), k = ceil(ratio * n)'
    """
    load_plugins()
    return {name: REGISTRY[name].description for name in sorted(REGISTRY)}


#: what :func:`describe` reports beyond the parameters, and may depend on them
_DECLARED = ("default_feedback", "unbiased", "linear")


def _example(cls, **overrides):
    """An instance of ``cls`` with its defaults, required parameters set to their declared examples; None if none."""
    config = {}
    for key, default in cls.params.items():
        spec = cls.param_specs.get(key)
        if default is None:
            if spec is None or spec.example is None:
                return None
            config[key] = spec.example
    config.update(overrides)
    try:
        return cls(**config)
    except ConfigError:
        return None


def _static(cls, attr):
    """``cls.attr`` where it does not need an instance (a plain class attribute), else None."""
    if attr == "default_feedback" and inspect.getattr_static(cls, attr) is Compressor.__dict__["default_feedback"]:
        unbiased = _static(cls, "unbiased")
        return None if unbiased is None else ("none" if unbiased else "residual")
    value = inspect.getattr_static(cls, attr, None)
    return value if isinstance(value, (bool, str)) else None


def describe(name) -> dict:
    """What ``gcomp list NAME`` prints about a registered compressor (ConfigError for an unknown name).

    ``{"name", "description", "codec_id" (None: not on the wire), "params": [{"name", "type", "default"
    (None: required), "required", "allowed", "help", "hint"}], "default_feedback", "unbiased", "linear",
    "depends": {attribute: [(parameter, value, attribute's value with it)]}}``.  ``default_feedback``,
    ``unbiased`` and ``linear`` are those of the default configuration (a required parameter set to its
    declared example); ``depends`` lists the values of parameters with few choices that change them.

    Parameters
    ----------
    name : str
        A registered compressor name.

    Returns
    -------
    dict
        The description above.

    Raises
    ------
    gcomp.errors.ConfigError
        ``name`` is not registered (the message lists the known names).

    Examples
    --------
    >>> from gcomp.compressors import describe
    >>> info = describe("topk")
    >>> [p["name"] for p in info["params"]], info["default_feedback"], info["unbiased"]
    (['ratio'], 'residual', False)
    """
    cls = _lookup(name)
    params = []
    for key, default in cls.params.items():
        spec = cls.param_specs.get(key)
        params.append({
            "name": key,
            "type": spec.type if spec is not None else (type(default).__name__ if default is not None else "-"),
            "default": default,
            "required": default is None,
            "allowed": spec.allowed if spec is not None else "-",
            "help": spec.help if spec is not None else "",
            "hint": spec.hint if spec is not None else "",
        })
    base = _example(cls)
    info = {"name": cls.name, "description": cls.description, "codec_id": cls.codec.codec_id if cls.codec else None,
            "params": params, "depends": {}}
    for attr in _DECLARED:
        info[attr] = getattr(base, attr) if base is not None else _static(cls, attr)
    if base is None:
        return info
    for key, spec in cls.param_specs.items():
        for value in spec.choices or ():
            if value == base.get_config()[key] and type(value) is type(base.get_config()[key]):
                continue
            other = _example(cls, **{key: value})
            if other is None:
                continue
            for attr in _DECLARED:
                if getattr(other, attr) != info[attr]:
                    info["depends"].setdefault(attr, []).append((key, value, getattr(other, attr)))
    return info


def with_seed(spec, seed=None) -> Compressor:
    """Build a compressor from ``spec``; a ``seed`` that is not None replaces the spec's (if it has one).

    The one rule both adapters follow: ``seed=None`` keeps the spec's seed.

    Parameters
    ----------
    spec : str or dict or gcomp.Compressor
        What :func:`gcomp.compressor` accepts.
    seed : int or None, optional
        The seed to use for a compressor that has a ``seed`` parameter; None
        keeps the spec's.  Deterministic compressors ignore it.

    Returns
    -------
    gcomp.Compressor

    Examples
    --------
    >>> from gcomp.compressors import with_seed
    >>> with_seed("randomk:ratio=0.1,seed=3", 7).get_config()
    {'name': 'randomk', 'ratio': 0.1, 'rescale': True, 'seed': 7}
    >>> with_seed("topk:ratio=0.1", 7).get_config()
    {'name': 'topk', 'ratio': 0.1}
    """
    comp = compressor(spec)
    if seed is not None and "seed" in comp.params:
        comp = compressor({**comp.get_config(), "seed": seed})
    return comp
