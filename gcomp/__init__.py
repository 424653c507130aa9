"""gcomp: gradient compression and communication-efficient distributed training for edge clusters.

Layers (dependencies point down only): ``gcomp.kernels`` (Numba kernels on flat
numpy arrays) at the bottom; see the README and docs/ for the rest.
"""

__version__ = "0.1.0"

from . import errors  # noqa: E402

__all__ = ["__version__", "errors"]
