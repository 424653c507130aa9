"""Transport over a ``torch.distributed`` process group (gloo on CPU; any backend with CPU tensors).

Buffers are numpy arrays shared with CPU tensors through ``torch.from_numpy``
(no copies).  Uneven allgather and alltoall exchange sizes first and pad to
the largest (gloo has no uneven allgather).
"""

import numpy as np
import torch
import torch.distributed as dist

from .base import Transport

__all__ = ["TorchTransport"]

# torch 2.13 renamed all_gather_into_tensor to all_gather_single (the old name warns).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class TorchTransport(Transport):
    name = "torch"

    def __init__(self, group=None):
        super().__init__()
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("expected torch.distributed to be initialised (dist.init_process_group) before use")
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)

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
