"""Property-test kit for compressors: hypothesis strategies and a ready battery.

Check any compressor, ours or yours, in a few lines::

    from gcomp.testing import check_compressor
    report = check_compressor(my_compressor)   # raises AssertionError on a violation
    print(report)

:func:`check_compressor` runs, on vectors of several sizes and dtypes:

* shapes, dtypes and kinds of ``decompress(compress(x))`` (numpy in, numpy
  out; a torch tensor in, a torch tensor of its dtype out);
* the wire round trip ``decode(encode(c))`` (bit-identical decompression);
* the contraction bound ``||x - C(x)||^2 <= (1 - delta) ||x||^2`` where
  ``contraction()`` declares delta;
* unbiasedness where ``unbiased`` is declared: a t-test on the error's
  projection onto fixed directions across independent seeds;
* a variance bound where ``variance_bound()`` is declared (QSGD's
  ``min(d/s^2, sqrt(d)/s)``, natural compression's 1/8): a one-sided test;
* linearity where ``linear`` is declared (``combine``, or every phase of a
  ``phased`` compressor such as PowerSGD);
* the error-feedback identity: sum of what was sent plus the final residual
  equals the sum of the inputs;
* equal (seed, step, key) give equal outputs, and numpy's and torch's global
  generators are untouched;
* every truncation and every single-bit flip of the encoded bytes raises
  :class:`gcomp.errors.WireFormatError`.

The statistical checks have a stated false-failure rate (``alpha``, default
1e-6 per check, Bonferroni-corrected over the directions tested).

Strategies: :func:`gradients` (gradient-like vectors from size 0, heavy tails,
zeros, ties, float16 extremes, NaN/Inf on request) and
:func:`compressor_configs` (valid configurations of registered compressors,
from each compressor's own ``strategy()``).
"""

import copy
import dataclasses
import math

import numpy as np

from . import wire
from .compressors import REGISTRY, Compressor, load_plugins
from .compressors import compressor as build_compressor
from .errors import ConfigError, WireFormatError

__all__ = ["check_compressor", "gradients", "compressor_configs", "Report", "normal_critical_value"]


# ----------------------------------------------------------------------------
# statistics helpers
# ----------------------------------------------------------------------------
def normal_critical_value(alpha: float) -> float:
    """z with ``P(|Z| > z) = alpha`` for a standard normal Z (bisection on erfc).

    The statistical checks of :func:`check_compressor` compare their test
    statistics with it.

    Parameters
    ----------
    alpha : float
        The two-sided tail probability, in (0, 1).

    Returns
    -------
    float

    Examples
    --------
    >>> from gcomp.testing import normal_critical_value
    >>> round(normal_critical_value(0.05), 3)
    1.96
    """
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if math.erfc(mid / math.sqrt(2)) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def _t_critical(alpha, dof):
    """Conservative two-sided t critical value: the normal one with a Cornish-Fisher correction."""
    z = normal_critical_value(alpha)
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


# ----------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class Report:
    """What :func:`check_compressor` checked: the properties that held and those that did not apply.

    ``str(report)`` is a readable summary, one line per property.

    Parameters
    ----------
    compressor : str
        ``repr`` of the compressor checked.
    passed : list of str
        The properties that held.
    skipped : list of str
        The properties that do not apply to it, each with the reason.

    Examples
    --------
    >>> from gcomp.testing import check_compressor
    >>> report = check_compressor("fp16")
    >>> report.compressor, len(report.passed)
    ("gcomp.compressor('fp16')", 6)
    >>> print(report.skipped[0])
    contraction bound (none declared)
    """

    compressor: str
    passed: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"check_compressor({self.compressor}): {len(self.passed)} checks passed, {len(self.skipped)} not applicable"]
        lines += [f"  ok    {p}" for p in self.passed]
        lines += [f"  skip  {s}" for s in self.skipped]
        return "\n".join(lines)


def _fail(name, what):
    raise AssertionError(f"{name}: {what}")


# ----------------------------------------------------------------------------
# vectors
# ----------------------------------------------------------------------------
def gradient_like(n, rng, kind="mixed"):
    """A float32 gradient-like vector: Gaussian times a log-normal scale, with zeros and ties."""
    if n == 0:
        return np.zeros(0, np.float32)
    x = rng.standard_normal(n) * np.exp(rng.standard_normal(n))
    if kind == "mixed" and n >= 8:
        x[rng.integers(0, n, n // 8)] = 0.0
        x[rng.integers(0, n, n // 16)] = 0.5
    return x.astype(np.float32)


def _fresh(compressor):
    """An independent copy (fresh state) of a compressor."""
    try:
        return build_compressor(compressor.get_config())
    except ConfigError:
        return copy.deepcopy(compressor)


def _rng_states():
    import torch

    return np.random.get_state(), torch.get_rng_state().clone()


def _same_rng(a, b):
    (np_a, t_a), (np_b, t_b) = a, b
    same_np = np_a[0] == np_b[0] and np.array_equal(np_a[1], np_b[1]) and np_a[2:] == np_b[2:]
    return same_np and bool((t_a == t_b).all())


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint8) if a.dtype != np.uint8 else a


def _decompress32(comp, c):
    out = comp.decompress(c)
    if type(out).__module__.startswith("torch"):
        out = out.float().numpy()
    return np.asarray(out, dtype=np.float32)


# ----------------------------------------------------------------------------
# the battery
# ----------------------------------------------------------------------------
def check_compressor(
    compressor,
    *,
    sizes=(0, 1, 7, 64, 1000, 4099),
    stat_size=512,
    trials=400,
    alpha=1e-6,
    seed=0,
    wire_check=True,
    corruption_budget=4000,
) -> Report:
    """Run the property battery on ``compressor`` (a Compressor or anything ``gcomp.compressor`` accepts).

    Raises AssertionError naming the property and the input that broke it;
    returns a :class:`Report` of what was checked.  The module docstring (and
    docs/testing.md) lists the properties.

    Parameters
    ----------
    compressor : gcomp.Compressor or str or dict
        The compressor to check, or anything :func:`gcomp.compressor` accepts.
    sizes : tuple of int, optional
        Vector sizes of the shape, dtype, wire and contraction checks.
    stat_size : int, optional
        Vector size of the statistical checks (unbiasedness, variance).
    trials : int, optional
        Independent seeds per statistical check.
    alpha : float, optional
        False-failure rate of each statistical check (Bonferroni-corrected over
        the directions tested).
    seed : int, optional
        Seed of the test vectors (a local generator; the global ones are untouched).
    wire_check : bool, optional
        Check the wire round trip and corruption when the compressor has a codec.
    corruption_budget : int, optional
        At most this many truncations and bit flips are tried.

    Returns
    -------
    Report

    Raises
    ------
    AssertionError
        A property does not hold; the message names it and the input.

    Examples
    --------
    >>> from gcomp.testing import check_compressor
    >>> report = check_compressor("topk:ratio=0.1")
    >>> "contraction bound" in str(report)
    True

    A compressor of your own goes in as an instance:
    ``check_compressor(HalfTopK())`` (see :class:`gcomp.Compressor`).
    """
    if not isinstance(compressor, Compressor):
        compressor = build_compressor(compressor)
    name = repr(compressor)
    report = Report(name)
    rng = np.random.default_rng(seed)
    has_wire = wire_check and compressor.codec is not None

    _check_shapes_dtypes(compressor, sizes, rng, report)
    if has_wire:
        _check_wire_roundtrip(compressor, sizes, rng, report)
    else:
        report.skipped.append("wire round trip (no wire codec registered)")
    _check_contraction(compressor, sizes, rng, report)
    _check_unbiased(compressor, stat_size, trials, alpha, rng, report)
    _check_variance(compressor, stat_size, trials, alpha, rng, report)
    _check_linear(compressor, rng, report)
    _check_error_feedback(compressor, rng, report)
    _check_determinism_and_rng(compressor, rng, report)
    if has_wire:
        _check_corruption(compressor, rng, report, corruption_budget)
    else:
        report.skipped.append("corrupted bytes raise WireFormatError (no wire codec registered)")
    return report


def _check_shapes_dtypes(comp, sizes, rng, report):
    import torch

    for n in sizes:
        x = gradient_like(n, rng)
        for dtype in (np.float32, np.float16, np.float64):
            xd = x.astype(dtype)
            c = _fresh(comp).compress(xd)
            if c.numel != n:
                _fail("shapes", f"compress of {n} {np.dtype(dtype).name} entries gave numel {c.numel}")
            out = _fresh(comp).decompress(c)
            if not isinstance(out, np.ndarray) or out.shape != (n,) or out.dtype != dtype:
                _fail("shapes", f"decompress of {n} {np.dtype(dtype).name} gave {type(out).__name__} "
                                f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', None)}")
            into = np.full(n, np.nan, dtype=np.float32)
            _fresh(comp).decompress(c, out=into)
            if not np.array_equal(_bits(into.astype(dtype)), _bits(out)):
                _fail("shapes", f"decompress(c, out=...) differs from decompress(c) for n={n}")
            t = torch.from_numpy(xd.copy())
            out_t = _fresh(comp).decompress(_fresh(comp).compress(t))
            if not (isinstance(out_t, torch.Tensor) and out_t.dtype == t.dtype and tuple(out_t.shape) == (n,)):
                _fail("shapes", f"a {t.dtype} tensor of {n} entries came back as {type(out_t).__name__} "
                                f"{getattr(out_t, 'dtype', None)} {tuple(getattr(out_t, 'shape', ()))}, not as one")
            if not np.array_equal(_bits(out_t.numpy()), _bits(out)):
                _fail("shapes", f"a {t.dtype} tensor of {n} entries decompresses differently from the numpy array")
        t = torch.from_numpy(x).to(torch.bfloat16)
        c = _fresh(comp).compress(t)
        out = _fresh(comp).decompress(c)
        if not (type(out).__module__.startswith("torch") and out.dtype == torch.bfloat16 and tuple(out.shape) == (n,)):
            _fail("shapes", f"a bfloat16 tensor of {n} entries did not come back as one")
    report.passed.append(f"shapes, dtypes and kinds (numpy float32/16/64; torch float32/16/64, bfloat16; "
                         f"sizes {list(sizes)})")


def _check_wire_roundtrip(comp, sizes, rng, report):
    for n in sizes:
        x = gradient_like(n, rng)
        for use_zstd in (False, True):
            c = _fresh(comp).compress(x, step=3, key=1)
            buf = wire.encode(c, zstd=use_zstd)
            d = wire.decode(buf, expected_numel=n)
            a = _decompress32(_fresh(comp), c)
            b = _decompress32(_fresh(comp), d)
            if not np.array_equal(_bits(a), _bits(b)):
                _fail("wire round trip", f"decode(encode(c)) decompresses differently (n={n}, zstd={use_zstd})")
            if len(buf) > wire.HEADER_SIZE + comp.max_payload_bytes(n):
                _fail("max_payload_bytes", f"{len(buf) - wire.HEADER_SIZE} payload bytes exceed the declared bound "
                                           f"{comp.max_payload_bytes(n)} for n={n}")
    report.passed.append("wire round trip (with and without zstd) and max_payload_bytes")


def _check_contraction(comp, sizes, rng, report):
    checked = False
    for n in sizes:
        if n == 0:
            continue
        delta = comp.contraction(n)
        if delta is None:
            continue
        checked = True
        for trial in range(5):
            x = gradient_like(n, rng, "mixed" if trial % 2 else "plain").astype(np.float64)
            y = _decompress32(_fresh(comp), _fresh(comp).compress(x.astype(np.float32), step=trial)).astype(np.float64)
            x32 = x.astype(np.float32).astype(np.float64)
            err = float(np.sum((x32 - y) ** 2))
            bound = (1.0 - delta) * float(np.sum(x32**2))
            if err > bound * (1 + 1e-5) + 1e-30:
                _fail("contraction", f"||x - C(x)||^2 = {err:.6g} > (1 - {delta:.4g}) ||x||^2 = {bound:.6g} (n={n})")
    if checked:
        report.passed.append("contraction bound ||x - C(x)||^2 <= (1 - delta) ||x||^2")
    else:
        report.skipped.append("contraction bound (none declared)")


def _errors(comp, x, trials):
    """Errors D(C_t(x)) - x for independent steps t (float64, trials x n)."""
    errs = np.empty((trials, x.shape[0]))
    for t in range(trials):
        fresh = _fresh(comp)
        errs[t] = _decompress32(fresh, fresh.compress(x, step=t)).astype(np.float64) - x.astype(np.float64)
    return errs


def _check_unbiased(comp, n, trials, alpha, rng, report):
    if not comp.unbiased:
        report.skipped.append("unbiasedness (not declared)")
        return
    x = gradient_like(n, rng)
    errs = _errors(comp, x, trials)
    directions = {"x": x.astype(np.float64), "ones": np.ones(n), "first coordinate": np.eye(1, n, 0)[0],
                  "largest coordinate": np.eye(1, n, int(np.argmax(np.abs(x))))[0]}
    crit = _t_critical(alpha / len(directions), trials - 1)
    if float(np.max(np.std(errs, axis=0))) == 0.0:
        # A deterministic compressor: unbiased only if it makes no error at all.
        worst = float(np.abs(errs[0]).max())
        if worst > 1e-6 * (1.0 + float(np.abs(x).max())):
            _fail("unbiasedness", f"a deterministic compressor with error up to {worst:.6g} cannot be unbiased")
    for label, w in directions.items():
        s = errs @ w
        sd = float(np.std(s, ddof=1))
        if sd == 0.0:
            continue  # no variation seen along this direction (e.g. a coordinate never sampled)
        mean = float(np.mean(s))
        t_stat = mean / (sd / math.sqrt(trials))
        if abs(t_stat) > crit:
            _fail("unbiasedness", f"mean error along {label} is {mean:.6g}, t = {t_stat:.2f} beyond +-{crit:.2f} "
                                  f"(false-failure rate {alpha:g}, {trials} seeds)")
    report.passed.append(f"unbiasedness (t-test over {trials} seeds, false-failure rate {alpha:g})")


def _check_variance(comp, n, trials, alpha, rng, report):
    bound_fn = getattr(comp, "variance_bound", None)
    if bound_fn is None:
        report.skipped.append("variance bound (none declared)")
        return
    x = gradient_like(n, rng)
    norm2 = float(np.sum(x.astype(np.float64) ** 2))
    errs = _errors(comp, x, trials)
    sq = np.sum(errs**2, axis=1)
    bound = bound_fn(n) * norm2
    crit = normal_critical_value(2 * alpha)  # one-sided
    mean, sd = float(np.mean(sq)), float(np.std(sq, ddof=1))
    if mean - crit * sd / math.sqrt(trials) > bound:
        _fail("variance bound", f"E||C(x) - x||^2 ~ {mean:.6g} exceeds the declared {bound:.6g} "
                                f"(= {bound_fn(n):.4g} ||x||^2)")
    report.passed.append(f"variance bound E||C(x) - x||^2 <= {bound_fn(n):.4g} ||x||^2 (one-sided, rate {alpha:g})")


def _check_linear(comp, rng, report):
    if not comp.linear:
        report.skipped.append("linearity (not declared)")
        return
    n = 1000
    x, y = gradient_like(n, rng), gradient_like(n, rng)
    if comp.phased:
        _check_phases_linear(comp, x, y)
        report.passed.append("linearity of every phase")
        return
    cx, cy = _fresh(comp).compress(x, step=5, key=2), _fresh(comp).compress(y, step=5, key=2)
    total = _decompress32(_fresh(comp), comp.combine([cx, cy]))
    parts = _decompress32(_fresh(comp), cx) + _decompress32(_fresh(comp), cy)
    scale = float(np.abs(parts).max() + 1e-30)
    if not np.allclose(total, parts, rtol=1e-2, atol=1e-2 * scale):
        worst = float(np.abs(total - parts).max())
        _fail("linearity", f"decompress(combine([C(x), C(y)])) differs from D(C(x)) + D(C(y)) by up to {worst:.6g}")
    report.passed.append("linearity: decompress(combine) = sum of decompressions")


def _check_phases_linear(comp, x, y):
    """Drive phases(x), phases(y) and phases(x + y) in lockstep, as three ranks would, sending each the sum of (x + y)."""
    gens = [_fresh(comp).phases(v, key=0) for v in (x, y, x + y)]
    parts = [next(g) for g in gens]
    phase = 0
    while True:
        px, py, pxy = parts
        if not np.allclose(px + py, pxy, rtol=1e-4, atol=1e-4 * float(np.abs(pxy).max() + 1)):
            _fail("linearity", f"phase {phase}: part(x) + part(y) != part(x + y)")
        phase += 1
        try:
            parts = [g.send(np.array(pxy, copy=True)) for g in gens]
        except StopIteration:
            return


def _check_error_feedback(comp, rng, report):
    from .feedback import ResidualFeedback

    n, steps = 777, 12
    ef = ResidualFeedback(_fresh(comp))
    dec = _fresh(comp)
    sent = np.zeros(n, np.float64)
    total = np.zeros(n, np.float64)
    for _ in range(steps):
        x = gradient_like(n, rng)
        total += x
        sent += _decompress32(dec, ef.compress(x, key="bucket"))
    residual = ef.memory("bucket").astype(np.float64)
    lhs = sent + residual
    tol = 1e-4 * (np.abs(total).max() + np.abs(sent).max() + 1)
    if not np.allclose(lhs, total, rtol=0, atol=tol):
        _fail("error feedback identity", f"sent + residual differs from the inputs' sum by {np.abs(lhs - total).max():.6g}")
    report.passed.append(f"error-feedback identity over {steps} steps")


def _check_determinism_and_rng(comp, rng, report):
    x = gradient_like(4099, rng)
    before = _rng_states()
    a = _fresh(comp).compress(x, step=7, key=3)
    b = _fresh(comp).compress(x, step=7, key=3)
    da, db = _decompress32(_fresh(comp), a), _decompress32(_fresh(comp), b)
    after = _rng_states()
    if not np.array_equal(_bits(da), _bits(db)):
        _fail("determinism", "two compressions with equal (seed, step, key) differ")
    if not _same_rng(before, after):
        _fail("global RNG", "compress/decompress changed numpy's or torch's global generator state")
    report.passed.append("equal seeds give equal outputs; global RNGs untouched")


def _check_corruption(comp, rng, report, budget):
    x = gradient_like(200, rng)
    buf = wire.encode(_fresh(comp).compress(x, step=1))
    lengths = range(len(buf)) if len(buf) <= budget // 2 else sorted(set(rng.integers(0, len(buf), budget // 2).tolist()))
    for cut in lengths:
        try:
            wire.decode(buf[:cut])
        except WireFormatError:
            continue
        _fail("corruption", f"a packet truncated to {cut} of {len(buf)} bytes decoded without error")
    bit_positions = range(len(buf) * 8)
    if len(buf) * 8 > budget // 2:
        bit_positions = sorted(set(rng.integers(0, len(buf) * 8, budget // 2).tolist()))
    data = bytearray(buf)
    for bit in bit_positions:
        data[bit // 8] ^= 1 << (bit % 8)
        try:
            wire.decode(bytes(data))
        except WireFormatError:
            pass
        else:
            _fail("corruption", f"flipping bit {bit} of a {len(buf)}-byte packet decoded without error")
        finally:
            data[bit // 8] ^= 1 << (bit % 8)
    report.passed.append("every tested truncation and bit flip raises WireFormatError")


# ----------------------------------------------------------------------------
# hypothesis strategies
# ----------------------------------------------------------------------------
def gradients(min_size=0, max_size=2048, *, dtype=np.float32, allow_nonfinite=False):
    """Gradient-like vectors: Gaussian-times-log-normal, heavy tails, zeros, ties, float16 extremes.

    ``allow_nonfinite=True`` mixes in NaN and +-Inf.  Values are generated from
    a hypothesis-drawn seed, so shrinking stays cheap for large sizes.  Needs
    hypothesis installed.

    Parameters
    ----------
    min_size, max_size : int, optional
        Bounds of the vector length.
    dtype : numpy.dtype, optional
        The dtype of the vectors.
    allow_nonfinite : bool, optional
        Mix NaN, +Inf and -Inf in.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        A strategy of 1-D numpy arrays.

    Examples
    --------
    >>> import gcomp
    >>> from hypothesis import given, settings
    >>> from gcomp.testing import gradients
    >>> @settings(max_examples=20, deadline=None)
    ... @given(gradients(max_size=256))
    ... def test_topk_keeps_the_size(x):
    ...     c = gcomp.compressor("topk:ratio=0.1")
    ...     assert c.decompress(c.compress(x)).shape == x.shape
    >>> test_topk_keeps_the_size()
    """
    from hypothesis import strategies as st

    kinds = ["gaussian", "heavy", "zeros", "ties", "constant", "fp16_extremes", "tiny"]

    @st.composite
    def build(draw):
        n = draw(st.integers(min_size, max_size))
        kind = draw(st.sampled_from(kinds))
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        if kind == "gaussian":
            x = rng.standard_normal(n) * np.exp(rng.standard_normal(n))
        elif kind == "heavy":
            x = rng.standard_cauchy(n)
        elif kind == "zeros":
            x = np.zeros(n)
        elif kind == "ties":
            x = rng.integers(-3, 4, n).astype(np.float64)
        elif kind == "constant":
            x = np.full(n, draw(st.floats(-1e3, 1e3, allow_nan=False)))
        elif kind == "fp16_extremes":
            x = rng.choice(np.array([65504.0, -65504.0, 6e-8, -6e-8, 6.1e-5, 0.0, 1.0]), n)
        else:
            x = rng.standard_normal(n) * 1e-30
        if allow_nonfinite and n:
            for value in (np.nan, np.inf, -np.inf):
                if draw(st.booleans()):
                    x[rng.integers(0, n)] = value
        with np.errstate(over="ignore"):
            return x.astype(dtype)

    return build()


def compressor_configs(names=None):
    """Valid configuration dicts of registered compressors (all of them unless ``names`` is given).

    Each compressor's parameters come from its own ``strategy()`` classmethod,
    so a compressor registered from another package is covered too.  Needs
    hypothesis installed.

    Parameters
    ----------
    names : iterable of str, optional
        Registered compressor names to draw from; all of them by default.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        A strategy of config dicts (``{"name": ..., **params}``) that
        :func:`gcomp.compressor` accepts.

    Raises
    ------
    gcomp.errors.ConfigError
        A name is not registered.

    Examples
    --------
    >>> import gcomp
    >>> from hypothesis import given, settings
    >>> from gcomp.testing import compressor_configs
    >>> @settings(max_examples=20, deadline=None)
    ... @given(compressor_configs(["topk", "qsgd"]))
    ... def test_config_round_trips(config):
    ...     c = gcomp.compressor(config)
    ...     assert gcomp.compressor(c.get_config()) == c
    >>> test_config_round_trips()
    """
    from hypothesis import strategies as st

    load_plugins()
    names = sorted(REGISTRY) if names is None else list(names)
    options = []
    for name in names:
        cls = REGISTRY.get(name)
        if cls is None:
            raise ConfigError(f"unknown compressor {name!r}; known compressors: {', '.join(sorted(REGISTRY))}")
        params = cls.strategy()
        options.append(params.map(lambda p, name=name: {"name": name, **p}))
    return st.one_of(options)
