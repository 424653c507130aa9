"""The client mod and the server wrapper called directly with real Flower messages, contexts and ClientApps."""

import logging

import numpy as np
import pytest

import gcomp
from gcomp import wire
from gcomp.errors import ConfigError, WireFormatError
from gcomp.flower import CompressionStrategy, compression_mod
from gcomp.flower.mod import client_memory
from gcomp.flower.records import PACKET_KEY, flatten, packet_record

from ._helpers import client, context, mlp_arrays, reply, train_message


def _packet(out):
    return out.content["arrays"][PACKET_KEY].data


def test_error_feedback_memory_carried_across_rounds():
    """The same update sent twice with topk: the second packet carries what the first dropped."""
    model = [np.zeros((40, 50), np.float32), np.zeros(50, np.float32)]
    rng = np.random.Generator(np.random.PCG64(3))
    update = [rng.normal(size=a.shape).astype(np.float32) for a in model]
    mod = compression_mod("topk:ratio=0.05")
    app = client([mod], lambda received: [r + u for r, u in zip(received, update, strict=True)])
    ctxt = context()
    first = wire.decode(_packet(app(train_message(model), ctxt)))
    second = wire.decode(_packet(app(train_message(model, server_round=2), ctxt)))
    flat = np.concatenate([u.reshape(-1) for u in update])
    k = first.count
    assert k == second.count == int(np.ceil(0.05 * flat.size))
    i1, i2 = np.asarray(first.arrays["indices"]), np.asarray(second.arrays["indices"])
    # the first packet is the top-k of the update itself
    np.testing.assert_array_equal(np.sort(i1), np.sort(np.argsort(-np.abs(flat), kind="stable")[:k]))
    np.testing.assert_array_equal(first.arrays["values"], flat[i1])
    # the second is the top-k of update + residual: the residual (what the first dropped) doubles every unsent entry
    carried = flat.copy() * 2
    carried[i1] = flat[i1]
    np.testing.assert_array_equal(np.sort(i2), np.sort(np.argsort(-np.abs(carried), kind="stable")[:k]))
    np.testing.assert_allclose(second.arrays["values"], carried[i2], rtol=0, atol=0)
    assert set(i2.tolist()) - set(i1.tolist())  # it sends entries the first packet held back
    memory = client_memory(mod, ctxt).memory("model")
    expected = carried.copy()
    expected[i2] = 0.0
    np.testing.assert_array_equal(memory, expected)


def test_seed_replaces_the_seed_of_a_compressor_instance_too():
    """compression_mod(instance, seed=7) sends what the spec with seed=7 sends, not what the instance's seed gives."""
    model = [np.zeros((40, 50), np.float32)]
    update = [np.random.Generator(np.random.PCG64(4)).normal(size=(40, 50)).astype(np.float32)]

    def indices(mod):
        app = client([mod], lambda received: [r + u for r, u in zip(received, update, strict=True)])
        return np.asarray(wire.decode(_packet(app(train_message(model), context()))).arrays["indices"]).tolist()

    instance = gcomp.compressor("randomk:ratio=0.05,seed=3")
    reseeded = indices(compression_mod(instance, seed=7, error_feedback="none"))
    assert reseeded == indices(compression_mod("randomk:ratio=0.05,seed=7", error_feedback="none"))
    assert reseeded != indices(compression_mod(instance, error_feedback="none"))


def test_memory_survives_skipped_rounds_and_is_per_client():
    model = [np.zeros(400, np.float32)]
    update = [np.linspace(-1, 1, 400, dtype=np.float32)]
    mod = compression_mod("topk:ratio=0.01")
    app = client([mod], lambda received: [received[0] + update[0]])
    a, b = context(node=1, partition=0), context(node=2, partition=1)
    app(train_message(model, node=1, server_round=1), a)
    before = client_memory(mod, a).memory("model")
    app(train_message(model, node=2, server_round=2), b)  # another client trains; a skips rounds 2 and 3
    np.testing.assert_array_equal(client_memory(mod, a).memory("model"), before)
    third = wire.decode(_packet(app(train_message(model, node=1, server_round=4), a)))
    assert third.step == 1  # a's second packet, whatever happened meanwhile
    assert client_memory(mod, b).memory("model") is not None


def test_non_train_messages_pass_through():
    from flwr.app import Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from ._helpers import metadata

    app = ClientApp(mods=[compression_mod("topk")])

    @app.evaluate()
    def evaluate(msg, ctxt):
        return Message(RecordDict({"metrics": MetricRecord({"accuracy": 0.5})}), reply_to=msg)

    from flwr.app import ArrayRecord
    msg = Message(RecordDict({"arrays": ArrayRecord([np.ones(3, np.float32)])}), metadata=metadata("evaluate"))
    ctxt = context()
    out = app(msg, ctxt)
    assert out.content["metrics"]["accuracy"] == 0.5
    assert "gcomp" not in ctxt.state


def test_nan_update_is_not_sent_and_memory_kept(caplog):
    model = [np.zeros(300, np.float32)]
    mod = compression_mod("topk:ratio=0.1")
    ok = client([mod], lambda r: [r[0] + np.float32(1.0)])
    ctxt = context(node=5, partition=3)
    ok(train_message(model, node=5), ctxt)
    before = client_memory(mod, ctxt).memory("model")
    bad = client([mod], lambda r: [np.full_like(r[0], np.nan)])
    with caplog.at_level(logging.ERROR, logger="gcomp.flower"):
        out = bad(train_message(model, node=5), ctxt)
    assert out.has_error()
    assert "node 5 (partition 3)" in out.error.reason and "300 NaN/Inf" in out.error.reason
    np.testing.assert_array_equal(client_memory(mod, ctxt).memory("model"), before)


def test_mod_refuses_bad_configuration():
    with pytest.raises(ConfigError, match="unknown compressor"):
        compression_mod("nosuch")
    with pytest.raises(ConfigError, match="error_feedback"):
        compression_mod("topk", error_feedback="ef21")


def test_uplink_bytes_topk_under_a_thirtieth_of_none_on_the_default_mlp():
    """Measured from the array payloads of the replies Flower carries, on the default 1.1M-parameter MLP."""
    from gcomp.flower.records import record_bytes

    model = mlp_arrays()
    rng = np.random.Generator(np.random.PCG64(0))
    trained = [a + rng.normal(scale=1e-3, size=a.shape).astype(np.float32) for a in model]
    sizes = {}
    for spec in ("none", "topk:ratio=0.01"):
        app = client([compression_mod(spec)], lambda r: trained)
        sizes[spec] = record_bytes(app(train_message(model), context()).content)
    plain = client([], lambda r: trained)
    dense = record_bytes(plain(train_message(model), context()).content)
    numel = sum(a.size for a in model)
    assert sizes["none"] >= 4 * numel and abs(sizes["none"] - dense) < 0.01 * dense
    assert sizes["topk:ratio=0.01"] < sizes["none"] / 30


# -- the server side -------------------------------------------------------------------------------


def _server_case(spec="topk:ratio=0.01"):
    model = [np.zeros((20, 30), np.float32), np.ones(30, np.float32)]
    rng = np.random.Generator(np.random.PCG64(1))
    trained = [a + rng.normal(size=a.shape).astype(np.float32) for a in model]
    msg = train_message(model, node=11)
    out = client([compression_mod(spec)], lambda r: trained)(msg, context(node=11))
    from flwr.app import ArrayRecord

    base, layout = flatten(ArrayRecord([np.asarray(a) for a in model]))
    return msg, out, base, layout, trained


def _with_packet(msg, packet, numel):
    from flwr.app import Message, MetricRecord, RecordDict

    return Message(RecordDict({"arrays": packet_record(packet, numel), "metrics": MetricRecord({"num-examples": 10})}),
                   reply_to=msg)


def test_server_decodes_to_base_plus_update():
    from flwr.serverapp.strategy import FedAvg

    msg, out, base, layout, trained = _server_case("none")
    key, record = CompressionStrategy(FedAvg(), uplink="none").decode(out, base, layout)
    assert key == "arrays"
    for got, want in zip(record.to_numpy_ndarrays(), trained, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["corrupt", "truncated", "wrong compressor", "denser", "nan", "dense arrays"])
def test_server_rejects_bad_packets_naming_the_client(case):
    from flwr.serverapp.strategy import FedAvg

    msg, out, base, layout, trained = _server_case()
    packet = bytearray(_packet(out))
    strategy = CompressionStrategy(FedAvg(), uplink="topk:ratio=0.01")
    if case == "corrupt":
        packet[-5] ^= 0x40
        bad, error = _with_packet(msg, bytes(packet), layout.numel), WireFormatError
    elif case == "truncated":
        bad, error = _with_packet(msg, bytes(packet[:-3]), layout.numel), WireFormatError
    elif case == "wrong compressor":
        c = gcomp.compressor("qsgd").compress(np.ones(layout.numel, np.float32))
        bad, error = _with_packet(msg, wire.encode(c), layout.numel), ConfigError
    elif case == "denser":
        c = gcomp.compressor("topk:ratio=0.5").compress(np.ones(layout.numel, np.float32))
        bad, error = _with_packet(msg, wire.encode(c), layout.numel), ConfigError
    elif case == "nan":
        c = wire.decode(bytes(packet))
        c.arrays["values"] = np.full_like(c.arrays["values"], np.nan)
        bad, error = _with_packet(msg, wire.encode(c), layout.numel), ConfigError
    else:
        bad, error = reply(msg, trained), ConfigError
    with pytest.raises(error) as info:
        strategy.decode(bad, base, layout)
    if error is ConfigError:
        assert "node 11" in str(info.value)


# -- composition with Flower's differential-privacy mods ----------------------------------------


def test_composes_with_flowers_local_dp_mod_clip_and_noise_first():
    """mods=[compression_mod, LocalDpMod]: the reply is clipped (and noised) dense, then compressed."""
    from flwr.clientapp.mod import LocalDpMod

    model = [np.zeros(2000, np.float32)]
    rng = np.random.Generator(np.random.PCG64(5))
    big = [rng.normal(scale=100.0, size=2000).astype(np.float32)]  # an update of norm ~4500
    clip = 1.0
    dp = LocalDpMod(clipping_norm=clip, sensitivity=1e-6, epsilon=10.0, delta=1e-5)  # noise std ~5e-7
    out = client([compression_mod("topk:ratio=0.05"), dp], lambda r: big)(train_message(model), context())
    assert not out.has_error()
    c = wire.decode(out.content["arrays"][PACKET_KEY].data)
    values = np.asarray(c.arrays["values"], np.float64)
    assert np.linalg.norm(values) <= clip * (1 + 1e-3)  # what was compressed had been clipped to the norm
    clipped = big[0] * np.float32(clip / np.linalg.norm(big[0].astype(np.float64)))
    np.testing.assert_allclose(values, clipped[np.asarray(c.arrays["indices"])], rtol=0, atol=1e-4)
    # and the server rebuilds the clipped model from the packet
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAvg

    base, layout = flatten(ArrayRecord([np.asarray(a) for a in model]))
    _, record = CompressionStrategy(FedAvg(), uplink="topk:ratio=0.05").decode(out, base, layout)
    assert np.linalg.norm(record.to_numpy_ndarrays()[0]) <= clip * (1 + 1e-3)


def test_the_wrong_mod_order_fails_loudly():
    """mods=[LocalDpMod, compression_mod] would clip the packet; Flower's mod refuses it (keys differ), so the
    reply is an error, never a silently unclipped update."""
    from flwr.clientapp.mod import LocalDpMod

    model = [np.zeros(500, np.float32)]
    dp = LocalDpMod(clipping_norm=1.0, sensitivity=1e-6, epsilon=10.0, delta=1e-5)
    out = client([dp, compression_mod("topk:ratio=0.05")], lambda r: [r[0] + 1])(train_message(model), context())
    assert out.has_error()
