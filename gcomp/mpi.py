"""A compressed drop-in for mpi4py's ``comm.Allreduce``, for mpirun experiments across edge boxes.

::

    from mpi4py import MPI
    import gcomp.mpi

    ccomm = gcomp.mpi.CompressedComm(MPI.COMM_WORLD, "topk:ratio=0.01")
    ccomm.Allreduce(MPI.IN_PLACE, grad, op=gcomp.mpi.MEAN)   # compressed, error feedback kept
    ccomm.Bcast(params, root=0)                              # anything else passes through

    gcomp.mpi.Allreduce(MPI.COMM_WORLD, send, recv, compressor="qsgd")  # one-off, no memory

Buffers are numpy arrays or CPU torch tensors of float16/32/64 (or bfloat16
tensors); ``MPI.IN_PLACE`` works as in mpi4py.  ``op`` is ``MPI.SUM`` or
:data:`MEAN` (also accepted: ``"sum"``, ``"mean"``, ``"avg"``); other ops
raise :class:`gcomp.errors.ConfigError`.

The same collective algorithms as the DDP hook run over
:class:`gcomp.transports.MPITransport` (Allreduce, Allgatherv, Alltoallv,
Bcast: buffer methods only, never pickle), or over any
:class:`gcomp.transports.Transport` passed as ``transport=``.  Every call first checks that all
ranks agree on compressor, options, size and dtype (``verify="always"``, one
32-byte Allgather), raising :class:`gcomp.errors.MismatchError` on every rank
otherwise; pass ``verify="first"`` to check once per key.

One thread at a time: a call while another thread's call on the same
``CompressedComm`` is still in flight raises ConfigError (threads can be
ordered differently on different ranks, and their same-size buffers would mix
silently); serialize the calls or give each thread its own ``CompressedComm``.

Error feedback memories are keyed by ``key=`` (default: the buffer's length,
so one buffer per size needs no key).  ``state_dict()`` holds this rank's.

Hierarchical mode (``hierarchical="node"``, an integer color per site, a
callable ``rank -> color``, or a list of groups the same on every rank): a
dense Allreduce inside each group of fast links, the compressed allreduce
between the group leaders, and a broadcast back inside each group: the
cloud-edge-device hybrid (:mod:`gcomp.collectives.hierarchical`, shared with
the DDP hook).

``CompressedComm(comm, "adaptive")`` (or a :class:`gcomp.adapt.AdaptivePolicy`)
lets the adaptive policy pick the setting (docs/hybrid.md).  A step ends when
a key is called again (or at ``ccomm.end_step()``, collective); the policy's
small allgather runs then, on every rank.

An exception on one rank would leave the others waiting in a collective: run
scripts as ``mpiexec -n 4 python -m mpi4py script.py`` so an uncaught
exception calls MPI_Abort and ends the whole job (docs/mpi.md).
"""

import concurrent.futures
import threading

import numpy as np
from mpi4py import MPI

from . import statecodec
from .adapt import adapter_compressor, build_policy, is_adaptive
from .collectives import CompressedAllreduce
from .compressors import with_seed
from .errors import ConfigError, StateError
from .transports.mpi import MPITransport

__all__ = ["Allreduce", "Iallreduce", "CompressedComm", "MEAN", "SUM", "Request"]


class _Mean:
    """The averaging op (mpi4py has no MPI_AVG)."""

    def __repr__(self):
        return "gcomp.mpi.MEAN"


#: the average over the ranks (divide after the sum, as ``comm.Allreduce`` followed by ``/= size``)
MEAN = _Mean()
#: the sum over the ranks (mpi4py's ``MPI.SUM``)
SUM = MPI.SUM
STATE_VERSION = 1


_OP_NAMES = {name: getattr(MPI, name, None) for name in
             ("MAX", "MIN", "SUM", "PROD", "LAND", "BAND", "LOR", "BOR", "LXOR", "BXOR", "MAXLOC", "MINLOC", "REPLACE",
              "NO_OP")}


def _op_name(op):
    for name, known in _OP_NAMES.items():
        if known is not None and op == known:
            return f"MPI.{name}"
    return repr(op)


def _average_of(op):
    if op is MEAN or (isinstance(op, str) and op.lower() in ("mean", "avg", "average")):
        return True
    if op == MPI.SUM or (isinstance(op, str) and op.lower() == "sum"):
        return False
    raise ConfigError(f"expected op MPI.SUM or gcomp.mpi.MEAN for a compressed Allreduce, found {_op_name(op)}; "
                      "other reductions (MAX, PROD, ...) do not commute with compression: use comm.Allreduce")


def _datatype_dtype(datatype, name):
    try:
        from mpi4py.util.dtlib import to_numpy_dtype

        return np.dtype(to_numpy_dtype(datatype))
    except Exception as exc:  # noqa: BLE001 - any datatype numpy cannot name is refused below
        raise TypeError(f"expected {name}'s MPI datatype to be a float type (MPI.FLOAT, MPI.DOUBLE), found {datatype!r}") from exc


def _buffer_spec(buf, name):
    """``(buffer, count or None)`` of mpi4py's ``[data]``, ``[data, datatype]`` or ``[data, count, datatype]`` specs.

    The datatype must be the buffer's own; a count takes the first ``count``
    entries, as mpi4py does; ``(count, displacement)`` pairs are refused.
    """
    if not isinstance(buf, (list, tuple)):
        return buf, None
    if not 1 <= len(buf) <= 3:
        raise TypeError(f"expected {name} as [data], [data, datatype] or [data, count, datatype], found {len(buf)} items")
    data, count, datatype = buf[0], None, None
    if len(buf) == 2:
        datatype = buf[1]
    elif len(buf) == 3:
        count, datatype = buf[1], buf[2]
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise TypeError(f"expected {name}'s count a non-negative integer, found {count!r} "
                            "((count, displacement) pairs are not supported)")
    if datatype is not None:
        want = _datatype_dtype(datatype, name)
        have = _dtype_of(data)
        if have is not None and have != want:
            raise TypeError(f"expected {name}'s datatype to match its data ({have}), found one for {want}")
    return data, None if count is None else int(count)


def _dtype_of(data):
    if isinstance(data, np.ndarray):
        return data.dtype
    if type(data).__module__.startswith("torch"):
        names = {"float16": np.float16, "float32": np.float32, "float64": np.float64}
        name = str(data.dtype).replace("torch.", "")
        return np.dtype(names[name]) if name in names else None
    return None


def _buffer(buf, name):
    """``(flat numpy view or torch tensor, dtype name)`` of a buffer argument (mpi4py's buffer conventions)."""
    buf, count = _buffer_spec(buf, name)
    if isinstance(buf, (memoryview, bytearray, bytes)) or type(buf).__name__ == "array":
        mv = memoryview(buf)
        if mv.format not in ("f", "d", "e"):
            raise TypeError(f"expected {name} to hold float16, float32 or float64 values (buffer format 'e', 'f' or 'd'), "
                            f"found format {mv.format!r}")
        if mv.readonly and name == "recvbuf":
            raise TypeError("expected a writable recvbuf, found a read-only buffer")
        buf = np.frombuffer(mv.cast("B").cast(mv.format), dtype=mv.format)  # no copy: writes reach the caller's buffer
    if isinstance(buf, np.ndarray):
        if buf.dtype not in (np.float16, np.float32, np.float64):
            raise TypeError(f"expected {name} of dtype float16, float32 or float64, found {buf.dtype}")
        if not (buf.flags.c_contiguous or buf.flags.f_contiguous):
            raise ValueError(f"expected {name} to be contiguous (C or Fortran order)")
        flat = buf.reshape(-1, order="A")  # memory order, a view for C- and Fortran-ordered arrays alike
        return _counted(flat, count, name), buf.dtype.name
    if type(buf).__module__.startswith("torch"):
        import torch

        if buf.device.type != "cpu":
            raise TypeError(f"expected {name} on the CPU, found {buf.device}")
        if not buf.is_contiguous():
            raise ValueError(f"expected {name} to be contiguous")
        if buf.dtype == torch.bfloat16:
            return _counted(buf.reshape(-1), count, name), "bfloat16"
        if buf.dtype not in (torch.float16, torch.float32, torch.float64):
            raise TypeError(f"expected {name} of a float dtype, found {buf.dtype}")
        return _counted(buf.detach().reshape(-1).numpy(), count, name), str(buf.dtype).replace("torch.", "")
    raise TypeError(f"expected {name} to be a numpy array, a CPU torch tensor, a float buffer (array.array, memoryview) "
                    f"or MPI.IN_PLACE, found {type(buf).__name__}")


def _counted(flat, count, name):
    if count is None:
        return flat
    if count > flat.shape[0]:
        raise ValueError(f"expected {name}'s count at most its {flat.shape[0]} entries, found {count}")
    return flat[:count]


def _as_f32(flat, dtype):
    """The engine's input: float32, except float64, which the engine reduces exactly on its dense path."""
    if dtype == "bfloat16":
        return flat.float().numpy()
    return flat if flat.dtype in (np.float32, np.float64) else flat.astype(np.float32)


def _operands(sendbuf, recvbuf):
    """``(float32 input, flat receive buffer, dtype name)``; ``MPI.IN_PLACE`` (or None) reads the receive buffer."""
    recv_flat, dtype = _buffer(recvbuf, "recvbuf")
    if sendbuf is MPI.IN_PLACE or sendbuf is None:  # mpi4py reads a None sendbuf as MPI.IN_PLACE
        return _as_f32(recv_flat, dtype), recv_flat, dtype
    send_flat, send_dtype = _buffer(sendbuf, "sendbuf")
    if send_flat.shape != recv_flat.shape:
        raise ValueError(f"expected sendbuf and recvbuf of one size, found {send_flat.shape[0]} and {recv_flat.shape[0]}")
    if send_dtype != dtype:
        raise TypeError(f"expected sendbuf and recvbuf of one dtype (as mpi4py does), found {send_dtype} and {dtype}")
    return _as_f32(send_flat, send_dtype), recv_flat, dtype


def _write(recv_flat, dtype, result):
    if dtype == "bfloat16":
        import torch

        recv_flat.copy_(torch.from_numpy(result))
    else:
        recv_flat[...] = result


class Request:
    """A nonblocking compressed allreduce; ``Wait()`` returns when the result is in ``recvbuf``.

    Returned by :meth:`CompressedComm.Iallreduce` and :func:`Iallreduce`, not
    built by users.  It is not an ``MPI.Request`` (the work runs on gcomp's
    thread, not inside MPI), so ``MPI.Request.Waitall`` cannot take it: use
    :meth:`Request.Waitall` / :meth:`Request.Testall`, which take gcomp and
    mpi4py requests mixed.  ``wait``, ``test``, ``waitall`` and ``testall``
    are the same methods under mpi4py's lower-case names.

    Parameters
    ----------
    future : concurrent.futures.Future
        The call's work on the communication thread.

    Examples
    --------
    >>> import numpy as np
    >>> from mpi4py import MPI
    >>> import gcomp.mpi
    >>> ccomm = gcomp.mpi.CompressedComm(MPI.COMM_SELF, "topk:ratio=0.5")
    >>> grad = np.arange(4, dtype=np.float32)
    >>> request = ccomm.Iallreduce(MPI.IN_PLACE, grad, op=gcomp.mpi.MEAN)
    >>> # ... compute while it communicates ...
    >>> request.Wait()
    True
    >>> grad                          # one rank: the mean is the input itself
    array([0., 1., 2., 3.], dtype=float32)
    >>> ccomm.Free()
    """

    def __init__(self, future):
        self._future = future

    def Wait(self, status=None):
        """Block until the result is in ``recvbuf``; raises what the call raised (on every rank).

        Parameters
        ----------
        status : mpi4py.MPI.Status, optional
            Accepted for mpi4py's signature; left untouched.

        Returns
        -------
        bool
            True.

        Raises
        ------
        gcomp.errors.GcompError
            What the call raised (MismatchError, NonFiniteError, ...).

        Examples
        --------
        ::

            request = ccomm.Iallreduce(MPI.IN_PLACE, grad, op=gcomp.mpi.MEAN)
            request.Wait()                # grad holds the mean now
        """
        self._future.result()
        return True

    def Test(self, status=None):
        """Whether the call has completed (raising what it raised, if it failed); does not block.

        Parameters
        ----------
        status : mpi4py.MPI.Status, optional
            Accepted for mpi4py's signature; left untouched.

        Returns
        -------
        bool
            True once the result is in ``recvbuf``.

        Raises
        ------
        gcomp.errors.GcompError
            What the call raised, once it has completed.

        Examples
        --------
        ::

            request = ccomm.Iallreduce(MPI.IN_PLACE, grad, op=gcomp.mpi.MEAN)
            while not request.Test():
                do_some_work()
        """
        if self._future.done():
            self._future.result()
            return True
        return False

    wait = Wait
    test = Test

    @staticmethod
    def Waitall(requests, statuses=None):
        """Wait for every request (gcomp's and mpi4py's, mixed).

        Parameters
        ----------
        requests : list
            :class:`Request` and ``mpi4py.MPI.Request`` objects.
        statuses : list, optional
            Accepted for mpi4py's signature; left untouched.

        Returns
        -------
        bool
            True.

        Examples
        --------
        ::

            requests = [ccomm.Iallreduce(MPI.IN_PLACE, g, op=gcomp.mpi.MEAN) for g in grads]
            requests.append(comm.Ibcast(params, root=0))
            gcomp.mpi.Request.Waitall(requests)
        """
        mpi = [r for r in requests if not isinstance(r, Request)]
        for r in requests:
            if isinstance(r, Request):
                r.Wait()
        if mpi:
            MPI.Request.Waitall(mpi)
        return True

    @staticmethod
    def Testall(requests, statuses=None):
        """Whether every request (gcomp's and mpi4py's, mixed) has completed; does not block.

        Parameters
        ----------
        requests : list
            :class:`Request` and ``mpi4py.MPI.Request`` objects.
        statuses : list, optional
            Accepted for mpi4py's signature; left untouched.

        Returns
        -------
        bool
            True when every request has completed.

        Examples
        --------
        ::

            requests = [ccomm.Iallreduce(MPI.IN_PLACE, g, op=gcomp.mpi.MEAN, key=name) for name, g in grads.items()]
            done = gcomp.mpi.Request.Testall(requests)
        """
        mpi = [r for r in requests if not isinstance(r, Request)]
        done = all(r.Test() for r in requests if isinstance(r, Request))
        return (MPI.Request.Testall(mpi) if mpi else True) and done

    waitall = Waitall
    testall = Testall


class CompressedComm:
    """Wraps a communicator: ``Allreduce``/``Iallreduce`` compress, every other attribute passes through.

    Construct it on every rank of ``comm`` (a collective call: every rank
    checks that the others use the same options, MismatchError otherwise).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The communicator; gcomp's traffic runs on a duplicate of it.
    spec : str, dict, gcomp.Compressor or gcomp.adapt.AdaptivePolicy
        The compressor; ``"adaptive"`` (or a policy): the policy picks the
        setting (``ccomm.policy``); it needs residual (or no) error feedback
        and ``algorithm="auto"``.
    error_feedback : str
        "auto" (the default: "none" for unbiased compressors, "residual" for
        biased ones), "residual", "ef21", "dgc" or "none".
    algorithm : str
        "auto", "allreduce", "allgather", "scatter-reduce-allgather" or "dense".
    nonfinite : str
        "propagate", "zero" or "raise".
    verify : str or bool
        "always", "first" or False: when the ranks compare each call's sizes.
    min_numel : int
        Smaller buffers go dense.
    seed : int, optional
        None keeps the spec's; an integer replaces it, identically on every rank.
    hierarchical : None, "node", int, callable or list
        Groups: by host, an int color, a callable rank -> color, or a list of
        groups the same on every rank; dense inside, compressed between leaders.
    transport : gcomp.transports.Transport, optional
        Carries the compressed traffic instead of an MPI transport over a
        duplicate of ``comm``; it must span the same ranks in the same order.
    hierarchical_dense : str
        "groups" (the default: dense calls stay hierarchical) or "flat" (one
        plain Allreduce over every rank, bit-identical to ``comm.Allreduce``).

    Raises
    ------
    gcomp.errors.ConfigError
        An invalid option, or a transport over other ranks.
    gcomp.errors.MismatchError
        On every rank, when the ranks' options differ.

    Examples
    --------
    Under ``mpiexec -n 4``::

        from mpi4py import MPI
        import gcomp.mpi

        ccomm = gcomp.mpi.CompressedComm(MPI.COMM_WORLD, "topk:ratio=0.01")
        ccomm.Allreduce(MPI.IN_PLACE, grad, op=gcomp.mpi.MEAN)   # compressed, error feedback kept
        ccomm.Bcast(params, root=0)                              # passes through to COMM_WORLD
        print(ccomm.stats[-1].bytes_sent)

    On one process (``MPI.COMM_SELF``), where the reduction is the identity:

    >>> import numpy as np
    >>> from mpi4py import MPI
    >>> import gcomp.mpi
    >>> ccomm = gcomp.mpi.CompressedComm(MPI.COMM_SELF, "topk:ratio=0.5")
    >>> grad = np.arange(4, dtype=np.float32)
    >>> ccomm.Allreduce(MPI.IN_PLACE, grad, op=gcomp.mpi.MEAN)
    >>> grad
    array([0., 1., 2., 3.], dtype=float32)
    >>> ccomm.Get_size(), ccomm.stats[-1].algorithm          # Get_size passes through to the communicator
    (1, 'dense')
    >>> ccomm.Free()
    """

    def __init__(self, comm, spec, *, error_feedback="auto", algorithm="auto", nonfinite="propagate",
                 verify="always", min_numel=0, seed=None, hierarchical=None, transport=None,
                 hierarchical_dense="groups"):
        self.policy, comp, error_feedback = adapter_compressor(spec, seed, error_feedback, algorithm)
        self._seed = seed  # the module-level calls check their compressor argument with the same seed applied
        self.comm = comm
        self._own = comm.Dup()  # compressed traffic never mixes with the caller's collectives
        self.hierarchical = hierarchical
        self.transport = MPITransport(self._own) if transport is None else transport
        if self.transport.size != self._own.Get_size() or self.transport.rank != self._own.Get_rank():
            raise ConfigError(f"expected a transport over the communicator's ranks (rank {self._own.Get_rank()} of "
                              f"{self._own.Get_size()}), found rank {self.transport.rank} of {self.transport.size}")
        options = dict(algorithm=algorithm, error_feedback=error_feedback, nonfinite=nonfinite, min_numel=min_numel,
                       verify=verify)
        try:
            # collective: every rank checks that every other has the same options (MismatchError otherwise)
            self.engine = CompressedAllreduce(
                self.transport, comp, groups=hierarchical, dense_mean="divide-after", hierarchical_dense=hierarchical_dense,
                agree_extra={"adaptive": self.policy.config()} if self.policy else None, **options)
        except BaseException:
            self._own.Free()
            raise
        if self.policy is not None:
            self.policy.attach(self.engine)
        self._step_keys = set()  # keys called in the policy's current step
        self.options = options
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gcomp-mpi")
        self._guard = threading.Lock()
        self._caller = None  # the thread whose calls are in flight
        self._in_flight = 0

    # -- pass-through ---------------------------------------------------------
    def __getattr__(self, name):
        return getattr(self.__dict__["comm"], name)

    @property
    def compressor(self):
        """The compressor of the next call; with the adaptive policy, its current setting."""
        return self.engine.compressor

    @property
    def stats(self):
        """Per-call :class:`gcomp.collectives.CallStats` of this rank's compressed traffic."""
        return list(self.engine.stats)

    # -- the compressed allreduce ------------------------------------------------
    def _enter(self):
        """Refuse a call while another thread's call is in flight: the ranks could pair them differently."""
        me = threading.get_ident()
        with self._guard:
            if self._in_flight and self._caller != me:
                raise ConfigError(
                    "expected one thread at a time on a CompressedComm, found a call from another thread still in "
                    "flight; calls from several threads can be paired differently on different ranks and mix their "
                    "data: serialize them (one lock around the calls) or give each thread its own CompressedComm")
            self._caller = me
            self._in_flight += 1

    def _leave(self):
        with self._guard:
            self._in_flight -= 1

    def end_step(self):
        """Close the adaptive policy's step now (collective: every rank calls it at the same point); a no-op
        without a policy.  Without it a step ends when a key is called again.

        Examples
        --------
        ::

            ccomm = gcomp.mpi.CompressedComm(MPI.COMM_WORLD, "adaptive:budget=0.5")
            for batch in batches:
                ...                                   # backward
                for key, g in grads.items():
                    ccomm.Allreduce(MPI.IN_PLACE, g, op=gcomp.mpi.MEAN, key=key)
                ccomm.end_step()                      # the policy decides here, on every rank
        """
        if self.policy is not None:
            self._step_keys = set()
            self._executor.submit(self.policy.end_step, self.transport, blocking=True).result()

    def _run(self, sendbuf, recvbuf, op, key):
        self._enter()
        try:
            average = _average_of(op)
            x, recv_flat, dtype = _operands(sendbuf, recvbuf)
            key = f"n{x.shape[0]}" if key is None else key
            if self.policy is not None:
                if key in self._step_keys:
                    self.end_step()  # a key called again: a new step (its decision applies from this call on)
                self._step_keys.add(key)
            pending = self.engine.prepare(x, key=key, average=average, dtype=dtype)
            if self.policy is not None:
                self.policy.launched()
        except BaseException:
            self._leave()
            raise

        # a float32 receive buffer takes the result directly: no fresh dense output, no copy
        direct = (isinstance(recv_flat, np.ndarray) and recv_flat.dtype == np.float32 and recv_flat.flags.c_contiguous
                  and recv_flat.flags.writeable)

        def call():
            if direct:
                self.engine.complete(pending, out=recv_flat)
            else:
                _write(recv_flat, dtype, self.engine.complete(pending))

        def work():
            try:
                if self.policy is not None:
                    self.policy.run(call, x.shape[0])
                else:
                    call()
            finally:
                self._leave()

        return work

    def Allreduce(self, sendbuf, recvbuf, op=MPI.SUM, *, key=None):
        """Compressed ``comm.Allreduce(sendbuf, recvbuf, op)``; op is MPI.SUM or gcomp.mpi.MEAN.

        Collective: every rank calls it with a buffer of the same size and
        dtype (checked as ``verify`` says).  Blocks until the result is in
        ``recvbuf``.

        Parameters
        ----------
        sendbuf : numpy.ndarray, torch.Tensor or mpi4py.MPI.IN_PLACE
            This rank's values (``MPI.IN_PLACE`` or None: read ``recvbuf``); a
            float buffer (``array.array``, ``memoryview``) works too, and so do
            mpi4py's ``[data, datatype]`` and ``[data, count, datatype]`` specs.
        recvbuf : numpy.ndarray or torch.Tensor
            Receives the result; float16/32/64 (or a bfloat16 tensor), contiguous,
            on the CPU; or a writable float buffer.
        op : mpi4py.MPI.Op, MEAN or str
            ``MPI.SUM`` (:data:`SUM`), :data:`MEAN`, or ``"sum"`` / ``"mean"`` / ``"avg"``.
        key : object, optional
            The error-feedback memory to use; default ``"n<size>"`` (one
            buffer per size needs no key).

        Raises
        ------
        gcomp.errors.ConfigError
            Another op, or a call while another thread's is in flight.
        gcomp.errors.MismatchError
            On every rank, when the ranks' sizes, dtypes or ops differ.
        TypeError, ValueError
            A buffer of another kind, dtype or size.

        Examples
        --------
        ::

            ccomm.Allreduce(MPI.IN_PLACE, grad, op=gcomp.mpi.MEAN)          # in place
            ccomm.Allreduce(send, recv, op=MPI.SUM, key="layer1")          # its own memory
        """
        work = self._run(sendbuf, recvbuf, op, key)
        self._executor.submit(work).result()

    def Iallreduce(self, sendbuf, recvbuf, op=MPI.SUM, *, key=None) -> Request:
        """Nonblocking :meth:`Allreduce`: compresses now, communicates on a background thread.

        As with mpi4py's nonblocking calls, leave both buffers alone (alive,
        unchanged, ``recvbuf`` unread) until the request completes: some
        compressors (PowerSGD) read the input again on the background thread.

        Parameters
        ----------
        sendbuf : numpy.ndarray, torch.Tensor or mpi4py.MPI.IN_PLACE
            As :meth:`Allreduce`.
        recvbuf : numpy.ndarray or torch.Tensor
            As :meth:`Allreduce`.
        op : mpi4py.MPI.Op, MEAN or str
            As :meth:`Allreduce`.
        key : object, optional
            As :meth:`Allreduce`.

        Returns
        -------
        Request
            ``Wait()`` it before reading ``recvbuf``.

        Examples
        --------
        ::

            request = ccomm.Iallreduce(MPI.IN_PLACE, grad, op=gcomp.mpi.MEAN)
            ...                                   # compute meanwhile
            request.Wait()
        """
        work = self._run(sendbuf, recvbuf, op, key)
        return Request(self._executor.submit(work))

    def warm_up(self, numel) -> float:
        """Compile (or load from the cache) the kernels a call of ``numel`` entries runs, before timing anything.

        Local: nothing is sent.  With the adaptive policy, every setting of its ladder.

        Parameters
        ----------
        numel : int
            Entries of the buffers to warm up for.

        Returns
        -------
        float
            Seconds it took (:meth:`gcomp.collectives.CompressedAllreduce.warm_up`).

        Examples
        --------
        ::

            ccomm.warm_up(grad.size)      # before the first timed step
        """
        return self.policy.warm_up(numel) if self.policy is not None else self.engine.warm_up(numel)

    # -- checkpointing ------------------------------------------------------------
    def state_dict(self):
        """This rank's error-feedback memories and steps (never the communicator).

        Waits for the calls in flight first.

        Returns
        -------
        dict
            Plain values and tensors; save one file per rank
            (:func:`gcomp.statecodec.pack` writes them without pickle).

        Examples
        --------
        ::

            rank = MPI.COMM_WORLD.Get_rank()
            pathlib.Path(f"gcomp-{rank}.bin").write_bytes(gcomp.statecodec.pack(ccomm.state_dict()))
            ...
            ccomm.load_state_dict(gcomp.statecodec.unpack(pathlib.Path(f"gcomp-{rank}.bin").read_bytes()))
        """
        self._executor.submit(lambda: None).result()
        return {"version": STATE_VERSION, "rank": self._own.Get_rank(), "size": self._own.Get_size(),
                "engine": self.engine.state_dict(),
                **({"policy": self.policy.state_dict()} if self.policy is not None else {})}

    def gathered_state_dict(self):
        """Every rank's :meth:`state_dict` in one dict (collective); save it on rank 0, load it on every rank.

        Returns
        -------
        dict
            Every rank's state, gathered without pickle (:mod:`gcomp.statecodec`).

        Examples
        --------
        ::

            state = ccomm.gathered_state_dict()             # on every rank
            if MPI.COMM_WORLD.Get_rank() == 0:
                pathlib.Path("gcomp.bin").write_bytes(gcomp.statecodec.pack(state))
            ...
            ccomm.load_state_dict(gcomp.statecodec.unpack(pathlib.Path("gcomp.bin").read_bytes()))
        """
        return statecodec.gather(self.transport, self.state_dict())

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output of this rank (or a :meth:`gathered_state_dict`).  Local.

        Parameters
        ----------
        state : dict
            This rank's :meth:`state_dict`, or every rank's :meth:`gathered_state_dict`.

        Raises
        ------
        gcomp.errors.StateError
            A state of another version, rank or world size.

        Examples
        --------
        >>> from mpi4py import MPI
        >>> import gcomp.mpi
        >>> ccomm = gcomp.mpi.CompressedComm(MPI.COMM_SELF, "topk:ratio=0.5")
        >>> saved = ccomm.state_dict()
        >>> saved["rank"], saved["size"]
        (0, 1)
        >>> ccomm.load_state_dict(saved)
        >>> ccomm.Free()
        """
        state = statecodec.own_part(state, self._own.Get_rank(), self._own.Get_size())
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise StateError(f"expected a gcomp MPI state with version {STATE_VERSION}")
        if (state.get("rank"), state.get("size")) != (self._own.Get_rank(), self._own.Get_size()):
            raise StateError(f"expected the state of rank {self._own.Get_rank()} of {self._own.Get_size()}, found rank "
                             f"{state.get('rank')} of {state.get('size')}: save and load one file per rank")
        if self.policy is not None:
            self.policy.load_state_dict(state.get("policy"))  # first: the engine's memories belong to its setting
        if state.get("engine") is not None:
            self.engine.load_state_dict(state["engine"])

    def Free(self):
        """Release the duplicated communicators and stop the communication thread (the wrapped one stays yours).

        Collective (it frees communicators): call it on every rank, after the
        last call has completed.

        Examples
        --------
        ::

            ccomm = gcomp.mpi.CompressedComm(MPI.COMM_WORLD, "topk:ratio=0.01")
            ...
            ccomm.Free()
        """
        self._executor.shutdown(wait=True)
        self.engine.free()
        if self._own != MPI.COMM_NULL:
            self._own.Free()


def Allreduce(comm, sendbuf, recvbuf, *, compressor, op=MPI.SUM, state=None, key=None, **options):
    """Compressed ``comm.Allreduce(sendbuf, recvbuf, op)``.

    ``state`` is a :class:`CompressedComm` over ``comm`` whose memories (error
    feedback, steps) this call uses; without one the call is stateless (no error
    feedback) and runs on ``comm`` directly.  Collective over ``comm``.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The communicator.
    sendbuf : numpy.ndarray, torch.Tensor or mpi4py.MPI.IN_PLACE
        This rank's values (as :meth:`CompressedComm.Allreduce`).
    recvbuf : numpy.ndarray or torch.Tensor
        Receives the result.
    compressor : str, dict or gcomp.Compressor
        The compressor; with ``state``, it must be the state's.
    op : mpi4py.MPI.Op, MEAN or str
        ``MPI.SUM`` or :data:`MEAN`.
    state : CompressedComm, optional
        Use its memories and its communication thread.
    key : object, optional
        The memory's key (default ``"n<size>"``).
    **options
        Without ``state``: options of :class:`gcomp.collectives.CompressedAllreduce`
        (``error_feedback`` defaults to ``"none"``, ``verify`` to ``"always"``).

    Returns
    -------
    gcomp.collectives.CallStats or None
        Without ``state``, the call's stats; with one, None (they are in ``state.stats``).

    Raises
    ------
    gcomp.errors.ConfigError
        Another op, or a compressor other than the state's.
    gcomp.errors.MismatchError
        On every rank, when the ranks' options, sizes or dtypes differ.

    Examples
    --------
    >>> import numpy as np
    >>> from mpi4py import MPI
    >>> import gcomp.mpi
    >>> send, recv = np.arange(4, dtype=np.float32), np.empty(4, np.float32)
    >>> stats = gcomp.mpi.Allreduce(MPI.COMM_SELF, send, recv, compressor="qsgd", op=gcomp.mpi.MEAN)
    >>> recv, stats.algorithm
    (array([0., 1., 2., 3.], dtype=float32), 'dense')

    Under ``mpiexec -n 4``, the same call on ``MPI.COMM_WORLD`` averages the
    four ranks' QSGD-compressed vectors (unbiased, no error feedback)::

        gcomp.mpi.Allreduce(MPI.COMM_WORLD, send, recv, compressor="qsgd", op=gcomp.mpi.MEAN)
    """
    if state is not None:
        _check_state(state, compressor)
        return state.Allreduce(sendbuf, recvbuf, op, key=key)
    options.setdefault("error_feedback", "none")
    options.setdefault("verify", "always")
    engine = CompressedAllreduce(MPITransport(comm), compressor, dense_mean="divide-after", **options)
    average = _average_of(op)
    x, recv_flat, dtype = _operands(sendbuf, recvbuf)
    _write(recv_flat, dtype, engine(x, key=key or f"n{x.shape[0]}", average=average, dtype=dtype))
    return engine.stats[-1]


def Iallreduce(comm, sendbuf, recvbuf, *, compressor, op=MPI.SUM, state, key=None) -> Request:
    """Nonblocking compressed allreduce through ``state`` (a :class:`CompressedComm`).

    The same as ``state.Iallreduce(sendbuf, recvbuf, op, key=key)``; the call
    runs on the state's communication thread.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The communicator (the state's).
    sendbuf : numpy.ndarray, torch.Tensor or mpi4py.MPI.IN_PLACE
        This rank's values.
    recvbuf : numpy.ndarray or torch.Tensor
        Receives the result once the request completes.
    compressor : str, dict or gcomp.Compressor
        The compressor; it must be the state's (as in :func:`Allreduce`).
    op : mpi4py.MPI.Op, MEAN or str
        ``MPI.SUM`` or :data:`MEAN`.
    state : CompressedComm
        Required: its memories and communication thread.
    key : object, optional
        The memory's key (default ``"n<size>"``).

    Returns
    -------
    Request
        ``Wait()`` it before reading ``recvbuf``.

    Raises
    ------
    TypeError
        ``state`` is not a :class:`CompressedComm`.
    ConfigError
        ``compressor`` is not the state's.

    Examples
    --------
    >>> import numpy as np
    >>> from mpi4py import MPI
    >>> import gcomp.mpi
    >>> ccomm = gcomp.mpi.CompressedComm(MPI.COMM_SELF, "topk:ratio=0.5")
    >>> send, recv = np.ones(4, np.float32), np.empty(4, np.float32)
    >>> request = gcomp.mpi.Iallreduce(MPI.COMM_SELF, send, recv, compressor="topk:ratio=0.5", state=ccomm)
    >>> gcomp.mpi.Request.Waitall([request])
    True
    >>> recv
    array([1., 1., 1., 1.], dtype=float32)
    >>> ccomm.Free()
    """
    _check_state(state, compressor)
    return state.Iallreduce(sendbuf, recvbuf, op, key=key)


def _check_state(state, compressor):
    """The module-level calls' ``state``: a CompressedComm built with ``compressor`` (local: the options agreed when
    the state was built, so a mismatch here is the same on every rank that passes the same arguments)."""
    if not isinstance(state, CompressedComm):
        raise TypeError(f"expected state to be a gcomp.mpi.CompressedComm (it holds the memories and the "
                        f"communication thread), found {type(state).__name__}")
    if state.policy is not None:
        same = compressor is state.policy or (
            is_adaptive(compressor) and build_policy(compressor, state._seed).config() == state.policy.config())
        if not same:
            raise ConfigError(f"expected the state's adaptive policy {state.policy.config()} as compressor, "
                              f"found {compressor!r}")
        return
    if with_seed(compressor, state._seed) != state.compressor:  # the state's seed replaced the spec's, if given
        raise ConfigError(f"expected compressor {state.compressor!r} (the state's), found {compressor!r}")
