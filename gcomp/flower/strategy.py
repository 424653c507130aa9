"""The server side: a Flower strategy wrapper that decodes compressed updates before aggregation.

``CompressionStrategy(FedAvg(...), uplink="topk:ratio=0.01")`` wraps any
strategy that aggregates ArrayRecords (FedAvg, FedProx, FedAdam, FedMedian,
Flower's server-side DP wrappers...).  In each round it:

1. lets the inner strategy configure training, and remembers the global model
   it sends (the base every client's update is relative to);
2. for each training reply, decodes the client's gcomp packet
   (:func:`gcomp.wire.decode`, every field validated), checks that it is of the
   configured compressor, of the model's size, within the compressor's payload
   bound and finite, and replaces it by the dense model ``base + update``, so
   the inner strategy aggregates models as it always does;
3. drops a reply that fails any check from that round, with a log line on the
   ``gcomp.flower`` logger naming the node and the reason, and aggregates the
   others (the round completes);
4. records the bytes Flower carried up and down for each node
   (:attr:`gcomp.flower.CompressionStrategy.history`): the array payloads of the messages
   (the packet, or the dense model), and Flower's own count of all records.

With ``uplink="none"`` the update travels as dense float32 and the aggregate
equals plain FedAvg's up to float32 round-off of ``base + (new - base)``.
"""

import logging

import numpy as np

from .. import wire
from ..compressors import compressor as build_compressor
from ..errors import ConfigError, WireFormatError
from .downlink import CONFIG_KEY as DOWNLINK_KEY
from .downlink import PublicModel
from .records import flatten, packet_bytes, record_bytes, unflatten

__all__ = ["CompressionStrategy", "RejectedUpdate"]

log = logging.getLogger("gcomp.flower")


class RejectedUpdate(ConfigError):
    """A client's update that the server will not aggregate (the reason is in the message)."""


def _message_bytes(content):
    return int(sum(record.count_bytes() for record in content.values()))


def _strategy_base():
    from flwr.serverapp.strategy import Strategy

    return Strategy


class CompressionStrategy(_strategy_base()):
    """Wrap ``strategy`` so that it aggregates the dense models behind clients' compressed updates.

    A Flower ``Strategy``: pass it to ``strategy.start(...)`` where the inner
    strategy would go (the module :mod:`gcomp.flower.strategy` describes a round).

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        The inner strategy (FedAvg, FedProx, ...), which aggregates ArrayRecords.
    uplink : str, dict or gcomp.Compressor
        The compressor spec the clients' :func:`gcomp.flower.compression_mod`
        uses; packets of another codec, another model size or above its
        payload bound are rejected.
    downlink : str, dict or gcomp.Compressor, optional
        A compressor to send the global model as compressed differences with
        server-side error feedback (:mod:`gcomp.flower.downlink`; the clients'
        gcomp mod applies them), or None to send it dense.

    Raises
    ------
    gcomp.errors.ConfigError
        A compressor without a wire codec.

    Examples
    --------
    In a ServerApp (docs/federated.md)::

        strategy = CompressionStrategy(FedAvg(fraction_train=0.25), uplink="topk:ratio=0.01")
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model), num_rounds=10)
        print(strategy.bytes_per_round())

    >>> from flwr.serverapp.strategy import FedAvg
    >>> from gcomp.flower import CompressionStrategy
    >>> strategy = CompressionStrategy(FedAvg(), uplink="topk:ratio=0.01", downlink="fp16")
    >>> strategy.uplink, strategy.downlink.compressor
    (gcomp.compressor('topk', ratio=0.01), gcomp.compressor('fp16'))
    >>> strategy.history                  # one dict per training round, once rounds run
    []
    """

    def __init__(self, strategy, uplink="topk:ratio=0.01", downlink=None):
        self.strategy = strategy
        #: the public model behind downlink compression (gcomp.flower.downlink), or None: dense downlink
        self.downlink = None if downlink is None else PublicModel(downlink)
        self.uplink = build_compressor(uplink)
        if self.uplink.codec is None:
            raise ConfigError(f"expected an uplink compressor with a wire codec, found {self.uplink.name!r}")
        self.spec = uplink if isinstance(uplink, str) else repr(self.uplink)
        #: one dict per training round: round, dense_model_bytes, uplink_bytes / downlink_bytes per node id,
        #: uplink_message_bytes / downlink_message_bytes (all records, Flower's count), uplink_steps {node: the
        #: packet's step: how many updates that client's memory has sent before}, metrics {node: the reply's
        #: metrics}, dropped {node: reason}
        self.history = []
        self._base = None

    # -- Flower's Strategy interface -------------------------------------------
    def summary(self):
        """Log the uplink compressor and the inner strategy, then the inner strategy's own summary.

        Flower calls it when the strategy starts.
        """
        log.info("gcomp CompressionStrategy: uplink %s around %s", self.spec, type(self.strategy).__name__)
        self.strategy.summary()

    def configure_train(self, server_round, arrays, config, grid):
        """The inner strategy's train messages; remembers ``arrays`` as the round's base (and compresses the
        downlink when configured), and starts the round's :attr:`history` entry.

        Parameters
        ----------
        server_round : int
            The round.
        arrays : flwr.app.ArrayRecord
            The global model sent this round.
        config : flwr.app.ConfigRecord
            The round's training config (passed to the inner strategy).
        grid : flwr.serverapp.Grid
            Flower's grid (passed to the inner strategy).

        Returns
        -------
        list of flwr.app.Message
            The train messages, one per sampled node.

        Examples
        --------
        Flower's ``strategy.start`` calls it each round; by hand::

            messages = strategy.configure_train(1, ArrayRecord(model), ConfigRecord({"lr": 0.1}), grid)
            replies = grid.send_and_receive(messages)
            arrays, metrics = strategy.aggregate_train(1, replies)
        """
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        base, layout = flatten(arrays)
        self._base = (server_round, base, layout)
        if self.downlink is not None:
            messages = self._compress_downlink(server_round, base, layout, messages)
        stats = {"round": int(server_round), "dense_model_bytes": _dense_bytes(arrays), "downlink_bytes": {},
                 "downlink_message_bytes": {}, "uplink_bytes": {}, "uplink_message_bytes": {}, "uplink_steps": {},
                 "metrics": {}, "dropped": {}}
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            stats["downlink_bytes"][node] = record_bytes(msg.content)
            stats["downlink_message_bytes"][node] = _message_bytes(msg.content)
        self.history.append(stats)
        return messages

    def _compress_downlink(self, server_round, base, layout, messages):
        from flwr.app import RecordDict

        self.downlink.advance(server_round, base, layout)
        for msg in messages:
            records = msg.content.array_records
            if len(records) != 1:
                raise ConfigError(f"expected one ArrayRecord (the model) in the inner strategy's train messages, "
                                  f"found {len(records)}")
            key = next(iter(records))
            record, info = self.downlink.payload(int(msg.metadata.dst_node_id), server_round)
            content = RecordDict(dict(msg.content.items()))  # one per message: the strategy shares its RecordDict
            content[key] = record
            content[DOWNLINK_KEY] = info
            msg.content = content
        return messages

    def aggregate_train(self, server_round, replies):
        """Decode and check every reply's packet into a dense model, drop the bad ones, and let the inner strategy
        aggregate the rest.

        Parameters
        ----------
        server_round : int
            The round (its :meth:`configure_train` must have run).
        replies : iterable of flwr.app.Message
            The clients' train replies.

        Returns
        -------
        tuple
            What the inner strategy's ``aggregate_train`` returns (the
            aggregated ArrayRecord and MetricRecord, or None for either).

        Raises
        ------
        gcomp.errors.ConfigError
            No :meth:`configure_train` for this round.

        Examples
        --------
        See :meth:`configure_train`; a dropped reply is named in :attr:`history`::

            arrays, metrics = strategy.aggregate_train(1, replies)
            print(strategy.history[-1]["dropped"])      # {node id: reason}
        """
        replies = list(replies)
        if self._base is None or self._base[0] != server_round:
            raise ConfigError(f"expected configure_train of round {server_round} before its aggregate_train, found "
                              f"{'none' if self._base is None else 'round ' + str(self._base[0])}")
        _, base, layout = self._base
        stats = self.history[-1]
        kept = []
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if msg.has_error():
                if self.downlink is not None:
                    self.downlink.forget(node)
                stats["dropped"][node] = f"client error: {msg.error.reason}"
                kept.append(msg)  # the inner strategy logs and skips it as it would without gcomp
                continue
            stats["uplink_bytes"][node] = record_bytes(msg.content)
            stats["uplink_message_bytes"][node] = _message_bytes(msg.content)
            stats["metrics"][node] = {k: v for record in msg.content.metric_records.values() for k, v in record.items()}
            try:
                key, model, step = self._decode(msg, base, layout)
            except (WireFormatError, ConfigError, ValueError, TypeError) as exc:  # whatever a client sends: drop it
                reason = f"{type(exc).__name__}: {exc}"
                stats["dropped"][node] = reason
                log.warning("gcomp: dropped node %d from round %d: %s", node, server_round, reason)
                continue
            stats["uplink_steps"][node] = step
            msg.content[key] = model
            kept.append(msg)
        if self.downlink is not None:  # a node that did not answer may not hold this round's public model
            answered = {int(m.metadata.src_node_id) for m in replies}
            for node in set(stats["downlink_bytes"]) - answered:
                self.downlink.forget(node)
        return self.strategy.aggregate_train(server_round, kept)

    def configure_evaluate(self, server_round, arrays, config, grid):
        """The inner strategy's evaluate messages, unchanged (evaluation is not compressed).

        Parameters
        ----------
        server_round : int
            The round.
        arrays : flwr.app.ArrayRecord
            The global model.
        config : flwr.app.ConfigRecord
            The evaluation config.
        grid : flwr.serverapp.Grid
            Flower's grid.

        Returns
        -------
        list of flwr.app.Message
            The inner strategy's messages.
        """
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        """The inner strategy's aggregate of the evaluate replies, unchanged.

        Parameters
        ----------
        server_round : int
            The round.
        replies : iterable of flwr.app.Message
            The clients' evaluate replies.

        Returns
        -------
        flwr.app.MetricRecord or None
            The inner strategy's result.
        """
        return self.strategy.aggregate_evaluate(server_round, replies)

    # -- decoding ----------------------------------------------------------------
    def decode(self, msg, base, layout):
        """``(record key, ArrayRecord of base + update)`` of one reply; RejectedUpdate or WireFormatError if bad.

        What :meth:`aggregate_train` does to each reply, for one reply on its own.

        Parameters
        ----------
        msg : flwr.app.Message
            A client's train reply holding one gcomp packet.
        base : numpy.ndarray
            The flat float32 global model the client's update is relative to.
        layout : gcomp.flower.records.Layout
            The model's array names, shapes and dtypes (``base``'s layout).

        Returns
        -------
        tuple
            ``(key, record)``: the reply's record key and the dense model as an ArrayRecord.

        Raises
        ------
        gcomp.flower.strategy.RejectedUpdate
            A packet of another codec, above the payload bound, or not finite.
        gcomp.errors.WireFormatError
            A packet that does not decode (another size, corrupt bytes...).

        Examples
        --------
        A reply built by :func:`gcomp.flower.compression_mod` (its example),
        decoded on the server:

        >>> import numpy as np
        >>> from flwr.app import ArrayRecord, Context, Message, Metadata, RecordDict
        >>> from flwr.serverapp.strategy import FedAvg
        >>> from gcomp.flower import CompressionStrategy, compression_mod
        >>> from gcomp.flower.records import flatten
        >>> model = ArrayRecord([np.zeros(8, np.float32)])
        >>> metadata = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="",
        ...                     group_id="1", created_at=0.0, ttl=600.0, message_type="train")
        >>> context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
        >>> def train(msg, context):
        ...     trained = [a + np.arange(8, dtype=np.float32) for a in msg.content["arrays"].to_numpy_ndarrays()]
        ...     return Message(RecordDict({"arrays": ArrayRecord(trained)}), reply_to=msg)
        >>> reply = compression_mod("topk:ratio=0.25")(Message(RecordDict({"arrays": model}), metadata=metadata),
        ...                                            context, train)
        >>> strategy = CompressionStrategy(FedAvg(), uplink="topk:ratio=0.25")
        >>> base, layout = flatten(model)
        >>> key, dense = strategy.decode(reply, base, layout)
        >>> key, dense.to_numpy_ndarrays()[0].tolist()
        ('arrays', [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0, 7.0])
        """
        key, model, _ = self._decode(msg, base, layout)
        return key, model

    def _decode(self, msg, base, layout):
        who = f"node {msg.metadata.src_node_id}"
        records = msg.content.array_records
        if len(records) != 1:
            raise RejectedUpdate(f"expected one ArrayRecord (the packet) from {who}, found {len(records)}")
        key, record = next(iter(records.items()))
        packet = packet_bytes(record, who)
        c = wire.decode(packet, expected_numel=layout.numel)
        if c.codec != self.uplink.name:
            raise RejectedUpdate(f"expected a {self.uplink.name!r} packet from {who} because the server decodes "
                                 f"uplink {self.spec}, found codec {c.codec!r}")
        bound = self.uplink.max_payload_bytes(layout.numel)
        payload = len(packet) - wire.HEADER_SIZE
        if payload > bound:
            raise RejectedUpdate(f"expected at most {bound} payload bytes from {who} for uplink {self.spec} on "
                                 f"{layout.numel} entries, found {payload}: the client compresses differently")
        update = np.empty(layout.numel, np.float32)
        self.uplink.decompress(c, out=update)
        bad = int(update.size - np.count_nonzero(np.isfinite(update)))
        if bad:
            raise RejectedUpdate(f"expected a finite update from {who}, found {bad} NaN/Inf entries")
        update += base
        return key, unflatten(update, layout), int(c.step)

    # -- bytes -------------------------------------------------------------------
    def bytes_per_round(self):
        """``[{round, uplink, downlink, clients, dropped}]``: bytes summed over the round's nodes.

        Returns
        -------
        list of dict
            One dict per training round of :attr:`history`: the round, the
            uplink and downlink array bytes summed over its nodes, how many
            nodes were sent the model, and how many replies were dropped.

        Examples
        --------
        ::

            strategy.start(grid, initial, num_rounds=10)
            for row in strategy.bytes_per_round():
                print(row["round"], row["uplink"], row["downlink"])
        """
        return [{"round": s["round"], "uplink": sum(s["uplink_bytes"].values()),
                 "downlink": sum(s["downlink_bytes"].values()), "clients": len(s["downlink_bytes"]),
                 "dropped": len(s["dropped"])} for s in self.history]


def _dense_bytes(arrays):
    return int(sum(len(a.data) for a in arrays.values()))
