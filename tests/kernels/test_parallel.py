"""Parallel kernels: the same bytes for every thread count and either path, safe from several threads and after fork().

The subprocess tests run with ``NUMBA_NUM_THREADS=4`` (whatever the machine has),
so that ``numba.set_num_threads`` can pick 1, 2 and 4.  Inputs are above
``PARALLEL_MIN`` and include NaN/Inf, ties, mostly-zero and concentrated
vectors (see ``_parallel_cases.py``).  No test here measures time.  The tests
that run kernels are marked slow: with a cold Numba cache the first one compiles
every parallel kernel (about a minute of CPU time).
"""

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from _parallel_cases import N_SEL, N, digests, vectors
from gcomp.kernels import config, qsgd, topk, uniform

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(code_or_args, threads=4, layer=None, timeout=600):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NUMBA_THREADING_LAYER", None)
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    args = code_or_args if isinstance(code_or_args, list) else ["-c", textwrap.dedent(code_or_args)]
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=HERE)


def test_thresholds_are_consistent():
    assert config.PAR_CHUNK % 64 == 0 and config.PARALLEL_MIN_SELECTION >= config.PARALLEL_MIN >= config.PAR_CHUNK
    assert N >= config.PARALLEL_MIN and N % 8 != 0
    assert N_SEL >= config.PARALLEL_MIN_SELECTION and N_SEL % 64 != 0


@pytest.mark.slow
def test_serial_and_parallel_kernels_agree_in_process():
    """Forcing either kernel gives the same bytes (this process's thread count, whatever it is)."""
    serial = digests("serial")
    parallel = digests("parallel")
    assert serial.keys() == parallel.keys()
    differ = [name for name in serial if serial[name] != parallel[name]]
    assert not differ, f"serial and parallel kernels differ on {differ}"


@pytest.mark.slow
def test_bit_identical_for_1_2_4_threads():
    """Every parallelised kernel, serial, parallel at numba.set_num_threads(1), 2 and 4, and the normal choice at 2 and
    4 threads: one digest (see _parallel_cases.main for why serial runs at one thread count only)."""
    proc = _run([os.path.join(HERE, "_parallel_cases.py")])
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert report["max_threads"] == 4
    # the normal choice took the serial kernels at 1 thread and the parallel ones at 2 and 4
    assert [report[f"parallel_threads/{t}"] for t in (1, 2, 4)] == [1, 2, 4]
    assert [report[f"parallel_threads_selection/{t}"] for t in (1, 2, 4)] == [1, 2, 4]
    ways = report["ways"]
    assert sorted(ways) == ["auto/2", "auto/4", "parallel/1", "parallel/2", "parallel/4", "serial/1"], sorted(ways)
    first = ways["serial/1"]
    for way, got in ways.items():
        differ = [name for name in first if got[name] != first[name]]
        assert not differ, f"{way} differs from serial/1 on {differ}"


def _hammer_calls():
    """(call, expected output) pairs on parallel-path inputs; expected computed serially."""
    vs = vectors()
    sel = vectors(N_SEL)
    calls = [
        lambda: topk.topk_exact(sel["nonfinite"], N_SEL // 100),
        lambda: qsgd.qsgd_encode(vs["nonfinite"], 4, 512, 3),
        lambda: uniform.uniform_encode(vs["normal"], 4, 512, "maxmin", "stochastic", 5),
        lambda: topk.topk_exact(sel["ties"], N_SEL // 3),
    ]
    previous = config._force
    config._force = "serial"
    try:
        expected = [call() for call in calls]
    finally:
        config._force = previous
    return calls, expected


def _same(a, b):
    return all(np.asarray(p).tobytes() == np.asarray(q).tobytes() for p, q in zip(a, b, strict=True))


@pytest.mark.slow
def test_two_threads_hammering_parallel_kernels():
    """Two Python threads calling parallel kernels at once (a DDP hook and a communication thread)."""
    calls, expected = _hammer_calls()
    errors = []

    def worker(offset):
        try:
            for r in range(12):
                j = (r + offset) % len(calls)
                if not _same(calls[j](), expected[j]):
                    errors.append(f"thread {offset}: call {j} differs")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


HAMMER = """
import threading, numpy as np, numba
import test_parallel as tp
from gcomp.kernels import config
calls, expected = tp._hammer_calls()
errors, launched = [], []
def worker(offset):
    for r in range(16):
        j = (r + offset) % len(calls)
        if not tp._same(calls[j](), expected[j]):
            errors.append((offset, j))
threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
for t in threads: t.start()
for t in threads: t.join()
print("layer", numba.threading_layer(), "errors", errors)
assert not errors
"""


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["workqueue", "omp"])
def test_concurrent_launches_safe_under_every_layer(layer):
    """workqueue aborts the process on concurrent parallel launches: gcomp must never make one."""
    if layer == "omp":
        try:
            import numba.np.ufunc.omppool  # noqa: F401
        except ImportError:
            pytest.skip("no OpenMP threading layer here")
    proc = _run(HAMMER, threads=2, layer=layer)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert f"layer {layer} errors []" in proc.stdout


FORK = """
import os, numpy as np, numba
from gcomp.kernels import config, topk
x = np.random.default_rng(1).standard_normal(1_200_000).astype(np.float32)
want = topk.topk_exact(x, 4000)          # parallel: starts the thread pool in the parent
assert config.parallel_threads(x.size) > 1
pid = os.fork()
if pid == 0:                             # GNU OpenMP would terminate a parallel launch here
    got = topk.topk_exact(x, 4000)
    os._exit(0 if config.parallel_threads(x.size) == 1 and np.array_equal(got[0], want[0]) else 3)
_, status = os.waitpid(pid, 0)
got = topk.topk_exact(x, 4000)           # the parent keeps its parallel kernels
print("child", os.waitstatus_to_exitcode(status), "parent", np.array_equal(got[0], want[0]))
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_runs_serial_kernels():
    proc = _run(FORK, threads=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "child 0 parent True" in proc.stdout


def test_run_chooses_by_size_threads_lock_and_fork(monkeypatch):
    """The choice between the kernels: small vectors, one thread, a launch in flight or a forked child: serial."""
    import numba

    serial, parallel = (lambda *a: ("serial", a)), (lambda *a: ("parallel", a))
    assert config.run(config.PARALLEL_MIN - 1, serial, parallel, 1)[0] == "serial"
    assert config.parallel_threads(config.PARALLEL_MIN - 1) == 1
    sel = config.PARALLEL_MIN_SELECTION
    assert config.run(sel - 1, serial, parallel, at_least=sel)[0] == "serial"
    big = config.PARALLEL_MIN
    expect = "parallel" if numba.config.NUMBA_NUM_THREADS > 1 else "serial"
    assert config.run(big, serial, parallel, 1) == (expect, (1,))
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert config.run(big, serial, parallel)[0] == "serial"
        assert config.parallel_threads(big) == 1
    finally:
        numba.set_num_threads(previous)
    monkeypatch.setattr(config, "_force", "parallel")
    assert config.run(16, serial, parallel)[0] == "parallel"
    with config._launch_lock:  # another parallel kernel is running: serial, no waiting
        assert config.run(16, serial, parallel)[0] == "serial"
    monkeypatch.setattr(config, "_forked_after_launch", True)
    assert config.run(16, serial, parallel)[0] == "serial"
    assert config.parallel_threads(big) == 1


SMALL = """
import numpy as np
from numba.np.ufunc import parallel
from gcomp.kernels import bitpack, natural, qsgd, sampled_topk, sign, terngrad, threshold, topk, uniform
from gcomp.kernels import error_feedback as ef
x = np.random.default_rng(1).standard_normal(100_000).astype(np.float32)
r = np.zeros_like(x)
topk.topk_exact(x, 100); sampled_topk.topk_sampled(x, 100, 1); threshold.threshold_select(x, 1.0)
ef.ef_topk(x, r, 100); ef.ef_sampled_topk(x, r, 100, 1)
p, s = qsgd.qsgd_encode(x, 4, 512, 1, residual=r); qsgd.qsgd_decode(p, s, 4, 512, x.size)
p, s, o = uniform.uniform_encode(x, 4, 512); uniform.uniform_decode(p, s, o, 4, 512, x.size)
p, s = sign.sign_encode(x, 512); sign.sign_decode(p, s, 512, x.size)
p, s = terngrad.terngrad_encode(x, 512, 1); terngrad.terngrad_decode(p, s, 512, x.size)
e, s = natural.natural_encode(x, 1); natural.natural_decode(e, s, x.size)
bitpack.unpack_bits(bitpack.pack_bits(np.zeros(100_000, np.uint8), 2), 2, 100_000)
print("pool started", parallel._is_initialized)
"""


@pytest.mark.slow
def test_small_vectors_never_start_the_thread_pool():
    """Below PARALLEL_MIN no kernel compiles, loads or launches anything parallel (Numba's pool stays down)."""
    proc = _run(SMALL, threads=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "pool started False" in proc.stdout


REFERENCE_FILES = ["test_topk.py", "test_error_feedback.py", "test_qsgd.py", "test_uniform.py", "test_sign.py",
                   "test_terngrad.py", "test_natural.py", "test_bitpack.py"]


@pytest.mark.slow
def test_reference_tests_pass_on_the_parallel_kernels():
    """The numpy-reference tests of every parallelised family, with the parallel kernels forced at every size
    (degenerate inputs included: empty, one entry, NaN/Inf, partial buckets and bytes)."""
    code = ("import sys, pytest; from gcomp.kernels import config; config._force = 'parallel'; "
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-m', 'not slow', *sys.argv[1:]]))")
    proc = _run(["-c", code, *REFERENCE_FILES], threads=2)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
