"""PowerSGD's streaming products (gcomp.kernels.powersgd): values, same bits for serial/parallel and 1, 2, 4 threads.

The products are checked against float64 numpy on the zero-padded matrix (the
kernels read the padding as zeros without a copy).  Bit identity: the serial
and the parallel kernels forced in this process, then a subprocess with
``NUMBA_NUM_THREADS=4`` running every way at ``numba.set_num_threads`` 1, 2
and 4.  No test measures time.  The tests that run the parallel kernels are
marked slow (a cold Numba cache compiles them).
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from gcomp.kernels import config
from gcomp.kernels import powersgd as K

#: (n, rows, cols, r): square, a partial last row, one row per unit (cols > UNIT_ENTRIES), a single row, tiny
SHAPES = [(600 * 1800, 600, 1800, 4), (1000 * 1001 - 500, 1000, 1001, 3), (3 * 600_001, 3, 600_001, 2),
          (5, 1, 5, 1), (10, 3, 4, 2), (4608 * 10, 10, 4608, 4)]


def _inputs(n, rows, cols, r, seed=7):
    rng = np.random.default_rng(seed + n + r)
    x = rng.standard_normal(n).astype(np.float32)
    q = rng.standard_normal((cols, r)).astype(np.float32)
    return x, q


def _padded(x, rows, cols):
    m = np.zeros(rows * cols, np.float64)
    m[: x.shape[0]] = x
    return m.reshape(rows, cols)


def _all(x, rows, cols, q):
    p = K.matrix_times(x, rows, cols, np.ascontiguousarray(q.T))
    q2 = K.matrix_t_times(x, rows, cols, p)
    dense = K.outer(p, np.ascontiguousarray(q2.T), x.shape[0])
    residual = x.copy()
    fused = K.outer(p, np.ascontiguousarray(q2.T), x.shape[0], residual=residual, divisor=3.0)
    acc = (0.25 * x[::-1]).copy()
    p_acc = K.matrix_times(x, rows, cols, np.ascontiguousarray(q.T), accumulate=acc, scale=0.5)
    added = K.outer_add(p, np.ascontiguousarray(q2.T), x.shape[0], (0.5 * x).copy())
    step = K.power_step(x, rows, cols, np.ascontiguousarray(q.T))
    return p, q2, dense, fused, residual, acc, p_acc, added, *step


@pytest.mark.parametrize("n,rows,cols,r", SHAPES)
def test_products_match_float64(n, rows, cols, r):
    x, q = _inputs(n, rows, cols, r)
    p, q2, dense, fused, residual, acc, p_acc, added, p_hat, q_step, qt_step = _all(x, rows, cols, q)
    # outer_add is acc += outer(...), bit for bit
    assert added.tobytes() == (0.5 * x + dense).tobytes()
    # power_step is matrix_times, orthonormalize and matrix_t_times in turn, bit for bit
    p_ref = K.orthonormalize(p.copy())
    assert p_hat.tobytes() == p_ref.tobytes()
    assert q_step.tobytes() == K.matrix_t_times(x, rows, cols, p_ref).tobytes()
    assert qt_step.tobytes() == np.ascontiguousarray(q_step.T).tobytes()
    # the fused residual update is numpy's v - result / divisor, bit for bit, and the result is unchanged
    assert fused.tobytes() == dense.tobytes()
    assert residual.tobytes() == (x - dense / np.float32(3.0)).tobytes()
    # the fused accumulation is numpy's v = x * s; v += acc, bit for bit, and P is the product of that v
    v = x * np.float32(0.5)
    v += (0.25 * x[::-1])
    assert acc.tobytes() == v.tobytes()
    assert p_acc.tobytes() == K.matrix_times(v, rows, cols, np.ascontiguousarray(q.T)).tobytes()
    m = _padded(x, rows, cols)
    ref_p = m @ q
    ref_q = m.T @ p.astype(np.float64)
    ref_d = (p.astype(np.float64) @ q2.astype(np.float64).T).reshape(-1)[:n]
    assert p.shape == (rows, r) and q2.shape == (cols, r) and dense.shape == (n,)
    for got, ref in ((p, ref_p), (q2, ref_q), (dense, ref_d)):
        scale = np.abs(ref).max()
        assert np.abs(got - ref).max() <= 1e-5 * scale * max(1.0, np.sqrt(max(rows, cols)) / 10)


def test_outputs_written_in_place_and_non_finite_propagates():
    n, rows, cols, r = 300 * 400, 300, 400, 2
    x, q = _inputs(n, rows, cols, r)
    x[5 * cols + 7] = np.nan
    p_out = np.full((rows, r), 9.0, np.float32)
    p = K.matrix_times(x, rows, cols, np.ascontiguousarray(q.T), out=p_out)
    assert p is p_out
    assert np.isnan(p[5]).all() and np.isfinite(np.delete(p, 5, axis=0)).all()
    p = np.nan_to_num(p)
    q_out = np.empty((cols, r), np.float32)
    assert K.matrix_t_times(x, rows, cols, p, out=q_out) is q_out
    assert np.isnan(q_out[7]).all() and np.isfinite(np.delete(q_out, 7, axis=0)).all()
    out = np.full(n, 5.0, np.float32)
    q_fin = np.nan_to_num(q_out)
    assert K.outer(p, np.ascontiguousarray(q_fin.T), n, out=out) is out
    np.testing.assert_allclose(out, (p @ q_fin.T).reshape(-1), rtol=1e-5, atol=1e-5)


def test_wrappers_reject_bad_arguments():
    x = np.ones(12, np.float32)
    qt = np.ones((2, 4), np.float32)
    with pytest.raises(TypeError, match="float32"):
        K.matrix_times(x.astype(np.float64), 3, 4, qt)
    with pytest.raises(ValueError, match="holding all 12 entries"):
        K.matrix_times(x, 2, 4, qt)
    with pytest.raises(ValueError, match="last row empty"):
        K.matrix_times(x, 4, 4, qt)
    with pytest.raises(ValueError, match=r"qt of shape \(r >= 1, 4\)"):
        K.matrix_times(x, 3, 4, np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="out of shape"):
        K.matrix_t_times(x, 3, 4, np.ones((3, 2), np.float32), out=np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match="expected n in"):
        K.outer(np.ones((3, 2), np.float32), qt, 13)
    with pytest.raises(ValueError, match="12 entries"):
        K.outer(np.ones((3, 2), np.float32), qt, 12, out=np.empty(11, np.float32))
    out = np.empty(12, np.float32)
    with pytest.raises(ValueError, match="residual"):
        K.outer(np.ones((3, 2), np.float32), qt, 12, out=out, residual=out)
    with pytest.raises(ValueError, match="accumulate"):
        K.matrix_times(x, 3, 4, qt, accumulate=x)


def _mgs_reference(p, eps=1e-8):
    """orthonormalize's arithmetic, one scalar at a time in Python: float64 sums in row order, float32 updates."""
    p = p.copy()
    rows, r = p.shape
    for j in range(r):
        for i in range(j):
            d = 0.0
            for k in range(rows):
                d += float(p[k, i]) * float(p[k, j])
            c = np.float32(d)
            for k in range(rows):
                p[k, j] = np.float32(p[k, j] - np.float32(c * p[k, i]))
        s = 0.0
        for k in range(rows):
            s += float(p[k, j]) * float(p[k, j])
        norm = np.sqrt(s)
        if norm > eps and np.isfinite(norm):
            p[:, j] = p[:, j] / np.float32(norm)
        else:
            p[:, j] = 0.0 if np.isfinite(norm) else np.nan
    return p


@pytest.mark.parametrize("rows,r", [(1, 1), (7, 3), (64, 4), (33, 8)])
def test_orthonormalize_is_gram_schmidt_in_a_fixed_order(rows, r):
    """The same bits as the scalar reference (no BLAS, no reassociation: equal on every machine), orthonormal
    columns, a near-zero column zeroed and a non-finite one NaN."""
    rng = np.random.default_rng(rows * 10 + r)
    p = rng.standard_normal((rows, r)).astype(np.float32)
    if r >= 3:
        p[:, 1] = 1e-12  # below eps: zeroed
        p[0, 2] = np.inf  # non-finite: NaN
    got = K.orthonormalize(p.copy())
    assert got.tobytes() == _mgs_reference(p).tobytes()
    good = [j for j in range(r) if np.isfinite(got[:, j]).all() and np.abs(got[:, j]).max() > 0]
    if r >= 3:
        assert not np.abs(got[:, 1]).any() and np.isnan(got[:, 2]).all()
    g = got[:, good].astype(np.float64)
    if rows >= len(good):
        np.testing.assert_allclose(g.T @ g, np.eye(len(good)), atol=1e-5)
    with pytest.raises(TypeError, match="C-contiguous 2-D float32"):
        K.orthonormalize(np.asfortranarray(np.ones((3, 2), np.float32)))
    assert K.orthonormalize(np.zeros((0, 0), np.float32)).shape == (0, 0)


def test_outer_add_and_power_step_reject_bad_arguments():
    p, qt = np.ones((3, 2), np.float32), np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="acc to be a C-contiguous float32 vector of 12"):
        K.outer_add(p, qt, 12, np.zeros(11, np.float32))
    with pytest.raises(ValueError, match="acc to be a C-contiguous float32 vector of 12"):
        K.outer_add(p, qt, 12, np.zeros(12, np.float64))
    with pytest.raises(ValueError, match="expected n in"):
        K.outer_add(p, qt, 13, np.zeros(13, np.float32))
    with pytest.raises(ValueError, match=r"qt with 2 rows"):
        K.outer_add(p, np.ones((3, 4), np.float32), 12, np.zeros(12, np.float32))
    with pytest.raises(ValueError, match="last row empty"):
        K.power_step(np.ones(12, np.float32), 4, 4, np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"qt of shape \(r >= 1, 4\)"):
        K.power_step(np.ones(12, np.float32), 3, 4, np.ones((2, 5), np.float32))


def _run_phases(c, x, key, **kw):
    gen = c.phases(x, key, **kw)
    p = next(gen)
    q = gen.send(p * 2)
    try:
        gen.send(q * 2)
    except StopIteration as done:
        return done.value
    raise AssertionError("phases did not finish after two sums")


@pytest.mark.parametrize("layout", [True, False])
def test_powersgd_fused_error_feedback_equals_the_unfused_steps(layout):
    """phases(x, residual=, scale=, divisor=, out=x): numpy's v = x * s; v += residual, the plain phases on v, and
    residual = v - result / divisor, bit for bit, with the result written into the bucket x itself."""
    from gcomp.compressors import compressor

    shapes = [(300, 70), (300,), (40, 300), (40,)]
    n = sum(int(np.prod(s)) for s in shapes)
    rng = np.random.default_rng(3)
    grad = rng.standard_normal(n).astype(np.float32)
    res0 = (0.1 * rng.standard_normal(n)).astype(np.float32)
    plain_c, fused_c = compressor("powersgd:rank=3,seed=5"), compressor("powersgd:rank=3,seed=5")
    if layout:
        plain_c.set_layout("b", shapes)
        fused_c.set_layout("b", shapes)
    scale = np.float32(0.5)
    v = grad * scale
    v += res0
    v_in = v.copy()
    plain = _run_phases(plain_c, v, "b")
    assert v.tobytes() == v_in.tobytes()  # without a residual the input is only read
    expected_res = v - plain / np.float32(2)
    bucket, res = grad.copy(), res0.copy()
    fused = _run_phases(fused_c, bucket, "b", out=bucket, residual=res, scale=scale, divisor=2)
    assert fused is bucket
    assert fused.tobytes() == plain.tobytes()
    assert res.tobytes() == expected_res.tobytes()
    # the warm starts agree too: a second step gives the same bits again
    v2 = grad * scale
    v2 += expected_res
    plain2 = _run_phases(plain_c, v2, "b")
    bucket2 = grad.copy()
    assert _run_phases(fused_c, bucket2, "b", out=bucket2, residual=res, scale=scale, divisor=2).tobytes() == plain2.tobytes()


def _digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:20]


def digests(mode):
    """shape -> digest of (P, Q', dense) with ``config._force = mode``."""
    previous = config._force
    config._force = mode
    try:
        result = {}
        for n, rows, cols, r in SHAPES:
            x, q = _inputs(n, rows, cols, r)
            result[f"{n}/{rows}x{cols}/r{r}"] = _digest(_all(x, rows, cols, q))
        return result
    finally:
        config._force = previous


@pytest.mark.slow  # compiles the parallel kernels when the Numba cache is cold
def test_serial_and_parallel_kernels_agree_in_process():
    serial, parallel, auto = digests("serial"), digests("parallel"), digests(None)
    assert serial == parallel == auto


@pytest.mark.slow
def test_bit_identical_for_1_2_4_threads():
    """A subprocess with NUMBA_NUM_THREADS=4: serial, parallel and the normal choice at 1, 2 and 4 threads agree."""
    code = textwrap.dedent("""
        import json, sys
        import numba
        sys.path.insert(0, sys.argv[1])
        from test_powersgd import digests
        from gcomp.kernels import config
        ways = {}
        for t in (1, 2, 4):
            numba.set_num_threads(t)
            for mode in ("serial", "parallel", None):
                ways[f"{mode}/{t}"] = digests(mode)
            ways[f"threads/{t}"] = config.parallel_threads(1 << 22)
        print(json.dumps(ways))
    """)
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, NUMBA_NUM_THREADS="4")
    proc = subprocess.run([sys.executable, "-c", code, here], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ways = json.loads(proc.stdout)
    assert [ways.pop(f"threads/{t}") for t in (1, 2, 4)] == [1, 2, 4]
    first = ways["serial/1"]
    differ = {way: [k for k in first if got[k] != first[k]] for way, got in ways.items() if got != first}
    assert not differ, f"ways differ from serial/1: {differ}"
