"""End to end on Flower's simulation engine (Ray): parity with plain FedAvg, bad clients dropped, accuracy."""

import logging

import numpy as np
import pytest

from gcomp.train.federated import client_app, run_federated

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _cfg(**kw):
    cfg = dict(seed=0, clients=4, non_iid=None, model="mlp", hidden=64, lr=0.05, momentum=0.9, batch_size=32,
               local_epochs=1, fraction=0.5, rounds=2, timeout=120, compressor="none", ray_cpus=2)
    cfg.update(kw)
    return cfg


def test_none_equals_plain_fedavg_to_float32_round_off():
    import os

    pythonpath = os.environ.get("PYTHONPATH")
    gcomp_run = run_federated(_cfg(compressor="none"))
    # Flower's Ray backend sets PYTHONPATH to its sys.path for Ray's workers; the driver puts it back, or every later
    # subprocess of this process (a fresh venv's gcomp, say) would import from the source tree instead
    assert os.environ.get("PYTHONPATH") == pythonpath
    plain = run_federated(_cfg(compressor=None))
    assert gcomp_run["sampled"] == plain["sampled"] and len(gcomp_run["sampled"]) == 2
    for key, want in plain["final"].items():
        got = gcomp_run["final"][key]
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=4 * np.finfo(np.float32).eps * scale)
    assert [r["accuracy"] for r in gcomp_run["records"]] == pytest.approx([r["accuracy"] for r in plain["records"]],
                                                                          abs=1e-9)
    numel = sum(a.size for a in plain["final"].values())
    for h in gcomp_run["history"]:
        # the packet: float32 data + the 88-byte header; Flower's dense arrays add a numpy header per array
        assert set(h["uplink_bytes"].values()) == {4 * numel + 88}
        assert 4 * numel < h["dense_model_bytes"] < 4 * numel + 200 * len(plain["final"])


def _saboteur():
    """A mod outside gcomp's that spoils partition 1's packet (a flipped bit), sends partition 2's update with qsgd
    and partition 3's as NaN; partition 0 is left alone."""

    def mod(msg, ctxt, call_next):
        import numpy as np

        import gcomp
        from gcomp import wire
        from gcomp.flower.records import PACKET_KEY, packet_record

        out = call_next(msg, ctxt)
        if not str(msg.metadata.message_type).startswith("train"):
            return out
        pid = int(ctxt.node_config["partition-id"])
        record = out.content["arrays"]
        packet = bytearray(record[PACKET_KEY].data)
        c = wire.decode(bytes(packet))
        if pid == 1:
            packet[len(packet) // 2] ^= 0x10
        elif pid == 2:
            dense = np.zeros(c.numel, np.float32)
            gcomp.compressor("topk").decompress_add(c, dense)
            packet = wire.encode(gcomp.compressor("qsgd").compress(dense))
        elif pid == 3:
            c.arrays["values"] = np.full_like(c.arrays["values"], np.nan)
            packet = wire.encode(c)
        out.content["arrays"] = packet_record(bytes(packet), c.numel)
        return out

    return mod


def test_bad_clients_are_dropped_by_name_and_the_rounds_complete(caplog):
    cfg = _cfg(compressor="topk:ratio=0.01", fraction=1.0, rounds=2)
    app = client_app(cfg, outer_mods=[_saboteur()])  # outermost: it sees the packet gcomp's mod made

    with caplog.at_level(logging.WARNING, logger="gcomp.flower"):
        sink = run_federated(cfg, app=app)
    node_of = {pid: node for node, pid in sink["partitions"].items()}
    assert [r["round"] for r in sink["records"]] == [0, 1, 2]
    for h in sink["history"]:
        dropped = h["dropped"]
        assert set(dropped) == {node_of[1], node_of[2], node_of[3]}
        assert "ChecksumError" in dropped[node_of[1]] or "WireFormatError" in dropped[node_of[1]]
        assert "'qsgd'" in dropped[node_of[2]]
        assert "NaN" in dropped[node_of[3]]
    text = caplog.text
    for pid in (1, 2, 3):
        assert f"dropped node {node_of[pid]} from round 1" in text
    # partition 0's memory lives in its node's context: its round-2 packet is its second
    assert [h["uplink_steps"] for h in sink["history"]] == [{node_of[0]: 0}, {node_of[0]: 1}]
    # partition 0 alone moved the model: the global model changed in both rounds
    assert sink["records"][2]["accuracy"] != sink["records"][0]["accuracy"]


def test_downlink_compression_and_local_dp_through_gcomp_train(tmp_path):
    """--downlink and --local-dp on the simulation engine: every client rebuilds the public model (its checksum
    would drop it otherwise), the downlink shrinks once clients hold a model, and the run is labelled +ldp."""
    from gcomp.train import TrainOptions, summary_table, train

    opts = TrainOptions(architecture="federated", clients=4, fraction=0.5, rounds=4, local_epochs=1, hidden=64,
                        compressors=["topk:ratio=0.01"], downlink="topk:ratio=0.1", local_dp="clip=5,epsilon=1000",
                        out=str(tmp_path), progress=False, plots=False)
    results = train(opts)
    (run,) = results["runs"]
    assert run["dropped_total"] == 0
    assert run["local_dp"] == {"clip": 5.0, "epsilon": 1000.0, "delta": 1e-5, "sensitivity": 5.0}
    assert run["downlink"] == "topk:ratio=0.1" and results["header"]["downlink"] == "topk:ratio=0.1"
    dense = run["dense_model_bytes"]
    per_round = [ep["downlink_bytes"] for ep in run["epochs"]]
    assert per_round[0] >= 2 * dense * 0.99  # round 1: both sampled clients get the dense model
    assert min(per_round[1:]) < 2 * dense  # later some get packets
    assert run["final_accuracy"] > run["initial_accuracy"]
    assert "topk:ratio=0.01+ldp" in summary_table(results)
