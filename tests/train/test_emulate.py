"""Network emulation: namespaces + bridge + tbf-shaped uplinks (gcomp.train.netns), workers run on it
(gcomp.train.supervise.run_emulated) and ``gcomp emulate`` (gcomp.train.emulate, which re-exports both).

Everything that builds namespaces is skipped, with the reason, only where
``can_emulate()`` says no (not root, no iproute2, no namespace support).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from gcomp.train import emulate, netns, supervise
from gcomp.train.emulate import EmulatedNetwork, can_emulate, cleanup_stale, parse_tc_rate, run_emulated, tbf_params
from gcomp.train.links import parse_links

_OK, _REASON = can_emulate()
needs_emulation = pytest.mark.skipif(not _OK, reason=f"cannot emulate here: {_REASON}")


def _ours(stem):
    return [ns for ns in emulate.list_namespaces() if ns.startswith(stem + "-")]


# Every worker listens on its address, connects to every other worker, and accepts one connection from each.
_MESH = textwrap.dedent("""
    import os, socket, time
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    addrs = os.environ["ADDRS"].split(",")
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addrs[rank], 7000)); srv.listen(world); srv.settimeout(10)
    for peer, addr in enumerate(addrs):
        if peer == rank:
            continue
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((addr, 7000), timeout=2).sendall(bytes([rank])); break
            except OSError:
                if time.monotonic() > deadline: raise
                time.sleep(0.02)
    seen = sorted(srv.accept()[0].recv(1)[0] for _ in range(world - 1))
    assert seen == [p for p in range(world) if p != rank], seen
    print("mesh ok", rank, os.environ["MASTER_ADDR"], os.environ["GLOO_SOCKET_IFNAME"])
""")


@needs_emulation
@pytest.mark.parametrize("workers", [2, 4])
def test_reachability_and_cleanup(workers):
    links = parse_links("100mbit", workers)
    with EmulatedNetwork(links) as net:
        assert net.ifname == "eth0" and net.addresses == [f"10.77.0.{i + 1}" for i in range(workers)]
        assert set(net.namespaces) | {net.hub} <= set(emulate.list_namespaces())
        for i in range(workers):
            assert net.command(i, ["true"]) == ["ip", "netns", "exec", net.namespaces[i], "true"]
            env = net.env(i, 1234)
            assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == (str(i), str(workers), "0")
            assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["GLOO_SOCKET_IFNAME"]) == ("10.77.0.1", "1234", "eth0")
            assert env["PATH"] == os.environ["PATH"]
        procs = [subprocess.Popen(net.command(i, [sys.executable, "-c", _MESH]), env={**net.env(i), "ADDRS": ",".join(net.addresses)},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(workers)]
        for p in procs:
            out, _ = p.communicate(timeout=30)
            assert p.returncode == 0, out
            assert "mesh ok" in out
        stem = net.name
    assert _ours(stem) == []
    net.close()  # idempotent

    with pytest.raises(ZeroDivisionError):
        with EmulatedNetwork(links) as net:
            stem = net.name
            assert len(_ours(stem)) == workers + 1
            raise ZeroDivisionError("body failed")
    assert _ours(stem) == []


@needs_emulation
def test_run_emulated_mesh_and_counters():
    links = parse_links("50mbit", 3)
    result = run_emulated(links, [sys.executable, "-c", _MESH], env={"ADDRS": "10.77.0.1,10.77.0.2,10.77.0.3"}, timeout=30)
    assert result.ok, result.outputs
    assert [o.split()[:2] for o in result.outputs] == [["mesh", "ok"]] * 3
    for w in result.workers:
        assert w.tx_bytes > 0 and w.rx_bytes > 0  # TCP handshakes went through eth0
    assert not any(ns.startswith(f"gcomp-{os.getpid()}-") for ns in emulate.list_namespaces())


def _env_probe(tag):
    return {"tag": tag, "rank": int(os.environ["RANK"]), "master": os.environ["MASTER_ADDR"]}


@needs_emulation
def test_run_emulated_function():
    result = run_emulated(parse_links("10mbit", 2), _env_probe, args=("x",), timeout=60)
    assert result.ok, result.outputs
    assert result.values == [{"tag": "x", "rank": r, "master": "10.77.0.1"} for r in range(2)]


# Dense gloo all_reduce of 2.5 MB float32 across the emulated workers; rank r prints its seconds as JSON.
_ALLREDUCE = textwrap.dedent("""
    import json, os, time, datetime
    import torch, torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(seconds=60))
    x = torch.ones(int(os.environ["NUMEL"]), dtype=torch.float32)
    dist.barrier()
    t0 = time.perf_counter()
    dist.all_reduce(x)
    seconds = time.perf_counter() - t0
    assert float(x[0]) == dist.get_world_size() and float(x[-1]) == dist.get_world_size()
    dist.barrier()
    print(json.dumps({"rank": dist.get_rank(), "seconds": seconds}), flush=True)
    os._exit(0)
""")


@needs_emulation
@pytest.mark.slow
def test_allreduce_time_matches_rate_model():
    workers, rate = 4, "20mbit"
    numel = 625_000  # 2.5 MB of float32
    nbytes = numel * 4
    links = parse_links(rate, workers)
    per_uplink = 2 * (workers - 1) / workers * nbytes  # ring all-reduce: reduce-scatter + all-gather
    model_s = per_uplink * 8 / links[0].rate_bps  # 1.5 s
    result = run_emulated(links, [sys.executable, "-c", _ALLREDUCE], env={"NUMEL": numel}, timeout=120)
    assert result.ok, "\n".join(result.outputs)
    seconds = max(json.loads(o.strip().splitlines()[-1])["seconds"] for o in result.outputs)
    print(f"all_reduce {nbytes / 1e6:.1f} MB x {workers} @ {rate}: measured {seconds:.2f} s, model {model_s:.2f} s, "
          f"tx {[w.tx_bytes for w in result.workers]}, model {per_uplink:.0f} B per uplink")
    assert 0.7 * model_s <= seconds <= 3 * model_s, (seconds, model_s)
    for w in result.workers:
        assert w.tx_bytes >= per_uplink, (w.rank, w.tx_bytes, per_uplink)


_HOLD = textwrap.dedent("""
    import sys, time
    from gcomp.train.emulate import EmulatedNetwork
    from gcomp.train.links import parse_links
    net = EmulatedNetwork(parse_links("10mbit", 2))
    print(net.name, flush=True)
    sys.stdin.readline()  # the test has looked at the namespaces
    if sys.argv[1] == "raise":
        raise RuntimeError("boom")
    time.sleep(60)
""")


@needs_emulation
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "raise", "SIGKILL"])
def test_signals_and_errors_clean_up(how):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, how], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stem = proc.stdout.readline().strip()
    assert stem.startswith(f"gcomp-{proc.pid}-"), proc.stderr.read()
    assert len(_ours(stem)) == 3
    if how == "raise":
        proc.stdin.write("go\n")
        proc.stdin.flush()
    else:
        proc.send_signal(getattr(signal, how))
    proc.wait(timeout=20)
    err = proc.stderr.read()
    if how == "SIGKILL":  # nothing can run on SIGKILL: the namespaces stay until cleanup_stale removes them
        assert len(_ours(stem)) == 3
        removed = cleanup_stale()
        assert {f"{stem}-hub", f"{stem}-w0", f"{stem}-w1"} <= set(removed), removed
        assert _ours(stem) == []
        return
    assert proc.returncode != 0
    assert {"SIGINT": "KeyboardInterrupt", "raise": "boom"}.get(how, "") in err
    if how == "SIGTERM":
        assert proc.returncode == -signal.SIGTERM
    assert _ours(stem) == []


@needs_emulation
def test_failure_during_setup_cleans_up(monkeypatch):
    real = netns._run
    calls = {"tc": 0}

    def flaky(argv, check=True, timeout=30):
        if argv[0] == "tc" and "tbf" in argv:
            calls["tc"] += 1
            if calls["tc"] == 3:
                raise emulate.EmulationError("injected failure")
        return real(argv, check, timeout)

    monkeypatch.setattr(netns, "_run", flaky)
    mine = f"gcomp-{os.getpid()}-"
    before = {ns for ns in emulate.list_namespaces() if ns.startswith(mine)}
    with pytest.raises(emulate.EmulationError, match="injected"):
        EmulatedNetwork(parse_links("10mbit", 4))
    assert calls["tc"] == 3
    assert {ns for ns in emulate.list_namespaces() if ns.startswith(mine)} == before


@needs_emulation
def test_timeout_and_failure_kill_all():
    links = parse_links("10mbit", 3)
    t0 = time.monotonic()
    result = run_emulated(links, ["sleep", "30"], timeout=1)
    assert time.monotonic() - t0 < 10
    assert result.timed_out and not result.ok
    assert all(w.killed and w.returncode == -signal.SIGKILL for w in result.workers)

    script = 'import os, time\nif os.environ["RANK"] == "1": raise SystemExit(3)\ntime.sleep(30)'
    t0 = time.monotonic()
    result = run_emulated(links, [sys.executable, "-c", script], timeout=60, fail_grace=0.5)
    assert time.monotonic() - t0 < 10
    assert not result.timed_out and result.returncodes[1] == 3
    assert result.workers[0].killed and result.workers[2].killed
    assert not any(ns.startswith(f"gcomp-{os.getpid()}-") for ns in emulate.list_namespaces())


@needs_emulation
def test_heterogeneous_rates():
    links = parse_links("20mbit,20mbit,50mbit,5mbit", 4)
    with EmulatedNetwork(links) as net:
        for i, link in enumerate(links):
            out = subprocess.run(net.command(i, ["tc", "qdisc", "show", "dev", "eth0"]), capture_output=True, text=True,
                                 check=True).stdout
            assert "tbf" in out, out
            assert parse_tc_rate(out) == link.rate_bps, (i, out)
            assert net.qdisc_show(i) == out


@needs_emulation
def test_latency_warns_once(monkeypatch):
    monkeypatch.setattr(netns, "_LATENCY_WARNED", False)
    with pytest.warns(RuntimeWarning, match="latency"):
        EmulatedNetwork(parse_links("10mbit/20ms", 2)).close()
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        EmulatedNetwork(parse_links("10mbit/20ms", 2)).close()


@needs_emulation
def test_cli(capsys):
    code = emulate.main_emulate(["--workers", "2", "--link", "50mbit", "-q", "--", sys.executable, "-c",
                                 "import os; print(os.environ['RANK'])"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "worker 0" in out and "worker 1" in out and "exit 0" in out and "sent" in out
    code = emulate.main_emulate(["--workers", "2", "-q", "--", sys.executable, "-c",
                                 "import os; raise SystemExit(int(os.environ['RANK']) * 5)"])
    out = capsys.readouterr().out
    assert code == 1 and "exit 5" in out


def test_cli_without_emulation(monkeypatch, capsys):
    monkeypatch.setattr(emulate, "can_emulate", lambda: (False, "network emulation needs root"))
    assert emulate.main_emulate(["--", "true"]) == 2
    assert "needs root" in capsys.readouterr().err


def test_tbf_params_and_rate_parsing():
    p = tbf_params(20e6)
    assert p == {"rate_bps": 20_000_000, "burst_bytes": 12_500, "limit_bytes": 12_500 + 1_000_000}
    low = tbf_params(parse_links("100kbit", 1)[0])
    assert low["burst_bytes"] >= 4096 and low["limit_bytes"] >= low["burst_bytes"] + 64 * 1024
    assert parse_tc_rate("qdisc tbf 8001: root refcnt 2 rate 20Mbit burst 12500b lat 400ms") == 20e6
    assert parse_tc_rate("rate 500Kbit burst") == 500e3 and parse_tc_rate("noqueue") is None


def test_emulate_reexports_the_split_modules():
    for name in emulate.__all__:
        assert hasattr(emulate, name), name
    for module in (netns, supervise):
        for name in module.__all__:
            if hasattr(emulate, name):
                assert getattr(emulate, name) is getattr(module, name), name
    assert set(netns.__all__) <= set(emulate.__all__)
    assert {"WorkerResult", "EmulationResult", "run_emulated"} <= set(emulate.__all__)
