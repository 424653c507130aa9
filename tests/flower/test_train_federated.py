"""gcomp train --architecture federated: results.json, plots, the table, and topk 1% with EF close to none."""

import json

import pytest

from gcomp.train import TrainOptions, summary_table, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_topk_with_error_feedback_within_3_points_of_none_non_iid(tmp_path):
    """Digits, 20 clients, 25% per round, Dirichlet(0.5), 15 rounds of 5 local epochs, the default MLP.

    Accuracy is the mean over the last three rounds (one round's accuracy jumps by a point or two with the
    sampled clients, on 359 test images), for both runs alike.
    """
    opts = TrainOptions(architecture="federated", clients=20, fraction=0.25, rounds=15, local_epochs=5, non_iid=0.5,
                        compressors=["none", "topk:ratio=0.01"], out=str(tmp_path), progress=False,
                        target_accuracy=0.9)
    results = train(opts)
    none, topk = results["runs"]
    assert none["sampled"] == topk["sampled"]  # the same clients in the same rounds
    assert all(len(clients) == 5 for clients in none["sampled"].values())

    def late(run):
        return sum(ep["accuracy"] for ep in run["epochs"][-3:]) / 3

    assert late(none) > 0.85
    assert late(topk) >= late(none) - 0.03, (late(topk), late(none))
    # uplink bytes per sampled client per round, from the payloads Flower carried
    assert topk["uplink_bytes_per_client_per_round"] < none["uplink_bytes_per_client_per_round"] / 30
    assert none["dropped_total"] == topk["dropped_total"] == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["header"]["architecture"] == "federated" and len(saved["runs"]) == 2
    assert {p.rsplit("/", 1)[-1] for p in results["plots"]} == {"accuracy_vs_rounds.png", "accuracy_vs_uplink.png"}
    table = summary_table(results)
    assert "topk:ratio=0.01" in table and max(len(line) for line in table.splitlines()) <= 100
