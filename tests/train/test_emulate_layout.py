"""Heterogeneous and two-level emulated networks (issue 13): the shapers do what the link specs say.

Rates are measured, not assumed: a small TCP receiver inside a namespace
samples its own ``eth0`` receive counter (link-layer bytes, the unit tbf
shapes: Ethernet, IP and TCP headers included) every few milliseconds while
one or more senders in other namespaces push a few hundred kB to a few MB.

What the assertions can and cannot rely on, on a loaded 2-core box:

* **Upper bound (always holds).**  Whatever the load, the bytes that pass a
  token bucket in a window of ``dt`` seconds are at most ``rate * dt + burst``;
  our windows are at least ``_WINDOW_S`` long and the bursts 5 ms of the rate
  (at least 4 KiB), so no window can show more than about 1.02 x the rate.
  A rate above 1.25 x the configured one means the shaper is not in the path.
* **Lower bound (holds where the box can sustain the rate).**  A shaped flow
  is slower than the rate only if the sender or receiver cannot keep up --
  e.g. a process descheduled by other tests for a while.  The rates here are
  at most 100 Mbit/s (12.5 MB/s of Python ``sendall``/``recv_into``, a few
  percent of one core), and the estimate is the *best* window of at least
  ``_WINDOW_S`` seconds within a flow lasting about twice that: a stall of
  the receiver does not lose bytes (the kernel keeps receiving into the
  socket buffer and the counter keeps counting), and a stall of the sender
  still leaves a full window before or after it in most cases.  So the
  estimate falls below 0.75 x the rate only if the flow was starved for most
  of its life, or the shaper is set too low -- which is what the test is for.

Every test removes its namespaces, also on failure (``EmulatedNetwork`` is a
context manager), and checks that none of its namespaces is left behind.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from gcomp.train import emulate, links, netns
from gcomp.train.emulate import EmulatedNetwork, can_emulate, parse_tc_rate

_OK, _REASON = can_emulate()
needs_emulation = pytest.mark.skipif(not _OK, reason=f"cannot emulate here: {_REASON}")

#: shortest window a rate is measured over (seconds); flows last about 2 x this at their configured rate
_WINDOW_S = 0.3
#: sampling period of the receiver's counter (seconds)
_SAMPLE_S = 0.004
_PORT = 7100

# Accept CONNS connections on ADDR:PORT and drain them; meanwhile sample eth0's rx_bytes as [t, bytes] (a sample
# whose counter read took over 2 ms is dropped: its time would be uncertain).  Prints {"samples", "received"}.
_RECEIVER = textwrap.dedent("""
    import json, socket, sys, threading, time
    addr, port, conns, period = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port)); srv.listen(conns); srv.settimeout(30)
    counter = open("/sys/class/net/eth0/statistics/rx_bytes")
    def read():
        counter.seek(0); return int(counter.read())
    samples, received, done = [], [0] * conns, threading.Event()
    def sampler():
        while not done.is_set():
            t0 = time.monotonic(); value = read(); t1 = time.monotonic()
            if t1 - t0 < 0.002:
                samples.append([(t0 + t1) / 2, value])
            time.sleep(period)
    def drain(i, conn):
        buf = bytearray(1 << 20)
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            received[i] += n
        conn.close()
    print("READY", flush=True)
    threading.Thread(target=sampler, daemon=True).start()
    threads = []
    for i in range(conns):
        conn, _ = srv.accept()
        conn.settimeout(60)
        threads.append(threading.Thread(target=drain, args=(i, conn)))
        threads[-1].start()
    for t in threads:
        t.join()
    done.set()
    t0 = time.monotonic(); samples.append([t0, read()])
    print(json.dumps({"samples": samples, "received": received}), flush=True)
""")

# Connect to ADDR:PORT (retrying while the receiver starts), send NBYTES, wait until the receiver has closed.
_SENDER = textwrap.dedent("""
    import socket, sys, time
    addr, port, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    deadline = time.monotonic() + 20
    while True:
        try:
            sock = socket.create_connection((addr, port), timeout=2); break
        except OSError:
            if time.monotonic() > deadline: raise
            time.sleep(0.01)
    sock.settimeout(60)
    chunk = memoryview(bytes(1 << 20))
    left = nbytes
    while left:
        left -= sock.send(chunk[:min(left, len(chunk))])
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # EOF once the receiver has read everything and closed
""")


def best_rate(samples, window=_WINDOW_S):
    """Highest link-layer rate (bit/s) over any window of at least ``window`` seconds between two samples."""
    best = 0.0
    j = 0
    for i, (t_i, b_i) in enumerate(samples):
        j = max(j, i + 1)
        while j < len(samples) and samples[j][0] - t_i < window:
            j += 1
        if j == len(samples):
            break
        # the shortest window from i that is long enough has the least dilution by a stall at the end
        t_j, b_j = samples[j]
        best = max(best, (b_j - b_i) * 8.0 / (t_j - t_i))
    if best == 0.0:
        raise AssertionError(f"flow too short for a {window} s window: {samples[-1][0] - samples[0][0]:.3f} s sampled")
    return best


def measure(net, flows):
    """Run ``flows`` = {dst: [(src, nbytes), ...]} at once; return {dst: (best link-layer bit/s, bytes received)}.

    Each destination runs one receiver that accepts all its flows, so its
    counter sums them.  Every process is waited for or killed here.
    """
    procs = []
    try:
        receivers = {}
        for dst, senders in flows.items():
            p = subprocess.Popen(net.command(dst, [sys.executable, "-c", _RECEIVER, net.addresses[dst], str(_PORT),
                                                   str(len(senders)), str(_SAMPLE_S)]),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout.readline().strip() == "READY", p.stderr.read()
            receivers[dst] = p
        senders = []
        for dst, pairs in flows.items():
            for src, nbytes in pairs:
                p = subprocess.Popen(net.command(src, [sys.executable, "-c", _SENDER, net.addresses[dst], str(_PORT),
                                                       str(nbytes)]),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                procs.append(p)
                senders.append(p)
        results = {}
        for dst, p in receivers.items():
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            data = json.loads(out.strip().splitlines()[-1])
            expected = sorted(n for _, n in flows[dst])
            assert sorted(data["received"]) == expected, (data["received"], expected)
            results[dst] = (best_rate(data["samples"]), sum(data["received"]))
        for p in senders:
            _, err = p.communicate(timeout=30)
            assert p.returncode == 0, err
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _nbytes(rate_bps, seconds=2 * _WINDOW_S):
    """Bytes that take ``seconds`` at ``rate_bps``."""
    return int(rate_bps / 8 * seconds)


def _within(measured, rate, label):
    ratio = measured / rate
    print(f"{label}: measured {measured / 1e6:.2f} Mbit/s, configured {rate / 1e6:g} Mbit/s, ratio {ratio:.3f}")
    assert 0.75 <= ratio <= 1.25, f"{label}: expected {rate / 1e6:g} Mbit/s within 25 %, measured {measured / 1e6:.2f}"


def _mine():
    return [ns for ns in emulate.list_namespaces() if ns.startswith(f"gcomp-{os.getpid()}-")]


# -- parsing and the link model (no root needed) ---------------------------------------------------------------


def test_parse_groups():
    assert links.parse_groups("2x2") == [[0, 1], [2, 3]]
    assert links.parse_groups("3X1", 3) == [[0], [1], [2]]
    assert links.parse_groups("1,3/0,2", 4) == [[0, 2], [1, 3]]
    assert links.parse_groups([[2], [0, 1]]) == [[0, 1], [2]]
    assert links.format_groups(links.parse_groups("0,2/1,3")) == "0,2/1,3"
    for bad, workers, match in [("2x2", 3, "exactly once"), ("0,1/1,2", 3, "repeated"), ("0,1/3", 3, "missing"),
                                ("0x2", None, "G >= 1"), ("a/b", None, "GxS"), ("0,1//2", None, "non-empty")]:
        with pytest.raises(ValueError, match=match):
            links.parse_groups(bad, workers)


def test_parse_two_level_links():
    ls = links.parse_links("intra=1gbit inter=20mbit/30ms", 4, groups="2x2")
    assert [(x.rate_bps, x.group) for x in ls] == [(1e9, 0), (1e9, 0), (1e9, 1), (1e9, 1)]
    assert {x.group_link for x in ls} == {links.Link(20e6, 0.03, "wifi")}
    assert links.groups_of(ls) == [[0, 1], [2, 3]]
    assert links.describe_layout(ls) == {"groups": [[0, 1], [2, 3]], "groups_spec": "0,1/2,3",
                                         "intra": ["1gbit"] * 4, "inter": ["20mbit/30ms"] * 2}
    # per-worker intra and per-group inter lists; a plain spec is the default for a missing key
    ls = links.parse_links("intra=5mbit,50mbit,50mbit inter = 10mbit,20mbit", 3, groups="0/1,2")
    assert [x.rate_bps for x in ls] == [5e6, 50e6, 50e6]
    assert [x.group_link.rate_bps for x in ls] == [10e6, 20e6, 20e6]
    ls = links.parse_links("100mbit inter=10mbit", 4, groups="2x2")
    assert [x.rate_bps for x in ls] == [100e6] * 4 and ls[0].group_link.rate_bps == 10e6
    # flat lists are unchanged, spaces after commas included
    flat = links.parse_links("20mbit, 5mbit", 2)
    assert [x.rate_bps for x in flat] == [20e6, 5e6] and links.groups_of(flat) is None
    assert links.describe_layout(flat) is None
    for text, groups, match in [("intra=1gbit inter=20mbit", None, "expected groups"),
                                ("intra=1gbit", "2x2", "no inter="),
                                ("intra=1gbit inter=1mbit,2mbit,3mbit", "2x2", "one per group"),
                                ("intra=1gbit intra=2gbit inter=1mbit", "2x2", "twice"),
                                ("wan=1gbit", "2x2", "intra= or inter="),
                                ("20mbit 30mbit", None, "one link spec")]:
        with pytest.raises(ValueError, match=match):
            links.parse_links(text, 4, groups=groups)


def test_groups_of_refuses_inconsistent_links():
    up = links.Link(10e6)
    with pytest.raises(ValueError, match="group or none"):
        links.groups_of([links.Link(1e9, group=0, group_link=up), links.Link(1e9)])
    with pytest.raises(ValueError, match="share one group uplink"):
        links.groups_of([links.Link(1e9, group=0, group_link=up), links.Link(1e9, group=0, group_link=links.Link(2e6))])
    with pytest.raises(ValueError, match="each with a worker"):
        links.groups_of([links.Link(1e9, group=0, group_link=up), links.Link(1e9, group=2, group_link=up)])


def test_two_level_model():
    ls = links.parse_links("intra=80mbit inter=8mbit", 4, groups="2x2")
    # ring 0->1->2->3->0: edges 1->2 and 3->0 leave their group, one per group: 1 MB at 8 Mbit/s decides
    assert links.modelled_comm_seconds([1e6] * 4, ls) == pytest.approx(1.0)
    # interleaved groups: every ring edge leaves its group, two per group share its 8 Mbit/s uplink
    inter = links.parse_links("intra=80mbit inter=8mbit", 4, groups="0,2/1,3")
    assert links.modelled_comm_seconds([1e6] * 4, inter) == pytest.approx(2.0)
    # a flat list of the same rates: the slowest uplink alone
    assert links.modelled_comm_seconds([1e6] * 4, links.parse_links("80mbit", 4)) == pytest.approx(0.1)
    # hierarchical: 1 MB inside each group at 80 Mbit/s, then the leaders' 0.5 MB over their group's 8 Mbit/s
    assert links.hierarchical_comm_seconds([1e6] * 4, [0.5e6, 0, 0.5e6, 0], ls) == pytest.approx(0.1 + 0.5)
    # both members sending between groups share the uplink
    assert links.hierarchical_comm_seconds([0] * 4, [0.5e6] * 4, ls) == pytest.approx(1.0)
    lat = links.parse_links("intra=80mbit/1ms inter=8mbit/20ms", 4, groups="2x2")
    assert links.hierarchical_comm_seconds([0] * 4, [0.5e6, 0, 0, 0], lat, intra_rounds=2, inter_rounds=1) == \
        pytest.approx(0.002 + 0.5 + 0.021)
    with pytest.raises(ValueError, match="two-level"):
        links.hierarchical_comm_seconds([0] * 2, [0] * 2, links.parse_links("8mbit", 2))


# -- emulated: the shapers measured ----------------------------------------------------------------------------


@needs_emulation
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_heterogeneous_uplinks_shape_each_link():
    """One worker at 5 Mbit/s, three at 50: each uplink carries its own rate (within 25 %).

    Two rounds of two disjoint flows (0->1 with 2->3, then 1->2 with 3->0):
    no worker sends and receives at once, so a receiver's counter holds one
    flow's data and the ACKs go through uplinks that are not measured.
    """
    ls = links.parse_links("5mbit,50mbit,50mbit,50mbit", 4)
    with EmulatedNetwork(ls) as net:
        stem = net.name
        measured = {}
        for pairs in ([(0, 1), (2, 3)], [(1, 2), (3, 0)]):
            got = measure(net, {dst: [(src, _nbytes(ls[src].rate_bps))] for src, dst in pairs})
            for src, dst in pairs:
                measured[src] = got[dst][0]
        for w, link in enumerate(ls):
            _within(measured[w], link.rate_bps, f"uplink of worker {w} ({link.spec})")
    assert [ns for ns in emulate.list_namespaces() if ns.startswith(stem + "-")] == []


@needs_emulation
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_level_layout_shapes_intra_and_inter_traffic():
    """2x2 groups, 100 Mbit/s inside a group, 10 Mbit/s between groups (a group's uplink shared by its members).

    * inside: 0->1 and 2->3 at once run at the intra rate and never touch a group uplink;
    * between: 0->2 and 3->1 at once (each group's uplink carries one flow) run at the inter rate;
    * shared: 0->3 and 1->3 at once both leave group 0: together they get the inter rate, not twice it.
    """
    intra, inter = 100e6, 10e6
    ls = links.parse_links("intra=100mbit inter=10mbit", 4, groups="2x2")
    root_links = _root_links()
    with EmulatedNetwork(ls) as net:
        stem = net.name
        assert net.groups == [[0, 1], [2, 3]]
        for g in range(2):
            assert parse_tc_rate(net.group_qdisc_show(g)) == inter
        before = [net.group_counters(g) for g in range(2)]
        got = measure(net, {1: [(0, _nbytes(intra))], 3: [(2, _nbytes(intra))]})
        after = [net.group_counters(g) for g in range(2)]
        for dst in (1, 3):
            _within(got[dst][0], intra, f"inside group {ls[dst].group} to worker {dst}")
        for g in range(2):  # at most ARP broadcasts flooded over the group uplink, nothing of the flows
            assert after[g][0] - before[g][0] < 0.01 * _nbytes(intra), (g, before[g], after[g])

        before = after
        got = measure(net, {2: [(0, _nbytes(inter))], 1: [(3, _nbytes(inter))]})
        after = [net.group_counters(g) for g in range(2)]
        _within(got[2][0], inter, "group 0 -> group 1")
        _within(got[1][0], inter, "group 1 -> group 0")
        for g in range(2):  # each flow's payload crossed its group's uplink
            assert after[g][0] - before[g][0] >= _nbytes(inter), (g, before[g], after[g])

        got = measure(net, {3: [(0, _nbytes(inter, _WINDOW_S)), (1, _nbytes(inter, _WINDOW_S))]})
        _within(got[3][0], inter, "two flows sharing group 0's uplink")
    assert [ns for ns in emulate.list_namespaces() if ns.startswith(stem + "-")] == []
    assert _root_links() == root_links  # bridges and veths lived in the namespaces and went with them


def _root_links():
    return sorted(line.split(":")[1].strip() for line in subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout.splitlines())


@needs_emulation
def test_two_level_setup_failure_cleans_up(monkeypatch):
    real = netns._run
    seen = []

    def flaky(argv, check=True, timeout=30):
        if argv[0] == "tc" and "u1" in argv:  # the second group's uplink shaper
            seen.append(argv)
            raise emulate.EmulationError("injected failure")
        return real(argv, check, timeout)

    monkeypatch.setattr(netns, "_run", flaky)
    before = _mine()
    with pytest.raises(emulate.EmulationError, match="injected"):
        EmulatedNetwork(links.parse_links("intra=100mbit inter=10mbit", 4, groups="2x2"))
    assert len(seen) == 1 and _mine() == before
    # inconsistent links are refused before anything is created
    bad = [links.Link(1e6, group=0, group_link=links.Link(1e6)), links.Link(1e6)]
    with pytest.raises(ValueError, match="group or none"):
        EmulatedNetwork(bad)
    assert _mine() == before


# -- the command lines -----------------------------------------------------------------------------------------

# Each worker prints its rank, its group variables and the tbf rate on its eth0.
_SHOW = textwrap.dedent("""
    import os, subprocess
    qdisc = subprocess.run(["tc", "qdisc", "show", "dev", "eth0"], capture_output=True, text=True).stdout
    print("SHOW", os.environ["RANK"], os.environ.get("GCOMP_EMULATED_GROUP"), os.environ.get("GCOMP_EMULATED_GROUPS"),
          os.environ.get("GCOMP_EMULATED_GROUP_LINK"), os.environ["GCOMP_EMULATED_LINK"], qdisc.split("rate")[1].split()[0])
""")


@needs_emulation
def test_cli_groups_and_per_worker_links(capsys):
    code = emulate.main_emulate(["--groups", "0,2/1,3", "--link", "intra=20mbit,40mbit,60mbit,80mbit", "--link",
                                 "inter=5mbit,10mbit", "--", sys.executable, "-c", _SHOW])
    out = capsys.readouterr().out
    assert code == 0, out
    shown = sorted(line.split()[2:] for line in out.splitlines() if line.startswith("[") and " SHOW " in line)
    assert shown == [["0", "0", "0,2/1,3", "5mbit", "20mbit", "20Mbit"], ["1", "1", "0,2/1,3", "10mbit", "40mbit", "40Mbit"],
                     ["2", "0", "0,2/1,3", "5mbit", "60mbit", "60Mbit"], ["3", "1", "0,2/1,3", "10mbit", "80mbit", "80Mbit"]]
    assert "4 workers" in out and "groups 0,2/1,3, inter-group uplinks 5mbit,10mbit" in out
    assert "worker 2 10.77.0.3    group 0 60mbit" in out
    # a flat per-worker list: no group variables
    code = emulate.main_emulate(["--workers", "2", "--link", "5mbit,50mbit", "-q", "--", sys.executable, "-c",
                                 _SHOW.replace('print("SHOW"', 'assert "GCOMP_EMULATED_GROUP" not in os.environ\nprint("SHOW"')])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "worker 0 10.77.0.1    5mbit" in out and "worker 1 10.77.0.2    50mbit" in out
    assert not any(ns.startswith(f"gcomp-{os.getpid()}-") for ns in emulate.list_namespaces())


def test_cli_layout_errors(capsys):
    cases = [
        (["--workers", "3", "--groups", "2x2", "--link", "intra=1gbit", "--link", "inter=1mbit"], "match the 4 workers"),
        (["--link", "intra=1gbit", "--link", "inter=1mbit"], "expected groups"),
        (["--groups", "2x2", "--link", "intra=1gbit"], "no inter="),
        (["--groups", "0,1/1", "--link", "1mbit"], "exactly once"),
        (["--groups", "2x2", "--link", "intra=1gbit", "--link", "inter=100gbit"], "tc tbf can shape"),
    ]
    for argv, match in cases:
        assert emulate.main_emulate([*argv, "--", "true"]) == 2, argv
        assert match in capsys.readouterr().err, argv


@needs_emulation
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_emulated_records_the_layout(tmp_path):
    """``gcomp train --emulate --groups`` with per-worker intra links: results.json and the workers' config record it."""
    from gcomp.cli import main

    out = tmp_path / "out"
    code = main(["train", "--workers", "2", "--groups", "2x1", "--link", "intra=50mbit,100mbit", "--link", "inter=20mbit",
                 "--emulate", "--epochs", "1", "--hidden", "16", "--quiet", "--out", str(out), "--target-accuracy", "0.1",
                 "--compressor", "none"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    header = results["header"]
    assert header["emulated"] is True and header["links"] == ["50mbit", "100mbit"]
    assert header["layout"] == {"groups": [[0], [1]], "groups_spec": "0/1", "intra": ["50mbit", "100mbit"],
                                "inter": ["20mbit", "20mbit"]}
    assert header["options"]["groups"] == "2x1" and header["options"]["link"] == "intra=50mbit,100mbit inter=20mbit"
    config = json.loads(next((out / "runs").glob("00-*/config.json")).read_text())
    assert config["groups"] == [[0], [1]]
    run = results["runs"][0]
    sent = run["epochs"][-1]["bytes_sent_per_worker"]
    assert run["ranks_agree"] and all(b > 0 for b in sent)
    # one worker per group: everything a worker sent in training left its group through the group's uplink
    inter = run["measured_inter_group_tx_bytes"]
    assert len(inter) == 2 and all(inter[g] >= sent[g] for g in range(2)), (inter, sent)
    assert not any(ns.startswith(f"gcomp-{os.getpid()}-") for ns in emulate.list_namespaces())


@needs_emulation
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_emulated_gossip_workers(tmp_path):
    """``--architecture decentralized --emulate``: the gossip workers run behind shaped uplinks, their bytes measured."""
    from gcomp.cli import main

    out = tmp_path / "out"
    code = main(["train", "--workers", "3", "--architecture", "decentralized", "--link", "50mbit", "--emulate",
                 "--epochs", "1", "--hidden", "16", "--quiet", "--out", str(out), "--target-accuracy", "0.1",
                 "--compressor", "topk:ratio=0.1"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["header"]["emulated"] is True
    run = results["runs"][0]
    assert run["architecture"] == "decentralized" and run["clock"] == "measured (emulated network)"
    # interface counters: every worker's gossip packets crossed its shaped uplink
    assert all(b > 0 for b in run["epochs"][-1]["bytes_sent_per_worker"])
    assert run["final_consensus_distance"] is not None
    assert not any(ns.startswith(f"gcomp-{os.getpid()}-") for ns in emulate.list_namespaces())
