"""One error tree for gcomp.

::

    GcompError
    ├── ConfigError (also ValueError)        bad compressor name, parameter or option
    ├── StateError (also ValueError)         a state_dict of another version or shape
    ├── WireFormatError (also ValueError)    bytes that are not a valid gcomp packet
    │   ├── TruncatedError                   fewer (or more) bytes than the header says
    │   ├── MagicError                       not a gcomp packet at all
    │   ├── VersionError                     a wire version this gcomp cannot read
    │   ├── CodecError                       an unknown codec or dtype id
    │   ├── SizeError                        sizes out of range, or overflowing
    │   ├── ChecksumError                    the checksum does not match
    │   └── IndexError_                      sparse indices out of range or order
    └── CollectiveError (also RuntimeError)  ranks disagree, a peer failed or timed out
        ├── MismatchError                    ranks use different sizes, dtypes or compressors
        ├── SequenceError                    ranks' calls paired out of order (a rank missed one)
        └── NonFiniteError                   NaN/Inf met under the "raise" policy

Messages say what was expected, what was found, and what to do.  The kernel
layer (``gcomp.kernels``) depends only on numpy and numba, so it raises
built-in ``TypeError`` / ``ValueError``.
"""

__all__ = [
    "GcompError",
    "ConfigError",
    "StateError",
    "WireFormatError",
    "TruncatedError",
    "MagicError",
    "VersionError",
    "CodecError",
    "SizeError",
    "ChecksumError",
    "IndexError_",
    "CollectiveError",
    "MismatchError",
    "SequenceError",
    "NonFiniteError",
]


class GcompError(Exception):
    """Root of every error gcomp raises on purpose.

    Each subclass is raised with one message (``str(exc)``) that says what was
    expected, what was found and what to do.

    Examples
    --------
    >>> import gcomp
    >>> from gcomp.errors import ConfigError, GcompError
    >>> try:
    ...     gcomp.compressor("topk:ratio=2")
    ... except GcompError as exc:
    ...     print(type(exc).__name__, isinstance(exc, ValueError), exc)
    ConfigError True topk: expected ratio in (0, 1], found 2
    """


class ConfigError(GcompError, ValueError):
    """A compressor spec, parameter or option is invalid."""


class StateError(GcompError, ValueError):
    """A state dict cannot be loaded (version, key or shape mismatch)."""


class WireFormatError(GcompError, ValueError):
    """Bytes that do not decode to a valid gcomp packet.

    Examples
    --------
    >>> from gcomp import wire
    >>> from gcomp.errors import MagicError, WireFormatError
    >>> try:
    ...     wire.decode(b"x" * 100)
    ... except WireFormatError as exc:
    ...     print(isinstance(exc, MagicError))
    True
    """


class TruncatedError(WireFormatError):
    """The buffer is shorter or longer than its header says."""


class MagicError(WireFormatError):
    """The buffer does not start with gcomp's magic bytes."""


class VersionError(WireFormatError):
    """The packet's wire version is not one this gcomp reads."""


class CodecError(WireFormatError):
    """Unknown codec id, dtype id or flag."""


class SizeError(WireFormatError):
    """A size field is out of range or the sizes overflow."""


class ChecksumError(WireFormatError):
    """The checksum over header and payload does not match."""


class IndexError_(WireFormatError):
    """Sparse indices are out of range, unsorted or duplicated."""


class CollectiveError(GcompError, RuntimeError):
    """A collective failed: ranks disagree, a peer died, or a timeout passed."""


class MismatchError(CollectiveError):
    """Ranks disagree on size, dtype, compressor or configuration."""


class SequenceError(CollectiveError):
    """A collective paired with another rank's other call: a rank missed a call (gcomp.collectives.sequence)."""


class NonFiniteError(CollectiveError):
    """A NaN or Inf was found and the policy is to raise."""
