"""PowerSGD's one-vector paths: decompress_add adds in place (the bits of ``acc += decompress(c)``, nothing of
the vector's size allocated), and compress()'s cached transpose of the warm start never outlives the Q it came
from (a restored checkpoint, a reset, or the phases' own update of the same key)."""

import tracemalloc

import numpy as np
import pytest
from gcomp.kernels import config

import gcomp
from gcomp import wire


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("n", [1, 7, 1000, 10_001, 300_007])
@pytest.mark.parametrize("force", [None, "parallel"])
def test_decompress_add_is_acc_plus_decompress_bit_for_bit(n, force):
    c = gcomp.compressor("powersgd:rank=3,seed=2")
    packet = wire.decode(wire.encode(c.compress(_x(n), step=0, key="k")))
    acc = _x(n, seed=1)
    want = acc.copy()
    want += c.decompress(packet)
    previous, config._force = config._force, force
    try:
        got = c.decompress_add(packet, acc)
    finally:
        config._force = previous
    assert got is acc
    assert acc.tobytes() == want.tobytes()


def test_decompress_add_allocates_nothing_of_the_vector_size():
    n = 200_003
    c = gcomp.compressor("powersgd:rank=2")
    packet = wire.decode(wire.encode(c.compress(_x(n), step=0, key=0)))
    acc = np.zeros(n, np.float32)
    c.decompress_add(packet, acc)  # compiled and warm
    tracemalloc.start()
    try:
        c.decompress_add(packet, acc)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n, f"{peak} bytes traced while adding {n} entries into acc"


def _packets(comp, xs, key=0):
    return [(c.arrays["p"].tobytes(), c.arrays["q"].tobytes()) for c in (comp.compress(x, key=key) for x in xs)]


def test_warm_start_follows_a_restored_state_and_a_reset():
    xs = [_x(5000, seed=s) for s in range(4)]
    first = gcomp.compressor("powersgd:rank=2,seed=3")
    _packets(first, xs[:2])
    saved = first.state_dict()
    other = gcomp.compressor("powersgd:rank=2,seed=3")
    expected = _packets(other, xs)  # an uninterrupted run of the same steps
    # a compressor that ran other steps, then restores the state after step 2: steps 3 and 4 as the run's
    resumed = gcomp.compressor("powersgd:rank=2,seed=3")
    _packets(resumed, xs[2:] + xs[:1])
    resumed.load_state_dict(saved)
    assert _packets(resumed, xs[2:]) == expected[2:]
    # reset(key) starts the key over: as a fresh compressor
    resumed.reset(0)
    assert _packets(resumed, xs[:2]) == expected[:2]
    resumed.reset()
    assert _packets(resumed, xs[:1]) == expected[:1]


def test_compress_after_the_phases_updated_the_key_uses_their_q():
    """finish() stores the summed Q of the key; the next compress() of that key warm-starts from it."""
    x = _x(4000)
    a, b = gcomp.compressor("powersgd:rank=2"), gcomp.compressor("powersgd:rank=2")
    a.compress(x, key=0)  # leaves a cached transpose for key 0
    b.load_state_dict(a.state_dict())  # the same Q, no cache
    for comp in (a, b):
        gen = comp.phases(x * 2, 0)
        p = next(gen)
        q = gen.send(p)
        try:
            gen.send(q * 3)
        except StopIteration:
            pass
    assert _packets(a, [x]) == _packets(b, [x])


@pytest.mark.parametrize("n", [1, 5, 1000, 10_001, 300_007])
def test_decompress_into_out_is_the_outer_kernel_bit_for_bit(n):
    """decompress(out=) of a decoded packet (small vectors: the transpose of Q inside the compiled call) gives
    kernels.powersgd.outer's bits."""
    from gcomp.kernels import powersgd as K

    c = gcomp.compressor("powersgd:rank=3,seed=4")
    packet = wire.decode(wire.encode(c.compress(_x(n, seed=2), step=0, key=1)))
    out = np.full(n, np.nan, np.float32)
    assert c.decompress(packet, out=out) is out
    want = K.outer(np.ascontiguousarray(packet.arrays["p"]), np.ascontiguousarray(packet.arrays["q"].T), n)
    assert out.tobytes() == want.tobytes()
