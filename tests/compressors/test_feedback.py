"""Error-feedback memories: identities, checkpoint round trips, shape checks."""

import io

import numpy as np
import pytest
import torch

import gcomp
from gcomp import wire
from gcomp.errors import ConfigError, StateError
from gcomp.feedback import DGCFeedback, EF21Feedback, NoFeedback, ResidualFeedback, feedback

SPECS = ["topk:ratio=0.05", "dgc:ratio=0.05", "randomk:ratio=0.1", "qsgd", "uniform:bits=2,rounding=stochastic", "sign",
         "terngrad", "natural", "powersgd:rank=2", "fp16", "threshold:tau=1.0"]


def grads(rng, n):
    return (rng.standard_normal(n) * np.exp(rng.standard_normal(n))).astype(np.float32)


@pytest.mark.parametrize("spec", SPECS)
def test_residual_identity(spec):
    rng = np.random.default_rng(0)
    ef = ResidualFeedback(spec)
    dec = gcomp.compressor(spec)
    total = np.zeros(513)
    sent = np.zeros(513)
    for _ in range(20):
        x = grads(rng, 513)
        total += x
        sent += dec.decompress(ef.compress(x, key="w"))
    residual = ef.memory("w")
    # Equal up to float32 rounding of the magnitudes involved (20 steps of accumulation).
    scale = np.abs(total).max() + np.abs(sent).max() + np.abs(residual).max()
    np.testing.assert_allclose(sent + residual, total, rtol=0, atol=20 * 1e-6 * scale)


def _run(ef, rng_seed, steps, keys=("a", "b"), sizes=(300, 1000)):
    rng = np.random.default_rng(rng_seed)
    out = []
    for _ in range(steps):
        for key, n in zip(keys, sizes, strict=True):
            out.append(wire.encode(ef.compress(grads(rng, n), key=key)))
    return out


RESTORE_CASES = [
    (kind, spec)
    for kind in ("residual", "ef21", "dgc", "none")
    for spec in ("topk:ratio=0.05", "dgc:ratio=0.05", "qsgd", "powersgd:rank=2", "randomk:ratio=0.1")
    if not (kind == "dgc" and spec.startswith(("qsgd", "powersgd")))  # dgc feedback needs a sparse compressor
]


@pytest.mark.parametrize(("kind", "spec"), RESTORE_CASES)
def test_checkpoint_restore_is_bit_identical(kind, spec):
    reference = feedback(kind, spec)
    _run(reference, 1, 3)
    buf = io.BytesIO()
    torch.save(reference.state_dict(), buf)
    buf.seek(0)
    restored = feedback(kind, spec)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert _run(reference, 2, 3) == _run(restored, 2, 3)


def test_fresh_memory_differs_from_restored():
    # The restore test can fail: without the state the next packets differ.
    a = ResidualFeedback("topk:ratio=0.05")
    _run(a, 1, 3)
    b = ResidualFeedback("topk:ratio=0.05")
    assert _run(a, 2, 1) != _run(b, 2, 1)


def test_shape_mismatch_raises():
    ef = ResidualFeedback("topk")
    ef.compress(np.ones(10, np.float32), key="k")
    with pytest.raises(StateError, match="10"):
        ef.compress(np.ones(11, np.float32), key="k")
    state = ef.state_dict()
    other = ResidualFeedback("topk")
    other.load_state_dict(state)
    with pytest.raises(StateError):
        other.compress(np.ones(12, np.float32), key="k")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.update(version=99),
        lambda s: s.update(kind="ef21"),
        lambda s: s.update(compressor={"name": "topk", "ratio": 0.5}),
        lambda s: s["entries"]["k"].update(residual=torch.zeros(3, 3)),
        lambda s: s["entries"]["k"].pop("residual"),
        lambda s: s["steps"].update(k=-1),
    ],
)
def test_bad_state_raises(mutate):
    ef = ResidualFeedback("topk")
    ef.compress(np.ones(10, np.float32), key="k")
    state = ef.state_dict()
    mutate(state)
    with pytest.raises(StateError):
        ResidualFeedback("topk").load_state_dict(state)


def test_ef21_aggregate_tracks_mean_of_estimates():
    rng = np.random.default_rng(3)
    workers = [EF21Feedback("topk:ratio=0.1") for _ in range(3)]
    receiver = EF21Feedback("topk:ratio=0.1")
    dec = gcomp.compressor("topk:ratio=0.1")
    for _ in range(10):
        msgs = [w.compress(grads(rng, 200), key=0) for w in workers]
        mean = sum(dec.decompress(m) for m in msgs) / 3
        agg = receiver.aggregate(0, mean)
    np.testing.assert_allclose(agg, sum(w.memory(0, "estimate") for w in workers) / 3, rtol=1e-5, atol=1e-5)


def test_ef21_estimate_converges_to_a_constant_gradient():
    ef = EF21Feedback("topk:ratio=0.2")
    x = grads(np.random.default_rng(4), 100)
    for _ in range(10):
        ef.compress(x, key=0)
    np.testing.assert_allclose(ef.memory(0, "estimate"), x, atol=1e-6)


def test_dgc_momentum_correction_and_masking():
    rng = np.random.default_rng(5)
    ef = DGCFeedback("topk:ratio=0.1", momentum=0.9)
    u = np.zeros(100, np.float32)
    v = np.zeros(100, np.float32)
    for _ in range(5):
        g = grads(rng, 100)
        c = ef.compress(g, key=0)
        u = 0.9 * u + g
        v = v + u
        idx = c.arrays["indices"]
        np.testing.assert_array_equal(c.arrays["values"], v[idx])
        v[idx] = 0
        u[idx] = 0
        np.testing.assert_allclose(ef.memory(0, "velocity"), v, rtol=1e-6)
        np.testing.assert_allclose(ef.memory(0, "momentum"), u, rtol=1e-6)


def test_dgc_clipping_and_validation():
    ef = DGCFeedback("topk:ratio=1.0", momentum=0.0, clip_norm=1.0)
    c = ef.compress(np.full(4, 10.0, np.float32), key=0)
    assert np.linalg.norm(gcomp.compressor("topk:ratio=1.0").decompress(c)) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ConfigError):
        DGCFeedback("qsgd").compress(np.ones(8, np.float32))
    for bad in ({"momentum": 1.0}, {"clip_norm": 0}, {"masking": "yes"}):
        with pytest.raises(ConfigError):
            DGCFeedback("topk", **bad)


def test_feedback_factory():
    assert isinstance(feedback("none", "topk"), NoFeedback)
    with pytest.raises(ConfigError, match="residual"):
        feedback("momentum", "topk")


def test_global_rng_untouched_by_memories():
    before = (np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    for kind in ("residual", "ef21", "dgc"):
        _run(feedback(kind, "dgc:ratio=0.1"), 0, 2)
    assert np.array_equal(before[0], np.random.get_state()[1]) and torch.equal(before[1], torch.get_rng_state())
