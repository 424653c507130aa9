"""Flower's deployment engine on localhost: a SuperLink and two SuperNodes as real processes (insecure HTTP), the
gcomp mod in the ClientApp, a run submitted with ``flwr run``; every process is stopped, also when the run fails."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

BIN = os.path.dirname(sys.executable)


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port, proc, deadline):
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the SuperLink exited with code {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the SuperLink did not listen on port {port} in time")


class Federation:
    """Start processes in their own sessions; :meth:`close` ends every group (SIGTERM, then SIGKILL)."""

    def __init__(self, workdir, env):
        self.workdir, self.env, self.procs = workdir, env, []

    def start(self, name, argv):
        log = open(self.workdir / f"{name}.log", "w")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
                                start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def close(self, grace=20.0):
        for _, proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.time() + grace
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for _, proc in self.procs:  # the groups too: the SuperNodes' SuperExec and ClientApp children
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)

    def logs(self):
        return "\n".join(f"--- {name} ---\n" + (self.workdir / f"{name}.log").read_text()[-3000:]
                         for name, _ in self.procs)


def _signal_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid):
    """Whether a process of group ``pgid`` still runs (zombies, dead but not yet reaped by init, do not count)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _write_app(app_dir, cfg):
    app_dir.mkdir()
    (app_dir / "gcomp_fl_app.py").write_text(
        '"""gcomp\'s federated run as a Flower App (deployment engine test)."""\n'
        "from gcomp.train.federated import client_app, server_app\n\n"
        f"CFG = {cfg!r}\n"
        "clientapp = client_app(CFG)\n"
        "serverapp = server_app(CFG, {})\n")
    (app_dir / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "gcomp-fl-test"\nversion = "1.0.0"\ndescription = "gcomp deployment test"\n'
        'license = "Apache-2.0"\ndependencies = []\n\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["."]\n\n'
        '[tool.flwr.app]\npublisher = "gcomp"\n\n'
        '[tool.flwr.app.components]\nserverapp = "gcomp_fl_app:serverapp"\nclientapp = "gcomp_fl_app:clientapp"\n\n'
        "[tool.flwr.app.config]\n")


def test_superlink_and_two_supernodes_run_gcomp_compressed_fedavg(tmp_path):
    port = _port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "gcomp"\n\n[superlink.gcomp]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    results = tmp_path / "results.json"
    cfg = dict(seed=0, clients=2, non_iid=None, model="mlp", hidden=64, lr=0.05, momentum=0.9, batch_size=32,
               local_epochs=1, fraction=1.0, rounds=2, timeout=240, compressor="topk:ratio=0.01",
               results_path=str(results))
    _write_app(tmp_path / "app", cfg)
    env = dict(os.environ, FLWR_HOME=str(home), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    fed = Federation(tmp_path, env)
    try:
        link = fed.start("superlink", [os.path.join(BIN, "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                       "--port", str(port), "--database", str(tmp_path / "state.db")])
        _wait_port(port, link, time.time() + 60)
        for i in range(2):
            fed.start(f"supernode{i}", [os.path.join(BIN, "flower-supernode"), "--insecure", "--superlink",
                                        f"127.0.0.1:{port}", "--port", str(_port()),
                                        "--node-config", f"partition-id={i} num-partitions=2"])
        run = subprocess.run([os.path.join(BIN, "flwr"), "run", str(tmp_path / "app"), "gcomp", "--stream"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
        assert results.exists(), f"no results; flwr run said:\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}\n{fed.logs()}"
        out = json.loads(results.read_text())
    finally:
        fed.close()
    groups = [proc.pid for _, proc in fed.procs]
    assert all(proc.returncode is not None for _, proc in fed.procs)
    assert not any(_group_alive(g) for g in groups), "a process of the federation outlived the test"
    assert [r["round"] for r in out["records"]] == [0, 1, 2]
    assert sorted(out["partitions"].values()) == [0, 1]
    assert out["records"][2]["accuracy"] > out["records"][0]["accuracy"]
    for h in out["history"]:
        assert not h["dropped"] and len(h["uplink_bytes"]) == 2
        assert all(b < h["dense_model_bytes"] / 30 for b in h["uplink_bytes"].values())
    # each SuperNode kept its client's error-feedback memory between rounds (in its context state): its packet of
    # round 2 is the memory's second
    assert sorted(out["history"][0]["uplink_steps"].values()) == [0, 0]
    assert sorted(out["history"][1]["uplink_steps"].values()) == [1, 1]


def test_every_process_is_stopped_when_the_run_fails(tmp_path):
    """A run that cannot start (its app does not exist): the federation is still shut down."""
    port = _port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "gcomp"\n\n[superlink.gcomp]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = dict(os.environ, FLWR_HOME=str(home))
    fed = Federation(tmp_path, env)
    with pytest.raises(subprocess.CalledProcessError):
        try:
            link = fed.start("superlink", [os.path.join(BIN, "flower-superlink"), "--insecure", "--host",
                                           "127.0.0.1", "--port", str(port), "--database", str(tmp_path / "s.db")])
            _wait_port(port, link, time.time() + 60)
            fed.start("supernode0", [os.path.join(BIN, "flower-supernode"), "--insecure", "--superlink",
                                     f"127.0.0.1:{port}", "--port", str(_port())])
            subprocess.run([os.path.join(BIN, "flwr"), "run", str(tmp_path / "no-such-app"), "gcomp"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
        finally:
            fed.close()
    assert not any(_group_alive(proc.pid) for _, proc in fed.procs)
