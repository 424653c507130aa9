"""The 32-byte prefix in front of every gossip packet: what a receiver checks before it decodes anything.

========  =====  ==============================================================
offset    type   field
========  =====  ==============================================================
0         4s     magic ``b"GCGP"``
4         u8     version (1)
5         u8     flags: bit 0 FAULT (a notice: the sender, or a rank before it,
                 failed; no packet follows), bit 1 NONFINITE (the sender's
                 vector held NaN/Inf), bit 2 EMPTY (no packet follows)
6         u8     reason of a FAULT (:data:`REASONS`)
7         u8     reserved, zero
8         u32    origin: the rank that failed first (a FAULT), else the sender
12        u64    gossip round the packet belongs to
20        8s     the first 8 bytes of the sender's configuration digest
28        4x     reserved, zero
========  =====  ==============================================================

A gcomp wire packet (:func:`gcomp.wire.encode_array`, unchanged) follows
unless FAULT or EMPTY is set.  The round catches a rank that skipped or
repeated a round (:class:`~gcomp.errors.SequenceError`), the digest one
configured differently (:class:`~gcomp.errors.MismatchError`), before the
payload is trusted.
"""

import struct

__all__ = ["PREFIX", "PREFIX_SIZE", "MAGIC", "VERSION", "FAULT", "NONFINITE", "EMPTY", "REASONS", "pack", "unpack"]

PREFIX = struct.Struct("<4sBBBBIQ8s4x")
PREFIX_SIZE = PREFIX.size
MAGIC = b"GCGP"
VERSION = 1
FAULT, NONFINITE, EMPTY = 1, 2, 4

#: reason code of a FAULT -> (name, what it means)
REASONS = {
    1: ("mismatch", "ranks disagree on the configuration or the vector's size"),
    2: ("sequence", "ranks are at different gossip rounds (one skipped or repeated a round)"),
    3: ("nonfinite", "a NaN or Inf was met under nonfinite='raise'"),
    4: ("failure", "a neighbour died, timed out, or sent bytes that do not decode"),
    5: ("local", "an error on that rank before it could send its packet"),
}
REASON_CODE = {name: code for code, (name, _) in REASONS.items()}

assert PREFIX_SIZE == 32


def pack(buf, *, flags=0, reason=0, origin=0, round=0, digest=b"\0" * 8):
    """Write a prefix into the first :data:`PREFIX_SIZE` bytes of the uint8 array ``buf``; returns ``buf``."""
    PREFIX.pack_into(buf, 0, MAGIC, VERSION, flags, reason, 0, origin, round & 0xFFFFFFFFFFFFFFFF, digest[:8])
    return buf


def unpack(buf):
    """``(magic, version, flags, reason, origin, round, digest)`` of ``buf``'s prefix (the caller checks the length)."""
    magic, version, flags, reason, _, origin, rnd, digest = PREFIX.unpack_from(buf, 0)
    return magic, version, flags, reason, origin, rnd, digest
