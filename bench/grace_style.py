"""GRACE-style torch compressors: the baseline of the full-path rows of bench/compressors.py.

GRACE (Xu et al., "GRACE: A Compressed Communication Framework for Distributed
Machine Learning", ICDCS 2021; github.com/sands-lab/grace, ``grace_dl/torch``)
is the usual reference implementation of gradient compressors in torch.  This
module re-implements, in our own code, what its torch compressors do on a CPU
tensor, operation for operation: the same torch calls in the same order, the
same dtypes sent, a fresh dense output per ``decompress``.  Deviations, each
needed to run on a CPU without Horovod, cupy or global RNG state:

* random draws come from a ``torch.Generator`` seeded per call (GRACE's
  random-k calls ``torch.manual_seed``, which would touch the global RNG);
* ``natural`` is GRACE's cupy bit manipulation written with the equivalent
  torch integer operations;
* ``powersgd`` runs GRACE's two matrix products and Gram-Schmidt
  orthogonalization without the allreduce between them; like GRACE's
  ``PowerSGDMemory`` it draws a fresh normal ``Q`` on every call.  GRACE sends
  a 1-D tensor uncompressed; to compare with gcomp's flat PowerSGD the vector is
  viewed as gcomp's ``rows x cols`` matrix (``rows = floor(sqrt(n))``,
  zero-padded: one copy, as gcomp makes when ``n`` is not ``rows * cols``).

Statistics are GRACE's, not gcomp's: QSGD takes one L2 norm per tensor, sign
sends one uint8 per entry and decodes to +-1 (no scale), TernGrad one scale per
tensor after clipping at 2.5 standard deviations (gcomp: per bucket of 512 for
all three), random-k does not rescale.  The work per entry is of the same kind
(the same number of passes over the vector), which is what the timing compares.

GRACE has no wire format: what it sends are the tensors ``compress`` returns
(Horovod allgathers each).  :func:`encode` counts that as one ``bytes`` copy
of each tensor's memory (``tensor.numpy().tobytes()``, as a socket transport
would); :func:`decode` wraps received bytes as tensors of the known dtypes
without a copy (``torch.frombuffer``); the context (shape, numel, random-k's
indices) stays local, as in GRACE.
"""

import math
import warnings

import torch

__all__ = ["GRACE_STYLE", "make", "encode", "decode", "full_path"]


def _gen(seed):
    g = torch.Generator()
    g.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


class GraceCompressor:
    """GRACE's interface: ``compress(tensor, name) -> (tensors, ctx)``, ``decompress(tensors, ctx) -> tensor``."""

    name = "?"

    def compress(self, tensor, name):  # pragma: no cover - interface
        raise NotImplementedError

    def decompress(self, tensors, ctx):  # pragma: no cover - interface
        raise NotImplementedError


class NoneC(GraceCompressor):
    name = "none"

    def compress(self, tensor, name):
        return [tensor], None

    def decompress(self, tensors, ctx):
        (tensor,) = tensors
        return tensor


class FP16(GraceCompressor):
    name = "fp16"

    def compress(self, tensor, name):
        dtype = tensor.dtype
        if dtype.is_floating_point:
            tensor = tensor.type(torch.float16)
        return [tensor], dtype

    def decompress(self, tensors, dtype):
        (t,) = tensors
        if dtype.is_floating_point:
            t = t.type(dtype)
        return t


def _scatter_dense(values, indices, numel):
    dense = torch.zeros(numel, dtype=values.dtype)
    dense.scatter_(0, indices, values)
    return dense


class TopK(GraceCompressor):
    """``torch.topk`` of ``|x|`` (unsorted), values gathered; int64 indices sent."""

    name = "topk"

    def __init__(self, k_of):
        self.k_of = k_of  # numel -> k (gcomp's rule, so both keep the same count)

    def compress(self, tensor, name):
        tensor = tensor.flatten()
        k = self.k_of(tensor.numel())
        _, indices = torch.topk(tensor.abs(), k, sorted=False)
        values = torch.gather(tensor, 0, indices)
        return [values, indices], (tensor.numel(), tensor.size())

    def decompress(self, tensors, ctx):
        numel, shape = ctx
        values, indices = tensors
        return _scatter_dense(values, indices, numel).view(shape)


class Threshold(GraceCompressor):
    name = "threshold"

    def __init__(self, tau):
        self.tau = float(tau)

    def compress(self, tensor, name):
        tensor = tensor.flatten()
        (indices,) = torch.where(tensor.abs() > self.tau)
        values = tensor[indices]
        return [values, indices], (tensor.size(), tensor.numel())

    def decompress(self, tensors, ctx):
        shape, numel = ctx
        values, indices = tensors
        return _scatter_dense(values, indices, numel).view(shape)


class DGC(GraceCompressor):
    """GRACE's DGC: top-k of a 1% random sample sets a threshold, adjusted up to 10 times to land within 30% of k."""

    name = "dgc"

    def __init__(self, ratio, seed=0):
        self.ratio = float(ratio)
        self.seed = seed
        self.step = 0

    def compress(self, tensor, name):
        tensor = tensor.flatten()
        numel = tensor.numel()
        g = _gen(self.seed + self.step)
        self.step += 1
        sample_index = torch.empty(max(1, int(numel * 0.01))).uniform_(0, numel, generator=g).type(torch.long)
        sample = tensor[sample_index]
        k = max(1, int(numel * self.ratio * 0.01))
        vals, _ = torch.topk(sample.abs(), k)
        thr = vals.min()
        mask = tensor.abs() >= thr
        selected = mask.sum()
        for _ in range(10):
            if selected > 1.3 * numel * self.ratio:
                thr = 1.3 * thr
            elif selected < 0.7 * numel * self.ratio:
                thr = 0.7 * thr
            else:
                break
            mask = tensor.abs() >= thr
            selected = mask.sum()
        (indices,) = torch.where(mask)
        values = tensor[indices]
        return [values, indices], (tensor.size(), numel)

    def decompress(self, tensors, ctx):
        shape, numel = ctx
        values, indices = tensors
        return _scatter_dense(values, indices, numel).view(shape)


class RandomK(GraceCompressor):
    """``randperm(numel)[:k]`` from a per-call seed; values sent, the indices stay in the context (shared seed)."""

    name = "randomk"

    def __init__(self, k_of, seed=0):
        self.k_of = k_of
        self.seed = seed
        self.global_step = 0

    def compress(self, tensor, name):
        h = sum(bytes(str(name), encoding="utf8"), self.global_step) + self.seed
        self.global_step += 1
        tensor = tensor.flatten()
        numel = tensor.numel()
        indices = torch.randperm(numel, generator=_gen(h))[: self.k_of(numel)]
        values = tensor[indices]
        return [values], (indices, numel, tensor.size())

    def decompress(self, tensors, ctx):
        indices, numel, shape = ctx
        (values,) = tensors
        return _scatter_dense(values, indices, numel).view(shape)


class QSGD(GraceCompressor):
    """One L2 norm per tensor; stochastic levels in 0..s with the sign, sent as int8 (one byte per entry)."""

    name = "qsgd"

    def __init__(self, quantum_num, seed=0):
        self.quantum_num = int(quantum_num)
        self.seed = seed
        self.step = 0

    def compress(self, tensor, name):
        shape = tensor.size()
        tensor = tensor.flatten()
        norm = tensor.norm().flatten()
        abs_gradient = tensor.abs()
        level_float = self.quantum_num / norm * abs_gradient
        previous_level = level_float.floor()
        prob = torch.empty_like(tensor).uniform_(generator=_gen(self.seed + self.step))
        self.step += 1
        is_next_level = (prob < (level_float - previous_level)).type(torch.float32)
        new_level = previous_level + is_next_level
        sign = tensor.sign()
        codes = (new_level * sign).type(torch.int16)
        codes = codes.type(torch.int8 if self.quantum_num < 128 else torch.half)
        return [codes, norm], shape

    def decompress(self, tensors, shape):
        codes, norm = tensors
        return (norm / self.quantum_num * codes.type(torch.float32)).view(shape)


class SignSGD(GraceCompressor):
    """``x >= 0`` as one uint8 per entry; decoded to +-1 (no scale)."""

    name = "sign"

    def compress(self, tensor, name):
        shape = tensor.size()
        return [(tensor.flatten() >= 0).type(torch.uint8)], shape

    def decompress(self, tensors, shape):
        (bits,) = tensors
        return (bits.type(torch.float32) * 2 - 1).view(shape)


class TernGrad(GraceCompressor):
    """Clip at 2.5 std, scale = max |x| per tensor, stochastic ternary codes as int8."""

    name = "terngrad"

    def __init__(self, seed=0):
        self.seed = seed
        self.step = 0

    def compress(self, tensor, name):
        shape = tensor.size()
        tensor = tensor.flatten()
        std = (tensor - torch.mean(tensor)) ** 2
        std = torch.sqrt(torch.mean(std))
        c = 2.5 * std.item()
        gradient = torch.clamp(tensor, -c, c)
        abs_gradient = gradient.abs()
        scalar = abs_gradient.max()
        sign_gradient = gradient.sign() * scalar
        rnd = torch.empty_like(tensor).uniform_(0, scalar.item(), generator=_gen(self.seed + self.step))
        self.step += 1
        sign_gradient[rnd >= abs_gradient] = 0
        new_sign = sign_gradient.sign()
        return [new_sign.type(torch.int8), scalar.flatten()], shape

    def decompress(self, tensors, shape):
        codes, scalar = tensors
        return (codes.type(torch.float32) * scalar).view(shape)


_SIGN = -0x80000000  # 0b1000...0 as int32
_EXP = 0x7F800000
_MANT = 0x007FFFFF


class Natural(GraceCompressor):
    """GRACE's natural compression (cupy there): sign and exponent in one uint8, the exponent rounded up with
    probability mantissa / 2^23, clipped to the 7-bit range GRACE keeps."""

    name = "natural"

    def __init__(self, seed=0):
        self.seed = seed
        self.step = 0

    def compress(self, tensor, name):
        shape = tensor.size()
        bits = tensor.flatten().view(torch.int32)
        sign = bits & _SIGN
        exp = bits & _EXP
        mantissa = bits & _MANT
        rnd = torch.randint(0, _MANT, bits.shape, dtype=torch.int32, generator=_gen(self.seed + self.step))
        self.step += 1
        exp_add_one = mantissa > rnd
        exponent = torch.where(exp_add_one, exp + 0x00800000, exp)
        exp_shift = torch.clamp(exponent, 0x09000000, 0x48800000)
        exps = torch.bitwise_right_shift(exp_shift, 23)
        exps = torch.bitwise_or(torch.bitwise_right_shift(sign, 24), exps - 18)
        return [exps.type(torch.uint8)], shape

    def decompress(self, tensors, shape):
        (codes,) = tensors
        sign = codes > 127
        exps = torch.bitwise_and(codes, 0x7F)
        floats = torch.bitwise_left_shift((exps + 18).type(torch.int32), 23).view(torch.float32)
        out = torch.where(sign, -floats, floats)
        out = torch.mul((exps >= 1).type(torch.float32), out)
        return out.view(shape)


def _orthogonalize(matrix):
    """GRACE's Gram-Schmidt, in place, column by column."""
    m = matrix.shape[1]
    for i in range(m):
        col = matrix[:, i : i + 1]
        col /= torch.sqrt(torch.sum(col**2))
        if i + 1 < m:
            rest = matrix[:, i + 1 :]
            rest -= torch.sum(col * rest, dim=0) * col


class PowerSGD(GraceCompressor):
    """Rank-r PowerSGD on gcomp's matrix view of a flat vector; a fresh normal Q per call (GRACE's memory)."""

    name = "powersgd"

    def __init__(self, rank, seed=0):
        self.rank = int(rank)
        self.seed = seed
        self.step = 0

    @staticmethod
    def shape_of(n):
        rows = max(1, math.isqrt(n))
        return rows, -(-n // rows)

    def compress(self, tensor, name):
        flat = tensor.flatten()
        n = flat.numel()
        rows, cols = self.shape_of(n)
        if rows * cols == n:
            matrix = flat.view(rows, cols)
        else:
            matrix = torch.zeros(rows * cols, dtype=flat.dtype)
            matrix[:n] = flat
            matrix = matrix.view(rows, cols)
        r = min(rows, cols, self.rank)
        q = torch.empty(cols, r, dtype=flat.dtype).normal_(generator=_gen(self.seed + self.step))
        self.step += 1
        _orthogonalize(q)
        p = torch.mm(matrix, q)
        _orthogonalize(p)
        q = torch.mm(matrix.t(), p)
        return [p, q], (n, tensor.size())

    def decompress(self, tensors, ctx):
        n, shape = ctx
        p, q = tensors
        return torch.mm(p, q.t()).view(-1)[:n].view(shape)


def make(comp, x_numel=None):
    """The GRACE-style counterpart of the gcomp compressor ``comp`` (same k, ratio, levels, rank, tau), or None."""
    name = comp.name
    cfg = comp.get_config()
    params = cfg.get("params", cfg) if isinstance(cfg, dict) else {}
    if name == "none":
        return NoneC()
    if name == "fp16":
        return FP16()
    if name == "topk":
        return TopK(comp.k)
    if name == "randomk":
        return RandomK(comp.k)
    if name == "threshold":
        return Threshold(params["tau"])
    if name == "dgc":
        return DGC(params["ratio"])
    if name == "qsgd":
        return QSGD(params["levels"])
    if name == "sign":
        return SignSGD()
    if name == "terngrad":
        return TernGrad()
    if name == "natural":
        return Natural()
    if name == "powersgd":
        return PowerSGD(params["rank"])
    return None


#: gcomp compressor names that have a GRACE-style counterpart here
GRACE_STYLE = ("none", "fp16", "topk", "randomk", "threshold", "dgc", "qsgd", "sign", "terngrad", "natural", "powersgd")


def encode(tensors):
    """What GRACE sends, as bytes: one copy of each tensor's memory (``[(dtype, shape, bytes), ...]``)."""
    return [(t.dtype, tuple(t.shape), t.numpy().tobytes()) for t in tensors]


def decode(blobs):
    """The received tensors, wrapping the bytes without a copy (read-only memory, as GRACE's decompress needs)."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch.frombuffer on read-only bytes
        for dtype, shape, data in blobs:
            t = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
            out.append(t.view(shape))
    return out


def full_path(gc, tensor, name="bucket0"):
    """compress -> encode -> decode -> decompress: the dense tensor GRACE's receiver would get (fresh each call)."""
    tensors, ctx = gc.compress(tensor, name)
    return gc.decompress(decode(encode(tensors)), ctx)
