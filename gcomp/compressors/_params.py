"""Parameter rules shared by the compressors and their wire codecs.

Each check raises ``error`` (ConfigError when a compressor is configured,
SizeError when a packet's header is validated) naming what is valid, so one
rule serves both places.

A compressor declares each parameter as a :class:`Param` in its ``params``
(``{"ratio": ratio_param(0.01, "density")}``): its default, type, allowed
values, help line and the check that enforces them.  The constructor runs the
checks and ``gcomp list NAME`` prints the declarations, so what is listed is
what is enforced.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

from ..errors import ConfigError, SizeError
from .codec import F32, U8


def check_ratio(name, value, what="ratio", error=ConfigError):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < float(value) <= 1.0):
        raise error(f"{name}: expected {what} in (0, 1], found {short(value)}")
    return float(value)


def check_int(name, key, value, lo, hi=None, error=ConfigError):
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise error(f"{name}: expected integer {key} {bound}, found {short(value)}")
    return value


def check_choice(name, key, value, choices, error=ConfigError):
    # the type must match too: True == 1 and 8.0 == 8, but neither is a valid bits value
    if not any(type(value) is type(choice) and value == choice for choice in choices):
        raise error(f"{name}: expected {key} in {list(choices)}, found {short(value)}")
    return value


def check_bucket(name, value, error=ConfigError):
    # the wire carries bucket_size in a u32 header field
    if isinstance(value, bool) or not isinstance(value, int) or value < 8 or value % 8 or value >= 2**32:
        raise error(f"{name}: expected bucket_size a positive multiple of 8 below 2**32, found {short(value)}")
    return value


def check_seed(name, value, error=ConfigError):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise error(f"{name}: expected integer seed in [0, 2**64), found {short(value)}")
    return value


def check_bool(name, key, value, error=ConfigError):
    if not isinstance(value, bool):
        raise error(f"{name}: expected {key} true or false, found {short(value)}")
    return value


def check_nonneg_float(name, key, value, error=ConfigError):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)) or value < 0:
        raise error(f"{name}: expected {key} >= 0, found {short(value)}")
    return float(value)


def short(value, limit=80):
    """``repr(value)``, cut to ``limit`` characters for error messages."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def nbuckets(numel, bucket):
    return (numel + bucket - 1) // bucket


def packed_bytes(numel, bits):
    return (numel * bits + 7) // 8


def sparse_payload_bound(numel, count, value_bytes=4):
    """Values plus the smaller index coding (varint gaps take <= 10 bytes, the bitmap ceil(n/8))."""
    return count * value_bytes + min(10 * count, (numel + 7) // 8)


@functools.lru_cache(maxsize=64)  # one entry per configuration seen: a packet's check costs a lookup
def valid_packet_bucket(name, bucket_size):
    """The wire check of a ``bucket_size`` codec parameter (SizeError), cached for valid values."""
    check_bucket(name, bucket_size, SizeError)


def codes_and_scales(name, bits):
    """``(arrays, check)`` of a codec that sends ``bits``-bit codes plus one float32 scale per bucket."""
    def arrays(n, count, p):
        return [("codes", U8, packed_bytes(n, bits)), ("scales", F32, nbuckets(n, p["bucket_size"]))]

    def check(numel, count, p):
        valid_packet_bucket(name, p["bucket_size"])

    return arrays, check


# ----------------------------------------------------------------------------
# declared parameters
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Param:
    """One declared compressor parameter.

    ``default`` None means required; ``type`` and ``allowed`` are what ``gcomp
    list NAME`` prints; ``check(compressor_name, key, value, error)`` raises
    ``error`` for a value outside ``allowed``; ``choices`` lists every valid
    value when there are few; ``example`` is a valid value (shown in the error
    for a missing required parameter); ``hint`` says how to choose a required one.

    Parameters
    ----------
    default : object
        The default value; None: required.
    type : str
        The type ``gcomp list NAME`` prints.
    allowed : str
        The allowed values, as printed.
    check : callable, optional
        ``check(compressor_name, key, value, error)``.
    help : str, optional
        One line about the parameter.
    choices : tuple, optional
        Every valid value, when there are few.
    example : object, optional
        A valid value, for the message about a missing required parameter.
    hint : str, optional
        How to choose a required one.

    Examples
    --------
    >>> from gcomp.compressors import Param
    >>> from gcomp.errors import ConfigError
    >>> def positive(name, key, value, error):
    ...     if not value > 0:
    ...         raise error(f"{name}: expected {key} > 0, found {value!r}")
    >>> p = Param(4, "int", "> 0", positive, help="levels per sign")
    >>> p.required, p.default
    (False, 4)
    >>> p.validate("mine", "levels", 0)
    Traceback (most recent call last):
        ...
    gcomp.errors.ConfigError: mine: expected levels > 0, found 0
    """

    default: object
    type: str
    allowed: str
    check: Callable | None = None
    help: str = ""
    choices: tuple | None = None
    example: object = None
    hint: str = ""

    @property
    def required(self) -> bool:
        """True when there is no default, so the compressor needs the parameter."""
        return self.default is None

    def validate(self, compressor_name, key, value, error=ConfigError):
        """Raise ``error`` if ``value`` is not allowed.

        Parameters
        ----------
        compressor_name : str
            For the message.
        key : str
            The parameter's name.
        value : object
            The value to check.
        error : type, optional
            The exception raised (ConfigError; SizeError for packet headers).
        """
        if self.check is not None:
            self.check(compressor_name, key, value, error)


def ratio_param(default, help=""):
    """A fraction in (0, 1]."""
    return Param(default, "float", "(0, 1]", lambda n, key, v, err: check_ratio(n, v, key, err), help)


def int_param(default, lo, hi=None, help=""):
    """An integer in [lo, hi] (or >= lo)."""
    allowed = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
    return Param(default, "int", allowed, lambda n, key, v, err: check_int(n, key, v, lo, hi, err), help)


def choice_param(default, choices, help=""):
    """One of a few values (all of one type)."""
    choices = tuple(choices)
    kind = type(choices[0]).__name__
    allowed = "one of " + ", ".join(str(c) for c in choices)
    return Param(default, kind, allowed, lambda n, key, v, err: check_choice(n, key, v, choices, err), help, choices)


def bool_param(default, help=""):
    """true or false."""
    return Param(default, "bool", "true or false", lambda n, key, v, err: check_bool(n, key, v, err), help,
                 (True, False))


def bucket_param(default=512, help="entries per bucket"):
    """A bucket size: a positive multiple of 8 below 2**32 (the wire's u32 field)."""
    return Param(default, "int", "a multiple of 8 in [8, 2**32)", lambda n, key, v, err: check_bucket(n, v, err), help)


def seed_param(help="seed of the randomness (with step and key); equal on every rank"):
    """A 64-bit seed, default 0."""
    return Param(0, "int", "[0, 2**64)", lambda n, key, v, err: check_seed(n, v, err), help)


def nonneg_float_param(default, help="", example=None, hint=""):
    """A float >= 0 (NaN refused); ``default`` None makes it required."""
    return Param(default, "float", ">= 0", lambda n, key, v, err: check_nonneg_float(n, key, v, err), help,
                 example=example, hint=hint)
