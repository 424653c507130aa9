"""`gcomp train`: link/energy models, data, and real end-to-end runs (DDP, MPI, emulated)."""

import json
import os

import numpy as np
import pytest

from gcomp.cli import main
from gcomp.train import links
from gcomp.train.data import TRAIN_SAMPLES, epoch_batches, load_digits_split
from gcomp.train.emulate import can_emulate


def test_parse_rates_and_links():
    assert links.parse_rate("20mbit") == 20e6
    assert links.parse_rate("1.5gbit") == 1.5e9
    assert links.parse_rate("500kbit") == 5e5
    link = links.parse_link("20mbit/5ms")
    assert link.rate_bps == 20e6 and link.latency_s == pytest.approx(0.005) and link.technology == "wifi"
    assert links.parse_link("1gbit").technology == "ethernet"
    assert [x.rate_bps for x in links.parse_links("20mbit,20mbit,50mbit,5mbit", 4)] == [20e6, 20e6, 50e6, 5e6]
    assert len(links.parse_links("20mbit", 3)) == 3
    for bad in ("fast", "-3mbit", "20mbit/soon", "0mbit"):
        with pytest.raises(ValueError):
            links.parse_link(bad)
    with pytest.raises(ValueError):
        links.parse_links("1mbit,2mbit", 3)


def test_modelled_time_and_energy():
    ls = links.parse_links("8mbit,4mbit", 2)
    # 1 MB through 8 Mbit/s takes 1 s, through 4 Mbit/s 2 s: the slowest decides.
    assert links.modelled_comm_seconds([1e6, 1e6], ls) == pytest.approx(2.0)
    lat = links.parse_links("8mbit/10ms", 2)
    assert links.modelled_comm_seconds([1e6, 0], lat, rounds=2) == pytest.approx(1.02)
    e = links.energy_joules(1e6, 1e6, ls[0], cpu_seconds=2.0, cpu_watts=10.0)
    assert e == pytest.approx(2e6 * 8 * links.ENERGY_PER_BIT["wifi"] + 20.0)


def test_digits_split_and_shards():
    xtr, ytr, xte, yte = load_digits_split(0)
    assert xtr.shape[1] == 64 and len(xtr) + len(xte) == 1797 and set(np.unique(yte)) == set(range(10))
    again = load_digits_split(0)
    assert np.array_equal(xtr, again[0])
    shards = [epoch_batches(len(ytr), 16, r, 4, epoch=1) for r in range(4)]
    assert len({s.shape for s in shards}) == 1
    flat = np.concatenate([s.ravel() for s in shards])
    assert len(np.unique(flat)) == flat.size  # disjoint shards
    # the runner's batch-size check relies on the training-set size, whatever the seed
    assert len(ytr) == len(load_digits_split(7)[1]) == TRAIN_SAMPLES


def _run_cli(tmp_path, *extra):
    out = tmp_path / "out"
    code = main(["train", "--workers", "2", "--epochs", "2", "--hidden", "64", "--quiet", "--out", str(out),
                 "--target-accuracy", "0.5", *extra])
    assert code == 0
    with open(out / "results.json") as f:
        return out, json.load(f)


@pytest.mark.slow
def test_train_ddp_end_to_end(tmp_path, capsys):
    out, results = _run_cli(tmp_path, "--compressor", "none", "--compressor", "topk:ratio=0.1",
                            "--compressor", "torch-fp16")
    printed = capsys.readouterr().out
    assert "final acc" in printed and "topk:ratio=0.1" in printed
    runs = {r["compressor"]: r for r in results["runs"]}
    assert set(runs) == {"none", "topk:ratio=0.1", "torch-fp16"}
    for r in runs.values():
        assert r["ranks_agree"], "all workers must end with identical parameters"
        assert len(r["epochs"]) == 2 and r["epochs"][-1]["accuracy"] > 0.5
        assert r["time_to_target_s"] is not None and r["energy_joules_total"] > 0
    assert runs["topk:ratio=0.1"]["bytes_sent_per_worker_per_step"] < runs["none"]["bytes_sent_per_worker_per_step"]
    # The modelled time is the measured step time plus the link time of the bytes sent.  Only the link part is a
    # function of the compressor alone (measured step times vary with the machine's load), so that is what is
    # compared; and each run's modelled time must contain its link time.
    uplinks = [links.parse_link(spec) for spec in results["header"]["links"]]
    link_s = {}
    for name, r in runs.items():
        sent = r["epochs"][-1]["bytes_sent_per_worker"]
        link_s[name] = r["steps"] * links.modelled_comm_seconds([b / r["steps"] for b in sent], uplinks, rounds=2)
        assert r["modelled_s"] >= link_s[name] * (1 - 1e-9)
    assert link_s["topk:ratio=0.1"] < link_s["none"]
    for name in ("accuracy_vs_time.png", "accuracy_vs_bytes.png"):
        assert (out / name).stat().st_size > 1000


@pytest.mark.slow
def test_train_mpi_backend(tmp_path):
    _, results = _run_cli(tmp_path, "--backend", "mpi", "--compressor", "none", "--compressor", "qsgd")
    assert [r["compressor"] for r in results["runs"]] == ["none", "qsgd"]
    assert all(r["ranks_agree"] for r in results["runs"])


@pytest.mark.slow
@pytest.mark.skipif(not can_emulate()[0], reason=f"cannot emulate here: {can_emulate()[1]}")
def test_train_emulated(tmp_path):
    _, results = _run_cli(tmp_path, "--emulate", "--link", "50mbit", "--compressor", "topk:ratio=0.05")
    run = results["runs"][0]
    assert results["header"]["emulated"] and run["clock"].startswith("measured")
    # Interface counters saw at least the bytes the hook reports sending.
    assert run["epochs"][-1]["bytes_sent_per_worker"][0] > 0
    assert not [n for n in os.popen("ip netns list").read().split() if n.startswith(f"gcomp-{os.getpid()}-")]


@pytest.mark.parametrize(
    "argv",
    [["--compressor", "nope"], ["--workers", "0"], ["--backend", "mpi", "--compressor", "torch-fp16"],
     ["--link", "fast"], ["--target-accuracy", "2"]],
)
def test_train_rejects_bad_options(argv, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), *argv]) == 2
    assert "gcomp train:" in capsys.readouterr().err
