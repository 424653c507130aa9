"""Downlink compression: the server sends the global model as compressed differences from a public copy.

The server keeps a *public model* ``p``: what every client that followed
along holds.  Each round it compresses the gap between the new global model
``x`` and ``p``, ``c = C(x - p)``, and moves ``p += D(c)``.  What a round's
packet drops stays in the gap and is sent in a later round: this is error
feedback on the server, in the public-copy form (the memory is ``x - p``).

A client holds ``p`` as of the last round it trained in (in its context
state).  When sampled again it gets the packets of the rounds since then, in
order, or the dense ``p`` when it holds nothing, or when those packets would
weigh more than the dense model (the server keeps packets only while their
total is under the dense size).  Every downlink message carries a
ConfigRecord ``"gcomp.downlink"`` with the round, the round the packets start
from (-1: dense), the compressor, and the CRC-32 of ``p``'s bytes; the client
applies the packets with the same float32 operations as the server and
refuses (with an error reply, after which the server sends it the dense model)
anything that does not reproduce that checksum.

Clients train from ``p``; the server rebuilds each update on its own model
``x`` (``x + update``), so the aggregate moves ``x`` and nothing is lost.
"""

import json
import zlib

import numpy as np

from .. import wire
from ..compressors import compressor as build_compressor
from ..errors import ConfigError
from .records import PACKET_STYPE, Layout, flatten, unflatten

__all__ = ["CONFIG_KEY", "STATE_KEY", "PublicModel", "apply_downlink"]

#: the ConfigRecord of a train message that describes its downlink payload
CONFIG_KEY = "gcomp.downlink"
#: the ConfigRecord in the client's ``context.state`` holding its copy of the public model
STATE_KEY = "gcomp.downlink"
_PREFIX = "gcomp.down."


def _crc(x):
    return zlib.crc32(memoryview(x).cast("B"))


class PublicModel:
    """The server's side: the public model, the recent packets and which round each client holds."""

    def __init__(self, spec):
        self.compressor = build_compressor(spec)
        if self.compressor.codec is None:
            raise ConfigError(f"expected a downlink compressor with a wire codec, found {self.compressor.name!r}")
        self.spec = spec if isinstance(spec, str) else repr(self.compressor)
        self.public = None
        self.layout = None
        self.chain = []  # [(round, packet bytes)], consecutive rounds, oldest first
        self.holds = {}  # node id -> the round of the public model it holds

    def advance(self, server_round, x, layout):
        """Move the public model towards ``x`` (the round's global model) by one compressed packet."""
        if self.public is None or layout != self.layout:
            self.public, self.layout, self.chain, self.holds = x.copy(), layout, [], {}
            return
        c = self.compressor.compress(x - self.public, step=server_round, key="downlink")
        packet = wire.encode(c)
        self._apply(packet)
        self.chain.append((server_round, packet))
        dense = 4 * self.public.size
        while self.chain and sum(len(p) for _, p in self.chain) > dense:
            self.chain.pop(0)

    def _apply(self, packet):
        update = np.empty(self.public.size, np.float32)
        self.compressor.decompress(wire.decode(packet, expected_numel=self.public.size), out=update)
        self.public += update

    def payload(self, node, server_round):
        """``(ArrayRecord, ConfigRecord)`` for ``node`` in this round: packets since the round it holds, or dense."""
        from flwr.app import Array, ArrayRecord, ConfigRecord

        held = self.holds.get(node)
        first = self.chain[0][0] if self.chain else server_round + 1
        if held is not None and held >= first - 1 and held < server_round:
            record = ArrayRecord({f"{_PREFIX}{r}": Array(dtype="uint8", shape=(self.public.size,), stype=PACKET_STYPE,
                                                         data=packet)
                                  for r, packet in self.chain if r > held})
            base = held
        else:
            record, base = unflatten(self.public, self.layout), -1
        self.holds[node] = server_round
        info = ConfigRecord({"round": int(server_round), "base": int(base), "compressor": self.spec,
                             "crc": int(_crc(self.public))})
        return record, info

    def forget(self, node):
        """``node`` may not hold the latest public model (it failed or did not answer): send it dense next time."""
        self.holds.pop(node, None)


def _layout_json(layout):
    return json.dumps({"keys": list(layout.keys), "shapes": [list(s) for s in layout.shapes],
                       "dtypes": list(layout.dtypes)})


def _layout_from(text):
    d = json.loads(text)
    return Layout(tuple(d["keys"]), tuple(tuple(s) for s in d["shapes"]), tuple(d["dtypes"]))


def apply_downlink(msg, ctxt, who):
    """Turn a compressed downlink train message into one with the dense public model; returns ``(msg, error)``."""
    from flwr.app import ConfigRecord, RecordDict

    info = msg.content.config_records[CONFIG_KEY]
    key, record = next(iter(msg.content.array_records.items()))
    state = ctxt.state.config_records.get(STATE_KEY) if STATE_KEY in ctxt.state else None
    base = int(info["base"])
    if base == -1:
        x, layout = flatten(record)
    else:
        if state is None or int(state["round"]) != base:
            held = "nothing" if state is None else f"round {int(state['round'])}"
            return msg, (f"gcomp downlink on {who}: expected to hold the public model of round {base} because the "
                         f"server sent packets from there, found {held}; the server sends the dense model next time")
        x = np.frombuffer(state["model"], np.float32).copy()
        layout = _layout_from(state["layout"])
        comp = build_compressor(info["compressor"])
        for name in sorted(record.keys(), key=lambda k: int(k[len(_PREFIX):])):
            update = np.empty(x.size, np.float32)
            comp.decompress(wire.decode(record[name].data, expected_numel=x.size), out=update)
            x += update
    if _crc(x) != int(info["crc"]):
        return msg, (f"gcomp downlink on {who}: expected the public model of round {int(info['round'])} to have "
                     f"CRC-32 {int(info['crc']):#010x}, found {_crc(x):#010x}")
    ctxt.state[STATE_KEY] = ConfigRecord({"round": int(info["round"]), "model": x.tobytes(),
                                          "layout": _layout_json(layout)})
    content = RecordDict({k: v for k, v in msg.content.items() if k not in (CONFIG_KEY, key)})
    content[key] = unflatten(x, layout)
    msg.content = content
    return msg, None
