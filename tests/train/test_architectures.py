"""`gcomp train --architecture` repeated: centralized, decentralized and hybrid side by side in one table."""

import json

import pytest

from gcomp.cli import main
from gcomp.train.report import run_label, summary_table


@pytest.mark.parametrize("argv, message", [
    (["--architecture", "hybrid"], "expected --groups with --architecture hybrid"),
    (["--architecture", "hybrid", "--groups", "2x2", "--compressor", "torch-fp16"], "torch DDP hook"),
    (["--architecture", "hybrid", "--groups", "2x2", "--backend", "mpi", "--compressor", "topk"],
     "--backend ddp with --architecture hybrid"),
    (["--architecture", "centralized", "--architecture", "federated"], "federated runs alone"),
    (["--architecture", "centralized", "--architecture", "centralized"], "each --architecture once"),
    (["--architecture", "decentralized", "--compressor", "adaptive"], "adaptive policy runs in the DDP hook"),
    (["--compressor", "adaptive:dwell=-1"], "dwell"),
])
def test_bad_combinations_are_refused_in_one_line(argv, message, tmp_path, capsys):
    code = main(["train", "--workers", "4", "--quiet", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_labels_name_the_architecture():
    assert run_label({"compressor": "topk:ratio=0.01", "architecture": "hybrid"}) == "hybrid/topk:ratio=0.01"
    assert run_label({"compressor": "topk:ratio=0.01", "architecture": "centralized"}) == "topk:ratio=0.01"


@pytest.mark.slow
def test_three_architectures_side_by_side_on_three_workers(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["train", "--workers", "3", "--epochs", "1", "--hidden", "64", "--quiet", "--out", str(out),
                 "--architecture", "centralized", "--architecture", "decentralized", "--architecture", "hybrid",
                 "--groups", "0,1/2", "--link", "intra=1gbit", "--link", "inter=20mbit",
                 "--compressor", "topk:ratio=0.1"])
    printed = capsys.readouterr().out
    assert code == 0
    with open(out / "results.json") as f:
        results = json.load(f)
    runs = {run["architecture"]: run for run in results["runs"]}
    assert list(runs) == ["centralized", "decentralized", "hybrid"]
    assert results["header"]["architectures"] == ["centralized", "decentralized", "hybrid"]
    table = summary_table(results)
    for label in ("topk:ratio=0.1", "ring/topk:ratio=0.1", "hybrid/topk:ratio=0.1"):
        assert label in table and label in printed
    assert runs["centralized"]["ranks_agree"] and runs["hybrid"]["ranks_agree"]
    hybrid = runs["hybrid"]
    assert hybrid["groups"] == [[0, 1], [2]]
    # the dense sum inside group {0, 1} is counted apart from the packets between the leaders 0 and 2
    assert 0 < hybrid["intra_group_bytes_per_worker_per_step"] < hybrid["bytes_sent_per_worker_per_step"]
    assert runs["decentralized"]["final_consensus_distance"] is not None
