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
    """What one compressed allreduce cost this rank: bytes, seconds, and whether the result was finite.

    The engine (:class:`gcomp.collectives.CompressedAllreduce`) records one per
    call in its ``stats`` list; the DDP hook and :mod:`gcomp.mpi` expose them
    as ``state.stats`` / ``ccomm.stats``.

    Parameters
    ----------
    key : object
        The call's key (a DDP bucket index, an MPI buffer key, ...).
    step : int
        The key's step (its call count on this rank, identical on every rank).
    algorithm : str
        The algorithm that ran (``"dense"``, ``"allreduce"``, ``"allgather"``,
        ``"scatter-reduce-allgather"``, ``"hierarchical"`` or
        ``"hierarchical/<inner>"`` on a group leader).
    numel : int
        Entries of the vector.
    bytes_sent : int
        Bytes this rank's transport sent for the call.
    bytes_received : int
        Bytes this rank's transport received for the call.
    packet_bytes : int
        Bytes of this rank's compressed form (the dense bytes on the dense path).
    compress_s : float
        Seconds spent compressing (error feedback included).
    decompress_s : float
        Seconds spent decoding, summing and averaging.
    comm_s : float
        Seconds spent in the transport's collectives.
    nonfinite : bool
        Whether the reduced vector held a NaN or an Inf.
    intra_bytes_sent : int
        The part of ``bytes_sent`` that stayed inside a group of fast links
        (hierarchical calls; 0 otherwise).
    intra_bytes_received : int
        The part of ``bytes_received`` that stayed inside a group of fast links.

    Examples
    --------
    >>> from gcomp.collectives import CallStats
    >>> stats = CallStats(key="w", step=0, algorithm="allgather", numel=1000, bytes_sent=480, packet_bytes=250)
    >>> stats.dense_bytes, stats.compression_ratio
    (4000, 16.0)
    >>> stats.as_dict()["bytes_sent"]
    480
    """

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
        """Bytes of the vector as float32 (``4 * numel``): what an uncompressed allreduce would carry per copy."""
        return 4 * self.numel

    @property
    def compression_ratio(self):
        """float32 bytes of the vector over the bytes this rank's compressed form took."""
        return self.dense_bytes / self.packet_bytes if self.packet_bytes else float("inf") if self.numel else 1.0

    def as_dict(self):
        """Every field as a plain dict (``key`` as its ``str``), plus ``compression_ratio``: for logs and JSON.

        Returns
        -------
        dict
            The fields and the ratio.
        """
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
    """What :meth:`Algorithm.prepare` hands to :meth:`Algorithm.complete`: one call in flight.

    Built by the algorithms (and by :meth:`gcomp.collectives.CompressedAllreduce.prepare`),
    never by users; the fields are the call's state between its local part and
    its communication.

    Parameters
    ----------
    x : numpy.ndarray
        The call's input vector (after the error feedback's additions, for
        some algorithms); only its size is read after ``prepare``.
    key : object
        The call's key.
    step : int
        The key's step.
    stats : CallStats
        The call's stats, filled in as it runs.
    payload : object
        What the algorithm prepared (packets, compressed arrays, a phase
        generator...), read back by its ``complete``.
    average : bool
        True for the mean over the ranks, False for the sum.
    error : Exception, optional
        A local failure of ``prepare``, raised by the engine after the
        agreement step (so the ranks see the failure together).
    fault : bool
        This rank knows the call is already broken; it still communicates,
        flagged, so that every rank raises :class:`gcomp.errors.SequenceError`.

    Examples
    --------
    >>> import numpy as np
    >>> from gcomp.collectives import CallStats, Pending
    >>> pending = Pending(np.zeros(4, np.float32), key="w", step=0, stats=CallStats("w", 0, "dense", 4))
    >>> pending.average, pending.error, pending.fault
    (True, None, False)
    """

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
    """Base class of the collective algorithms: one way to turn every rank's vector into the same reduced vector.

    A subclass sets :attr:`name` and implements :meth:`estimated_bytes`,
    :meth:`prepare` and :meth:`complete` (and, when it keeps memories under
    other keys than the call's, :meth:`memory_keys` and :meth:`take_memory`).
    The engine (:class:`gcomp.collectives.CompressedAllreduce`) builds one of
    each algorithm of :data:`gcomp.collectives.ALGORITHMS` per transport and
    picks among them per call; an algorithm can also be driven on its own, as
    below.

    Parameters
    ----------
    transport : gcomp.transports.Transport
        Carries the bytes (the same ranks in the same order on every rank).
    compressor : gcomp.Compressor
        The compressor every rank uses.
    feedback : gcomp.feedback.ErrorFeedback
        The worker error feedback (``feedback("none", compressor)`` for none);
        ``dense`` ignores it.
    server_feedback : gcomp.feedback.ErrorFeedback, optional
        The second memory of ``scatter-reduce-allgather`` (its reduced chunk's);
        the other algorithms ignore it.

    Examples
    --------
    The linear allreduce with fp16 on three in-process ranks (threads):

    >>> import numpy as np
    >>> from gcomp import compressor
    >>> from gcomp.collectives import LinearAllreduce
    >>> from gcomp.feedback import feedback
    >>> from gcomp.transports import run_local
    >>> def rank(transport):
    ...     comp = compressor("fp16")
    ...     algorithm = LinearAllreduce(transport, comp, feedback("none", comp))
    ...     pending = algorithm.prepare(np.full(4, transport.rank + 1.0, np.float32), key="w", step=0)
    ...     return algorithm.complete(pending).tolist()
    >>> run_local(3, rank)
    [[2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]]
    """

    #: the algorithm's name, as ``algorithm=`` takes it and :class:`CallStats` records it
    name = ""
    #: the result comes from compressed messages, so the error feedback's
    #: :meth:`gcomp.feedback.ErrorFeedback.after_reduce` applies to it (False: dense, or applied inside)
    uses_feedback = True

    def __init__(self, transport, compressor, feedback, server_feedback=None):
        self.transport = transport
        self.compressor = compressor
        self.feedback = feedback
        self.server_feedback = server_feedback

    @property
    def size(self):
        """The number of ranks (the transport's size)."""
        return self.transport.size

    def estimated_bytes(self, numel) -> int:
        """Bytes this rank would send for a vector of ``numel`` entries (from the compressor's bounds).

        What ``algorithm="auto"`` compares: an upper bound from
        ``max_payload_bytes`` (``summed_bytes`` for what an allreduce sums),
        headers and sequence tokens included.  Local.

        Parameters
        ----------
        numel : int
            Entries of the vector.

        Returns
        -------
        int
            Bytes sent by this rank.
        """
        raise NotImplementedError

    def prepare(self, x, key, step, average=True, out=None) -> Pending:
        """The local part of one call: error feedback and compression, no communication.

        Parameters
        ----------
        x : numpy.ndarray
            This rank's float32 vector (flat, contiguous); some algorithms
            compress it in place or keep it as scratch.
        key : object
            The call's key (its error-feedback memories and sequence token).
        step : int
            The key's step, identical on every rank.
        average : bool
            True for the mean over the ranks, False for the sum.
        out : numpy.ndarray, optional
            The vector :meth:`complete` will be given as ``out`` (the same
            array, a writable contiguous float32 vector of ``x``'s size): an
            algorithm may then write the result straight into it at
            :meth:`complete` (the linear allreduce does, for PowerSGD with
            fused residual error feedback); others ignore it.

        Returns
        -------
        Pending
            The call, for :meth:`complete`.
        """
        raise NotImplementedError

    def complete(self, pending: Pending, out=None) -> np.ndarray:
        """The communication and decoding of a prepared call; every rank gets the same result.

        Collective: every rank calls it for the same call, in the same order.

        Parameters
        ----------
        pending : Pending
            What :meth:`prepare` returned.
        out : numpy.ndarray, optional
            A float32 vector of the input's size to write the result into,
            which the algorithm may use as scratch first; it may be the input's
            own memory (``pending.x`` is not read after :meth:`prepare`, except
            for its size).

        Returns
        -------
        numpy.ndarray
            The reduced vector (``out`` when given and of the result's dtype).

        Raises
        ------
        gcomp.errors.SequenceError
            On every rank, when the ranks' calls no longer pair
            (the sequence tokens of ``gcomp.collectives.sequence``).
        """
        raise NotImplementedError

    def memory_keys(self, key):
        """Every feedback key this algorithm uses for ``key`` (to reset them together).

        Parameters
        ----------
        key : object
            The call's key.

        Returns
        -------
        list
            The keys (``[key]`` unless the algorithm keeps memories per chunk).
        """
        return [key]

    def feedback_scale(self, average):
        """The factor this algorithm applies to its input before the error feedback sees it (1: none).

        Parameters
        ----------
        average : bool
            Whether the call averages.

        Returns
        -------
        float
            The factor.
        """
        return 1.0

    def take_memory(self, key, numel, average):
        """The error-feedback memories this algorithm keeps for ``key``, as one addend to the caller's next input
        (float32, ``numel`` entries, in the input's units), forgotten here; None when there are none.

        The engine adds it to the first input of ``key`` after its compressor or
        algorithm changed (:meth:`gcomp.collectives.CompressedAllreduce.switch`).

        Parameters
        ----------
        key : object
            The call's key.
        numel : int
            Entries of the key's vector (a memory of another size is left out).
        average : bool
            Whether the key's last call averaged (the memories' units).

        Returns
        -------
        numpy.ndarray or None
            The memories summed into one vector.
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
