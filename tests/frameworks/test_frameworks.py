"""docs/frameworks.md's Lightning and Accelerate examples, run as written on 2 gloo CPU processes under torchrun.

Each example is the concatenation of the ``python`` blocks that follow an ``<!-- example: NAME -->`` line in the
page (the example, then the checks the page shows under it).  Each rank writes ``rank<R>.json``; the test checks that
the ranks end identical, that the hook compressed every step, that a run resumed from the framework's own checkpoint
is bit-identical to one that never stopped, and that a run resumed without gcomp's state is not.
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys

import pytest

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "frameworks.md"
WORLD = 2
STEPS = 2 * 512 // (16 * WORLD)  # two epochs of 512 samples, batch 16 per rank


def examples():
    """``{name: source}`` from the page: the python blocks after each ``<!-- example: NAME -->`` marker, in order."""
    found = {}
    for name, block in re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```", DOC.read_text(), flags=re.S):
        found[name] = found.get(name, "") + block
    return found


def test_the_page_has_both_examples():
    found = examples()
    assert set(found) == {"lightning_gcomp.py", "accelerate_gcomp.py"}
    for source in found.values():
        compile(source, "example", "exec")  # each concatenation is one valid script


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_torchrun(script, out, timeout):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={WORLD}", "--master-addr=127.0.0.1",
               f"--master-port={_free_port()}", str(script), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=env, cwd=out, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # torchrun and its workers: the whole session
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=10)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        output, _ = proc.communicate()
        pytest.fail(f"{script.name} did not finish in {timeout} s:\n{output[-6000:]}")
    assert proc.returncode == 0, f"{script.name} failed (exit {proc.returncode}):\n{output[-6000:]}"
    return output


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("name, module", [("lightning_gcomp.py", "lightning"), ("accelerate_gcomp.py", "accelerate")])
def test_example_trains_with_gcomp_and_resumes_bit_identically(tmp_path, name, module):
    import importlib.util

    assert importlib.util.find_spec(module), f"expected {module} installed: pip install -e '.[test]' (or gcomp[{module}])"
    script = tmp_path / name
    script.write_text(examples()[name])
    _run_torchrun(script, tmp_path, timeout=360)
    ranks = []
    for r in range(WORLD):
        with open(tmp_path / f"rank{r}.json") as f:
            ranks.append(json.load(f))
    assert len({rank["straight"] for rank in ranks}) == 1, "the ranks must end with identical parameters"
    for rank in ranks:
        assert rank["hook_iterations"] == STEPS, "gcomp's hook must run on every step"
        assert rank["compression_ratio"] > 5, "topk 5% must send far less than dense"
        assert rank["resumed"] == rank["straight"], "resuming from the framework's checkpoint must be bit-identical"
        assert rank["forgetful"] != rank["straight"], "without gcomp's state the resumed run must differ"
        if name == "lightning_gcomp.py":
            # what docs/frameworks.md says: Lightning drops ddp_comm_hook/ddp_comm_state on CPU
            assert rank["options_hook_iterations_on_cpu"] == 0
