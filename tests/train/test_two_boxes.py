"""``gcomp train --launched-by`` across boxes: each emulated box starts its own launcher, they meet over the network.

Two boxes, each its own network namespace of an :class:`~gcomp.train.netns.EmulatedNetwork` (its own address
on ``eth0``, its uplink shaped by tc tbf), each running its own ``torchrun`` the way two real machines would:
``--rdzv-backend c10d`` with the endpoint on box 0, box 0 running two workers and box 1 one (an odd world of
3).  Nothing is shared but the emulated network: each box has its own ``--out``; worker 0 gathers the rank
records over the process group and only box 0's ``--out`` gets results.json.  Then ``mpiexec`` with a host
file (one box here: mpiexec reaches other boxes over ssh, which the emulation does not have), and the
agreement step: one worker whose options differ makes every worker fail with the same message.

The namespaces and every process are removed even when a check fails: :func:`supervise` kills and reaps
every launcher's process group before it returns, and the ``with`` block deletes the namespaces (which
also kills anything left in them); the test checks that none of its namespaces is left.
"""

import json
import os
import shutil
import sys

import pytest

from gcomp.train.links import parse_links
from gcomp.train.netns import EmulatedNetwork, can_emulate, list_namespaces
from gcomp.train.supervise import supervise

_OK, _REASON = can_emulate()
needs_emulation = pytest.mark.skipif(not _OK, reason=f"cannot emulate here: {_REASON}")

#: a small run: 1 epoch of a 32-wide MLP, one compressor, three architectures (world 3: groups 0,1 / 2)
_TRAIN = ["train", "--hidden", "32", "--epochs", "1", "--batch-size", "16", "--compressor", "topk:ratio=0.1",
          "--architecture", "centralized", "--architecture", "decentralized", "--architecture", "hybrid",
          "--groups", "0,1/2", "--link", "intra=100mbit", "--link", "inter=20mbit", "--timeout", "120", "--quiet"]
_TIMEOUT = 300


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _report(run):
    return "\n".join(f"--- launcher {i} (exit {code}) ---\n{out[-4000:]}"
                     for i, (code, out) in enumerate(zip(run.returncodes, run.outputs, strict=True)))


@pytest.mark.slow
@needs_emulation
def test_two_boxes_torchrun_c10d(tmp_path):
    prefix = f"gc2box{os.getpid() % 100000}"
    nprocs = [2, 1]  # box 0 runs workers 0 and 1, box 1 worker 2
    port = 29611
    with EmulatedNetwork(parse_links("100mbit", 2), prefix=prefix) as net:
        endpoint = f"{net.addresses[0]}:{port}"
        cmds, envs = [], []
        for box in range(2):
            out = tmp_path / f"box{box}"
            argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
                    str(nprocs[box]), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-boxes",
                    "--rdzv-conf", f"is_host={int(box == 0)}", "--local-addr", net.addresses[box],
                    "-m", "gcomp.cli", *_TRAIN, "--launched-by", "torchrun", "--out", str(out)]
            cmds.append(net.command(box, argv))
            envs.append(_clean_env(GLOO_SOCKET_IFNAME=net.ifname))
        run = supervise(cmds, envs, timeout=_TIMEOUT, fail_grace=20)
        tx = [net.counters(box)[0] for box in range(2)]
    assert not [ns for ns in list_namespaces() if ns.startswith(prefix)], "namespaces left behind"
    assert not run.timed_out and run.returncodes == [0, 0], _report(run)
    assert not (tmp_path / "box1" / "results.json").exists(), "box 1 wrote results.json: only worker 0 should"
    results = json.loads((tmp_path / "box0" / "results.json").read_text())
    header = results["header"]
    assert header["workers"] == 3 and header["launched_by"] == "torchrun" and len(header["hosts"]) == 3
    assert [r["architecture"] for r in results["runs"]] == ["centralized", "decentralized", "hybrid"]
    for r in results["runs"]:
        assert r["steps"] > 0 and len(r["epochs"]) == 1
        assert all(b > 0 for b in r["epochs"][-1]["bytes_sent_per_worker"]) and len(r["epochs"][-1]["bytes_sent_per_worker"]) == 3
        if r["architecture"] != "decentralized":  # gradients averaged: one model on every worker, on both boxes
            assert r["ranks_agree"], r["architecture"]
        else:
            assert len(r["final_accuracy_per_rank"]) == 3
    assert results["runs"][2]["groups"] == [[0, 1], [2]]
    # each box keeps its own workers' records: box 0 ranks 0 and 1, box 1 rank 2
    for box, ranks in ((0, [0, 1]), (1, [2])):
        for run_dir in sorted((tmp_path / f"box{box}" / "runs").iterdir()):
            assert sorted(p.name for p in run_dir.glob("rank*.json")) == [f"rank{r}.json" for r in ranks], run_dir
    # the workers talked over the emulated network: both boxes' eth0 carried the training traffic
    assert min(tx) > 100_000, tx


def _hostfile(tmp_path, slots):
    path = tmp_path / "hosts"
    path.write_text(f"localhost:{slots}\n")
    return str(path)


_MPI_TRAIN = ["-m", "mpi4py", "-m", "gcomp.cli", "train", "--launched-by", "mpiexec", "--backend", "mpi",
              "--hidden", "32", "--epochs", "1", "--batch-size", "16", "--timeout", "120", "--quiet"]


@pytest.mark.slow
def test_mpiexec_hostfile(tmp_path):
    pytest.importorskip("mpi4py")
    out = tmp_path / "out"
    argv = ["mpiexec", "-f", _hostfile(tmp_path, 3), "-n", "3", sys.executable, *_MPI_TRAIN,
            "--compressor", "topk:ratio=0.1", "--architecture", "centralized", "--architecture", "decentralized",
            "--out", str(out)]
    run = supervise([argv], [_clean_env()], timeout=_TIMEOUT)
    assert not run.timed_out and run.returncodes == [0], _report(run)
    results = json.loads((out / "results.json").read_text())
    assert results["header"]["workers"] == 3 and results["header"]["launched_by"] == "mpiexec"
    assert [r["architecture"] for r in results["runs"]] == ["centralized", "decentralized"]
    assert results["runs"][0]["ranks_agree"] and results["runs"][0]["steps"] > 0


@pytest.mark.slow
def test_differing_options_fail_every_worker(tmp_path):
    """Worker 2 got another --lr: every worker stops before training, with the same message naming it."""
    pytest.importorskip("mpi4py")
    if shutil.which("mpiexec") is None:
        pytest.fail("mpiexec not found (mpich from PyPI is a test dependency)")
    out = tmp_path / "out"
    common = [sys.executable, *_MPI_TRAIN, "--compressor", "none", "--out", str(out)]
    argv = ["mpiexec", "-n", "2", *common, "--lr", "0.05", ":", "-n", "1", *common, "--lr", "0.1"]
    run = supervise([argv], [_clean_env()], timeout=_TIMEOUT)
    assert run.returncodes == [2], _report(run)
    # every worker that printed before mpi4py's -m runner turned the exit status into MPI_Abort printed the same
    # message (Hydra may interleave their lines)
    messages = [chunk.split("\n")[0] for chunk in run.outputs[0].split("gcomp train: ")[1:]]
    assert messages and len(set(messages)) == 1, run.outputs[0]
    assert "found worker 2" in messages[0] and messages[0].endswith("differs from worker 0 in lr"), messages[0]
    assert not (out / "results.json").exists()
