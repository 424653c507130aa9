"""Helpers shared by the kernel test files: counter-hash draws, degenerate inputs, and common checks."""

import numpy as np
import pytest
from gcomp.kernels.random import rand32_array, seed_key32, uniform01_array

F32 = np.float32
EPS = np.finfo(F32).eps


# --- numpy references for the counter-based draws ---------------------------------


def _key(seed):
    return np.uint32(seed_key32(np.uint64(seed)))


def uniforms(seed, n):
    """uniform01(seed_key32(seed), i) for i in range(n), vectorized."""
    return uniform01_array(_key(seed), np.arange(n, dtype=np.uint64).astype(np.uint32))


def rand32s(seed, n):
    """rand32(seed_key32(seed), i) for i in range(n), vectorized."""
    return rand32_array(_key(seed), np.arange(n, dtype=np.uint64).astype(np.uint32))


def bernstein_tol(step, p, trials, delta=1e-10):
    """A bound on |mean - expectation| for ``trials`` independent draws of ``step * Bernoulli(p)``.

    Bernstein's inequality: it holds with probability at least ``1 - delta`` for every p,
    including p near 0 or 1 where a normal approximation would be far too optimistic.
    """
    log_term = np.log(2 / delta)
    return step * (np.sqrt(2 * p * (1 - p) * log_term / trials) + 2 * log_term / (3 * trials))


# --- inputs -----------------------------------------------------------------------


def degenerate_vectors(**overrides):
    """The common degenerate / random test vectors; ``overrides`` add or replace entries (None drops one)."""
    rng = np.random.default_rng(7)
    vectors = {
        "n0": np.zeros(0, F32),
        "n1": np.array([-3.0], F32),
        "zeros": np.zeros(100, F32),
        "signed_zeros": np.array([0.0, -0.0] * 8, F32),
        "constant": np.full(77, -2.5, F32),
        "ties": rng.integers(-3, 4, 500).astype(F32),
        "fp16_extremes": np.array([65504, -65504, 6e-8, -6e-8, 6.1e-5, 0, 1, -1, 65504, 3], np.float16),
        "tiny": np.array([1e-38, -3e-39, 1e-44, 0, 2e-39, -1e-45, 5e-39, 1e-40], F32),
        "normal": rng.standard_normal(3000).astype(F32),
        "heavy": rng.standard_cauchy(3000).astype(F32),
        "float64": rng.standard_normal(300),
    }
    for name, value in overrides.items():
        if value is None:
            del vectors[name]
        else:
            vectors[name] = value
    return vectors


def random_residual(n, seed):
    """A float32 standard-normal residual of length n."""
    return np.random.default_rng(seed).standard_normal(n).astype(F32)


def nonfinite_buckets_input():
    """64 normal values with NaN in bucket 0, +inf in bucket 1 and -inf in bucket 2 (16-buckets); bucket 3 finite."""
    x = np.random.default_rng(5).standard_normal(64).astype(F32)
    x[3] = np.nan
    x[20] = np.inf
    x[45] = -np.inf
    return x


# --- checks -----------------------------------------------------------------------


def assert_residual_update(residual, v, dec):
    """After an encode with error feedback, residual == v - decode(encode(v)) exactly (when one was given)."""
    if residual is not None:
        np.testing.assert_array_equal(residual, (v - dec).astype(F32))


def assert_nonfinite_buckets(scales, codes, dec, residual):
    """The non-finite policy on :func:`nonfinite_buckets_input`: buckets 0-2 get NaN scales, code 0,
    NaN decodes and NaN residuals; bucket 3 stays finite."""
    assert np.isnan(scales[:3]).all() and np.isfinite(scales[3])
    assert (codes[:48] == 0).all()
    assert np.isnan(dec[:48]).all() and np.isfinite(dec[48:]).all()
    assert np.isnan(residual[:48]).all() and np.isfinite(residual[48:]).all()


def assert_global_rng_untouched(*calls):
    """Running the calls leaves numpy's global random state exactly as it was."""
    state = np.random.get_state()
    for call in calls:
        call()
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]


def assert_input_unmodified_and_rng_untouched(x, *encodes):
    """Each ``encode(x)`` leaves both x and numpy's global random state unchanged."""
    x0 = x.copy()
    assert_global_rng_untouched(*(lambda e=e: e(x) for e in encodes))
    np.testing.assert_array_equal(x, x0)


def assert_seeded(encode, seed=123, other_seed=124, seed_free=1):
    """Same seed: identical outputs; another seed: different codes, identical outputs[seed_free] (seed-free)."""
    a, b, c = encode(seed), encode(seed), encode(other_seed)
    assert len(a) == len(b)
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p, q)
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(a[seed_free], c[seed_free])
    return a, c


def assert_residual_identity(x, r, roundtrip):
    """decode + new residual == x + old residual, within float32 rounding; ``roundtrip(x, r)`` encodes with
    error feedback into r (in place) and returns the decode."""
    v = x + r
    dec = roundtrip(x, r)
    err = np.abs(dec.astype(np.float64) + r - v)
    assert (err <= 2 * EPS * np.maximum(np.abs(v), np.abs(dec))).all()


def residual_identity_inputs(seed, n=1003):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(F32)
    r = (0.3 * rng.standard_normal(n)).astype(F32)
    return x, r


def assert_accumulate_and_out(decode, decode_readonly, n, base, exact=True):
    """decode(out=..., accumulate=...) adds into / writes into ``out`` (returning it), leaves the tail of a
    longer ``out`` alone, and ``decode_readonly()`` (read-only encoded input) decodes the same."""
    dec = decode()
    acc = base.copy()
    got = decode(out=acc, accumulate=True)
    assert got is acc
    if exact:
        np.testing.assert_array_equal(acc, base + dec)
    else:
        np.testing.assert_allclose(acc, base + dec, rtol=1e-6, atol=1e-6)
    out = np.full(n + 10, 9.0, F32)
    got = decode(out=out)
    np.testing.assert_array_equal(got, dec)
    assert np.shares_memory(got, out) and (out[n:] == 9.0).all()
    np.testing.assert_array_equal(decode_readonly(), dec)
    return dec


def read_only(a):
    ro = a.copy()
    ro.setflags(write=False)
    return ro


def assert_raise_all(cases):
    """Each (exception, match, call) case raises that exception with a message matching ``match``."""
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


def encode_input_error_cases(encode, bad_dtype, bad_residual_dtype=np.float64, bad_residual_len=8):
    """The input checks every encoder shares; ``encode(x, residual=None)`` with the other arguments bound."""
    x = np.ones(16, F32)
    name = np.dtype(bad_dtype).name
    return [
        (TypeError, f"expected x of dtype float16, float32 or float64, found {name}", lambda: encode(np.ones(16, bad_dtype))),
        (ValueError, "1-D", lambda: encode(np.ones((4, 4), F32))),
        (TypeError, "residual of dtype float32", lambda: encode(x, residual=np.zeros(16, bad_residual_dtype))),
        (ValueError, "residual of length 16", lambda: encode(x, residual=np.zeros(bad_residual_len, F32))),
    ]
