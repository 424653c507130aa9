"""Downlink compression: the server's public model and the client mod rebuilding it, bit for bit."""

import numpy as np

from gcomp.flower import compression_mod
from gcomp.flower.downlink import CONFIG_KEY, PublicModel
from gcomp.flower.records import flatten, record_bytes

from ._helpers import context, metadata


def _message(record, info, node):
    from flwr.app import ConfigRecord, Message, RecordDict

    content = RecordDict({"arrays": record, "config": ConfigRecord({"server-round": int(info["round"])}),
                          CONFIG_KEY: info})
    return Message(content, metadata=metadata("train", dst=node))


def _client(seen):
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=[compression_mod("topk:ratio=0.01")])

    @app.train()
    def train(msg, ctxt):
        assert CONFIG_KEY not in msg.content  # the mod hands the ClientApp a plain train message
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        seen.append(np.concatenate([a.reshape(-1) for a in arrays]))
        content = RecordDict({"arrays": ArrayRecord([a + np.float32(0.01) for a in arrays]),
                              "metrics": MetricRecord({"num-examples": 1})})
        return Message(content, reply_to=msg)

    return app


def test_clients_rebuild_the_public_model_exactly_across_skipped_rounds():
    from flwr.app import ArrayRecord

    rng = np.random.Generator(np.random.PCG64(2))
    model = [rng.normal(size=(50, 40)).astype(np.float32), rng.normal(size=40).astype(np.float32)]
    x, layout = flatten(ArrayRecord(model))
    dense = 4 * x.size
    pm = PublicModel("topk:ratio=0.05")
    seen = []
    app = _client(seen)
    ctxt = {1: context(node=1, partition=0), 2: context(node=2, partition=1)}
    sizes = {}
    for server_round, nodes in ((1, [1]), (2, [1, 2]), (3, [2]), (4, [1]), (5, [1, 2])):
        x = x + rng.normal(scale=0.1, size=x.size).astype(np.float32)
        pm.advance(server_round, x, layout)
        for node in nodes:
            record, info = pm.payload(node, server_round)
            sizes[(server_round, node)] = (record_bytes_of(record), int(info["base"]))
            out = app(_message(record, info, node), ctxt[node])
            assert not out.has_error(), out.error.reason
            np.testing.assert_array_equal(seen[-1], pm.public)  # bit for bit
    assert sizes[(1, 1)][1] == -1 and sizes[(2, 2)][1] == -1  # first contact: dense
    assert sizes[(2, 1)][1] == 1 and sizes[(4, 1)][1] == 2  # then packets since the round held (2 after a skip)
    assert sizes[(5, 2)][1] == 3
    assert sizes[(2, 1)][0] < dense / 5 and sizes[(4, 1)][0] < 2 * dense / 5
    # the public model trails the global one by what the packets dropped, and catches up: error feedback
    assert np.linalg.norm(x - pm.public) < np.linalg.norm(x - flatten(ArrayRecord(model))[0])


def record_bytes_of(record):
    from flwr.app import RecordDict

    return record_bytes(RecordDict({"arrays": record}))


def test_a_client_out_of_step_refuses_and_the_server_sends_dense_next():
    from flwr.app import ArrayRecord

    model = [np.ones(300, np.float32)]
    x, layout = flatten(ArrayRecord(model))
    pm = PublicModel("topk:ratio=0.1")
    seen = []
    app = _client(seen)
    pm.advance(1, x, layout)
    record, info = pm.payload(7, 1)
    fresh = context(node=7)
    assert not app(_message(record, info, 7), fresh).has_error()
    pm.advance(2, x + 1, layout)
    record, info = pm.payload(7, 2)
    out = app(_message(record, info, 7), context(node=7))  # a client that lost its state
    assert out.has_error() and "expected to hold the public model of round 1" in out.error.reason
    pm.forget(7)
    pm.advance(3, x + 2, layout)
    record, info = pm.payload(7, 3)
    assert int(info["base"]) == -1
    assert not app(_message(record, info, 7), context(node=7)).has_error()
    np.testing.assert_array_equal(seen[-1], pm.public)
