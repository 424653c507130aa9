"""Transport over a ``torch.distributed`` process group (gloo on CPU; any backend with CPU tensors).

Buffers are numpy arrays shared with CPU tensors through ``torch.from_numpy``
(no copies).  Uneven allgather and alltoall exchange sizes first and pad to
the largest (gloo has no uneven allgather).

:meth:`~gcomp.transports.Transport.exchange` uses ``dist.batch_isend_irecv``
on the transport's group: one batch of int64 sizes (tag :data:`SIZE_TAG`),
waited for, then one batch of the non-empty payloads (tag :data:`DATA_TAG`).
Peers are addressed by their global rank (``dist.get_global_rank``).  A
receive waits at most the group's timeout; gloo's error (a timeout, a peer
that closed its connection) is raised as :class:`~gcomp.errors.CollectiveError`,
after which the group should be considered broken.

:meth:`~gcomp.transports.Transport.neighbor_exchange` posts ``dist.isend`` /
``dist.irecv`` on tags of its own (:data:`NEIGHBOR_SIZE_TAG`,
:data:`NEIGHBOR_DATA_TAG`): the sizes and the payloads of its sends and the
receives of the sizes at once, then the receives of the payloads, each
waited for with ``work.wait(remaining time)`` against the call's deadline
(``neighbor_timeout``: the transport's ``timeout``, else 300 s).  A gloo
send completes only once the peer has posted the matching receive, which is
why the receives are completed (and checked) before the sends are waited
for.  A peer that died is reported at once (its connection closed); a wait
that times out makes gloo close that pair.

:meth:`~TorchTransport.split` gathers every rank's (color, key) through the
transport and creates one gloo group per color with ``dist.new_group``, its
ranks in (key, rank) order (``sort_ranks=False``), passing the transport's
``timeout``.  torch requires every rank of the default group to call
``new_group`` for every group, so when the transport spans the whole world
every rank creates every color's group in ascending color order.  When it
spans only part of the world (the ranks outside never call ``split``) the
members create only their own group with ``use_local_synchronization=True``.
torch then names the group from its ranks and the number of groups each
process knows, so the members must know equally many groups (true when
they all took part in the same splits); if they do not, every member raises
:class:`~gcomp.errors.ConfigError` instead of hanging.  Process groups are
never destroyed here (``free`` is a no-op: destroying one would change that
count on some ranks only); they live until ``destroy_process_group()``.
"""

import datetime
import inspect
import time

import numpy as np
import torch
import torch.distributed as dist

from ..errors import CollectiveError, ConfigError
from .base import TIMED_OUT, Transport, split_members, timed_out

__all__ = ["TorchTransport", "SIZE_TAG", "DATA_TAG", "NEIGHBOR_SIZE_TAG", "NEIGHBOR_DATA_TAG"]

# torch 2.13 renamed all_gather_into_tensor to all_gather_single (the old name warns).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

#: tags of exchange's point-to-point messages: the int64 sizes, then the payloads
SIZE_TAG, DATA_TAG = 26467, 26468
#: tags of neighbor_exchange's messages (a channel of its own)
NEIGHBOR_SIZE_TAG, NEIGHBOR_DATA_TAG = 26469, 26470

_SORT_RANKS = "sort_ranks" in inspect.signature(dist.new_group).parameters


class TorchTransport(Transport):
    """A :class:`~gcomp.transports.Transport` over a torch.distributed process group (gloo or NCCL).

    ``torch.distributed`` must be initialised first.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup, optional
        The process group; None: the default one.
    timeout : float or datetime.timedelta, optional
        For the groups :meth:`~gcomp.transports.Transport.split` creates; None: torch's default.

    Examples
    --------
    In every process, after ``dist.init_process_group("gloo", ...)``::

        from gcomp.transports import TorchTransport

        transport = TorchTransport()
        transport.allreduce_(np.ones(4))       # sums over the processes, in place
    """

    name = "torch"

    def __init__(self, group=None, timeout=None):
        """``group``: the process group (None: the default one); ``timeout`` (seconds or a timedelta) for the
        groups :meth:`split` creates (None: torch's default)."""
        super().__init__()
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("expected torch.distributed to be initialised (dist.init_process_group) before use")
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        if timeout is not None and not isinstance(timeout, datetime.timedelta):
            timeout = datetime.timedelta(seconds=float(timeout))
        self.timeout = timeout
        if timeout is not None:
            self.neighbor_timeout = self._timeout(timeout.total_seconds())

    def _allreduce(self, array):
        t = torch.from_numpy(array)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)

    def _sizes(self, n):
        sizes = torch.zeros(self.size, dtype=torch.int64)
        mine = torch.tensor([n], dtype=torch.int64)
        _all_gather(sizes, mine, group=self.group)
        return sizes.tolist()

    def _allgatherv(self, data):
        sizes = self._sizes(data.nbytes)
        width = max(sizes)
        padded = np.zeros(width, np.uint8)
        padded[: data.nbytes] = data
        out = torch.empty(self.size * width, dtype=torch.uint8)
        _all_gather(out, torch.from_numpy(padded), group=self.group)
        flat = out.numpy()
        return [flat[i * width: i * width + sizes[i]].copy() for i in range(self.size)]

    def _alltoallv(self, chunks):
        send_sizes = torch.tensor([c.nbytes for c in chunks], dtype=torch.int64)
        recv_sizes = torch.empty(self.size, dtype=torch.int64)
        dist.all_to_all_single(recv_sizes, send_sizes, group=self.group)
        recv = recv_sizes.tolist()
        send = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
        out = torch.empty(int(sum(recv)), dtype=torch.uint8)
        dist.all_to_all_single(out, torch.from_numpy(send), output_split_sizes=recv,
                               input_split_sizes=[c.nbytes for c in chunks], group=self.group)
        flat = out.numpy()
        result, offset = [], 0
        for n in recv:
            result.append(flat[offset: offset + n].copy())
            offset += n
        return result

    def _broadcast(self, array, root):
        dist.broadcast(torch.from_numpy(array), src=dist.get_global_rank(self.group, root) if self.group else root,
                       group=self.group)

    def _barrier(self):
        dist.barrier(group=self.group)

    # -- point-to-point ---------------------------------------------------------
    def _global(self, rank):
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def _p2p(self, sends, recvs, tag):
        sends, recvs = list(sends), list(recvs)
        ops = [dist.P2POp(dist.irecv, t, self._global(peer), group=self.group, tag=tag) for peer, t in recvs]
        ops += [dist.P2POp(dist.isend, t, self._global(peer), group=self.group, tag=tag) for peer, t in sends]
        if not ops:
            return
        try:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        except RuntimeError as exc:  # gloo: a recv that timed out, or a peer that died
            raise CollectiveError(f"exchange: rank {self.rank} failed sending to {[p for p, _ in sends]} / receiving "
                                  f"from {[p for p, _ in recvs]}: {exc}; expected every send a -> b to be matched by "
                                  f"b listing a in recv_from (a peer failed, or the patterns do not match)") from exc

    def _exchange(self, sends, recv_from):
        in_sizes = {peer: torch.zeros(1, dtype=torch.int64) for peer in recv_from}
        out_sizes = {peer: torch.tensor([buf.nbytes], dtype=torch.int64) for peer, buf in sends.items()}
        self._p2p(out_sizes.items(), in_sizes.items(), SIZE_TAG)
        out = {peer: torch.empty(int(in_sizes[peer][0]), dtype=torch.uint8) for peer in recv_from}
        # empty payloads are not sent: both sides know the size is 0
        payloads = [(peer, torch.from_numpy(buf if buf.flags.writeable else buf.copy()))
                    for peer, buf in sends.items() if buf.nbytes]
        self._p2p(payloads, [(peer, t) for peer, t in out.items() if t.numel()], DATA_TAG)
        return {peer: t.numpy() for peer, t in out.items()}

    def _neighbor_exchange(self, sends, recv_from, deadline, timeout):
        keep, send_works = [], []
        in_sizes = {peer: torch.zeros(1, dtype=torch.int64) for peer in recv_from}
        try:
            recv_works = [(peer, dist.irecv(in_sizes[peer], self._global(peer), group=self.group, tag=NEIGHBOR_SIZE_TAG))
                          for peer in recv_from]
            for peer, buf in sends.items():
                size = torch.tensor([buf.nbytes], dtype=torch.int64)
                keep.append(size)
                send_works.append(dist.isend(size, self._global(peer), group=self.group, tag=NEIGHBOR_SIZE_TAG))
                if buf.nbytes:
                    payload = torch.from_numpy(buf if buf.flags.writeable else buf.copy())
                    keep.append(payload)
                    send_works.append(dist.isend(payload, self._global(peer), group=self.group, tag=NEIGHBOR_DATA_TAG))
        except RuntimeError as exc:
            raise self._p2p_error(exc, list(sends), recv_from) from exc
        pending = _TorchSends(self, send_works, keep, list(sends))
        self._wait(recv_works, deadline, timeout, "the size of a buffer from rank {}")
        out = {peer: torch.empty(int(in_sizes[peer][0]), dtype=torch.uint8) for peer in recv_from}
        try:
            recv_works = [(peer, dist.irecv(t, self._global(peer), group=self.group, tag=NEIGHBOR_DATA_TAG))
                          for peer, t in out.items() if t.numel()]
        except RuntimeError as exc:
            raise self._p2p_error(exc, [], recv_from) from exc
        self._wait(recv_works, deadline, timeout, "a buffer from rank {}")
        return {peer: t.numpy() for peer, t in out.items()}, pending

    def _wait(self, works, deadline, timeout, what):
        for peer, work in works:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0 and not work.is_completed():
                    raise RuntimeError(TIMED_OUT)
                # timedelta(0) would mean: no limit.  gloo raises on a timeout; a backend that returns False instead
                if work.wait(datetime.timedelta(seconds=max(remaining, 0.001))) is False:
                    raise RuntimeError(TIMED_OUT)
            except RuntimeError as exc:
                if time.monotonic() >= deadline or "timeout" in str(exc).lower() or TIMED_OUT in str(exc):
                    raise timed_out(self.rank, timeout, what.format(peer)) from exc
                raise CollectiveError(f"neighbor exchange: rank {self.rank} failed waiting for {what.format(peer)}: "
                                      f"{exc}; expected every neighbour alive and calling its exchange") from exc

    def _p2p_error(self, exc, sends, recv_from):
        return CollectiveError(f"neighbor exchange: rank {self.rank} could not start sending to {sends} / receiving from "
                               f"{recv_from}: {exc}")

    # -- groups -------------------------------------------------------------------
    def _split(self, entries):
        color = entries[self.rank][0]
        colors = sorted({c for c, _ in entries if c is not None})
        ranks = {c: [self._global(r) for r in split_members(entries, c)] for c in colors}
        if not _SORT_RANKS:
            unordered = [c for c in colors if ranks[c] != sorted(ranks[c])]
            if unordered:
                raise ConfigError(f"split: color(s) {unordered} order their ranks by key differently from rank order, "
                                  f"and this torch ({torch.__version__}) has no new_group(sort_ranks=False); "
                                  "expected keys in rank order or a torch with sort_ranks")
        kwargs = {"backend": "gloo"}
        if self.timeout is not None:
            kwargs["timeout"] = self.timeout
        if _SORT_RANKS:
            kwargs["sort_ranks"] = False
        if self.size == dist.get_world_size():
            # every rank of the default group is here: all of them create every group, in the same order
            mine = None
            for c in colors:
                pg = dist.new_group(ranks=ranks[c], **kwargs)
                if c == color:
                    mine = pg
        else:
            self._check_group_names()
            if color is None:
                return None
            mine = dist.new_group(ranks=ranks[color], use_local_synchronization=True, **kwargs)
        return None if color is None else TorchTransport(mine, timeout=self.timeout)

    def _check_group_names(self):
        # torch names a locally synchronised group after its ranks and len(_world.pg_names) on each member
        world = getattr(getattr(dist, "distributed_c10d", None), "_world", None)
        known = len(world.pg_names) if world is not None and hasattr(world, "pg_names") else -1
        mine = np.array([known], np.int64)
        counts = [int(np.frombuffer(b.tobytes(), np.int64)[0]) for b in self._allgatherv(mine.view(np.uint8))]
        if -1 not in counts and len(set(counts)) > 1:
            raise ConfigError(f"split: this transport spans part of the world, so torch must name the new groups "
                              f"locally, from the number of process groups each member knows; its ranks know "
                              f"{counts} groups, which would give different names and hang.  Expected the members "
                              f"to have taken part in the same splits; split a transport over the whole world instead")


class _TorchSends:
    def __init__(self, transport, works, keep, peers):
        self.transport, self.works, self.keep, self.peers = transport, works, keep, peers

    def done(self):
        return all(w.is_completed() for w in self.works)

    def wait(self, deadline, timeout):
        self.transport._wait([(self.peers, w) for w in self.works], deadline, timeout, "ranks {} to receive what it sent")
