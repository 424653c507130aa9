"""Parameter rules shared by the compressors and their wire codecs.

Each check raises ``error`` (ConfigError when a compressor is configured,
SizeError when a packet's header is validated) naming what is valid, so one
rule serves both places.
"""

import functools
import math

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
    if value not in choices:
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
