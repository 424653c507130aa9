"""Real Flower messages and contexts for calling a ClientApp (with its mods) and the server wrapper directly."""

import itertools
import time

import numpy as np

_ids = itertools.count(1)


def metadata(message_type, dst=7, src=0, group="1"):
    from flwr.app import Metadata

    return Metadata(run_id=1, message_id=f"m{next(_ids)}", src_node_id=src, dst_node_id=dst, reply_to_message_id="",
                    group_id=group, created_at=time.time(), ttl=600.0, message_type=message_type)


def train_message(arrays, node=7, server_round=1, config=None):
    """A train message to ``node`` carrying the model ``arrays`` (a list of numpy arrays or an ArrayRecord)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    record = arrays if isinstance(arrays, ArrayRecord) else ArrayRecord([np.asarray(a) for a in arrays])
    cfg = ConfigRecord({"server-round": server_round, **(config or {})})
    return Message(RecordDict({"arrays": record, "config": cfg}), metadata=metadata("train", dst=node))


def context(node=7, partition=0):
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=node, node_config={"partition-id": partition}, state=RecordDict(), run_config={})


def reply(msg, arrays, examples=10):
    """The reply a ClientApp sends: the model ``arrays`` (list of numpy arrays or an ArrayRecord) and its metrics."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    record = arrays if isinstance(arrays, ArrayRecord) else ArrayRecord([np.asarray(a) for a in arrays])
    return Message(RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": examples})}), reply_to=msg)


def client(mods, train_fn):
    """A real ClientApp with ``mods`` whose train handler returns ``train_fn(list of received arrays)``."""
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=mods)

    @app.train()
    def train(msg, ctxt):
        return reply(msg, train_fn(msg.content["arrays"].to_numpy_ndarrays()))

    return app


def mlp_arrays(seed=0, hidden=1024):
    """The default gcomp train MLP's parameters as numpy arrays."""
    from gcomp.train.models import build_model

    return [p.detach().numpy().copy() for p in build_model("mlp", hidden, seed).state_dict().values()]
