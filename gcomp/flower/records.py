"""Between Flower records and gcomp vectors: a model's ArrayRecord as one flat float32 vector, a wire packet as an Array.

A model travels in Flower as an :class:`flwr.app.ArrayRecord` of named arrays.
gcomp compresses one flat float32 vector per model (the arrays concatenated in
the record's order), so a top-k keeps the largest entries of the whole update,
and sends it as one gcomp wire packet (docs/wire-format.md) inside an
ArrayRecord holding a single :class:`flwr.app.Array` under :data:`~gcomp.flower.PACKET_KEY`
with ``stype`` :data:`~gcomp.flower.PACKET_STYPE`: its ``data`` is the packet's bytes,
nothing else (no numpy header, no pickle).
"""

import dataclasses

import numpy as np

from ..errors import ConfigError

__all__ = ["Layout", "flatten", "unflatten", "packet_record", "packet_bytes", "is_packet_record", "record_bytes",
           "PACKET_KEY", "PACKET_STYPE"]

#: the key of the one Array of a compressed record
PACKET_KEY = "gcomp.packet"
#: the serialization type Flower records for a gcomp wire packet
PACKET_STYPE = "gcomp.wire"

_FLOATS = ("float16", "float32", "float64")


@dataclasses.dataclass(frozen=True)
class Layout:
    """The names, shapes and dtypes of a model's arrays, in record order."""

    keys: tuple
    shapes: tuple
    dtypes: tuple

    @property
    def numel(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes))

    def matrix_shapes(self):
        """Each array's shape, for :meth:`gcomp.Compressor.set_layout` (PowerSGD per tensor)."""
        return [tuple(s) for s in self.shapes]


def flatten(record):
    """``(flat float32 vector, Layout)`` of an ArrayRecord of float arrays (a new array)."""
    keys, shapes, dtypes, parts = [], [], [], []
    for key, array in record.items():
        if array.stype == PACKET_STYPE:
            raise ConfigError(f"expected model arrays in the record, found a gcomp packet under {key!r}")
        a = array.numpy()
        if a.dtype.name not in _FLOATS:
            raise ConfigError(f"expected float arrays in the model record because gcomp compresses float vectors, "
                              f"found {a.dtype} under {key!r}")
        keys.append(key)
        shapes.append(tuple(int(d) for d in a.shape))
        dtypes.append(a.dtype.name)
        parts.append(a.reshape(-1).astype(np.float32, copy=False))
    flat = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return np.ascontiguousarray(flat, dtype=np.float32), Layout(tuple(keys), tuple(shapes), tuple(dtypes))


def unflatten(flat, layout):
    """An ArrayRecord of ``layout``'s arrays (their own dtypes) from the flat vector ``flat``."""
    from flwr.app import Array, ArrayRecord

    if flat.shape != (layout.numel,):
        raise ConfigError(f"expected a vector of {layout.numel} entries for this layout, found shape {flat.shape}")
    arrays = {}
    pos = 0
    for key, shape, dtype in zip(layout.keys, layout.shapes, layout.dtypes, strict=True):
        n = int(np.prod(shape))
        arrays[key] = Array(np.ascontiguousarray(flat[pos: pos + n].reshape(shape).astype(dtype, copy=False)))
        pos += n
    return ArrayRecord(arrays)


def packet_record(packet: bytes, numel: int):
    """An ArrayRecord carrying one gcomp wire packet (for a vector of ``numel`` entries)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({PACKET_KEY: Array(dtype="uint8", shape=(int(numel),), stype=PACKET_STYPE, data=bytes(packet))})


def is_packet_record(record) -> bool:
    """Whether ``record`` is what :func:`packet_record` makes (one Array of stype gcomp.wire)."""
    return any(array.stype == PACKET_STYPE for array in record.values())


def packet_bytes(record, who="the sender"):
    """The packet bytes of a :func:`packet_record`; ConfigError naming ``who`` if it is not one."""
    keys = list(record.keys())
    if keys != [PACKET_KEY] or record[PACKET_KEY].stype != PACKET_STYPE:
        stypes = sorted({array.stype for array in record.values()})
        raise ConfigError(f"expected one gcomp packet (key {PACKET_KEY!r}, stype {PACKET_STYPE!r}) from {who} because "
                          f"the server decodes compressed updates, found keys {keys[:4]} with stypes {stypes}; "
                          "add gcomp.flower.compression_mod to the ClientApp's mods")
    return record[PACKET_KEY].data


def record_bytes(content) -> int:
    """Bytes of the array payloads of a message's RecordDict: what Flower carries for the model or its packet."""
    return int(sum(len(array.data) for record in content.array_records.values() for array in record.values()))
