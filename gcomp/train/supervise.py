"""Worker processes: start them, read their output, time them out, kill them -- in one place.

:func:`supervise` is the one supervisor of gcomp's worker processes: ``gcomp
train`` (:mod:`gcomp.train.runner`) and :func:`run_emulated` (``gcomp
emulate``) both start their workers through it.  It starts every command in
its own session (process group), merges each one's stdout and stderr and
collects them line by line (handing each line to ``on_line(rank, line)`` if
given), kills all process groups on a timeout or -- with ``fail_grace`` -- that
long after the first worker fails, and always kills and reaps every process
group before it returns or raises.

:func:`run_emulated` runs one process per worker on an
:class:`~gcomp.train.netns.EmulatedNetwork` and collects a
:class:`WorkerResult` per worker (exit status, output, bytes through its
``eth0``) into an :class:`EmulationResult`::

    from gcomp.train.links import parse_links
    from gcomp.train.supervise import run_emulated

    result = run_emulated(parse_links("20mbit,5mbit", 2), ["python", "train.py"], timeout=600)
    result.returncodes, result.outputs, [w.tx_bytes for w in result.workers]
"""

import contextlib
import dataclasses
import functools
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .links import Link
from .netns import DEFAULT_SUBNET, EmulatedNetwork

__all__ = ["supervise", "SupervisedRun", "WorkerResult", "EmulationResult", "run_emulated", "Interrupted",
           "signals_raise"]


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt so that every ``finally`` runs: workers are
    killed and emulated networks torn down before the process exits."""

    def __init__(self, signum):
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def signals_raise(signums=(signal.SIGTERM, signal.SIGHUP)):
    """Within the block, ``signums`` raise :class:`Interrupted` in the main thread (elsewhere: no change).

    A signal that was ignored (``nohup`` ignores SIGHUP) stays ignored; the
    previous handlers are restored on the way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {}
    for signum in signums:
        prev = signal.getsignal(signum)
        if prev is signal.SIG_IGN:
            continue
        previous[signum] = prev
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, prev in previous.items():
            signal.signal(signum, prev if prev is not None else signal.SIG_DFL)


_PR_SET_PDEATHSIG = 1


def _prctl():
    """libc's prctl, looked up in the parent (a forked child should not load libraries); None off Linux."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def _die_with_parent(parent):
    """In the child before exec: SIGKILL when ``parent`` dies, even by SIGKILL (Linux prctl; elsewhere nothing)."""
    if _PRCTL is None:
        return
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the prctl: do not outlive it
        os.kill(os.getpid(), signal.SIGKILL)


@dataclasses.dataclass
class SupervisedRun:
    """What :func:`supervise` saw: per process its exit status (negative: killed by that signal), its merged
    stdout and stderr, and whether the supervisor killed it (timeout or a peer's failure)."""

    returncodes: list
    outputs: list
    killed: list
    elapsed_s: float
    timed_out: bool


def _killpg(proc, sig=signal.SIGKILL):
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reader(stream, rank, sink, on_line, lock, errors):
    """Collect one process's output; hand each line to ``on_line`` until it raises (then keep draining the pipe)."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace")
        sink.append(line)
        if on_line is not None:
            with lock:
                if errors:
                    continue
                try:
                    on_line(rank, line.rstrip("\n"))
                except BaseException as exc:  # noqa: BLE001 - re-raised by supervise once every process is reaped
                    errors.append(exc)
    stream.close()


def supervise(commands, envs, *, timeout=600.0, fail_grace=None, cwd=None, on_line=None):
    """Run ``commands[i]`` with environment ``envs[i]``, all at once; wait for them all and return a :class:`SupervisedRun`.

    Each process runs in its own session (process group) with stdin from
    ``/dev/null`` and stdout and stderr merged and collected; ``on_line(rank,
    line)`` (optional) gets every line as it comes, without its newline, one
    call at a time.  After ``timeout`` seconds every process still running is
    killed (``timed_out``); with ``fail_grace`` set, so are those still running
    that many seconds after the first process exits non-zero (``None``: wait
    for them until the timeout).  Every process group -- also anything a
    worker left in it -- is killed and reaped before this returns or raises; an
    exception raised by ``on_line`` is raised again then.  SIGTERM and SIGHUP
    raise :class:`Interrupted` meanwhile (so the same cleanup runs), and each
    process gets SIGKILL if this one dies without cleaning up (SIGKILL:
    Linux's parent-death signal).
    """
    lock = threading.Lock()
    procs, outputs, readers, errors = [], [], [], []
    killed = set()
    timed_out = False
    start = time.monotonic()
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(signals_raise())  # SIGTERM / SIGHUP unwind through the finally below, like Ctrl-C
        for i, (argv, env) in enumerate(zip(commands, envs, strict=True)):
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=functools.partial(_die_with_parent, os.getpid()))
            procs.append(proc)
            sink = []
            outputs.append(sink)
            t = threading.Thread(target=_reader, args=(proc.stdout, i, sink, on_line, lock, errors), daemon=True)
            t.start()
            readers.append(t)
        deadline = start + timeout
        failed_at = None
        while [p.poll() for p in procs].count(None):  # poll every worker, not just up to the first live one
            now = time.monotonic()
            if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
                failed_at = now
            if now >= deadline:
                timed_out = True
            if timed_out or (fail_grace is not None and failed_at is not None and now - failed_at >= fail_grace):
                for i, p in enumerate(procs):
                    if p.poll() is None:
                        killed.add(i)
                        _killpg(p)
                for p in procs:
                    p.wait()
                break
            time.sleep(0.02)
    finally:
        for p in procs:  # also reaps anything the worker left in its process group
            _killpg(p)
            p.wait()
        for t in readers:
            t.join(timeout=5)
        stack.close()
    elapsed = time.monotonic() - start
    if errors:
        raise errors[0]
    return SupervisedRun(returncodes=[p.returncode for p in procs], outputs=["".join(sink) for sink in outputs],
                         killed=[i in killed for i in range(len(procs))], elapsed_s=elapsed, timed_out=timed_out)


# ---------------------------------------------------------------------------------------------------------------
# one process per worker of an emulated network


@dataclasses.dataclass
class WorkerResult:
    """One worker's outcome: exit status (negative: killed by that signal), output, bytes through its eth0."""

    rank: int
    namespace: str
    address: str
    link: Link
    returncode: int | None
    output: str
    tx_bytes: int
    rx_bytes: int
    value: object = None  # what the function returned (run_emulated with a callable)
    killed: bool = False  # killed by run_emulated (timeout or a peer's failure)

    @property
    def ok(self):
        return self.returncode == 0


@dataclasses.dataclass
class EmulationResult:
    workers: list
    elapsed_s: float
    timed_out: bool

    @property
    def ok(self):
        return not self.timed_out and all(w.ok for w in self.workers)

    @property
    def returncodes(self):
        return [w.returncode for w in self.workers]

    @property
    def outputs(self):
        return [w.output for w in self.workers]

    @property
    def values(self):
        return [w.value for w in self.workers]


_FN_BOOTSTRAP = (
    "import json, sys; d = sys.argv[1]; sys.path[:0] = json.load(open(d + '/sys_path.json')); "
    "from gcomp.train.supervise import _fn_worker_main; _fn_worker_main(d)"
)


def _fn_worker_main(directory):
    """Entry point of a worker started by run_emulated with a callable: call it, pickle its return value."""
    rank = int(os.environ["RANK"])
    with open(os.path.join(directory, "payload.pkl"), "rb") as f:
        fn, args, kwargs = pickle.load(f)
    value = fn(*args, **kwargs)
    tmp = os.path.join(directory, f"result-{rank}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(value, f)
    os.replace(tmp, os.path.join(directory, f"result-{rank}.pkl"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # never wait on gloo teardown or comm threads


def _echo(rank, line):
    sys.stdout.write(f"[{rank}] {line}\n")
    sys.stdout.flush()


def run_emulated(links, argv_or_fn, *, args=(), kwargs=None, timeout=600.0, master_port=29500, env=None, cwd=None,
                 stream=False, fail_grace=2.0, prefix="gcomp", subnet=DEFAULT_SUBNET):
    """Run one process per worker, each in its namespace of an :class:`EmulatedNetwork` over ``links``.

    ``argv_or_fn`` is a command (list of strings), run as is, or a top-level
    importable function, called as ``fn(*args, **kwargs)`` in a fresh Python
    process (its return value, pickled, comes back as ``WorkerResult.value``).
    Every worker gets :meth:`EmulatedNetwork.env` plus ``env``; stdout and
    stderr are merged and collected (``stream=True`` also prints each line as
    ``[rank] line``; a callable ``stream(rank, line)`` receives them).

    When a worker fails, the others get ``fail_grace`` seconds to finish, then
    all are killed; after ``timeout`` seconds all are killed.  The network is
    always torn down before this returns or raises.  Returns an
    :class:`EmulationResult`; byte counters are those of the run alone.
    """
    links = list(links)
    kwargs = dict(kwargs or {})
    tmpdir = None
    if callable(argv_or_fn):
        fn = argv_or_fn
        if getattr(fn, "__module__", "__main__") == "__main__" or "<locals>" in getattr(fn, "__qualname__", "<locals>"):
            raise ValueError("run_emulated needs a top-level function of an importable module (not __main__)")
        tmpdir = tempfile.mkdtemp(prefix="gcomp-emulate-")
        with open(os.path.join(tmpdir, "payload.pkl"), "wb") as f:
            pickle.dump((fn, tuple(args), kwargs), f)
        with open(os.path.join(tmpdir, "sys_path.json"), "w") as f:
            json.dump([os.path.abspath(p) if p else os.getcwd() for p in sys.path], f)
        argv = [sys.executable, "-c", _FN_BOOTSTRAP, tmpdir]
    else:
        argv = [str(a) for a in argv_or_fn]
        if not argv:
            raise ValueError("expected a command to run")
    extra_env = {k: str(v) for k, v in (env or {}).items()}
    try:
        with EmulatedNetwork(links, prefix=prefix, subnet=subnet) as net:
            before = [net.counters(i) for i in range(len(net))]
            run = supervise([net.command(i, argv) for i in range(len(net))],
                            [{**net.env(i, master_port), **extra_env} for i in range(len(net))],
                            timeout=timeout, fail_grace=fail_grace, cwd=cwd,
                            on_line=(stream if callable(stream) else _echo) if stream else None)
            after = [net.counters(i) for i in range(len(net))]
            workers = []
            for i in range(len(net)):
                value = None
                if tmpdir is not None:
                    path = os.path.join(tmpdir, f"result-{i}.pkl")
                    if os.path.exists(path):
                        with open(path, "rb") as f:
                            value = pickle.load(f)
                workers.append(WorkerResult(
                    rank=i, namespace=net.namespaces[i], address=net.addresses[i], link=net.links[i],
                    returncode=run.returncodes[i], output=run.outputs[i],
                    tx_bytes=after[i][0] - before[i][0], rx_bytes=after[i][1] - before[i][1],
                    value=value, killed=run.killed[i],
                ))
            return EmulationResult(workers, run.elapsed_s, run.timed_out)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
