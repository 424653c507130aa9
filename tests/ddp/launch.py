"""Run a worker function on N ranks of a real ``torch.distributed`` gloo group.

::

    from .launch import launch                # from a test module in tests/ddp

    def worker(rank, world_size, steps):      # top level: spawn pickles it by reference
        ...                                   # dist is initialised here (gloo, localhost)
        return {"loss": 0.5}                  # anything picklable

    results = launch(worker, 2, 5)            # [result of rank 0, result of rank 1]

* processes come from the ``spawn`` context (no forked torch/Numba state);
* the rendezvous uses a free TCP port on 127.0.0.1 chosen here, with a retry on
  the rare race where another process takes it first;
* each rank writes its result (or its formatted traceback) to a file in a
  private temporary directory and leaves with ``os._exit``, so a rank whose
  peers died is never held up by gloo teardown or a stuck comm thread;
* a hard ``timeout`` (seconds) bounds the whole run: ranks still alive then are
  killed and :class:`LaunchError` reports which ones hung;
* if any rank raised (or died without a result and was not listed in
  ``may_die``), :class:`LaunchError` carries every rank's traceback;
* no process is ever left behind: every started process is joined, killed if
  it has to be, before ``launch`` returns or raises.

Each rank sets ``torch.set_num_threads(1)`` (CI machines have few cores and
several ranks share them).

The bottom of this module holds small helpers the workers share: a seeded
MLP, deterministic per-(rank, step) batches, bit-exact parameter digests and
:func:`capture`, which turns an exception into data so that one worker can
run several cases and report each.
"""

import datetime
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import shutil
import socket
import tempfile
import time
import traceback

__all__ = ["launch", "LaunchError", "DIED", "free_port", "make_model", "batch", "eval_loss", "train_step", "digest",
           "flat_params", "capture"]

#: Placeholder result of a rank that exited without reporting (only with ``may_die``).
DIED = "<died>"


class LaunchError(RuntimeError):
    """A rank raised, died unexpectedly or hung; the message holds every rank's report."""

    def __init__(self, message, reports=None):
        super().__init__(message)
        self.reports = reports or {}


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world_size, port, outdir, pg_timeout, args, kwargs):
    # Runs in the child.  Every path ends in os._exit so that nothing (a gloo
    # thread, the hook's comm thread, a half-dead store) can keep it alive.
    code = 0
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        os.environ["RANK"] = str(rank)
        os.environ["WORLD_SIZE"] = str(world_size)
        dist.init_process_group("gloo", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=pg_timeout))
        report = ("ok", fn(rank, world_size, *args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - report everything to the parent
        code = 1
        report = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    try:
        tmp = os.path.join(outdir, f"rank{rank}.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(report, fh)
        os.replace(tmp, os.path.join(outdir, f"rank{rank}.pkl"))
    except BaseException:  # noqa: BLE001 - e.g. an unpicklable result
        code = 2
        try:
            with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as fh:
                pickle.dump(("error", "could not pickle the result:\n" + traceback.format_exc()), fh)
        except BaseException:  # noqa: BLE001
            pass
    finally:
        try:
            import sys

            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run_once(fn, world_size, args, kwargs, timeout, pg_timeout, grace=None):
    ctx = mp.get_context("spawn")
    outdir = tempfile.mkdtemp(prefix="gcomp-ddp-")
    procs = []
    try:
        port = free_port()
        try:
            for rank in range(world_size):
                p = ctx.Process(target=_entry, args=(fn, rank, world_size, port, outdir, pg_timeout, args, kwargs),
                                name=f"gcomp-rank{rank}", daemon=True)
                p.start()
                procs.append(p)
            deadline = time.monotonic() + timeout
            pending, cut = list(procs), False
            while pending and time.monotonic() < deadline:
                multiprocessing.connection.wait([p.sentinel for p in pending],
                                                timeout=max(0.0, min(1.0, deadline - time.monotonic())))
                pending = [p for p in procs if p.is_alive()]
                if grace is not None and not cut and pending and any(p.exitcode for p in procs if not p.is_alive()):
                    deadline, cut = min(deadline, time.monotonic() + grace), True
            hung = [procs.index(p) for p in pending]
        finally:
            # never leave a rank behind: kill what still runs (our own processes, by object), reap all
            for p in procs:
                if p.is_alive():
                    p.kill()
            for p in procs:
                p.join(10)
        reports = {}
        for rank in range(world_size):
            path = os.path.join(outdir, f"rank{rank}.pkl")
            if os.path.exists(path):
                with open(path, "rb") as fh:
                    reports[rank] = pickle.load(fh)
        return reports, hung, [p.exitcode for p in procs], cut and bool(hung)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


def _address_in_use(reports):
    return any(kind == "error" and "address already in use" in str(text).lower() for kind, text in reports.values())


def launch(fn, world_size, *args, timeout=120.0, pg_timeout=30.0, may_die=(), grace=None, **kwargs):
    """Run ``fn(rank, world_size, *args, **kwargs)`` on ``world_size`` spawned gloo ranks; returns results by rank.

    ``timeout`` bounds the whole run (seconds); ``pg_timeout`` is the process
    group's timeout; ranks in ``may_die`` may exit without a result (their
    entry is :data:`DIED`).  Raises :class:`LaunchError` with every rank's
    traceback if a rank raised, hung or died unexpectedly.  With ``grace``
    (seconds), once a rank has exited with an error the others get only that
    long before they count as hung (a test of a hang need not wait ``timeout``).
    """
    for attempt in range(3):
        reports, hung, exitcodes, cut = _run_once(fn, world_size, args, kwargs, timeout, pg_timeout, grace)
        if not _address_in_use(reports) or attempt == 2:
            break
    problems = []
    results = []
    for rank in range(world_size):
        report = reports.get(rank)
        if rank in hung:
            problems.append(f"rank {rank}: still running {grace} s after another rank failed, killed" if cut
                            else f"rank {rank}: still running after {timeout} s, killed")
            results.append(None)
        elif report is None:
            if rank in may_die:
                results.append(DIED)
            else:
                problems.append(f"rank {rank}: exited with code {exitcodes[rank]} without a result")
                results.append(None)
        elif report[0] == "error":
            problems.append(f"rank {rank} raised:\n{report[1]}")
            results.append(None)
        else:
            results.append(report[1])
    if problems:
        fname = getattr(fn, "__qualname__", repr(fn))
        raise LaunchError(f"{fname} on {world_size} ranks failed:\n\n" + "\n\n".join(problems), reports)
    return results


# ----------------------------------------------------------------------------
# Small helpers for the worker functions (they run inside the ranks)
# ----------------------------------------------------------------------------
IN_FEATURES = 16
HIDDEN = 64


def make_model(seed=0, dtype=None):
    """A 16-64-64-1 tanh MLP (5313 parameters), identical on every rank for a given seed."""
    import torch
    from torch import nn

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(IN_FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(),
                          nn.Linear(HIDDEN, 1))
    torch.random.set_rng_state(gen_state)
    if dtype is not None:
        model = model.to(dtype)
    return model


def _teacher(x):
    import torch

    w = torch.linspace(-1.0, 1.0, IN_FEATURES, dtype=torch.float32)
    return torch.tanh(0.5 * (x @ w)).unsqueeze(1)


def batch(rank, step, n=32, seed=1234, dtype=None):
    """Rank ``rank``'s batch at ``step``: a deterministic function of (seed, rank, step), never the global RNG."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + rank * 10_007 + step)
    x = torch.randn(n, IN_FEATURES, generator=g)
    y = _teacher(x)
    if dtype is not None:
        x, y = x.to(dtype), y.to(dtype)
    return x, y


def eval_loss(model, n=256):
    """Loss of ``model`` (the DDP-wrapped module, no communication) on a fixed held-out set."""
    import torch

    x, y = batch(rank=-1, step=0, n=n, seed=99)
    p = next(model.parameters())
    with torch.no_grad():
        return float(((model(x.to(p.dtype)).float() - y) ** 2).mean())


def train_step(ddp, opt, x, y):
    """One forward/backward/step; returns the local loss."""
    opt.zero_grad(set_to_none=True)
    loss = ((ddp(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    return float(loss.detach())


def param_bytes(model):
    return b"".join(p.detach().cpu().contiguous().view(-1).view(dtype=_u8()).numpy().tobytes() for p in model.parameters())


def _u8():
    import torch

    return torch.uint8


def digest(model):
    """sha256 of every parameter's raw bytes (bit-exact, NaN payloads included)."""
    import hashlib

    return hashlib.sha256(param_bytes(model)).hexdigest()


def flat_params(model):
    import torch

    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()]).numpy().copy()


def capture(fn, *args, **kwargs):
    """Run ``fn``; return ("ok", result) or ("raised", type name, message, mro names)."""
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the test inspects what was raised
        return ("raised", type(exc).__name__, str(exc), [c.__name__ for c in type(exc).__mro__])
