"""`gcomp train --architecture decentralized`: option validation, and CHOCO-SGD against centralized training."""

import json

import pytest

from gcomp.cli import main
from gcomp.train.report import run_label, summary_table
from gcomp.train.runner import DEFAULT_GOSSIP_GAMMA, TrainOptions, gossip_gamma


@pytest.mark.parametrize("argv, message", [
    (["--compressor", "torch-fp16"], "torch DDP hook"),
    (["--compressor", "torch-powersgd"], "torch DDP hook"),
    (["--gossip-gamma", "0"], "--gossip-gamma"),
    (["--gossip-gamma", "1.5"], "--gossip-gamma"),
    (["--gossip-every", "0"], "--gossip-every"),
    (["--topology", "moebius"], "--topology moebius"),
])
def test_decentralized_rejects_bad_options(argv, message, tmp_path, capsys):
    code = main(["train", "--architecture", "decentralized", "--quiet", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_architecture_choice_and_gamma_defaults():
    with pytest.raises(SystemExit):
        main(["train", "--architecture", "mesh"])
    opts = TrainOptions(architecture="decentralized")
    assert gossip_gamma(opts, "none") == 1.0 and gossip_gamma(opts, "topk:ratio=0.01") == DEFAULT_GOSSIP_GAMMA
    assert gossip_gamma(TrainOptions(gossip_gamma=0.3), "none") == 0.3
    assert run_label({"compressor": "topk:ratio=0.01", "architecture": "decentralized", "topology": "ring"}) == \
        "ring/topk:ratio=0.01"
    assert run_label({"compressor": "none", "architecture": "centralized"}) == "none"


def _train(tmp_path, name, *extra, epochs):
    out = tmp_path / name
    assert main(["train", "--workers", "4", "--epochs", str(epochs), "--quiet", "--out", str(out), *extra]) == 0
    with open(out / "results.json") as f:
        return out, json.load(f)


EPOCHS = 6


@pytest.mark.slow
def test_choco_topk_ring_matches_centralized_dense(tmp_path, capsys):
    """CHOCO-SGD top-k 1% on a ring of 4 ends within 2 points of centralized dense training, same epochs."""
    _, dense = _train(tmp_path, "centralized", "--compressor", "none", epochs=EPOCHS)
    out, choco = _train(tmp_path, "decentralized", "--architecture", "decentralized", "--compressor",
                        "topk:ratio=0.01", "--topology", "ring", epochs=EPOCHS)
    table = capsys.readouterr().out
    dense_run, run = dense["runs"][0], choco["runs"][0]
    assert dense_run["architecture"] == "centralized" and run["architecture"] == "decentralized"
    assert run["topology"] == "ring" and choco["header"]["architecture"] == "decentralized"
    assert len(run["epochs"]) == len(dense_run["epochs"]) == EPOCHS
    assert all(ep["consensus_distance"] >= 0 for ep in run["epochs"])
    assert run["final_accuracy"] >= dense_run["final_accuracy"] - 0.02, (run["final_accuracy"],
                                                                          dense_run["final_accuracy"])
    # the gossip sends far fewer bytes than a dense allreduce
    assert run["bytes_sent_per_worker_per_step"] < 0.05 * dense_run["bytes_sent_per_worker_per_step"]
    assert "ring/topk:ratio=0.01" in table
    rendered = summary_table(choco)
    assert "ring/topk:ratio=0.01" in rendered and max(len(line) for line in rendered.splitlines()) <= 100
    assert (out / "consensus_distance.png").exists()


@pytest.mark.slow
def test_decentralized_exact_gossip_mpi(tmp_path):
    _, res = _train(tmp_path, "mpi", "--architecture", "decentralized", "--backend", "mpi", "--compressor", "none",
                    "--hidden", "64", epochs=2)
    run = res["runs"][0]
    assert run["gossip_gamma"] == 1.0 and run["algorithm"] == "exact gossip"
    assert len(run["epochs"]) == 2 and run["final_accuracy"] > 0.5
