"""Launch a per-rank script under ``mpiexec -n N python -m mpi4py SCRIPT args`` from pytest.

:func:`run_mpi` runs the job in its own process group with a timeout, kills the
whole group (mpiexec, hydra proxies and every rank) when the timeout passes,
and returns the exit code, the combined output and the elapsed time.
:func:`run_mpi_cached` runs a given (script, n, args) once per pytest session
so that several tests can read the per-rank markers of one launch.

Every launched rank gets one thread per runtime (Numba, OpenMP, MKL, torch):
the suite oversubscribes up to 8 ranks on a 2-core machine.

Markers printed by the scripts (tests/mpi/scripts/_harness.py)::

    CHECK <name> rank=<r> ok
    CHECK <name> rank=<r> FAIL <ExceptionType>: <message>
    DONE rank=<r> failures=<k>
"""

import dataclasses
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import time

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

THREAD_ENV = {
    "NUMBA_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}

_CHECK = re.compile(r"CHECK (\S+) rank=(\d+) (ok|FAIL)(?: (.*?))?(?=CHECK |DONE |BYTES |MARK |$)")
_DONE = re.compile(r"DONE rank=(\d+) failures=(\d+)")


def mpiexec() -> str:
    """The mpiexec beside this Python (the pip ``mpich`` wheel puts it there), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(beside):
        return beside
    found = shutil.which("mpiexec")
    if found is None:
        raise RuntimeError("mpiexec not found: pip install 'gcomp[mpi]' (mpi4py and the mpich wheel) or install MPICH")
    return found


@dataclasses.dataclass
class Result:
    """One finished (or killed) mpiexec job."""

    command: list
    returncode: int
    output: str
    elapsed: float
    timed_out: bool

    def checks(self) -> dict:
        """``{check name: {rank: (status, message)}}`` from the CHECK markers."""
        found = {}
        for line in self.output.splitlines():
            for m in _CHECK.finditer(line):
                found.setdefault(m.group(1), {})[int(m.group(2))] = (m.group(3), (m.group(4) or "").strip())
        return found

    def done_ranks(self) -> dict:
        """``{rank: failures}`` from the DONE markers."""
        return {int(m.group(1)): int(m.group(2)) for m in _DONE.finditer(self.output)}

    def markers(self, prefix) -> list:
        """The text of every ``<prefix> ...`` marker, up to the next marker or the end of its line."""
        pattern = re.compile(re.escape(prefix) + r" (.*?)(?=CHECK |DONE |BYTES |MARK |$)")
        return [m.group(1).strip() for line in self.output.splitlines() for m in pattern.finditer(line)]

    def describe(self, tail=6000) -> str:
        text = self.output if len(self.output) <= tail else "...\n" + self.output[-tail:]
        state = "timed out" if self.timed_out else f"exit code {self.returncode}"
        return f"$ {' '.join(self.command)}\n[{state} after {self.elapsed:.1f}s]\n{text}"


def run_mpi(script, n, *args, timeout=120.0, env=None) -> Result:
    """Run ``mpiexec -n n python -m mpi4py scripts/SCRIPT args`` and return its :class:`Result`.

    The job runs in a new session; on timeout the whole process group is
    killed (SIGTERM, then SIGKILL) and ``timed_out`` is set.  stderr is merged
    into the output.
    """
    path = script if os.path.isabs(script) else os.path.join(SCRIPTS, script)
    command = [mpiexec(), "-n", str(n), sys.executable, "-m", "mpi4py", path, *map(str, args)]
    full_env = dict(os.environ)
    for name, value in THREAD_ENV.items():
        full_env.setdefault(name, value)
    full_env.pop("PYTHONUNBUFFERED", None)  # unbuffered, print() writes text and newline apart: lines of ranks interleave
    full_env.update(env or {})
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=REPO,
                            start_new_session=True, text=True, errors="replace")
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        output, _ = proc.communicate()
    elapsed = time.monotonic() - start
    return Result(command, proc.returncode, output or "", elapsed, timed_out)


def _kill_group(proc):
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@functools.cache
def run_mpi_cached(script, n, *args, timeout=180.0) -> Result:
    """:func:`run_mpi`, once per (script, n, args, timeout) per pytest session."""
    return run_mpi(script, n, *args, timeout=timeout)


def assert_clean(result: Result, n: int):
    """The job exited 0 in time and every rank printed DONE with no failures."""
    assert not result.timed_out, "the MPI job hung and was killed:\n" + result.describe()
    assert result.returncode == 0, "the MPI job failed:\n" + result.describe()
    done = result.done_ranks()
    assert sorted(done) == list(range(n)), f"expected DONE from ranks 0..{n - 1}, found {sorted(done)}:\n" + result.describe()


def assert_check(result: Result, name: str, n: int):
    """Every rank reported ``CHECK name ... ok``."""
    checks = result.checks()
    assert name in checks, f"check {name!r} was not reported; reported: {sorted(checks)}\n" + result.describe(3000)
    per_rank = checks[name]
    failed = {r: msg for r, (status, msg) in per_rank.items() if status != "ok"}
    assert not failed, f"check {name!r} failed on ranks {sorted(failed)}: " + "; ".join(
        f"rank {r}: {m}" for r, m in sorted(failed.items()))
    assert sorted(per_rank) == list(range(n)), f"check {name!r} reported by ranks {sorted(per_rank)}, expected 0..{n - 1}"
