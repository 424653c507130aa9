"""Every parallelised kernel on inputs large enough for the parallel path, as digests of the output bytes.

Used in-process (serial against parallel kernels) and as a script, run by
``test_parallel.py`` in a subprocess with ``NUMBA_NUM_THREADS=4``: it prints one
JSON object mapping each way of running (the serial kernels forced, the parallel
kernels forced at 1, 2 and 4 threads, and the normal choice at 2 and 4 threads) to
``{case: sha256 of every output array, residuals included}``.
"""

import hashlib
import json
import sys

import numpy as np

N = 300_007  # above PARALLEL_MIN (2**18), not a multiple of 8 or 64: partial units, blocks and bytes
N_SEL = 1_100_003  # above PARALLEL_MIN_SELECTION (2**20), for the selection kernels
SEED = 20240611


def vectors(n=N):
    """Normal, with NaN/Inf, many ties, mostly zeros, and concentrated (large values in one region)."""
    rng = np.random.default_rng(SEED + n)
    normal = rng.standard_normal(n).astype(np.float32)
    nonfinite = normal * np.exp(rng.standard_normal(n)).astype(np.float32)
    for value, count in ((np.nan, 40), (np.inf, 40), (-np.inf, 40)):
        nonfinite[rng.integers(0, n, count)] = value
    ties = rng.integers(-3, 4, n).astype(np.float32)
    zeros = np.zeros(n, np.float32)
    zeros[rng.integers(0, n, 500)] = rng.standard_normal(500).astype(np.float32)
    concentrated = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    concentrated[70_000:75_000] *= 1e5
    return {"normal": normal, "nonfinite": nonfinite, "ties": ties, "zeros": zeros, "concentrated": concentrated}


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, (tuple, list)):
            h.update(_digest(*a).encode())
        else:
            a = np.ascontiguousarray(a)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
    return h.hexdigest()[:20]


def cases():
    """name -> zero-argument callable returning the output arrays (a fresh residual per call)."""
    from gcomp.kernels import bitpack, natural, qsgd, sampled_topk, sign, terngrad, threshold, topk, uniform
    from gcomp.kernels import error_feedback as ef

    rng = np.random.default_rng(SEED + 1)
    res_sel = (0.5 * rng.standard_normal(N_SEL)).astype(np.float32)
    res0 = res_sel[:N].copy()
    out = {}

    def with_residual(fn, res=res0):
        def call():
            r = res.copy()
            return fn(r), r

        return call

    for name, x in vectors(N_SEL).items():
        for k in (1, N_SEL // 100, N_SEL // 3):
            out[f"topk_exact/{name}/k={k}"] = lambda x=x, k=k: topk.topk_exact(x, k)
            out[f"topk_sampled/{name}/k={k}"] = lambda x=x, k=k: sampled_topk.topk_sampled(x, k, 7)
            out[f"ef_topk/{name}/k={k}"] = with_residual(lambda r, x=x, k=k: ef.ef_topk(x, r, k), res_sel)
        out[f"ef_sampled_topk/{name}"] = with_residual(lambda r, x=x: ef.ef_sampled_topk(x, r, N_SEL // 100, 7), res_sel)
        out[f"threshold/{name}"] = lambda x=x: (threshold.threshold_select(x, 1.5), threshold.threshold_count(x, 1.5))
    vs = vectors()
    x = vs["nonfinite"]
    ties = vs["ties"]
    for bucket in (512, 1000, 65_544, 200_000):
        for levels in (1, 4, 127):
            out[f"qsgd/b={bucket}/l={levels}"] = lambda b=bucket, lv=levels: qsgd.qsgd_encode(x, lv, b, 3)
            out[f"qsgd_ef/b={bucket}/l={levels}"] = with_residual(lambda r, b=bucket, lv=levels: qsgd.qsgd_encode(x, lv, b, 3, residual=r))
        for bits, mode, rounding in ((1, "maxmin", "nearest"), (2, "absmax", "stochastic"), (4, "maxmin", "stochastic"),
                                     (8, "absmax", "nearest")):
            key = f"uniform/b={bucket}/{bits}{mode}{rounding}"
            out[key] = lambda b=bucket, bi=bits, m=mode, ro=rounding: uniform.uniform_encode(x, bi, b, m, ro, 5)
            out[key + "/ties"] = lambda b=bucket, bi=bits, m=mode, ro=rounding: uniform.uniform_encode(ties, bi, b, m, ro, 5)
            out[key + "/ef"] = with_residual(
                lambda r, b=bucket, bi=bits, m=mode, ro=rounding: uniform.uniform_encode(x, bi, b, m, ro, 5, residual=r))
        out[f"sign/b={bucket}"] = lambda b=bucket: sign.sign_encode(x, b)
        out[f"sign_ef/b={bucket}"] = with_residual(lambda r, b=bucket: sign.sign_encode(vs["normal"], b, residual=r))
        out[f"terngrad/b={bucket}"] = lambda b=bucket: terngrad.terngrad_encode(x, b, 9)
        out[f"terngrad_ef/b={bucket}"] = with_residual(lambda r, b=bucket: terngrad.terngrad_encode(x, b, 9, residual=r))
    out["natural"] = lambda: natural.natural_encode(x, 11)
    out["natural_ef"] = with_residual(lambda r: natural.natural_encode(x, 11, residual=r))

    # decoders, from fixed encodings (made once, serially, outside the timed ways)
    base = (0.25 * rng.standard_normal(N)).astype(np.float32)

    def decoded(fn):
        def call():
            acc = base.copy()
            return fn(None, False), fn(acc, True), acc

        return call

    for bucket in (512, 65_544):
        p, nm = qsgd.qsgd_encode(x, 4, bucket, 3)
        out[f"qsgd_decode/b={bucket}"] = decoded(lambda o, a, p=p, nm=nm, b=bucket: qsgd.qsgd_decode(p, nm, 4, b, N, out=o, accumulate=a))
        pu, su, ou = uniform.uniform_encode(vs["normal"], 4, bucket, "maxmin", "stochastic", 5)
        out[f"uniform_decode/b={bucket}"] = decoded(
            lambda o, a, p=pu, s=su, f=ou, b=bucket: uniform.uniform_decode(p, s, f, 4, b, N, out=o, accumulate=a))
        ps, ss = sign.sign_encode(vs["normal"], bucket)
        out[f"sign_decode/b={bucket}"] = decoded(lambda o, a, p=ps, s=ss, b=bucket: sign.sign_decode(p, s, b, N, out=o, accumulate=a))
        pt, st = terngrad.terngrad_encode(vs["normal"], bucket, 9)
        out[f"terngrad_decode/b={bucket}"] = decoded(
            lambda o, a, p=pt, s=st, b=bucket: terngrad.terngrad_decode(p, s, b, N, out=o, accumulate=a))
    ex, sg = natural.natural_encode(x, 11)
    out["natural_decode"] = decoded(lambda o, a: natural.natural_decode(ex, sg, N, out=o, accumulate=a))
    codes = rng.integers(0, 256, N, dtype=np.uint8)
    for bits in (1, 2, 4, 8):
        out[f"pack_bits/{bits}"] = lambda b=bits: bitpack.pack_bits(codes, b)
        packed = bitpack.pack_bits(codes, bits)
        out[f"unpack_bits/{bits}"] = lambda b=bits, p=packed: bitpack.unpack_bits(p, b, N)
    return out


def digests(mode=None):
    """case -> digest, with ``gcomp.kernels.config._force = mode`` (None: the normal choice)."""
    from gcomp.kernels import config

    result = {}
    previous = config._force
    config._force = mode
    try:
        for name, call in cases().items():
            result[name] = _digest(call())
    finally:
        config._force = previous
    return result


def main():
    import numba
    from gcomp.kernels import config

    report = {"threading_layer": None, "max_threads": numba.config.NUMBA_NUM_THREADS, "ways": {}}
    for threads in (1, 2, 4):
        numba.set_num_threads(threads)
        # The serial kernels never read the thread count (config.run calls them directly when forced), and the
        # normal choice at 1 thread is the serial kernel (parallel_threads/1 == 1 below): serial/2, serial/4 and
        # auto/1 would repeat serial/1's exact code path, so only serial/1 runs.
        if threads == 1:
            report["ways"]["serial/1"] = digests("serial")
        else:
            report["ways"][f"auto/{threads}"] = digests(None)
        report["ways"][f"parallel/{threads}"] = digests("parallel")
        report[f"parallel_threads/{threads}"] = config.parallel_threads(N)
        report[f"parallel_threads_selection/{threads}"] = config.parallel_threads(N_SEL, config.PARALLEL_MIN_SELECTION)
    report["threading_layer"] = numba.threading_layer()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
