"""State dicts as bytes without pickle: for gathering every rank's checkpoint state over a transport.

``pack(state) -> bytes`` and ``unpack(data) -> state`` round-trip the nested
values gcomp's ``state_dict()`` methods hold: dicts (int, str or bool keys,
kept with their types), lists, tuples, None, bools, ints, floats, strings,
numpy arrays and CPU torch tensors of bool, integer and float dtypes.

Layout: ``b"GCST"``, u32 version (1), u64 length of a UTF-8 JSON document,
the document, then the arrays' raw little-endian bytes back to back.  In the
document a dict is ``{"d": [[key, value], ...]}``, a tuple ``{"t": [...]}``,
an array ``{"a": [offset, nbytes, dtype, shape, is_torch]}``.  Decoding
checks every offset, size, dtype and shape against the buffer before it
copies anything, and raises :class:`gcomp.errors.StateError` otherwise.
Nothing is ever unpickled.
"""

import json
import struct

import numpy as np

from .errors import StateError

__all__ = ["pack", "unpack"]

MAGIC = b"GCST"
VERSION = 1
_HEAD = struct.Struct("<4sIQ")
_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
           "float64")
_MAX_DEPTH = 64


def pack(state) -> bytes:
    """The bytes of ``state`` (see the module docstring); raises TypeError for values it cannot hold.

    Parameters
    ----------
    state : dict or list or tuple or scalar or numpy.ndarray or torch.Tensor
        Nested values of the kinds the module docstring lists.

    Returns
    -------
    bytes

    Raises
    ------
    TypeError
        A value of another kind, a dict key that is not an int, str or bool,
        or nesting deeper than 64.

    Examples
    --------
    >>> import numpy as np
    >>> from gcomp import statecodec
    >>> data = statecodec.pack({"step": 3, "residual": np.arange(4, dtype=np.float32)})
    >>> data[:4]
    b'GCST'
    >>> state = statecodec.unpack(data)
    >>> state["step"], state["residual"].tolist()
    (3, [0.0, 1.0, 2.0, 3.0])
    """
    blobs = []
    offset = [0]

    def enc(value, depth):
        if depth > _MAX_DEPTH:
            raise TypeError(f"expected a state nested at most {_MAX_DEPTH} deep")
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)):
            return float(value)
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, (str, int, bool)):
                    raise TypeError(f"expected dict keys of type str, int or bool, found {type(key).__name__}")
            return {"d": [[k, enc(v, depth + 1)] for k, v in value.items()]}
        if isinstance(value, list):
            return [enc(v, depth + 1) for v in value]
        if isinstance(value, tuple):
            return {"t": [enc(v, depth + 1) for v in value]}
        is_torch = type(value).__module__.startswith("torch")
        if is_torch:
            if value.device.type != "cpu":
                raise TypeError(f"expected CPU tensors in a state, found one on {value.device}")
            value = value.detach().contiguous().numpy()
        if isinstance(value, np.ndarray):
            a = np.ascontiguousarray(value)
            if a.dtype.name not in _DTYPES:
                raise TypeError(f"expected arrays of dtype {_DTYPES}, found {a.dtype}")
            a = a.astype(a.dtype.newbyteorder("<"), copy=False)
            blobs.append(a.tobytes())
            entry = {"a": [offset[0], a.nbytes, a.dtype.name, list(a.shape), is_torch]}
            offset[0] += a.nbytes
            return entry
        raise TypeError(f"expected state values gcomp writes (dicts, lists, numbers, strings, arrays), "
                        f"found {type(value).__name__}")

    doc = json.dumps(enc(state, 0), separators=(",", ":")).encode()
    return _HEAD.pack(MAGIC, VERSION, len(doc)) + doc + b"".join(blobs)


def unpack(data):
    """The state of ``pack``'s bytes; arrays come back as copies (torch tensors where they were tensors).

    Parameters
    ----------
    data : bytes or bytearray or memoryview or numpy.ndarray
        What :func:`pack` returned.

    Returns
    -------
    object
        The state, with dict keys of their original types.

    Raises
    ------
    gcomp.errors.StateError
        The bytes are not a packed state, of another version, or any offset,
        size, dtype or shape in them does not fit.

    Examples
    --------
    >>> import torch
    >>> from gcomp import statecodec
    >>> statecodec.unpack(statecodec.pack({1: (torch.ones(2), None)}))
    {1: (tensor([1., 1.]), None)}
    >>> statecodec.unpack(b"not a state")
    Traceback (most recent call last):
        ...
    gcomp.errors.StateError: expected at least 16 bytes of packed state, found 11
    """
    mv = memoryview(bytes(data) if not isinstance(data, (bytes, bytearray)) else data)
    if len(mv) < _HEAD.size:
        raise StateError(f"expected at least {_HEAD.size} bytes of packed state, found {len(mv)}")
    magic, version, doc_len = _HEAD.unpack_from(mv, 0)
    if magic != MAGIC:
        raise StateError(f"expected packed state starting {MAGIC!r}, found {bytes(magic)!r}")
    if version != VERSION:
        raise StateError(f"expected packed state version {VERSION}, found {version}")
    if doc_len > len(mv) - _HEAD.size:
        raise StateError(f"expected a document of at most {len(mv) - _HEAD.size} bytes, found a length of {doc_len}")
    try:
        doc = json.loads(bytes(mv[_HEAD.size: _HEAD.size + doc_len]))
    except (ValueError, RecursionError) as exc:
        raise StateError(f"expected a JSON document in packed state: {exc}") from None
    blob = mv[_HEAD.size + doc_len:]

    def dec(value, depth):
        if depth > _MAX_DEPTH:
            raise StateError(f"expected packed state nested at most {_MAX_DEPTH} deep")
        if isinstance(value, list):
            return [dec(v, depth + 1) for v in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {"d"} and isinstance(value["d"], list):
            out = {}
            for pair in value["d"]:
                if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (str, int, bool))):
                    raise StateError("expected [key, value] pairs in a packed dict")
                out[pair[0]] = dec(pair[1], depth + 1)
            return out
        if set(value) == {"t"} and isinstance(value["t"], list):
            return tuple(dec(v, depth + 1) for v in value["t"])
        if set(value) == {"a"}:
            return _array(value["a"], blob)
        raise StateError(f"expected a packed dict, tuple or array, found keys {sorted(value)[:8]}")

    return dec(doc, 0)


def _array(spec, blob):
    if not (isinstance(spec, list) and len(spec) == 5):
        raise StateError("expected [offset, nbytes, dtype, shape, is_torch] for a packed array")
    offset, nbytes, dtype, shape, is_torch = spec
    if dtype not in _DTYPES or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise StateError(f"expected a known dtype and a shape of non-negative ints, found {dtype!r} {shape!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, nbytes)):
        raise StateError("expected non-negative integer offset and size for a packed array")
    dt = np.dtype(dtype).newbyteorder("<")
    count = 1
    for d in shape:
        count *= d
    if count * dt.itemsize != nbytes or offset + nbytes > len(blob):
        raise StateError(f"expected {nbytes} bytes at {offset} to hold {dtype}{shape} within {len(blob)} bytes")
    a = np.frombuffer(blob[offset: offset + nbytes], dtype=dt).astype(dt.newbyteorder("="), copy=True).reshape(shape)
    if is_torch:
        import torch

        return torch.from_numpy(a)
    return a


def gather(transport, state) -> dict:
    """Every rank's ``state``, gathered over ``transport`` (collective): ``{"gathered": 1, "world_size": P, "ranks": [...]}``.

    Every rank gets the whole; the usual script saves it on rank 0 alone, and
    every rank later passes the loaded whole to ``load_state_dict``, which
    takes its own part (:func:`own_part`).
    """
    parts = transport.allgatherv(np.frombuffer(pack(state), np.uint8))
    return {"gathered": 1, "world_size": transport.size, "ranks": [unpack(bytes(p)) for p in parts]}


def own_part(state, rank, size):
    """This rank's state from a :func:`gather` result (any other state is returned as it is)."""
    if not (isinstance(state, dict) and state.get("gathered") == 1):
        return state
    ranks = state.get("ranks")
    if state.get("world_size") != size or not isinstance(ranks, list) or len(ranks) != size:
        raise StateError(f"expected a gathered checkpoint of {size} ranks, found one of {state.get('world_size')}: "
                         "resume with the world size it was saved at")
    return ranks[rank]
