"""The Compressor contract and the Compressed form every compressor produces.

A compressor is configuration plus two functions: :meth:`Compressor.compress`
turns a flat float vector into a :class:`Compressed`, and
:meth:`Compressor.decompress` turns that back into a dense vector.  Each class
declares:

* ``name`` and ``description`` (the registry key and its one-line summary);
* ``unbiased``: ``E[C(x)] = x`` over the compressor's randomness;
* ``linear``: compressed forms of several vectors can be summed as they are
  (see :meth:`Compressor.combine`), so an allreduce can sum them on the wire;
* :meth:`Compressor.contraction`: ``delta`` with
  ``||x - C(x)||^2 <= (1 - delta) ||x||^2`` for every x, or ``None``;
* :meth:`Compressor.max_payload_bytes`: an upper bound on the wire payload;
* ``codec``: its wire :class:`gcomp.compressors.codec.Codec` (None: not on the wire);
* :meth:`Compressor.strategy`: a hypothesis strategy of valid parameters, for
  :func:`gcomp.testing.compressor_configs` and the property battery.

What the collective algorithms need to know is declared here too, never
sniffed from names or types (docs/architecture.md):

* ``identity``: the compressed form is the input itself (``none``): a plain
  dense allreduce does the same work with no encoding;
* ``linear`` with ``summable`` arrays: :meth:`Compressor.summands` gives the
  arrays an allreduce sums (in the type they are summed in; their size is
  bounded by :meth:`Compressor.summed_bytes`) and :meth:`Compressor.with_sums`
  puts the sums back;
* ``phased``: linear in phases rather than as a whole (PowerSGD):
  :meth:`Compressor.phases` yields the arrays to sum, one per phase, receives
  each sum, and returns the dense result.

Randomness comes from the configured ``seed`` and the ``step`` and ``key``
passed to :meth:`Compressor.compress` (see :func:`gcomp.kernels.random.derive_seed`),
never from a global generator: equal (seed, step, key) give equal outputs on
every rank.

Inputs and outputs: ``compress`` takes a 1-D float32, float16 or float64 numpy
array, or a 1-D CPU torch tensor of those dtypes or bfloat16; anything else
raises (another shape: :class:`gcomp.errors.ConfigError`, a ValueError; another
type, dtype or device: TypeError).  ``decompress`` returns the kind and dtype
that were compressed: a numpy array in, a numpy array of its dtype out; a torch
tensor in, a CPU torch tensor of its dtype out.  A ``Compressed`` decoded from
wire bytes does not know its sender's kind (the packet carries the dtype only),
so it decompresses to numpy, except bfloat16 (numpy has no such dtype), which
is a torch tensor.  ``decompress(c, out=...)`` fills and returns ``out``,
numpy or torch.
"""

import dataclasses
import math
import zlib
from typing import ClassVar

import numpy as np

from ..errors import ConfigError
from ..kernels.random import derive_seed
from ._params import Param

__all__ = ["Compressed", "Compressor", "as_flat_f32", "input_kind", "DTYPES", "KINDS"]

_F32 = np.dtype(np.float32)
_I64 = np.dtype(np.int64)
_TWO64 = 1 << 64

#: Dtypes a compressor accepts, by name; also the wire format's dtype ids.
DTYPES = ("float32", "float16", "bfloat16", "float64")
#: What ``decompress`` returns: the kind of array that was compressed.
KINDS = ("numpy", "torch")

#: Vectors of at least this many entries are compressed into *packet-backed* forms: the compressor's kernel writes
#: its arrays straight into the payload of a packet buffer that :func:`gcomp.wire.encode_array` then completes in
#: place, with no copy (:mod:`gcomp.wire`, "Packet-backed forms").  Smaller vectors keep fresh arrays: a frame
#: costs a few microseconds and copying a small payload costs less.
FRAME_MIN = 1 << 16
#: ``(codec, numel, codec parameters tuple) -> frame or None``: set by :mod:`gcomp.wire` when it is imported (the
#: compressors import nothing of the layers above them); None until then, and then no form is packet-backed
_frame_maker = None


def framed(c, frame):
    """``c`` with its ``frame`` set (the frame its arrays are views of; None leaves it unset); returns ``c``."""
    if frame is not None:
        c.frame = frame
    return c


def new_frame(codec, numel, ptuple=()):
    """A fresh packet-backed frame (``.views``: the payload arrays in codec order) for a dense codec's form of
    ``numel`` entries, or None: fewer than ``FRAME_MIN`` entries, frames off (``gcomp.wire.FRAMES``), or gcomp.wire
    not imported."""
    maker = _frame_maker
    return None if numel < FRAME_MIN or maker is None else maker(codec, numel, ptuple)


@dataclasses.dataclass
class Compressed:
    """The compressed form of one flat vector.

    ``arrays`` holds the numpy arrays the codec sends (their names and dtypes are
    fixed per codec, see docs/wire-format.md); ``params`` the small integers the
    decoder needs.  ``count`` is the number of selected elements for sparse
    codecs (0 otherwise).  ``dtype`` is the input's dtype name and ``kind``
    whether it was a numpy array or a torch tensor; :meth:`Compressor.decompress`
    restores both.  ``kind`` does not travel on the wire: a decoded packet is
    ``"numpy"`` (its bfloat16 still decompresses to a torch tensor).

    Compressors build it; users pass it on (to :func:`gcomp.wire.encode`,
    :meth:`Compressor.decompress`) rather than make one.

    Parameters
    ----------
    codec : str
        The name of the compressor that made it.
    numel : int
        Elements of the dense vector.
    dtype : str
        The input's dtype name, one of ``float32``, ``float16``, ``bfloat16``, ``float64``.
    arrays : dict
        ``{name: numpy array}``, what the codec sends.
    params : dict, optional
        Small integers the decoder needs (the codec's parameters).
    count : int, optional
        Selected elements of a sparse codec; 0 otherwise.
    step : int, optional
        The step it was compressed at.
    seed : int, optional
        The 64-bit seed its randomness came from (0: deterministic).
    kind : str, optional
        ``"numpy"`` or ``"torch"``: what :meth:`Compressor.decompress` returns.

    Examples
    --------
    >>> import numpy as np
    >>> import gcomp
    >>> c = gcomp.compressor("topk:ratio=0.25").compress(np.arange(8, dtype=np.float32))
    >>> c.codec, c.numel, c.dtype, c.count, sorted(c.arrays), c.kind
    ('topk', 8, 'float32', 2, ['indices', 'values'], 'numpy')
    """

    codec: str
    numel: int
    dtype: str
    arrays: dict
    params: dict = dataclasses.field(default_factory=dict)
    count: int = 0
    step: int = 0
    seed: int = 0
    kind: str = "numpy"
    #: the packet buffer its arrays were written into (a packet-backed form, see :data:`gcomp.wire.FRAME_MIN`), or
    #: None: set by the compressor that made it, not compared nor shown; ``dataclasses.replace``, a deep copy or a
    #: pickle of the form drops it
    frame = None  # no annotation: not a dataclass field (no constructor argument, not compared, not shown)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (the payload before wire framing and index coding).

        Examples
        --------
        >>> import numpy as np
        >>> import gcomp
        >>> gcomp.compressor("fp16").compress(np.zeros(8, np.float32)).nbytes
        16
        """
        return int(sum(a.nbytes for a in self.arrays.values()))


def _is_torch(x):
    return type(x).__module__.startswith("torch")


def input_kind(x) -> str:
    """``"torch"`` for a torch tensor, ``"numpy"`` otherwise: the kind ``decompress`` gives back."""
    return "torch" if _is_torch(x) else "numpy"


def _not_1d(what, shape):
    return ConfigError(f"expected a 1-D vector, found a {what} of shape {shape}; flatten it with x.reshape(-1) "
                       "(and reshape the decompressed vector back)")


def _torch_to_numpy(x):
    import torch

    if x.device.type != "cpu":
        raise TypeError(f"expected a CPU tensor, found a tensor on {x.device}; move it with .cpu() first")
    if x.dim() != 1:
        raise _not_1d("tensor", tuple(x.shape))
    if x.dtype == torch.bfloat16:
        bits = x.detach().contiguous().view(torch.int16).numpy().astype(np.uint32) << np.uint32(16)
        return bits.view(np.float32), "bfloat16"
    names = {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64"}
    if x.dtype not in names:
        raise TypeError(f"expected a float32, float16, bfloat16 or float64 tensor, found {x.dtype}")
    a = x.detach().contiguous().numpy()
    return np.ascontiguousarray(a, dtype=np.float32), names[x.dtype]


def as_flat_f32(x):
    """``(float32 1-D contiguous array, dtype name)`` from a numpy array or CPU torch tensor.

    float32 contiguous input is returned without a copy.  Another shape than
    1-D raises ConfigError (a ValueError); another type, dtype or device TypeError.
    """
    if type(x) is np.ndarray and x.dtype is _F32 and x.ndim == 1 and x.flags.c_contiguous:
        return x, "float32"  # the common case, decided in a few attribute reads
    if isinstance(x, np.ndarray):
        if x.ndim != 1:
            raise _not_1d("numpy array", x.shape)
        if x.dtype == np.float32:
            return np.ascontiguousarray(x), "float32"
        if x.dtype in (np.float16, np.float64):
            return x.astype(np.float32), x.dtype.name
        raise TypeError(f"expected a float32, float16 or float64 array (or a bfloat16 torch tensor), found {x.dtype}")
    if _is_torch(x):
        return _torch_to_numpy(x)
    raise TypeError(f"expected a numpy array or a CPU torch tensor, found {type(x).__name__}")


def restore_dtype(dense_f32, dtype, out=None, kind="numpy"):
    """Cast a float32 result to ``dtype`` as a ``kind`` array (bfloat16 is always a torch tensor), or fill ``out``."""
    if out is not None:
        return _fill_out(dense_f32, out)
    if kind == "torch" or dtype == "bfloat16":
        import torch

        return torch.from_numpy(dense_f32).to(getattr(torch, dtype))
    if dtype == "float32":
        return dense_f32
    return dense_f32.astype(dtype)


def _f32_target(out, numel):
    """``out`` as a writeable 1-D contiguous float32 numpy array of ``numel`` entries (a view of a CPU
    float32 tensor), or None when it is not one (then the result is written with a cast)."""
    if type(out) is not np.ndarray:
        if not _is_torch(out) or out.device.type != "cpu" or str(out.dtype) != "torch.float32" or out.requires_grad:
            return None
        out = out.detach().numpy()
    if out.dtype is not _F32 or out.ndim != 1 or out.size != numel or not out.flags.c_contiguous \
            or not out.flags.writeable:
        return None
    return out


def _fill_out(dense_f32, out):
    if isinstance(out, np.ndarray):
        if out.shape != dense_f32.shape:
            raise ConfigError(f"expected out of shape {dense_f32.shape}, found {out.shape}")
        if out.dtype not in (np.float32, np.float16, np.float64):
            raise TypeError(f"expected a float out array, found {out.dtype}")
        out[...] = dense_f32
        return out
    if _is_torch(out):
        import torch

        if tuple(out.shape) != dense_f32.shape:
            raise ConfigError(f"expected out of shape {dense_f32.shape}, found {tuple(out.shape)}")
        out.copy_(torch.from_numpy(dense_f32))
        return out
    raise TypeError(f"expected out to be a numpy array or torch tensor, found {type(out).__name__}")


class Compressor:
    """Base class: configuration plus ``compress`` / ``decompress``.

    Subclasses set the class attributes, declare their parameters in
    ``params`` and implement ``_compress`` / ``_decompress`` on float32 arrays.
    ``get_config()`` round-trips through :func:`gcomp.compressor`.

    ``params`` maps each parameter name to its default (None: required) or to
    a :class:`gcomp.compressors._params.Param` (default, type, allowed values,
    help, and the check the constructor runs; ``gcomp list NAME`` prints them).
    At class creation ``params`` becomes ``{name: default}`` and the
    declarations move to ``param_specs``.  Rules between parameters go in
    ``_validate``.

    ``compress`` takes a 1-D numpy array or CPU torch tensor (see the module
    docstring); ``decompress`` returns the kind and dtype that were compressed:
    numpy in, numpy out; a torch tensor in, a torch tensor of its dtype out
    (a packet decoded from bytes: numpy, bfloat16 as a torch tensor).

    Build one with :func:`gcomp.compressor` rather than the class: the
    registry maps names to classes.

    Parameters
    ----------
    **params
        The compressor's parameters, those its ``params`` declares (``gcomp
        list NAME`` prints them); missing ones take their defaults, required
        ones (default None) must be given.

    Raises
    ------
    gcomp.errors.ConfigError
        An unknown or missing parameter, or a value the declaration refuses.

    Examples
    --------
    >>> import numpy as np
    >>> import gcomp
    >>> c = gcomp.compressor("topk:ratio=0.25")
    >>> x = np.array([0.5, -3.0, 0.25, 2.0, 0.0, 1.0, -0.5, 0.1], np.float32)
    >>> packet = c.compress(x)
    >>> c.decompress(packet).tolist()
    [0.0, -3.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    >>> gcomp.compressor(c.get_config()) == c
    True

    A compressor of your own subclasses it and implements ``_compress`` and
    ``_decompress`` on float32 arrays (docs/testing.md checks this one)::

        from gcomp.compressors.base import Compressed, Compressor

        class HalfTopK(Compressor):
            name = "half-topk"
            description = "the larger half of the entries"

            def contraction(self, numel):
                return 0.5

            def max_payload_bytes(self, numel):
                return 4 * numel

            def _compress(self, x, *, step, seed):
                cut = np.median(np.abs(x)) if x.size else 0.0
                kept = np.where(np.abs(x) >= cut, x, 0).astype(np.float32)
                return Compressed(self.name, x.size, "float32", {"values": kept})

            def _decompress(self, c):
                return np.array(c.arrays["values"], dtype=np.float32)
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    unbiased: ClassVar[bool] = False
    linear: ClassVar[bool] = False
    randomized: ClassVar[bool] = False
    #: parameter name -> default value (None means required), or a Param declaring it (see the class docstring)
    params: ClassVar[dict] = {}
    #: parameter name -> its Param declaration (filled from ``params`` at class creation)
    param_specs: ClassVar[dict] = {}
    #: whether ``_encode(x, seed, residual)`` fuses the error-feedback update
    fused_residual: ClassVar[bool] = False
    #: names of the arrays that :meth:`combine` sums for linear compressors
    summable: ClassVar[tuple] = ()
    #: the compressed form is the float32 input itself, so collectives send it densely
    identity: ClassVar[bool] = False
    #: linear in phases (see :meth:`phases`), not as a whole
    phased: ClassVar[bool] = False
    #: a phased compressor whose :meth:`phases` take ``residual=, scale=, divisor=`` (residual error feedback
    #: fused into its own passes; the memory offers its buffer through ``ErrorFeedback.phase_buffer``)
    fuses_residual: ClassVar[bool] = False
    #: the wire codec (a :class:`gcomp.compressors.Codec`), or None for a compressor with no wire format
    codec: ClassVar = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("params")
        if declared is not None:
            cls.param_specs = {key: p for key, p in declared.items() if isinstance(p, Param)}
            cls.params = {key: (p.default if isinstance(p, Param) else p) for key, p in declared.items()}

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {unknown} for compressor {self.name!r}; "
                f"valid: {sorted(self.params) or 'none'}"
            )
        values = dict(self.params)
        values.update(params)
        for key, value in values.items():
            if value is None:
                raise ConfigError(self._missing(key))
        self._params = values
        for key, spec in self.param_specs.items():
            spec.validate(self.name, key, values[key], ConfigError)
        self._validate()
        # Parameters as plain instance attributes (what __getattr__ would return), so ``self.ratio`` on a
        # hot path is one dict hit rather than a failed lookup and a call; names the class defines keep theirs.
        cls = type(self)
        self.__dict__.update({key: value for key, value in values.items() if not hasattr(cls, key)})

    @classmethod
    def _missing(cls, key):
        """The error message for a required parameter that was not given."""
        text = f"compressor {cls.name!r} needs parameter {key!r}"
        spec = cls.param_specs.get(key)
        if spec is not None:
            text += f" ({spec.type} {spec.allowed})"
            if spec.example is not None:
                text += f": pass it, e.g. {cls.name}:{key}={spec.example}"
            if spec.hint:
                text += f"; {spec.hint}"
        return text

    # -- configuration -------------------------------------------------
    def _validate(self):
        """Check ``self._params``; raise ConfigError naming what is valid."""

    def __getattr__(self, item):
        params = self.__dict__.get("_params")
        if params is not None and item in params:
            return params[item]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {item!r}")

    def get_config(self) -> dict:
        """``{"name": ..., **params}``; ``gcomp.compressor(c.get_config())`` rebuilds it.

        Examples
        --------
        >>> import gcomp
        >>> gcomp.compressor("topk:ratio=0.01").get_config()
        {'name': 'topk', 'ratio': 0.01}
        """
        return {"name": self.name, **self._params}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"gcomp.compressor({self.name!r}{', ' if args else ''}{args})"

    def __eq__(self, other):
        return isinstance(other, Compressor) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(repr(self))

    # -- declared properties -------------------------------------------
    @property
    def default_feedback(self) -> str:
        """The error feedback that converges with this compressor, used when an adapter is given ``"auto"``.

        ``"none"`` for unbiased compressors: they are not contractive, and a
        residual would accumulate their (large, zero-mean) error until training
        diverges (QSGD, TernGrad, random-k with rescaling: measured).
        ``"residual"`` for biased ones (top-k, sign, casts, PowerSGD), which
        need it to converge.
        """
        return "none" if self.unbiased else "residual"

    def contraction(self, numel: int) -> float | None:
        """delta in ``||x - C(x)||^2 <= (1 - delta) ||x||^2``, or None if no such bound.

        Parameters
        ----------
        numel : int
            Elements of the vectors compressed.

        Examples
        --------
        >>> import gcomp
        >>> gcomp.compressor("topk:ratio=0.25").contraction(100)
        0.25
        """
        return None

    def max_payload_bytes(self, numel: int) -> int:
        """Upper bound on the encoded payload for a vector of ``numel`` elements.

        Parameters
        ----------
        numel : int
            Elements of the vector.

        Examples
        --------
        >>> import gcomp
        >>> gcomp.compressor("fp16").max_payload_bytes(1000)
        2000
        """
        raise NotImplementedError

    @classmethod
    def strategy(cls):
        """A hypothesis strategy of valid parameter dicts (default: the defaults only).

        :func:`gcomp.testing.compressor_configs` draws from it; a subclass with
        parameters overrides it.  Needs hypothesis installed.
        """
        from hypothesis import strategies as st

        return st.just({})

    # -- what the collectives use ---------------------------------------
    def summands(self, c: "Compressed") -> dict:
        """``{name: array}`` an allreduce sums for a linear compressor: fresh, writable, in the type summed on the wire.

        Parameters
        ----------
        c : Compressed
            A compressed form of this compressor.
        """
        return {name: np.array(c.arrays[name], copy=True) for name in self.summable}

    def summed_bytes(self, numel: int) -> int:
        """Upper bound on the bytes of :meth:`summands` (what one rank's allreduce sums) for ``numel`` entries.

        Parameters
        ----------
        numel : int
            Elements of the dense vector.
        """
        return self.max_payload_bytes(numel)

    def with_sums(self, c: "Compressed", sums: dict) -> "Compressed":
        """``c`` with its summable arrays replaced by the summed :meth:`summands`.

        Parameters
        ----------
        c : Compressed
            This rank's compressed form.
        sums : dict
            ``{name: array}``, the sums over ranks of :meth:`summands`.
        """
        return dataclasses.replace(c, arrays={**c.arrays, **sums})

    def set_layout(self, key, shapes) -> None:
        """The shapes of the tensors that make up ``key``'s vector, in order (the DDP hook tells it per bucket).

        A compressor that works per tensor (PowerSGD factorizes each weight
        matrix) uses it; the default ignores it.

        Parameters
        ----------
        key : int or str
            The bucket or tensor id later passed to :meth:`compress`.
        shapes : list of tuple
            The shapes of the tensors concatenated into the flat vector.
        """

    def phases(self, x: np.ndarray, key=0):
        """Generator for ``phased`` compressors: yields float32 arrays to sum over ranks, is sent each sum,
        and returns the dense result (the sum over ranks of what the inputs compress to).

        Parameters
        ----------
        x : numpy.ndarray
            This rank's float32 vector.
        key : int or str, optional
            The bucket or tensor id (selects the per-key state, such as PowerSGD's warm start).
        """
        raise NotImplementedError(f"compressor {self.name!r} is not phased")

    # -- work ----------------------------------------------------------
    def state_dict(self) -> dict:
        """Compressor-held state (PowerSGD's warm start); stateless compressors return ``{}``."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output.

        Parameters
        ----------
        state : dict
            What :meth:`state_dict` returned.
        """

    def reset(self, key=None) -> None:
        """Forget compressor-held state of ``key`` (or all); stateless compressors do nothing.

        Parameters
        ----------
        key : int or str or None, optional
            The bucket or tensor id whose state to drop; None drops all.
        """

    def compress(self, x, *, step: int = 0, key: int = 0) -> Compressed:
        """Compress the 1-D vector ``x`` (numpy array or CPU torch tensor; another shape raises ConfigError).

        ``step`` and ``key`` (a bucket or tensor id) pick the randomness
        together with the configured ``seed``; equal inputs give equal outputs.
        The result remembers ``x``'s dtype and kind (numpy or torch) for
        :meth:`decompress`.

        Parameters
        ----------
        x : numpy.ndarray or torch.Tensor
            A 1-D float32, float16 or float64 array, or a 1-D CPU tensor of
            those dtypes or bfloat16.
        step : int, optional
            The training step.
        key : int or str, optional
            The bucket or tensor id.

        Returns
        -------
        Compressed

        Examples
        --------
        >>> import numpy as np
        >>> import gcomp
        >>> c = gcomp.compressor("topk:ratio=0.25")
        >>> packet = c.compress(np.array([0.5, -3.0, 0.25, 2.0, 0.0, 1.0, -0.5, 0.1], np.float32))
        >>> packet.count, packet.arrays["values"].tolist()
        (2, [-3.0, 2.0])
        """
        flat, dtype = as_flat_f32(x)
        seed = self.seed_for(step, key)
        c = self._compress(flat, step=step, seed=seed)
        return _stamp(c, x, dtype, step, seed)

    def seed_for(self, step: int, key=0) -> int:
        """The 64-bit seed of (configured seed, step, key); 0 for deterministic compressors.

        Parameters
        ----------
        step : int
            The training step.
        key : int or str, optional
            The bucket or tensor id.

        Examples
        --------
        >>> import gcomp
        >>> rk = gcomp.compressor("randomk:ratio=0.5,seed=1")
        >>> rk.seed_for(3, 0) == rk.seed_for(3, 0) != rk.seed_for(4, 0)
        True
        >>> gcomp.compressor("topk:ratio=0.5").seed_for(3, 0)
        0
        """
        if not self.randomized:
            return 0
        if type(key) is not int or not 0 <= key < _TWO64:  # a plain int key in range is its own integer
            key = key_to_int(key)
        return derive_seed(int(self._params.get("seed", 0)), step, key)

    def decompress(self, c: Compressed, out=None):
        """The dense vector of ``c`` in the kind and dtype that were compressed, or written into ``out``.

        numpy in, numpy out; a torch tensor in, a CPU torch tensor of its dtype
        out.  A packet decoded from bytes carries no kind: numpy, except
        bfloat16, which numpy lacks (a torch tensor).

        Parameters
        ----------
        c : Compressed
            A compressed form of this compressor (same name).
        out : numpy.ndarray or torch.Tensor, optional
            Filled with the result and returned instead of a new array.

        Examples
        --------
        >>> import torch
        >>> import gcomp
        >>> c = gcomp.compressor("topk:ratio=0.25")
        >>> t = torch.tensor([0.5, -3.0, 0.25, 2.0], dtype=torch.bfloat16)
        >>> c.decompress(c.compress(t))
        tensor([ 0., -3.,  0.,  0.], dtype=torch.bfloat16)
        """
        if type(c) is not Compressed or c.codec != self.name:
            self._check_compressed(c)
        if out is not None and c.dtype == "float32":
            target = _f32_target(out, c.numel)
            if target is not None and self._decompress_into(c, target) is not None:
                return out  # decoded straight into the caller's buffer: no dense temporary
        dense = self._decompress(c)
        return restore_dtype(dense, c.dtype, out, c.kind)

    def _decompress_into(self, c: Compressed, out: np.ndarray):
        """Decode ``c`` into the float32 vector ``out`` and return it, or None where only a fresh array is possible."""
        if type(self)._decode is not Compressor._decode:
            return self._decode(c, out=out)
        return None

    def _refuse_add(self, c, acc):
        self._check_compressed(c)
        raise ConfigError(f"expected a float32 accumulator of shape ({c.numel},), found "
                         f"{getattr(acc, 'dtype', type(acc).__name__)} {getattr(acc, 'shape', '')}")

    def _check_compressed(self, c):
        if not isinstance(c, Compressed):
            raise TypeError(f"expected a Compressed, found {type(c).__name__}")
        if c.codec != self.name:
            raise ConfigError(f"expected a {self.name!r} packet, found codec {c.codec!r}")

    def decompress_add(self, c: Compressed, acc: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """``acc += scale * decompress(c)`` on a float32 accumulator (fused where the codec allows).

        Refuses another codec's packet and an accumulator of another dtype or size (ConfigError, a ValueError).

        Parameters
        ----------
        c : Compressed
            A compressed form of this compressor.
        acc : numpy.ndarray
            1-D float32 of ``c.numel`` elements, updated in place and returned.
        scale : float, optional
            The factor applied to the decompressed vector.

        Examples
        --------
        >>> import numpy as np
        >>> import gcomp
        >>> c = gcomp.compressor("topk:ratio=0.25")
        >>> acc = np.ones(4, np.float32)
        >>> c.decompress_add(c.compress(np.array([0.0, -3.0, 1.0, 0.5], np.float32)), acc, 0.5).tolist()
        [1.0, -0.5, 1.0, 1.0]
        """
        if (type(c) is not Compressed or c.codec != self.name or type(acc) is not np.ndarray or acc.dtype is not _F32
                or acc.size != c.numel or acc.ndim != 1):  # one cheap test: this runs once per packet received
            self._refuse_add(c, acc)
        if scale == 1.0 and type(self)._decode is not Compressor._decode:
            return self._decode(c, out=acc, accumulate=True)
        dense = self._decompress(c)
        if scale != 1.0:
            dense *= np.float32(scale)
        acc += dense
        return acc

    def compress_with_residual(self, x: np.ndarray, residual: np.ndarray, *, step: int = 0, key: int = 0) -> Compressed:
        """Error-feedback step: compress ``v = x + residual``, then ``residual = v - C(v)``.

        ``x`` and ``residual`` are float32; ``residual`` is updated in place.
        Compressors whose kernels fuse this (``fused_residual = True``) do it in
        one pass over memory through ``_encode(x, seed, residual)``.

        Parameters
        ----------
        x : numpy.ndarray
            The new gradient.
        residual : numpy.ndarray
            float32 of the same size: what earlier steps dropped; updated in place.
        step : int, optional
            The training step.
        key : int or str, optional
            The bucket or tensor id.

        Examples
        --------
        >>> import numpy as np
        >>> import gcomp
        >>> c = gcomp.compressor("topk:ratio=0.25")
        >>> residual = np.zeros(4, np.float32)
        >>> sent = c.compress_with_residual(np.array([0.5, -3.0, 0.25, 2.0], np.float32), residual)
        >>> c.decompress(sent).tolist(), residual.tolist()
        ([0.0, -3.0, 0.0, 0.0], [0.5, 0.0, 0.25, 2.0])
        """
        flat, dtype = as_flat_f32(x)
        if self.fused_residual:
            seed = self.seed_for(step, key)
            c = self._encode(flat, seed, residual=residual)
            return _stamp(c, x, dtype, step, seed)
        residual += flat
        c = self.compress(residual, step=step, key=key)
        residual -= self._decompress(c)
        return _stamp(c, x, dtype, step, c.seed)

    def combine(self, items) -> Compressed:
        """Sum compressed forms as they are (linear compressors only).

        Parameters
        ----------
        items : iterable of Compressed
            Compressed forms of the same codec, size, parameters and seed.

        Raises
        ------
        gcomp.errors.ConfigError
            The compressor is not linear, or the forms differ.

        Examples
        --------
        >>> import numpy as np
        >>> import gcomp
        >>> f = gcomp.compressor("fp16")
        >>> x = np.array([1.0, -2.0, 0.5], np.float32)
        >>> f.decompress(f.combine([f.compress(x), f.compress(2 * x)])).tolist()
        [3.0, -6.0, 1.5]
        """
        items, first = self._combinable(items)
        arrays = dict(first.arrays)
        for name in self.summable:
            total = first.arrays[name].astype(np.float32, copy=True)
            for c in items[1:]:
                total += c.arrays[name]
            arrays[name] = total.astype(first.arrays[name].dtype, copy=False)
        return dataclasses.replace(first, arrays=arrays)

    def _combinable(self, items):
        """``(items as a list, the first)`` after checking that they can be summed."""
        items = list(items)
        if not self.linear:
            raise ConfigError(f"compressor {self.name!r} is not linear: its compressed forms cannot be summed")
        if not items:
            raise ValueError("expected at least one compressed form to combine")
        first = items[0]
        for c in items[1:]:
            if (c.codec, c.numel, c.count, c.params, c.seed) != (first.codec, first.numel, first.count, first.params, first.seed):
                raise ConfigError("expected compressed forms of the same codec, size, parameters and seed to combine")
        return items, first

    def _compress(self, x: np.ndarray, *, step: int, seed: int) -> Compressed:
        if self.fused_residual:
            return self._encode(x, seed)
        raise NotImplementedError

    def _encode(self, x: np.ndarray, seed: int, residual=None) -> Compressed:
        raise NotImplementedError

    def _decompress(self, c: Compressed) -> np.ndarray:
        if type(self)._decode is not Compressor._decode:
            return self._decode(c)
        raise NotImplementedError

    def _decode(self, c: Compressed, out=None, accumulate=False) -> np.ndarray:
        """Kernel decode into ``out`` (adding when ``accumulate``), from the packet's own params."""
        raise NotImplementedError


def _stamp(c, x, dtype, step, seed):
    """Record on ``c`` what :meth:`Compressor.decompress` restores (``x``'s dtype and kind) and the randomness used."""
    c.dtype, c.kind, c.step, c.seed = dtype, "numpy" if type(x) is np.ndarray else input_kind(x), step, seed
    return c


def key_to_int(key) -> int:
    """A stable integer for a bucket/tensor key: non-negative ints as they are, anything else by CRC-32 of str(key)."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= key < 1 << 64:
        return int(key)
    return zlib.crc32(str(key).encode())


def count_from_ratio(numel: int, ratio: float) -> int:
    """k for a density ``ratio``: ``ceil(ratio * numel)``, at least 1 when numel > 0."""
    if numel == 0:
        return 0
    return min(numel, max(1, math.ceil(ratio * numel)))

