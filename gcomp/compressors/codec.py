"""The wire codec a compressor owns: how its :class:`Compressed` form maps onto packet bytes.

Every compressor class that travels on the wire sets ``codec = Codec(...)``;
:mod:`gcomp.wire` keeps only the header, checksum, size limits, zstd stage
and validation order, and asks the registry for the codec of a packet's id.
A codec says, from header fields alone (so the decoder can validate sizes
before allocating anything):

* ``codec_id``: the packet's codec byte; 1-127 for gcomp's own compressors,
  128-254 for compressors registered from outside gcomp;
* ``params``: up to four ``Compressed.params`` entries carried as u32 p0..p3;
* ``arrays(numel, count, params)``: ``[(name, dtype, length), ...]`` in
  payload order;
* ``check(numel, count, params)``: raise :class:`gcomp.errors.SizeError` for
  parameters no encoder of this codec writes (the ``count`` rule is applied
  before it: ``count <= numel`` for counted codecs, ``0`` for the others);
* ``sparse``: an index section (delta+varint or bitmap) precedes the arrays;
  ``regenerate_indices(numel, count, seed)``: the indices are not sent but
  rebuilt by the receiver (random-k with a shared seed);
* ``shape(name, length, params)``: the decoded array's shape (default flat);
* ``since``: the wire minor version that introduced the codec: an encoder
  writes the lowest version that can express the packet, and a decoder
  refuses a packet that names a codec its version did not have.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from ..errors import SizeError

__all__ = ["Codec", "F32", "F16", "U8", "U16", "sparse_values", "MINOR"]

#: the highest wire minor version this gcomp writes and reads (``gcomp.wire.MINOR``); a codec's
#: ``since`` is at most this.  Adding a built-in codec raises it by one and sets the codec's since to it.
MINOR = 0

F32, F16, U8, U16 = np.dtype("<f4"), np.dtype("<f2"), np.dtype("u1"), np.dtype("<u2")


def sparse_values(numel, count, params):
    """The arrays of a codec that sends ``count`` float32 values (after its indices, if any)."""
    return [("values", F32, count)]


@dataclasses.dataclass(frozen=True)
class Codec:
    """How one compressor's Compressed form maps onto the wire (see the module docstring).

    Parameters
    ----------
    codec_id : int
        The packet's codec byte: 1-127 for gcomp's own compressors, 128-254 for others.
    arrays : callable
        ``arrays(numel, count, params) -> [(name, dtype, length), ...]`` in payload order.
    params : tuple of str, optional
        Up to four ``Compressed.params`` names carried in the header.
    check : callable, optional
        ``check(numel, count, params)`` raises SizeError for parameters no encoder writes.
    sparse : bool, optional
        An index section precedes the arrays.
    regenerate_indices : callable, optional
        ``regenerate_indices(numel, count, seed)``: indices rebuilt by the receiver, not sent.
    shape : callable, optional
        ``shape(name, length, params)``: a decoded array's shape (default flat).
    since : int, optional
        The wire minor version that introduced the codec.
    name : str, optional
        Set by :func:`gcomp.register` to the compressor's name.

    Examples
    --------
    The codec of a compressor that sends ``numel`` float16 values, registered
    from outside gcomp (codec ids 128-254)::

        from gcomp.compressors import Codec
        from gcomp.compressors.codec import F16

        class MyHalf(gcomp.Compressor):
            name = "my-half"
            codec = Codec(200, lambda numel, count, params: [("values", F16, numel)])
            ...
    """

    codec_id: int
    arrays: Callable
    params: tuple = ()
    check: Callable | None = None
    sparse: bool = False
    regenerate_indices: Callable | None = None
    shape: Callable | None = None
    since: int = 0
    name: str = ""
    #: whether the header's ``count`` field is used (sparse or regenerated indices); derived
    counted: bool = dataclasses.field(init=False, default=False)

    def __post_init__(self):
        object.__setattr__(self, "counted", bool(self.sparse or self.regenerate_indices is not None))

    @property
    def param_names(self) -> tuple:
        """The names of the header's codec parameters (``params``)."""
        return self.params

    def validate(self, numel, count, params):
        """The count rule, then the codec's own parameter check (raises SizeError).

        Parameters
        ----------
        numel, count : int
            The header's sizes.
        params : dict
            The codec parameters, by name.
        """
        if self.counted:
            if count > numel:
                raise SizeError(f"expected count <= numel ({numel}), found {count}")
        elif count:
            raise SizeError(f"expected count 0 for a dense codec, found {count}")
        if self.check is not None:
            self.check(numel, count, params)

    def array_shape(self, name, length, params):
        """The shape of the decoded array ``name`` of ``length`` entries (flat unless ``shape`` says otherwise).

        Parameters
        ----------
        name : str
            The array's name.
        length : int
            Its entries.
        params : dict
            The codec parameters, by name.
        """
        return (length,) if self.shape is None else self.shape(name, length, params)
