"""The one Numba policy for every gcomp kernel.

Every kernel in ``gcomp.kernels`` is compiled through :func:`kernel`, so the
flags below hold everywhere:

* ``fastmath`` is the explicit set ``{"nsz", "arcp", "contract", "afn", "reassoc"}``.
  ``nnan`` and ``ninf`` are deliberately absent: with them LLVM may delete NaN
  checks, and the non-finite policy documented in :mod:`gcomp.kernels` would
  silently stop holding.
* ``error_model="numpy"``: a division by zero gives inf/nan instead of raising,
  so a kernel never raises.  Validation is the job of the Python wrappers.
* ``boundscheck=False`` (Numba's default): kernels trust their wrappers.
* ``cache=True`` on every serial kernel; set ``GCOMP_NUMBA_CACHE=0`` to turn the
  on-disk cache off (read once, at import time).  Numba's own
  ``NUMBA_CACHE_DIR`` picks the directory.
* ``nogil=True``: a kernel releases the GIL, so a communication thread keeps
  running while a bucket is being compressed.

For kernel authors: Numba's cache tracks a kernel's own source file only.  A
kernel that calls a helper from another module keeps its old compiled code
when only that module changes; after editing a shared helper, remove
``kernels/__pycache__`` (or run with ``GCOMP_NUMBA_CACHE=0``).  Also, without
``nnan`` LLVM does not vectorize float min/max reductions: reduce integer keys
of the bit patterns instead (see ``uniform``).
"""

import os

import numba

__all__ = ["CACHE", "FASTMATH", "kernel", "cache_dir", "threading_layer"]


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


#: Whether kernels are cached on disk (``GCOMP_NUMBA_CACHE``, default on).
CACHE = _env_flag("GCOMP_NUMBA_CACHE", True)

#: LLVM fast-math flags used by every kernel; never ``nnan`` nor ``ninf``.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


def kernel(fn=None, *, parallel: bool = False):
    """Compile ``fn`` with gcomp's Numba policy (see the module docstring)."""

    def wrap(f):
        return numba.njit(
            cache=CACHE and not parallel,
            nogil=True,
            fastmath=set(FASTMATH),
            error_model="numpy",
            parallel=parallel,
        )(f)

    if fn is None:
        return wrap
    return wrap(fn)


def cache_dir() -> str:
    """The directory Numba caches compiled kernels in (``NUMBA_CACHE_DIR`` or beside the source)."""
    configured = numba.config.CACHE_DIR
    if configured:
        return configured
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")


def threading_layer() -> str:
    """Numba's threading layer: the active one once a parallel kernel ran, else the configured one."""
    try:
        return numba.threading_layer()
    except ValueError:
        return f"{numba.config.THREADING_LAYER} (not yet initialised)"
