"""PyTorch DDP communication hooks for every gcomp compressor.

::

    import gcomp.ddp
    state = gcomp.ddp.register(ddp_model, "topk:ratio=0.01")   # or:
    state = gcomp.ddp.CompressionState("qsgd", error_feedback="auto")
    ddp_model.register_comm_hook(state, gcomp.ddp.compression_hook)

The hook follows PyTorch's contract: it receives a ``GradBucket`` whose buffer
holds this rank's gradients (summed over nothing yet) and returns a
``torch.futures.Future`` of the *averaged* bucket.

How a bucket travels:

* for the first ``start_iter`` iterations (DDP rebuilds its buckets after the
  first one, so per-bucket state is not trusted before), and for buckets under
  ``min_numel`` entries, a plain dense allreduce on DDP's process group;
* afterwards the bucket is compressed in the hook (error feedback included),
  and the collective algorithm (``allreduce`` / ``allgather`` /
  ``scatter-reduce-allgather``, ``auto`` by bytes) runs on one background
  communication thread over a dedicated gloo group, decoding and averaging
  there; the Future completes when it is done, so communication overlaps the
  rest of the backward pass (Numba kernels release the GIL).

Compression runs on the CPU: CUDA buckets are copied to the host and the
result copied back, so the hook works on NCCL/CUDA models too, and nothing
requires CUDA.

Checkpointing is per rank: ``state.state_dict()`` holds this rank's residuals,
steps and seeds (never a process group); save one file per rank and
``load_state_dict`` into a fresh state before registering it (docs/ddp.md).

This module must not use ``from __future__ import annotations``: DDP compares
the hook's annotations as objects.
"""

import concurrent.futures
import logging
import threading

import numpy as np
import torch
import torch.distributed as dist

from . import statecodec
from .adapt import adapter_compressor
from .collectives import CallStats, CompressedAllreduce
from .errors import CollectiveError, ConfigError, GcompError, NonFiniteError, StateError
from .transports.torch_dist import TorchTransport

__all__ = ["CompressionState", "compression_hook", "register", "StepStats"]

log = logging.getLogger("gcomp.ddp")
STATE_VERSION = 1


class StepStats(dict):
    """Totals of one training step over its buckets (a dict, so it logs and serializes as one).

    :meth:`CompressionState.last_step` returns the latest; ``state.steps`` keeps
    the last ``keep_steps``.  Keys: ``step``, ``buckets``, ``bytes_sent``,
    ``bytes_received``, ``dense_bytes`` (float32 bytes of the buckets),
    ``compression_ratio``, ``compress_s``, ``decompress_s``, ``comm_s``,
    ``algorithms`` (the names used), ``nonfinite``, ``intra_bytes_sent`` /
    ``intra_bytes_received`` (inside groups, hierarchical), and with the
    adaptive policy ``setting``.

    Examples
    --------
    ::

        stats = state.last_step()
        print(stats["step"], stats["bytes_sent"], stats["compression_ratio"])
        json.dumps(stats)            # a dict of plain values
    """


class CompressionState:
    """Per-rank state of the gcomp DDP hook.

    Must be constructed on every rank of ``process_group`` in the same order:
    it creates a dedicated gloo group for the compressed traffic (a collective
    call) and checks that every rank uses the same configuration, raising
    :class:`gcomp.errors.MismatchError` on every rank otherwise.

    Parameters
    ----------
    compressor : str, dict, gcomp.Compressor or gcomp.adapt.AdaptivePolicy
        A spec (``"topk:ratio=0.01"``), a config dict, a compressor, or
        ``"adaptive"`` (options as ``"adaptive:budget=0.5,every=5,dwell=10"``)
        or a :class:`gcomp.adapt.AdaptivePolicy`: the policy then picks the
        setting from its ladder step by step (docs/hybrid.md); ``state.policy``
        is the policy (``policy.switches``, ``policy.summary()``) and each
        :class:`StepStats` names the ``setting`` it used.  The policy needs
        ``algorithm="auto"`` and residual (or no) error feedback.
    process_group : torch.distributed.ProcessGroup, optional
        The DDP model's group (default: the world).
    error_feedback : str or gcomp.feedback.ErrorFeedback
        "auto" (the compressor's ``default_feedback``: "none" for unbiased
        compressors, "residual" for biased ones), "residual", "ef21", "dgc" or "none".
    algorithm : str
        "auto", "allreduce", "allgather", "scatter-reduce-allgather" or "dense".
    start_iter : int
        Dense iterations before compressing.
    min_numel : int
        Buckets smaller than this go dense.
    seed : int, optional
        Overrides the compressor's seed (None: keep the spec's); identical on every rank.
    nonfinite : str
        "propagate", "zero" or "raise" (see :mod:`gcomp.collectives`).
    timeout : datetime.timedelta, optional
        For the communication group: a dead peer makes the others raise after it.
    log_every : int
        Log the step totals every N steps to the ``gcomp.ddp`` logger (0: never).
    keep_steps : int
        How many :class:`StepStats` to keep in ``steps``.
    hierarchical : None, "node", int, callable or list
        Groups for hybrid training: "node" (by host), an int color for this rank,
        a callable rank -> color, or a list of groups the same on every rank,
        ``[[0, 1], [2, 3]]``, or of colors per rank, ``[0, 0, 1, 1]``: dense
        inside each group, compressed between the group leaders.
    transport : gcomp.transports.Transport, optional
        A transport over the same ranks in the same order to carry the
        compressed traffic instead of a dedicated gloo group.
    hierarchical_dense : str
        "flat" (default: a bucket whose leaders' hop would be dense, as with
        ``none``, goes through one plain allreduce over every rank, bit-identical
        to DDP without a hook) or "groups" (it stays hierarchical: fewer bytes
        between groups, another float summation order).

    Raises
    ------
    gcomp.errors.ConfigError
        torch.distributed not initialised, or an invalid option.
    gcomp.errors.MismatchError
        On every rank, when the ranks' options differ.

    Examples
    --------
    On every rank, after ``dist.init_process_group("gloo", ...)``::

        ddp = torch.nn.parallel.DistributedDataParallel(model)
        state = gcomp.ddp.CompressionState("topk:ratio=0.01", error_feedback="residual")
        state.attach(ddp)
        ddp.register_comm_hook(state, gcomp.ddp.compression_hook)
        ...                      # train; state.last_step() has the bytes and times
        torch.save({"model": ddp.state_dict(), "gcomp": state.state_dict()}, f"ckpt-{rank}.pt")

    On one process (a world-size-1 gloo group), a state's configuration and a
    checkpoint round trip:

    >>> import torch.distributed as dist
    >>> import gcomp.ddp
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> state = gcomp.ddp.CompressionState("topk:ratio=0.1", min_numel=0)
    >>> state.config()["compressor"], state.config()["error_feedback"]
    ({'name': 'topk', 'ratio': 0.1}, 'residual')
    >>> saved = state.state_dict()          # this rank's memories and steps: one file per rank
    >>> saved["rank"], saved["world_size"]
    (0, 1)
    >>> state.close()
    >>> fresh = gcomp.ddp.CompressionState("topk:ratio=0.1", min_numel=0)
    >>> fresh.load_state_dict(saved)        # a state of another configuration raises StateError
    >>> fresh.close()
    >>> dist.destroy_process_group()
    """

    def __init__(self, compressor, *, process_group=None, error_feedback="residual", algorithm="auto", start_iter=2,
                 min_numel=1024, seed=None, nonfinite="propagate", timeout=None, log_every=0, keep_steps=1000,
                 hierarchical=None, transport=None, hierarchical_dense="flat"):
        if not dist.is_available() or not dist.is_initialized():
            raise ConfigError("expected torch.distributed to be initialised (dist.init_process_group) before CompressionState")
        self.policy, comp, error_feedback = adapter_compressor(compressor, seed, error_feedback, algorithm)
        for name, value in (("start_iter", start_iter), ("min_numel", min_numel), ("log_every", log_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"expected {name} a non-negative integer, found {value!r}")
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        self.comm_group = None
        if transport is None:
            ranks = list(range(dist.get_world_size())) if process_group is None else dist.get_process_group_ranks(process_group)
            kwargs = {"backend": "gloo"}
            if timeout is not None:
                kwargs["timeout"] = timeout
            self.comm_group = dist.new_group(ranks=ranks, **kwargs)
            transport = TorchTransport(self.comm_group, timeout=timeout)
        elif transport.size != self.world_size or transport.rank != self.rank:
            raise ConfigError(f"expected a transport over the process group's ranks (rank {self.rank} of {self.world_size}), "
                              f"found rank {transport.rank} of {transport.size}")
        self.transport = transport
        self.hierarchical = hierarchical
        self.start_iter = start_iter
        self.min_numel = min_numel
        # The engine's construction checks that every rank has the same options, these included.
        self.engine = CompressedAllreduce(self.transport, comp, algorithm=algorithm, error_feedback=error_feedback,
                                          nonfinite=nonfinite, groups=hierarchical, hierarchical_dense=hierarchical_dense,
                                          agree_extra={"start_iter": start_iter, "hook_min_numel": min_numel,
                                                       "world_size": self.world_size,
                                                       "adaptive": self.policy.config() if self.policy else None})
        if self.policy is not None:
            self.policy.attach(self.engine)
        self._policy_step = None  # the future of the policy's end of step, run on the communication thread
        self._settings = {}  # step -> the setting its compressed buckets used (adaptive)
        self.log_every = log_every
        self.keep_steps = keep_steps
        self.iter = 0
        self.steps = []  # StepStats of finished steps
        self._dense_stats = []
        self._layouts = {}
        self._saved_layouts = None
        self._param_index = None
        self._lock = threading.Lock()
        self._open = {}  # step -> [buckets launched, buckets done, last bucket launched]
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gcomp-comm")

    @property
    def compressor(self):
        """The compressor the next bucket uses; with the adaptive policy, its current setting."""
        return self.engine.compressor

    # -- configuration agreement -----------------------------------------
    def config(self):
        """The configuration every rank agreed on: compressor, error feedback, algorithm, groups (a dict)."""
        return {"compressor": self.policy.config() if self.policy else self.compressor.get_config(),
                "error_feedback": self.engine.feedback.kind,
                "feedback_options": self.engine.feedback.options(),
                "algorithm": self.engine.algorithm, "start_iter": self.start_iter, "min_numel": self.min_numel,
                "nonfinite": self.engine.nonfinite, "world_size": self.world_size,
                "hierarchical": self.engine.options()["groups"]}

    # -- stats -------------------------------------------------------------
    @property
    def stats(self):
        """Per-call :class:`gcomp.collectives.CallStats` of compressed and dense buckets (latest last)."""
        return list(self.engine.stats) + list(self._dense_stats)

    def last_step(self):
        """:class:`StepStats` of the latest finished step, or None.

        Returns
        -------
        StepStats or None
            The totals of the step whose buckets have all completed last.

        Examples
        --------
        ::

            loss.backward()
            optimizer.step()
            print(state.last_step()["bytes_sent"])
        """
        return self.steps[-1] if self.steps else None

    def _close_step(self, step):
        calls = [s for s in self.engine.stats if s.step == step]
        calls += [s for s in self._dense_stats if s.step == step]
        if not calls:
            return
        sent = sum(s.bytes_sent for s in calls)
        dense = sum(s.dense_bytes for s in calls)
        packets = sum(s.packet_bytes for s in calls)
        summary = StepStats(
            step=step, buckets=len(calls), bytes_sent=sent, bytes_received=sum(s.bytes_received for s in calls),
            dense_bytes=dense, compression_ratio=dense / packets if packets else 1.0,
            compress_s=sum(s.compress_s for s in calls), decompress_s=sum(s.decompress_s for s in calls),
            comm_s=sum(s.comm_s for s in calls), algorithms=sorted({s.algorithm for s in calls}),
            nonfinite=any(s.nonfinite for s in calls),
            intra_bytes_sent=sum(s.intra_bytes_sent for s in calls),
            intra_bytes_received=sum(s.intra_bytes_received for s in calls),
        )
        if self.policy is not None:
            summary["setting"] = self._settings.pop(step, None)
        self.steps.append(summary)
        del self.steps[: max(0, len(self.steps) - self.keep_steps)]
        del self._dense_stats[: max(0, len(self._dense_stats) - 4 * self.keep_steps)]
        if self.log_every and step % self.log_every == 0:
            log.info("gcomp step %d: %s", step, dict(summary))

    # -- checkpointing -------------------------------------------------------
    def state_dict(self):
        """This rank's hook state: iteration, residuals, steps, seeds and bucket layouts (no process group).

        Waits for the launched buckets first (:meth:`wait`).

        Returns
        -------
        dict
            Plain values and tensors: ``torch.save`` it (it loads with
            ``torch.load(path, weights_only=True)``); one file per rank.

        Examples
        --------
        ::

            torch.save({"model": ddp.state_dict(), "gcomp": state.state_dict()}, f"ckpt-{rank}.pt")
        """
        self.wait()
        return {"version": STATE_VERSION, "iter": self.iter, "rank": self.rank, "world_size": self.world_size,
                "config": self.config(), "engine": self.engine.state_dict(),
                **({"policy": self.policy.state_dict()} if self.policy is not None else {}),
                "layouts": {k: [list(i) if isinstance(i, tuple) else i for i in v] for k, v in self._layouts.items()}}

    def gathered_state_dict(self):
        """Every rank's :meth:`state_dict` in one dict (collective: call it on every rank).

        For the usual single-file checkpoint: save it on rank 0 only; on resume,
        every rank loads that file and passes the dict to :meth:`load_state_dict`,
        which takes this rank's part.  Gathered without pickle (:mod:`gcomp.statecodec`).

        Returns
        -------
        dict
            Every rank's state.

        Examples
        --------
        ::

            gathered = state.gathered_state_dict()           # on every rank
            if rank == 0:
                torch.save({"model": ddp.module.state_dict(), "gcomp": gathered}, "ckpt.pt")
        """
        return statecodec.gather(self.transport, self.state_dict())

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output of the same rank and configuration (or a :meth:`gathered_state_dict`).

        Call it on a fresh state before training resumes (before the first
        bucket).  Local.

        Parameters
        ----------
        state : dict
            This rank's :meth:`state_dict`, or every rank's :meth:`gathered_state_dict`.

        Raises
        ------
        gcomp.errors.StateError
            A state of another version, rank, world size or configuration.

        Examples
        --------
        ::

            state = gcomp.ddp.register(ddp, "topk:ratio=0.01")     # the same options as the saved run
            state.load_state_dict(torch.load(f"ckpt-{rank}.pt", weights_only=True)["gcomp"])
        """
        state = statecodec.own_part(state, self.rank, self.world_size)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise StateError(f"expected a gcomp DDP state with version {STATE_VERSION}, found "
                             f"{state.get('version') if isinstance(state, dict) else type(state).__name__!r}")
        if state.get("world_size") != self.world_size or state.get("rank") != self.rank:
            raise StateError(f"expected the state of rank {self.rank} of {self.world_size}, found rank "
                             f"{state.get('rank')} of {state.get('world_size')}: save and load one file per rank")
        iteration = state.get("iter")
        if isinstance(iteration, bool) or not isinstance(iteration, int) or not 0 <= iteration < 2**63:
            raise StateError(f"expected the hook's iter a non-negative integer, found {str(iteration)[:200]}")
        if state.get("config") != self.config():
            raise StateError(f"expected a state saved with configuration {self.config()}, found {state.get('config')}")
        if self.policy is not None:
            self.policy.load_state_dict(state.get("policy"))  # first: the engine's memories belong to its setting
        self.engine.load_state_dict(state["engine"])
        self.iter = int(state["iter"])
        self._saved_layouts = {k: tuple(tuple(i) if isinstance(i, list) else i for i in v)
                               for k, v in state.get("layouts", {}).items()}

    def wait(self):
        """Block until every launched bucket (and the adaptive policy's end of step) has completed.

        Examples
        --------
        ::

            loss.backward()
            state.wait()          # DDP already waits for the buckets; this also waits for the policy's step
        """
        self._executor.submit(lambda: None).result()

    def close(self):
        """Finish the launched buckets, stop the communication thread and free the per-key buffers.

        Call it before ``dist.destroy_process_group()``; with ``hierarchical``
        it also frees the group transports the state split off.  The state is
        unusable afterwards.

        Examples
        --------
        ::

            state.close()
            dist.destroy_process_group()
        """
        self._executor.shutdown(wait=True)
        self.engine.free()

    def warm_up(self, numel=None) -> float:
        """Compile (or load from the cache) the kernels a bucket of ``numel`` entries runs, before timing anything.

        ``numel`` defaults to the attached model's trainable parameter count (one
        bucket holding the whole model).  Local: no communication, so ranks need
        not call it together.  With the adaptive policy, every setting of its
        ladder.

        Parameters
        ----------
        numel : int, optional
            Entries of the bucket to warm up for (default: the attached model's
            trainable parameters).

        Returns
        -------
        float
            Seconds it took (:meth:`gcomp.collectives.CompressedAllreduce.warm_up`).

        Raises
        ------
        gcomp.errors.ConfigError
            No ``numel`` and no attached model.

        Examples
        --------
        ::

            state = gcomp.ddp.register(ddp, "topk:ratio=0.01")
            state.warm_up()               # before the first timed step
        """
        if numel is None:
            sizes = getattr(self, "_param_sizes", None)
            if sizes is None:
                raise ConfigError("expected numel, or a state attached to a model (gcomp.ddp.register or attach())")
            numel = sum(sizes)
        return self.policy.warm_up(numel) if self.policy is not None else self.engine.warm_up(numel)

    # -- the per-bucket work ---------------------------------------------------
    def attach(self, ddp_model):
        """Know ``ddp_model``'s parameters, so bucket layouts are recorded as parameter indices.

        :func:`register` calls it.  With it, a state restored into a fresh DDP model
        maps its bucket-keyed memories onto the fresh model's first (not yet
        rebuilt) buckets; without it that first compressed step raises StateError.

        Parameters
        ----------
        ddp_model : torch.nn.parallel.DistributedDataParallel or torch.nn.Module
            The model (its ``module``'s parameters are read).

        Returns
        -------
        CompressionState
            This state.

        Examples
        --------
        ::

            state = gcomp.ddp.CompressionState("topk:ratio=0.01").attach(ddp)
            ddp.register_comm_hook(state, gcomp.ddp.compression_hook)
        """
        module = getattr(ddp_model, "module", ddp_model)
        self._param_index = {id(p): i for i, p in enumerate(module.parameters())}
        self._param_sizes = [p.numel() for p in module.parameters() if p.requires_grad]
        return self

    def _layout(self, bucket):
        params = bucket.parameters()
        index = getattr(self, "_param_index", None)
        if index is not None and all(id(p) in index for p in params):
            return tuple(index[id(p)] for p in params)
        return tuple((tuple(p.shape), str(p.dtype)) for p in params)

    def _plan(self, key, bucket):
        """``[(engine key, slices or None)]``: how this bucket's vector maps onto the memories.

        Normally one entry, the bucket itself.  Right after a restore, a fresh DDP
        model's first buckets (before DDP rebuilds them) may group the parameters
        differently from the checkpoint; then each saved bucket's parameters are
        gathered from this bucket, in the saved order, and reduced under the saved key.
        """
        layout = self._layout(bucket)
        saved = self._saved_layouts
        if not saved or saved.get(key) == layout or (key not in saved and not _overlaps(layout, saved)):
            previous = self._layouts.get(key)
            if previous is not None and previous != layout and not saved:
                # DDP regrouped its buckets after compression started (start_iter=0): the memories of
                # this key belong to other tensors now, so they start over rather than mix.
                log.warning("gcomp: bucket %s changed its parameters; resetting its error-feedback memory", key)
                self.engine.reset(key)
            if previous != layout:
                # per-tensor compressors (PowerSGD) factorize each parameter of the bucket on its own
                self.engine.set_layout(key, [tuple(p.shape) for p in bucket.parameters()])
            self._layouts[key] = layout
            return [(key, None)]
        if all(isinstance(i, int) for i in layout) and all(all(isinstance(i, int) for i in v) for v in saved.values()):
            offsets, start = {}, 0
            for i, p in zip(layout, bucket.parameters(), strict=True):
                offsets[i] = (start, start + p.numel())
                start += p.numel()
            members = sorted(k for k, v in saved.items() if set(v) <= set(layout))
            covered = [i for k in members for i in saved[k]]
            if sorted(covered) == sorted(layout):
                shapes = {i: tuple(p.shape) for i, p in zip(layout, bucket.parameters(), strict=True)}
                for k in members:
                    if self._layouts.get(k) != saved[k]:
                        self.engine.set_layout(k, [shapes[i] for i in saved[k]])
                    self._layouts[k] = saved[k]
                return [(k, [offsets[i] for i in saved[k]]) for k in members]
        raise StateError(
            f"bucket {key} holds parameters {layout} but the checkpoint's buckets held {saved}; build the DDP model "
            "exactly as before and register through gcomp.ddp.register (or call state.attach(ddp_model)) so the "
            "saved memories can be mapped onto the fresh model's buckets"
        )

    # -- the hook's work, bucket by bucket ---------------------------------------
    def run_bucket(self, bucket):
        """Launch one bucket (the body of :func:`compression_hook`); returns the Future of its averaged values.

        Parameters
        ----------
        bucket : torch.distributed.GradBucket
            The bucket DDP hands the hook.

        Returns
        -------
        torch.futures.Future
            Completes with the averaged bucket.
        """
        tensor = bucket.buffer()
        step = self.iter
        if self._policy_step is not None:
            # the previous step's decision (taken on the communication thread) applies from this step on
            pending, self._policy_step = self._policy_step, None
            pending.result()
        self._bucket_launched(step, bucket.is_last())
        # sparse buckets (e.g. EmbeddingBag(sparse=True)) take DDP's own sparse allreduce: there is no sparse codec
        if step < self.start_iter or tensor.numel() < self.min_numel or tensor.numel() == 0 or tensor.is_sparse:
            fut = self._dense(bucket, tensor)
            self._end_policy_step(bucket, step)
            self._finish_iteration(bucket)
            return fut.then(lambda f: (self._bucket_done(step), f.value())[1])
        key = bucket.index()
        plan = self._plan(key, bucket)
        host = tensor.detach()
        if host.device.type != "cpu":
            host = host.cpu()
        dtype = str(host.dtype).replace("torch.", "")
        # float32 and float64 as they are (the engine reduces float64 exactly where it sends it dense)
        x = host.numpy() if host.dtype in (torch.float32, torch.float64) else host.float().numpy()
        # a CPU float32 bucket receives the result in place: no fresh dense output, no copy back
        in_place = x if tensor.device.type == "cpu" and tensor.dtype == torch.float32 and tensor.is_contiguous() else None
        pendings = []
        for engine_key, slices in plan:
            part = x if slices is None else np.concatenate([x[lo:hi] for lo, hi in slices])
            pending = self.engine.prepare(part, key=engine_key, dtype=dtype,
                                          out=in_place if slices is None and len(plan) == 1 else None)
            pending.stats.step = step
            pendings.append((pending, slices))
        if self.policy is not None:
            self._settings.setdefault(step, self.policy.setting)
            self.policy.launched()
        # DDP reads an exception set on the returned future as a value; chaining through then() re-raises it properly.
        raw = torch.futures.Future()
        fut = raw.then(lambda f: f.value())
        self._executor.submit(self._communicate, raw, tensor, x.shape[0], pendings, key, step, in_place)
        self._end_policy_step(bucket, step)
        self._finish_iteration(bucket)
        return fut

    def _end_policy_step(self, bucket, step):
        """After a step's last bucket, the policy closes the step on the communication thread (its small allgather
        pairs there on every rank, after the step's buckets); the next step's first bucket waits for it."""
        if self.policy is not None and bucket.is_last() and step >= self.start_iter:
            def end():
                try:
                    self.policy.end_step(self.transport)
                except GcompError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a peer died or timed out: say so in gcomp's terms
                    raise CollectiveError(f"the adaptive policy's end of step {step} failed on rank {self.rank}: {exc}; "
                                          "a peer may have died or the group timed out") from None
            self._policy_step = self._executor.submit(end)

    def _communicate(self, raw, tensor, numel, pendings, key, step, in_place=None):
        try:
            try:
                if self.policy is not None:
                    self.policy.run(lambda: self._complete(tensor, numel, pendings, in_place), numel)
                else:
                    self._complete(tensor, numel, pendings, in_place)
            finally:
                self._bucket_done(step)
            raw.set_result(tensor)
        except GcompError as exc:
            raw.set_exception(_without_frames(exc))
        except Exception as exc:  # noqa: BLE001 - a peer died or timed out: say so in gcomp's terms
            raw.set_exception(CollectiveError(
                f"compressed allreduce of bucket {key} at step {step} failed on rank {self.rank}: {exc}; "
                "a peer may have died or the group timed out"))
            _without_frames(exc)

    def _complete(self, tensor, numel, pendings, in_place):
        """The bucket's engine calls, then the result into the bucket (on the communication thread)."""
        if len(pendings) == 1 and pendings[0][1] is None and in_place is not None:
            self.engine.complete(pendings[0][0], out=in_place)
            return
        if len(pendings) == 1 and pendings[0][1] is None:
            out = self.engine.complete(pendings[0][0])
        else:
            out = np.empty(numel, np.float32)
            for pending, slices in pendings:
                part, offset = self.engine.complete(pending), 0
                for lo, hi in slices:
                    out[lo:hi] = part[offset: offset + hi - lo]
                    offset += hi - lo
        tensor.copy_(torch.from_numpy(out).to(device=tensor.device, dtype=tensor.dtype))

    def _dense(self, bucket, tensor):
        stats = CallStats(bucket.index(), self.iter, "dense", tensor.numel(), packet_bytes=tensor.numel() * tensor.element_size())
        moved = 2 * (self.world_size - 1) * stats.packet_bytes // max(self.world_size, 1)
        stats.bytes_sent = stats.bytes_received = moved
        self._dense_stats.append(stats)
        # DDP itself multiplies by 1/P before summing; doing the same keeps `none` bit-identical to no hook.
        tensor.mul_(1.0 / self.world_size)
        fut = dist.all_reduce(tensor, group=self.process_group, async_op=True).get_future()
        return fut.then(lambda f: self._nonfinite_policy(f.value()[0], stats))

    def _nonfinite_policy(self, reduced, stats):
        """The engine's non-finite policy on a dense bucket (identical on every rank: the reduced values are)."""
        values = reduced._values() if reduced.is_sparse else reduced
        if bool(torch.isfinite(values).all()):
            return reduced
        stats.nonfinite = True
        self.engine.reset(stats.key)
        if self.engine.nonfinite == "raise":
            raise NonFiniteError(
                f"NaN or Inf in the reduced bucket {stats.key} at step {stats.step} (dense path, policy 'raise'); "
                "every rank raised and reset its error-feedback memory for this bucket")
        if self.engine.nonfinite == "zero":
            values.zero_()
        return reduced

    def _bucket_launched(self, step, last):
        with self._lock:
            entry = self._open.setdefault(step, [0, 0, False])
            entry[0] += 1
            entry[2] = entry[2] or last

    def _bucket_done(self, step):
        """Close the step's totals once its last bucket was launched and every bucket is done."""
        with self._lock:
            entry = self._open[step]
            entry[1] += 1
            ready = entry[2] and entry[1] == entry[0]
            if ready:
                del self._open[step]
        if ready:
            self._close_step(step)

    def _finish_iteration(self, bucket):
        """DDP's iteration ends with its last bucket."""
        if bucket.is_last():
            self.iter += 1


def _without_frames(exc):
    """``exc`` without its traceback and chained exceptions.

    torch keeps the exception set on a Future alive; its frames would keep the
    bucket's arrays (input, packets, result) alive with it, so every caught
    error would leak a bucket's worth of memory.  The message stays.
    """
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    return exc


def _overlaps(layout, saved):
    return any(set(layout) & set(v) for v in saved.values())


def compression_hook(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """gcomp's DDP communication hook: returns a Future of the averaged bucket (module docstring).

    Parameters
    ----------
    state : CompressionState
        This rank's state, attached to the DDP model.
    bucket : torch.distributed.GradBucket
        The bucket DDP hands over (gradients summed, not yet averaged).

    Returns
    -------
    torch.futures.Future
        Completes with the bucket's averaged gradient.

    Examples
    --------
    ::

        state = gcomp.ddp.CompressionState("qsgd")
        state.attach(ddp)
        ddp.register_comm_hook(state, gcomp.ddp.compression_hook)
    """
    return state.run_bucket(bucket)


def register(ddp_model, spec, **options) -> CompressionState:
    """Build a :class:`CompressionState` for ``ddp_model``'s process group and register the hook; returns the state.

    Parameters
    ----------
    ddp_model : torch.nn.parallel.DistributedDataParallel
        The model; it must not have a communication hook yet.
    spec : str, dict, gcomp.Compressor or gcomp.adapt.AdaptivePolicy
        The compressor (see :class:`CompressionState`).
    **options
        Any other :class:`CompressionState` parameter (``process_group``
        defaults to the model's).

    Returns
    -------
    CompressionState
        The registered state: stats, ``state_dict()``, ``close()``.

    Examples
    --------
    On every rank::

        ddp = torch.nn.parallel.DistributedDataParallel(model)
        state = gcomp.ddp.register(ddp, "dgc:ratio=0.01", start_iter=10)
    """
    if getattr(ddp_model, "_comm_hooks", None):
        # DDP takes one hook; refuse before building a state (a process group and a thread) it would reject
        raise ConfigError("expected a DDP model without a communication hook, found one already registered: "
                          "DDP accepts register_comm_hook only once per model")
    if "process_group" not in options and getattr(ddp_model, "process_group", None) is not None:
        options["process_group"] = ddp_model.process_group
    state = CompressionState(spec, **options)
    state.attach(ddp_model)
    ddp_model.register_comm_hook(state, compression_hook)
    return state
