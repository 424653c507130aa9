"""Data-parallel training on scikit-learn's digits under mpiexec: dense allreduce against gcomp compressors.

::

    mpiexec -n 4 python -m mpi4py bench/mpi_train.py
    mpiexec -n 4 python -m mpi4py bench/mpi_train.py --epochs 30 \\
        --runs "dense;topk:ratio=0.05@residual;qsgd@none" --json out/mpi_train.json

A small MLP (64 -> 32 -> 10, tanh, softmax cross-entropy; numpy only) is
trained with SGD + momentum on the 1,347-image training split of
``sklearn.datasets.load_digits`` (bundled with scikit-learn, no download).
Every step each rank computes the gradient of its slice of the global batch
(the same global batch whatever the number of ranks), the flat gradient
(2,410 floats) is averaged with one ``CompressedComm.Allreduce(...,
op=gcomp.mpi.MEAN)`` and every rank applies the same update.  The result is
bit-identical on every rank, so the parameters stay identical (checked at the
end with two buffer Allreduces, MAX and MIN).

``--runs`` is a ``;``-separated list of ``spec@error_feedback`` (``dense`` is
plain ``comm.Allreduce``).  Rank 0 prints one row per run: final test
accuracy, its difference from dense, whether that is within ``--tolerance``
points, and bytes sent per rank per step from ``CompressedComm.stats``.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
from mpi4py import MPI

import gcomp.mpi

DEFAULT_RUNS = "dense;topk:ratio=0.05@residual;qsgd@none;sign@residual"


def load_data(seed=0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


class MLP:
    """64 -> hidden (tanh) -> 10, parameters in one flat float32 vector (so one Allreduce per step)."""

    def __init__(self, n_in=64, hidden=32, n_out=10, seed=0):
        self.shapes = [(n_in, hidden), (hidden,), (hidden, n_out), (n_out,)]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.params = np.zeros(sum(self.sizes), np.float32)
        rng = np.random.default_rng(seed)
        w1, _, w2, _ = self.views(self.params)
        w1[...] = rng.standard_normal(w1.shape) * np.sqrt(1.0 / n_in)
        w2[...] = rng.standard_normal(w2.shape) * np.sqrt(1.0 / hidden)

    def views(self, flat):
        out, offset = [], 0
        for shape, size in zip(self.shapes, self.sizes, strict=True):
            out.append(flat[offset: offset + size].reshape(shape))
            offset += size
        return out

    def logits(self, x):
        w1, b1, w2, b2 = self.views(self.params)
        h = np.tanh(x @ w1 + b1)
        return h, h @ w2 + b2

    def gradient(self, x, y, scale):
        """Gradient of ``scale * sum of cross-entropies`` over (x, y), as one flat float32 vector."""
        w1, b1, w2, b2 = self.views(self.params)
        h, z = self.logits(x)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(y.shape[0]), y] -= 1.0
        dz = (p * scale).astype(np.float32)
        grad = np.zeros_like(self.params)
        g1, gb1, g2, gb2 = self.views(grad)
        g2[...] = h.T @ dz
        gb2[...] = dz.sum(axis=0)
        dh = (dz @ w2.T) * (1.0 - h * h)
        g1[...] = x.T @ dh
        gb1[...] = dh.sum(axis=0)
        return grad

    def accuracy(self, x, y):
        return float((self.logits(x)[1].argmax(axis=1) == y).mean())


def parse_runs(text):
    runs = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        spec, _, ef = item.partition("@")
        runs.append((spec.strip(), ef.strip() or ("none" if spec.strip() == "dense" else "residual")))
    return runs


def train(comm, spec, error_feedback, args, data):
    """One training run; returns this rank's result row (identical on every rank but for timings)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    x_train, x_test, y_train, y_test = data
    model = MLP(hidden=args.hidden, seed=args.seed)
    cc = None if spec == "dense" else gcomp.mpi.CompressedComm(comm, spec, error_feedback=error_feedback, seed=args.seed,
                                                               algorithm=args.algorithm)
    (cc or comm).Bcast(model.params, root=0)  # every other call passes through to the wrapped communicator
    velocity = np.zeros_like(model.params)
    global_batch = args.batch * size
    steps_per_epoch = x_train.shape[0] // global_batch
    grad_mean = np.empty_like(model.params)
    comm.Barrier()
    start = time.perf_counter()
    steps = 0
    for epoch in range(args.epochs):
        order = np.random.default_rng([args.seed, epoch]).permutation(x_train.shape[0])
        for s in range(steps_per_epoch):
            mine = order[s * global_batch + rank * args.batch: s * global_batch + (rank + 1) * args.batch]
            # this rank's share of the mean loss over the global batch: averaging over ranks gives the mean
            grad = model.gradient(x_train[mine], y_train[mine], np.float32(1.0 / args.batch))
            if cc is None:
                comm.Allreduce(grad, grad_mean, op=MPI.SUM)
                grad_mean /= np.float32(size)
            else:
                cc.Allreduce(grad, grad_mean, op=gcomp.mpi.MEAN, key="grads")
            velocity *= np.float32(args.momentum)
            velocity += grad_mean
            model.params -= np.float32(args.lr) * velocity
            steps += 1
    elapsed = time.perf_counter() - start
    # the parameters must be bit-identical on every rank
    hi = model.params.copy()
    lo = model.params.copy()
    comm.Allreduce(MPI.IN_PLACE, hi, op=MPI.MAX)
    comm.Allreduce(MPI.IN_PLACE, lo, op=MPI.MIN)
    identical = bool(np.array_equal(hi, lo))
    if cc is not None:
        sent = sum(s.bytes_sent for s in cc.stats) / max(len(cc.stats), 1)
        ratio = float(np.mean([s.compression_ratio for s in cc.stats]))
        algorithm = cc.stats[-1].algorithm
        cc.Free()
    else:
        sent = 2 * (size - 1) * model.params.nbytes / size  # the transport's ring model, for comparison
        ratio = 1.0
        algorithm = "comm.Allreduce"
    return {
        "run": "dense" if spec == "dense" else f"{spec}@{error_feedback}",
        "compressor": spec,
        "error_feedback": error_feedback,
        "algorithm": algorithm,
        "ranks": size,
        "epochs": args.epochs,
        "steps": steps,
        "params": int(model.params.size),
        "test_accuracy": model.accuracy(x_test, y_test),
        "train_accuracy": model.accuracy(x_train, y_train),
        "bytes_sent_per_step": float(sent),
        "compression_ratio": ratio,
        "seconds": elapsed,
        "params_identical_on_all_ranks": identical,
    }


def format_table(rows, dense, tolerance):
    header = ["run", "algorithm", "test acc %", "vs dense", f"within {tolerance:g}", "bytes/step/rank", "ratio", "s"]
    lines = []
    for r in rows:
        delta = None if dense is None else 100 * (r["test_accuracy"] - dense)
        lines.append([r["run"], r["algorithm"], f"{100 * r['test_accuracy']:.2f}",
                      "" if delta is None else f"{delta:+.2f}",
                      "" if delta is None else ("yes" if delta >= -tolerance else "NO"),
                      f"{r['bytes_sent_per_step']:.0f}", f"{r['compression_ratio']:.1f}", f"{r['seconds']:.1f}"])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=DEFAULT_RUNS, help=f"';'-separated spec@error_feedback (default {DEFAULT_RUNS!r})")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16, help="examples per rank per step")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algorithm", default="auto", help="gcomp algorithm: auto, allgather, scatter-reduce-allgather, ...")
    parser.add_argument("--tolerance", type=float, default=2.0, help="accuracy points below dense that count as reaching it")
    parser.add_argument("--json", help="write the rows (and the settings) here, from rank 0")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    data = load_data(args.seed)
    rows = []
    for spec, ef in parse_runs(args.runs):
        rows.append(train(comm, spec, ef, args, data))
        if comm.Get_rank() == 0:
            r = rows[-1]
            print(f"# {r['run']}: test accuracy {100 * r['test_accuracy']:.2f}% after {r['steps']} steps "
                  f"({r['seconds']:.1f}s)", flush=True)
    dense = next((r["test_accuracy"] for r in rows if r["run"] == "dense"), None)
    if comm.Get_rank() == 0:
        print(f"\ndigits MLP, {comm.Get_size()} ranks, {args.epochs} epochs, global batch {args.batch * comm.Get_size()}, "
              f"lr {args.lr}, momentum {args.momentum}")
        print(format_table(rows, dense, args.tolerance), flush=True)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump({"settings": vars(args), "dense_accuracy": dense, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
