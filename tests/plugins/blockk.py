"""``blockk``: a sample third-party compressor, one file plus ``gcomp.register`` and nothing edited inside gcomp.

It keeps a contiguous block of k = ceil(ratio * n) entries.  The block's start
comes from the seed that every rank derives alike from (seed, step, key), so
every rank keeps the same block and compressed forms are summable (linear),
like random-k.  Only the values travel: a decoder rebuilds the indices from
(numel, count, seed).  Not rescaled, so biased, and there is no worst-case
contraction bound (the block can miss every large entry).
"""

import math

import numpy as np

import gcomp
from gcomp.compressors import Codec, Compressed, Compressor
from gcomp.compressors.codec import sparse_values
from gcomp.errors import ConfigError


def block_indices(numel, count, seed):
    """The ``count`` consecutive indices a packet of (numel, count, seed) carries."""
    start = int(seed) % (numel - count + 1)
    return np.arange(start, start + count, dtype=np.int64)


class BlockK(Compressor):
    name = "blockk"
    description = "a random contiguous block of k = ceil(ratio * n) entries from a shared seed (summable)"
    randomized = True
    linear = True
    summable = ("values",)
    codec = Codec(200, sparse_values, regenerate_indices=block_indices)  # ids 128-254 are for plugins
    params = {"ratio": 0.01, "seed": 0}

    def _validate(self):
        ratio, seed = self.ratio, self.seed
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ConfigError(f"blockk: expected ratio in (0, 1], found {ratio!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ConfigError(f"blockk: expected integer seed in [0, 2**64), found {seed!r}")

    @classmethod
    def strategy(cls):
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"ratio": st.floats(1e-3, 1.0), "seed": st.integers(0, 2**64 - 1)})

    def k(self, numel):
        return min(numel, math.ceil(self.ratio * numel))

    def contraction(self, numel):
        return None  # a random block: no worst-case bound

    def max_payload_bytes(self, numel):
        return 4 * self.k(numel)

    def _compress(self, x, *, step, seed):
        n = x.shape[0]
        idx = block_indices(n, self.k(n), seed)  # seed: self.seed_for(step, key), the same on every rank
        return Compressed(self.name, n, "float32", {"indices": idx, "values": x[idx]}, count=idx.shape[0])

    def _decompress(self, c):
        out = np.zeros(c.numel, np.float32)
        out[c.arrays["indices"]] = c.arrays["values"]
        return out


gcomp.register(BlockK)
