"""The client side: a Flower mod that sends a training reply's model as a compressed update.

``ClientApp(mods=[gcomp.flower.compression_mod("topk:ratio=0.01")])``.  On a
*train* message the mod remembers the model arrays it received, lets the
ClientApp (and any inner mods) train, then replaces the reply's model by one
gcomp wire packet of the compressed update ``new model - received model``
(flattened in record order; :mod:`gcomp.flower.records`), passed through an
error-feedback memory (:mod:`gcomp.feedback`).  Evaluate and query messages
pass through untouched.  A train message whose global model comes compressed
(``CompressionStrategy(..., downlink=SPEC)``, :mod:`gcomp.flower.downlink`) is
first rebuilt into the dense model, which is what the ClientApp sees.

The memory lives in the client's Flower :class:`flwr.app.Context` state, as
gcomp's pickle-free state bytes (:mod:`gcomp.statecodec`) in the ConfigRecord
``context.state["gcomp"]``: it persists across rounds for the same node and is
there when a node that skipped rounds is sampled again.

Mod order: mods run outside in, so a reply passes the *last* mod first.  Put
the compression mod first in the list, and Flower's clipping or local-DP mods
after it: ``mods=[compression_mod(spec), LocalDpMod(...)]`` clips and noises
the dense model first, then compresses the private update.

A non-finite update (NaN/Inf in ``new - received``) is not sent: the reply
becomes a Flower error naming the client and the count, and the memory is left
as it was (one bad round does not poison later ones).
"""

import logging

import numpy as np

from .. import statecodec, wire
from ..compressors import with_seed
from ..errors import ConfigError, StateError
from ..feedback import feedback
from .downlink import CONFIG_KEY as DOWNLINK_KEY
from .downlink import apply_downlink
from .records import flatten, packet_record

__all__ = ["compression_mod", "STATE_KEY", "MEMORY_KEY", "client_memory"]

log = logging.getLogger("gcomp.flower")

#: the ConfigRecord in ``context.state`` where the mod keeps its memory
STATE_KEY = "gcomp"
#: the memories a client can use: the server decodes each packet alone
MOD_FEEDBACK = ("residual", "none")
#: the error-feedback memory's key for the whole flattened model
MEMORY_KEY = "model"


def _is(msg, kind):
    return str(msg.metadata.message_type).split(".")[0] == kind


def _error(msg, reason):
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode

    log.error(reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def _node(msg, ctxt):
    partition = ctxt.node_config.get("partition-id") if ctxt.node_config else None
    where = f" (partition {partition})" if partition is not None else ""
    return f"node {msg.metadata.dst_node_id}{where}"


class _Mod:
    """The callable :func:`compression_mod` returns: ``mod(msg, context, call_next) -> Message``."""

    def __init__(self, spec, error_feedback, seed, zstd):
        self.compressor = with_seed(spec, seed)
        if self.compressor.codec is None:
            raise ConfigError(f"expected a compressor with a wire codec because the update travels as a gcomp packet, "
                              f"found {self.compressor.name!r}")
        self.error_feedback = (self.compressor.default_feedback if error_feedback == "auto" else error_feedback)
        if self.error_feedback not in MOD_FEEDBACK:
            raise ConfigError(f"expected error_feedback auto, {' or '.join(MOD_FEEDBACK)} because the server decodes "
                              f"each update on its own (EF21 and DGC need server or momentum state per client), "
                              f"found {error_feedback!r}")
        self.zstd = bool(zstd)
        self.__name__ = f"compression_mod({self.compressor.name})"

    def memory(self, ctxt):
        """The error-feedback memory stored in ``ctxt.state`` (a fresh one before the first round)."""
        memory = feedback(self.error_feedback, self.compressor)
        record = ctxt.state.config_records.get(STATE_KEY) if STATE_KEY in ctxt.state else None
        if record is not None and "ef" in record:
            memory.load_state_dict(statecodec.unpack(record["ef"]))
        return memory

    def save(self, ctxt, memory):
        from flwr.app import ConfigRecord

        record = ctxt.state.config_records.get(STATE_KEY) if STATE_KEY in ctxt.state else None
        if record is None:
            record = ConfigRecord()
            ctxt.state[STATE_KEY] = record
        record["ef"] = statecodec.pack(memory.state_dict())
        record["compressor"] = repr(self.compressor)
        record["rounds"] = int(record.get("rounds", 0)) + 1

    def __call__(self, msg, ctxt, call_next):
        from flwr.app import MessageType

        if not _is(msg, MessageType.TRAIN):
            return call_next(msg, ctxt)
        who = _node(msg, ctxt)
        if DOWNLINK_KEY in msg.content.config_records:  # a compressed global model: rebuild the dense one first
            msg, problem = apply_downlink(msg, ctxt, who)
            if problem:
                return _error(msg, problem)
        if len(msg.content.array_records) != 1:
            return _error(msg, f"gcomp compression_mod on {who}: expected one ArrayRecord (the model) in the train "
                               f"message, found {len(msg.content.array_records)}")
        received, layout = flatten(next(iter(msg.content.array_records.values())))
        out = call_next(msg, ctxt)
        if out.has_error():
            return out
        if len(out.content.array_records) != 1:
            return _error(msg, f"gcomp compression_mod on {who}: expected one ArrayRecord (the trained model) in the "
                               f"reply, found {len(out.content.array_records)}")
        key, record = next(iter(out.content.array_records.items()))
        trained, out_layout = flatten(record)
        if out_layout.keys != layout.keys or out_layout.shapes != layout.shapes:
            return _error(msg, f"gcomp compression_mod on {who}: expected the reply's arrays to match the received "
                               f"model ({len(layout.keys)} arrays, {layout.numel} entries) because the update is "
                               f"their difference, found {len(out_layout.keys)} arrays, {out_layout.numel} entries")
        delta = trained
        delta -= received
        bad = int(delta.size - np.count_nonzero(np.isfinite(delta)))
        if bad:
            return _error(msg, f"gcomp compression_mod on {who}: expected a finite update, found {bad} NaN/Inf "
                               "entries in (trained - received); not sent, error-feedback memory kept")
        memory = self.memory(ctxt)
        mem = memory.memory(MEMORY_KEY)
        if mem is not None and mem.shape[0] != delta.shape[0]:
            log.warning("gcomp compression_mod on %s: the model changed size (%d -> %d entries); error-feedback "
                        "memory reset", who, mem.shape[0], delta.shape[0])
            memory.reset()
        self.compressor.set_layout(MEMORY_KEY, layout.matrix_shapes())
        try:
            c = memory.compress(delta, key=MEMORY_KEY)
        except StateError:
            memory.reset()
            c = memory.compress(delta, key=MEMORY_KEY)
        packet = wire.encode(c, zstd=self.zstd)
        self.save(ctxt, memory)
        out.content[key] = packet_record(packet, layout.numel)
        return out


def compression_mod(spec="topk:ratio=0.01", *, error_feedback="auto", seed=None, zstd=False):
    """A Flower client mod that sends each training reply as a compressed update (see the module docstring).

    Put it first in the ClientApp's ``mods`` (outermost), and pair it with a
    :class:`gcomp.flower.CompressionStrategy` of the same ``uplink`` spec on the server.

    Parameters
    ----------
    spec : str, dict or gcomp.Compressor
        Any registered compressor with a wire codec (``"topk:ratio=0.01"``, ``"qsgd"``, ``"none"``...).
    error_feedback : str
        ``"auto"`` (the compressor's default: residual for biased compressors,
        none for unbiased ones), ``"residual"`` or ``"none"``.
    seed : int, optional
        Replaces the spec's seed (randomized compressors, a Compressor
        instance included: a copy with this seed); None keeps it.
    zstd : bool
        Add the wire format's zstd stage where it shrinks the packet.

    Returns
    -------
    callable
        The mod, ``mod(msg, context, call_next) -> Message``.

    Raises
    ------
    gcomp.errors.ConfigError
        A compressor without a wire codec, or an error feedback the server
        cannot follow (``ef21``, ``dgc``).

    Examples
    --------
    In a Flower app (docs/federated.md)::

        client = ClientApp(mods=[gcomp.flower.compression_mod("topk:ratio=0.01")])

    Called directly on a hand-built train message, with a training step that
    adds ``0, 1, ..., 7`` to the model: the reply carries one gcomp packet of
    the update's top 2 entries.

    >>> import numpy as np
    >>> from flwr.app import ArrayRecord, Context, Message, Metadata, RecordDict
    >>> from gcomp import wire
    >>> from gcomp.flower import PACKET_KEY, compression_mod
    >>> metadata = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="",
    ...                     group_id="1", created_at=0.0, ttl=600.0, message_type="train")
    >>> msg = Message(RecordDict({"arrays": ArrayRecord([np.zeros(8, np.float32)])}), metadata=metadata)
    >>> context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    >>> def train(msg, context):
    ...     trained = [a + np.arange(8, dtype=np.float32) for a in msg.content["arrays"].to_numpy_ndarrays()]
    ...     return Message(RecordDict({"arrays": ArrayRecord(trained)}), reply_to=msg)
    >>> mod = compression_mod("topk:ratio=0.25")
    >>> reply = mod(msg, context, train)
    >>> update = wire.decode(reply.content["arrays"][PACKET_KEY].data)
    >>> update.codec, update.count, update.numel
    ('topk', 2, 8)
    >>> "gcomp" in context.state          # the error-feedback memory, kept for the next round
    True
    """
    return _Mod(spec, error_feedback, seed, zstd)


def client_memory(mod, ctxt):
    """The error-feedback memory ``mod`` keeps in the client context ``ctxt`` (for inspection and tests)."""
    return mod.memory(ctxt)
