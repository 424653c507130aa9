"""Counter-based random numbers for kernels: randomness is an argument.

Kernels never touch numpy's or torch's global generator.  A randomized kernel
takes a 64-bit ``seed``; the caller derives it with :func:`derive_seed` from
(global seed, step, key), which gives the same value on every rank and every
machine, so every rank draws the same random-k indices.

Per-element draws are a pure function of (seed, element index): element ``i``
gets ``rand32(key, i) = lowbias32((i ^ key) + 0x9E3779B9)``, one round of the
bijective ``lowbias32`` hash (C. Wellons) on the counter mixed with the 32-bit
key.  That is deterministic, order-free and vectorizes; one round keeps the
stochastic quantizers above 2 GB/s.
"""

import numpy as np

from .config import kernel

__all__ = ["derive_seed", "splitmix64", "seed_key32", "rand32", "uniform01", "bounded", "lowbias32_array",
           "rand32_array", "uniform01_array"]

_MASK64 = (1 << 64) - 1


def _splitmix64_py(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _derive_seed_py(seed: int, step: int, key: int) -> int:
    """:func:`derive_seed` in plain Python (the reference the compiled one is tested against)."""
    h = _splitmix64_py(seed)
    h = _splitmix64_py(h ^ step)
    return _splitmix64_py(h ^ key)


def derive_seed(seed: int, step: int = 0, key: int = 0) -> int:
    """A 64-bit seed from (global seed, step, key), identical on every rank and machine.

    All three must be non-negative integers below 2**64.  Three SplitMix64
    rounds: ``h = sm(seed)``, ``h = sm(h ^ step)``, ``h = sm(h ^ key)``,
    computed by a compiled kernel (the same values as :func:`_derive_seed_py`).
    """
    if not (type(seed) is int and type(step) is int and type(key) is int  # the common case: plain ints in range
            and 0 <= seed < _TWO64 and 0 <= step < _TWO64 and 0 <= key < _TWO64):
        for name, v in (("seed", seed), ("step", step), ("key", key)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"expected an integer {name}, found {type(v).__name__}")
            if not 0 <= int(v) < _TWO64:
                raise ValueError(f"expected 0 <= {name} < 2**64, found {v}")
        seed, step, key = int(seed), int(step), int(key)
    if (seed | step | key) >> 63:  # passed as int64 bit patterns (the kernel reads them back as uint64)
        return int(_derive_seed_kernel(seed - (seed >> 63 << 64), step - (step >> 63 << 64), key - (key >> 63 << 64)))
    return int(_derive_seed_kernel(seed, step, key))


@kernel
def splitmix64(x):
    """One step of SplitMix64 on a uint64 (wrapping arithmetic)."""
    x = np.uint64(x) + np.uint64(0x9E3779B97F4A7C15)
    z = x
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


_TWO64 = 1 << 64


@kernel
def _derive_seed_kernel(seed, step, key):
    """:func:`derive_seed` on int64 bit patterns (one call instead of three Python SplitMix64 rounds)."""
    h = splitmix64(np.uint64(seed))
    h = splitmix64(h ^ np.uint64(step))
    return splitmix64(h ^ np.uint64(key))


@kernel
def seed_key32(seed):
    """Fold a 64-bit seed into the 32-bit key used by :func:`rand32`."""
    z = splitmix64(np.uint64(seed))
    return np.uint32((z >> np.uint64(32)) ^ (z & np.uint64(0xFFFFFFFF)))


@kernel
def _lowbias32(x):
    x = np.uint32(x)
    x ^= x >> np.uint32(16)
    x = np.uint32(x * np.uint32(0x7FEB352D))
    x ^= x >> np.uint32(15)
    x = np.uint32(x * np.uint32(0x846CA68B))
    x ^= x >> np.uint32(16)
    return x


@kernel
def rand32(key, i):
    """Uniform uint32 for element ``i`` under 32-bit ``key``."""
    return _lowbias32(np.uint32(np.uint32(np.uint32(i) ^ np.uint32(key)) + np.uint32(0x9E3779B9)))


@kernel
def uniform01(key, i):
    """Uniform float32 in [0, 1) with 24 random bits, for element ``i``."""
    return np.float32(rand32(key, i) >> np.uint32(8)) * np.float32(1.0 / 16777216.0)


@kernel
def bounded(state, bound):
    """Unbiased integer in [0, bound) (Lemire's method) from a SplitMix64 state.

    Returns ``(value, new_state)``; ``bound`` must be in [1, 2**32).
    """
    bound64 = np.uint64(bound)
    state = state + np.uint64(1)
    r = splitmix64(state) >> np.uint64(32)
    m = r * bound64
    low = m & np.uint64(0xFFFFFFFF)
    if low < bound64:
        t = (np.uint64(0x100000000) - bound64) % bound64
        while low < t:
            state = state + np.uint64(1)
            r = splitmix64(state) >> np.uint64(32)
            m = r * bound64
            low = m & np.uint64(0xFFFFFFFF)
    return np.int64(m >> np.uint64(32)), state


def lowbias32_array(x):
    """numpy (vectorized) version of the lowbias32 hash on uint32 arrays."""
    x = np.asarray(x, dtype=np.uint32).copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    return x


def rand32_array(key, indices):
    """numpy version of :func:`rand32` for an array of element indices (bit-identical)."""
    with np.errstate(over="ignore"):
        mixed = (np.asarray(indices, dtype=np.uint32) ^ np.uint32(key)) + np.uint32(0x9E3779B9)
    return lowbias32_array(mixed)


def uniform01_array(key, indices):
    """numpy version of :func:`uniform01` (bit-identical): float32 in [0, 1) per element index."""
    return (rand32_array(key, indices) >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)
