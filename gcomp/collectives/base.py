"""Shared pieces of the collective algorithms: the Algorithm contract and per-call stats.

An algorithm turns every rank's float32 vector into the same result on every
rank: the mean (or the sum) of what the ranks' compressed forms decode to.  It
is split in two so adapters can overlap communication with computation:

* :meth:`Algorithm.prepare` - local work only (error feedback, compression);
* :meth:`Algorithm.complete` - communication and decoding, on any thread,
  into a caller's buffer when given (``out=``: no fresh dense output per call).

Algorithms talk to a :class:`gcomp.transports.Transport` and to the error
feedback memories the engine hands them; nothing here knows about DDP or MPI.
"""

import dataclasses
import time

import numpy as np

from . import sequence

__all__ = ["Algorithm", "Pending", "CallStats", "Timer"]


@dataclasses.dataclass
class CallStats:
    """What one compressed allreduce cost this rank."""

    key: object
    step: int
    algorithm: str
    numel: int
    bytes_sent: int = 0
    bytes_received: int = 0
    packet_bytes: int = 0
    compress_s: float = 0.0
    decompress_s: float = 0.0
    comm_s: float = 0.0
    nonfinite: bool = False
    #: the part of bytes_sent / bytes_received that stayed inside a group of fast links (hierarchical)
    intra_bytes_sent: int = 0
    intra_bytes_received: int = 0

    @property
    def dense_bytes(self):
        return 4 * self.numel

    @property
    def compression_ratio(self):
        """float32 bytes of the vector over the bytes this rank's compressed form took."""
        return self.dense_bytes / self.packet_bytes if self.packet_bytes else float("inf") if self.numel else 1.0

    def as_dict(self):
        d = dataclasses.asdict(self)
        d["key"] = str(self.key)
        d["compression_ratio"] = self.compression_ratio
        return d


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def lap(self):
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


@dataclasses.dataclass
class Pending:
    """What :meth:`Algorithm.prepare` hands to :meth:`Algorithm.complete`."""

    x: np.ndarray
    key: object
    step: int
    stats: CallStats
    payload: object = None
    average: bool = True
    #: a local failure of prepare(), raised by the engine after the agreement step
    error: Exception | None = None
    #: this rank knows the call is already broken (hierarchical: its group's sum was out of sequence); the
    #: call still communicates, flagged, so that every rank raises SequenceError (gcomp.collectives.sequence)
    fault: bool = False


class Algorithm:
    """Base class of the collective algorithms.

    ``uses_feedback``: the result comes from compressed messages, so the error
    feedback's :meth:`gcomp.feedback.ErrorFeedback.after_reduce` applies to it.
    """

    name = ""
    uses_feedback = True

    def __init__(self, transport, compressor, feedback, server_feedback=None):
        self.transport = transport
        self.compressor = compressor
        self.feedback = feedback
        self.server_feedback = server_feedback

    @property
    def size(self):
        return self.transport.size

    def estimated_bytes(self, numel) -> int:
        """Bytes this rank would send for a vector of ``numel`` (from max_payload_bytes)."""
        raise NotImplementedError

    def prepare(self, x, key, step, average=True) -> Pending:
        raise NotImplementedError

    def complete(self, pending: Pending, out=None) -> np.ndarray:
        """The result, written into ``out`` (a float32 vector of the input's size) when given, which the algorithm
        may use as scratch first; ``out`` may be the input's own memory (``pending.x`` is not read after
        prepare(), except for its size)."""
        raise NotImplementedError

    def memory_keys(self, key):
        """Every feedback key this algorithm uses for ``key`` (to reset them together)."""
        return [key]

    def feedback_scale(self, average):
        """The factor this algorithm applies to its input before the error feedback sees it (1: none)."""
        return 1.0

    def take_memory(self, key, numel, average):
        """The error-feedback memories this algorithm keeps for ``key``, as one addend to the caller's next input
        (float32, ``numel`` entries, in the input's units), forgotten here; None when there are none.

        The engine adds it to the first input of ``key`` after its compressor or
        algorithm changed (:meth:`gcomp.collectives.CompressedAllreduce.switch`).
        """
        memory = self.feedback.take(key) if self.feedback is not None else None
        if memory is None or memory.shape[0] != numel:
            return None
        scale = self.feedback_scale(average)
        return memory if scale == 1.0 else memory / np.float32(scale)

    def _sum_token(self, pending, dtype):
        """The call's sequence token in a small sum of its own, checked on every rank (gcomp.collectives.sequence).

        For sums that must equal a plain allreduce bit for bit: appended to the
        values, the token would move the transport's chunk boundaries, and with
        them the order of a float sum at P = 3.
        """
        token = sequence.with_tail(np.empty(0, dtype), pending.key, pending.step, self.size, pending.fault)
        self._counted(pending, self.transport.allreduce_, token)
        sequence.check_tail(token, pending.key, pending.step, self.size, self.transport.rank, pending.fault)

    def _counted(self, pending, fn, *args, transport=None):
        """Run ``fn(*args)`` (an operation of ``transport``, default this algorithm's), adding its time and bytes."""
        counter = (transport or self.transport).counter
        before = counter.snapshot()
        t = Timer()
        out = fn(*args)
        pending.stats.comm_s += t.lap()
        after = counter.snapshot()
        pending.stats.bytes_sent += after[0] - before[0]
        pending.stats.bytes_received += after[1] - before[1]
        return out
