"""PowerSGD's compress() from two threads at once (the DDP hook's training thread and its communication thread,
with scatter-reduce-allgather) gives each key what it gets alone: no call uses the other thread's key."""

import sys
import threading

import numpy as np

import gcomp

CALLS = 300


def _run(comp, key, xs, out, barrier):
    barrier.wait()
    for x in xs:
        c = comp.compress(x, step=0, key=key)
        out.append((c.arrays["p"].tobytes(), c.arrays["q"].tobytes()))


def test_two_threads_compress_with_their_own_keys():
    rng = np.random.default_rng(0)
    xs = {key: [rng.standard_normal(600).astype(np.float32) for _ in range(CALLS)] for key in ("a", "b")}
    alone = {}
    for key in xs:  # each key on a fresh compressor, one thread: the expected factors, warm start included
        comp = gcomp.compressor("powersgd:rank=2")
        alone[key] = [(c.arrays["p"].tobytes(), c.arrays["q"].tobytes())
                      for c in (comp.compress(x, step=0, key=key) for x in xs[key])]
    shared = gcomp.compressor("powersgd:rank=2")
    got = {key: [] for key in xs}
    barrier = threading.Barrier(2)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can: interleave the calls
    try:
        threads = [threading.Thread(target=_run, args=(shared, key, xs[key], got[key], barrier)) for key in xs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    for key in xs:
        assert got[key] == alone[key], f"key {key!r}: factors differ from the same calls on one thread"
