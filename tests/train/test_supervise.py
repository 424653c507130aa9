"""The worker supervisor (gcomp.train.supervise.supervise): output, timeout, a peer's failure, cleanup.

Plain local processes, no namespaces: these run without root.
"""

import os
import signal
import sys
import textwrap
import time

import pytest

from gcomp.train.supervise import supervise


def _py(code):
    return [sys.executable, "-c", textwrap.dedent(code)]


def _envs(n, **extra):
    return [dict(os.environ, RANK=str(i), **extra) for i in range(n)]


def test_collects_merged_output_and_lines():
    code = """
        import os, sys
        r = os.environ["RANK"]
        print("out", r, flush=True)
        print("err", r, file=sys.stderr, flush=True)
        sys.stdout.write("no newline " + r)
    """
    seen = []
    run = supervise([_py(code)] * 3, _envs(3), timeout=30, on_line=lambda rank, line: seen.append((rank, line)))
    assert run.returncodes == [0, 0, 0] and run.killed == [False] * 3 and not run.timed_out
    for r, out in enumerate(run.outputs):
        assert out == f"out {r}\nerr {r}\nno newline {r}"
        assert [line for rank, line in seen if rank == r] == [f"out {r}", f"err {r}", f"no newline {r}"]
    assert run.elapsed_s > 0


def test_timeout_kills_the_process_group():
    # Each worker leaves a grandchild in its process group; killing the group takes it too.
    code = """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
    """
    # The timeout must leave each worker time to start an interpreter and its grandchild and print the pid even on a
    # loaded box (1.5 s did not at load 10); the bound after it only guards against a hang, not a speed.
    t0 = time.monotonic()
    run = supervise([_py(code)] * 2, _envs(2), timeout=8)
    assert time.monotonic() - t0 < 40
    assert run.timed_out and run.killed == [True, True]
    assert run.returncodes == [-signal.SIGKILL] * 2
    for out in run.outputs:
        pid = int(out.split()[0])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"grandchild {pid} survived its process group")


_FAIL_ONE = _py("""
    import os, time
    if os.environ["RANK"] == "1":
        raise SystemExit(3)
    time.sleep(float(os.environ["SLEEP"]))
""")


def test_fail_grace_kills_the_peers():
    t0 = time.monotonic()
    run = supervise([_FAIL_ONE] * 3, _envs(3, SLEEP="30"), timeout=60, fail_grace=0.3)
    assert time.monotonic() - t0 < 10
    assert not run.timed_out and run.returncodes[1] == 3
    assert run.killed == [True, False, True]


def test_without_fail_grace_the_peers_finish():
    run = supervise([_FAIL_ONE] * 3, _envs(3, SLEEP="0.5"), timeout=60)
    assert run.returncodes == [0, 3, 0] and run.killed == [False] * 3 and not run.timed_out


def test_a_failing_callback_is_raised_after_cleanup():
    code = """
        import time
        for i in range(20000):
            print("line", i)
        time.sleep(0.2)
    """

    def boom(rank, line):
        raise ValueError(f"bad line {line!r}")

    t0 = time.monotonic()
    with pytest.raises(ValueError, match="bad line 'line 0'"):
        supervise([_py(code)] * 2, _envs(2), timeout=30, on_line=boom)
    assert time.monotonic() - t0 < 20  # the pipes were still drained: no worker blocked on a full pipe


def test_start_failure_kills_what_started():
    code = "import time; print('up', flush=True); time.sleep(60)"
    t0 = time.monotonic()
    with pytest.raises(OSError):
        supervise([_py(code), ["/nonexistent/gcomp-no-such-program"]], _envs(2), timeout=60)
    assert time.monotonic() - t0 < 10
