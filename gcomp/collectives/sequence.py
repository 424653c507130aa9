"""Sequence tokens: a collective that pairs with another rank's *other* call is an error on every rank.

If one rank's call fails before it communicates (an exception on its
communication thread, a call it skipped) and training goes on, that rank's
later collectives pair with the others' earlier ones, one call apart.  When
the sizes match nothing in the transport notices, and the ranks would sum
different buckets and diverge.  So the first collective of every call carries
a token of the call's ``(key, step)`` (the engine's per-key step, identical on
every rank in a correct run), and every rank checks what it received:

* **Packets** (``allgather``, ``scatter-reduce-allgather``): an 8-byte prefix
  before the wire packet: u32 key code, u16 step (mod 2**16), u8 flags (bit 0:
  the sender knows this call is already broken), u8 reserved.  Every rank
  receives every other rank's prefix, so every rank sees a mismatch.
* **Sums** (``allreduce``, ``hierarchical``): :data:`TAIL` extra
  entries appended to the first summed buffer, in its dtype (``dense`` and an
  identity compressor's ``allreduce`` sum them on their own first, so that the
  values are summed exactly as a plain allreduce would): 16 token bits (8 of
  the key code, 8 of the step), each 0 or 1, and one fault entry (0, or 1
  from a rank whose call is already broken).  After the sum each bit must be
  0 or P and the fault entry 0.  A bit is 0 or 1 on every rank, so a sum of
  exactly 0 or P means every rank had the same bit: the verdict is exact (in
  float16 too, up to P = 2048) and identical on every rank, since every rank
  sees the same sums.

A drift is then a :class:`gcomp.errors.SequenceError` on every rank, never a
wrong sum.  The key code is the key itself for an int key (low 32 bits; DDP's
bucket indices), else the CRC-32 of ``str(key)``.  A drift is caught when the
paired calls differ in the key code's low 8 bits or in the step's low 8
(packets: 32 and 16), which covers a rank one or more calls behind (DDP's
buckets, or one key called step after step).  Calls of
different algorithms pair different collectives, which the transport rejects
or times out on.
"""

import struct
import zlib

import numpy as np

from ..errors import ConfigError, SequenceError

__all__ = ["TAIL", "PREFIX_SIZE", "key_code", "stamp", "frame", "unframe", "with_tail", "check_tail"]

PREFIX = struct.Struct("<IHBB")
PREFIX_SIZE = PREFIX.size
KEY_BITS, STEP_BITS = 8, 8
TAIL = KEY_BITS + STEP_BITS + 1
FAULT = 1
RESTART = ("a rank missed a collective (its call failed before communicating, or the ranks call in different "
            "orders), so the ranks' calls no longer pair; every rank raised; restart every rank from the last "
            "checkpoint")


def key_code(key) -> int:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return int(key) & 0xFFFFFFFF
    return zlib.crc32(str(key).encode())


def _bits(key, step):
    code = key_code(key) & (2**KEY_BITS - 1)
    step = int(step) & (2**STEP_BITS - 1)
    return [(code >> i) & 1 for i in range(KEY_BITS)] + [(step >> i) & 1 for i in range(STEP_BITS)]


def _where(key, step):
    return f"key {key!r} step {step}"


# -- packets --------------------------------------------------------------------
def stamp(framed, key, step, fault=False) -> np.ndarray:
    """Write this call's prefix into the first :data:`PREFIX_SIZE` bytes of ``framed`` (a uint8 array whose packet
    starts after them, e.g. ``wire.encode_array(c, reserve=PREFIX_SIZE)``); returns it."""
    PREFIX.pack_into(framed, 0, key_code(key), int(step) & 0xFFFF, FAULT if fault else 0, 0)
    return framed


def frame(packet, key, step, fault=False) -> np.ndarray:
    """``packet`` (bytes) behind this call's 8-byte prefix, as one new uint8 array."""
    out = np.empty(PREFIX_SIZE + len(packet), np.uint8)
    out[PREFIX_SIZE:] = np.frombuffer(packet, np.uint8)
    return stamp(out, key, step, fault)


def unframe(buffers, key, step, rank, fault=False) -> list:
    """The packets inside ``buffers`` (one per rank, in rank order); SequenceError unless every prefix is this call's.

    Every buffer is checked before raising, so the message names every rank that differs.
    """
    expected = (key_code(key), int(step) & 0xFFFF)
    differing, broken, packets = [], [], []
    for r, buf in enumerate(buffers):
        view = memoryview(buf).cast("B") if not isinstance(buf, np.ndarray) else buf
        if len(view) < PREFIX_SIZE:
            differing.append(f"rank {r}: {len(view)} bytes, no prefix")
            packets.append(None)
            continue
        code, seq, flags, _ = PREFIX.unpack_from(view, 0)
        if flags & FAULT:
            broken.append(r)
        elif (code, seq) != expected:
            differing.append(f"rank {r}: key code {code:#x} step {seq}")
        packets.append(view[PREFIX_SIZE:])
    if differing or broken or fault:
        raise SequenceError(
            f"collective out of sequence on rank {rank} at {_where(key, step)} (key code {expected[0]:#x}, step "
            f"{expected[1]} mod 2**16)" + (f"; received {', '.join(differing)}" if differing else "")
            + (f"; ranks {broken} reported this call already broken" if broken else "")
            + ("; this rank's call was already broken" if fault else "") + f": {RESTART}")
    return packets


# -- sums -----------------------------------------------------------------------
def with_tail(array, key, step, size, fault=False) -> np.ndarray:
    """A flat copy of ``array`` followed by this call's :data:`TAIL` token entries (in ``array``'s dtype)."""
    flat = np.asarray(array).reshape(-1)
    dtype = flat.dtype
    _check_exact(dtype, size)
    out = np.empty(flat.shape[0] + TAIL, dtype)
    out[: flat.shape[0]] = flat
    out[flat.shape[0]:] = _bits(key, step) + [1 if fault else 0]
    return out


def check_tail(summed, key, step, size, rank, fault=False) -> np.ndarray:
    """The summed entries without the tail; SequenceError (the same verdict on every rank) unless the tail checks."""
    n = summed.shape[0] - TAIL
    tail = summed[n:]
    expected = np.array(_bits(key, step), np.float64) * size
    got = tail[:-1].astype(np.float64)
    if fault or tail[-1] != 0 or not np.array_equal(got, expected):
        what = []
        if tail[-1] != 0:
            what.append(f"{int(tail[-1])} rank(s) reported this call already broken")
        if not np.array_equal(got, expected):
            what.append("the ranks' sequence tokens differ")
        if fault:
            what.append("this rank's call was already broken")
        raise SequenceError(f"collective out of sequence on rank {rank} at {_where(key, step)}: {'; '.join(what)}; "
                            f"{RESTART}")
    return summed[:n]


def _check_exact(dtype, size):
    if np.issubdtype(dtype, np.floating):
        exact = 2 ** (np.finfo(dtype).nmant + 1)
    elif np.issubdtype(dtype, np.integer):
        exact = np.iinfo(dtype).max
    else:
        raise ConfigError(f"cannot sum a sequence token in {dtype}: expected a float or integer dtype")
    if size > exact:
        raise ConfigError(f"cannot sum a sequence token in {dtype} over {size} ranks: it counts exactly only up to "
                          f"{exact}")
