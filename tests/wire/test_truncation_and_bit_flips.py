"""Truncation, bit flips and appended bytes: every sample packet cut at every length, with every single bit
flipped, or with bytes appended raises the ``WireFormatError`` subclass the damaged region calls for.
"""

import pytest
from _packets import samples

from gcomp import wire
from gcomp.errors import ChecksumError, CodecError, MagicError, TruncatedError, VersionError, WireFormatError

pytestmark = pytest.mark.usefixtures("no_pickle")


@pytest.mark.parametrize("name", sorted(samples()))
def test_truncation_at_every_length_raises(name):
    buf = samples()[name]
    wrong = []
    for cut in range(len(buf)):
        try:
            wire.decode(buf[:cut])
        except TruncatedError:
            continue
        except WireFormatError as exc:
            wrong.append((cut, type(exc).__name__))
        else:
            wrong.append((cut, "decoded"))
    assert not wrong, f"truncations not raising TruncatedError: {wrong[:10]}"


def _region_error(byte):
    """The error a single-bit flip at ``byte`` must raise (WireFormatError where several are possible)."""
    if byte < 4:
        return MagicError
    if byte < 6:
        return VersionError
    if 9 <= byte < 12:
        return CodecError
    if 28 <= byte < 44 or byte >= 84:  # step, seed: only the CRC covers them; the CRC field and the payload
        return ChecksumError
    return WireFormatError


@pytest.mark.parametrize("name", sorted(samples()))
def test_every_single_bit_flip_raises(name):
    buf = bytearray(samples()[name])
    wrong = []
    for bit in range(len(buf) * 8):
        byte = bit // 8
        buf[byte] ^= 1 << (bit % 8)
        want = _region_error(byte)
        try:
            wire.decode(bytes(buf))
        except want:
            pass
        except WireFormatError as exc:
            wrong.append((bit, type(exc).__name__))
        else:
            wrong.append((bit, "decoded"))
        buf[byte] ^= 1 << (bit % 8)
    assert not wrong, f"bit flips raising the wrong error or none: {wrong[:10]}"


@pytest.mark.parametrize("name", sorted(samples()))
def test_appended_bytes_raise(name):
    buf = samples()[name]
    for extra in (b"\0", b"\x01" * 7, bytes(4096), buf):
        with pytest.raises(TruncatedError):
            wire.decode(buf + extra)
