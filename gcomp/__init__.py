"""gcomp: gradient compression and communication-efficient distributed training for edge clusters.

Layers, dependencies pointing down only::

    cli / train / bench     experiments
    ddp   mpi   decentralized   adapters: DDP comm hook; mpi4py-style Allreduce; gossip on a topology
    collectives             compressed allreduce algorithms over a Transport
    transports              torch.distributed | mpi4py | in-process
    feedback   wire         error-feedback memories | versioned byte format
    compressors             Compressor objects with their codecs: registry, compress/decompress
    kernels                 Numba kernels on flat numpy arrays (gcomp.kernels)

``gcomp.compressor("topk:ratio=0.01")`` builds a compressor;
``gcomp.list_compressors()`` lists them.  The guides in docs/ explain each
part; the API reference is built from these docstrings (docs/conf.py).

Examples
--------
>>> import numpy as np
>>> import gcomp
>>> c = gcomp.compressor("topk:ratio=0.5")
>>> packet = gcomp.wire.encode(c.compress(np.array([3.0, -1.0, 0.5, -4.0], np.float32)))
>>> c.decompress(gcomp.wire.decode(packet)).tolist()
[3.0, 0.0, 0.0, -4.0]
"""

#: gcomp's version (that of the package metadata)
__version__ = "0.1.0"

# gcomp.wire and gcomp.decentralized work after `import gcomp` alone (decentralized imports torch only when used)
from . import decentralized, errors, wire  # noqa: E402
from .compressors import Compressed, Compressor, compressor, list_compressors, register  # noqa: E402

__all__ = ["__version__", "decentralized", "errors", "wire", "compressor", "list_compressors", "register", "Compressor", "Compressed"]
