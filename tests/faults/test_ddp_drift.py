"""Issue 10 item 3 on real gloo ranks: a rank whose communication thread fails once must not drift silently.

Two DDP buckets of exactly the same size; at one step rank 1's communication
thread fails before its collective (an injected exception) and every rank goes
on training.  Rank 1's later collectives then pair with the others' previous
ones.  Before the sequence tokens, the sizes matched, nothing noticed, rank 0
reported success and the replicas diverged; now every backward after the
failure raises on every rank, naming the broken sequence.
"""

import datetime

import pytest
from ddp.launch import launch

pytestmark = pytest.mark.slow

WIDTH = 64  # two Linear(64, 64) layers: two buckets of 4160 entries each
STEPS, FAIL_AT = 8, 4


def drift_worker(rank, world_size, spec):
    import numpy as np
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    import gcomp.ddp

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH))
    numel = WIDTH * WIDTH + WIDTH
    ddp = DDP(model, bucket_cap_mb=numel * 4 / 2**20)
    state = gcomp.ddp.register(ddp, spec, start_iter=1, min_numel=0, timeout=datetime.timedelta(seconds=20))
    engine = state.engine
    complete, calls, sizes = engine.complete, [0], set()

    def failing(pending, out=None):
        calls[0] += 1
        sizes.add(pending.x.shape[0])
        # DDP rebuilds its buckets after the first (dense) step; bucket 0 of step FAIL_AT:
        if rank == 1 and calls[0] == 2 * (FAIL_AT - 1) + 1:
            raise RuntimeError("injected: the communication thread fails before its collective")
        return complete(pending, out=out)

    engine.complete = failing
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)
    outcomes, digests = [], []
    for _ in range(STEPS):
        x = torch.randn(8, WIDTH, generator=g)
        opt.zero_grad(set_to_none=True)
        try:
            ddp(x).pow(2).mean().backward()
            opt.step()
            outcomes.append("ok")
        except RuntimeError as exc:
            text = str(exc)
            outcomes.append("sequence" if "out of sequence" in text else "injected" if "injected" in text else text)
        state.wait()
        digests.append(bytes(np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])).hex()[:64])
    if rank == 1:
        # rank 1 communicated one collective fewer; one more call lets the others' last one end (it raises too)
        try:
            engine(np.zeros(numel, np.float32), key=1)
        except gcomp.errors.SequenceError:
            outcomes.append("sequence")
    state.close()
    return {"outcomes": outcomes, "digests": digests, "sizes": sorted(sizes)}


@pytest.mark.parametrize("spec", ["topk:ratio=0.05", "fp16", "powersgd"])
def test_a_missed_collective_raises_on_every_rank_instead_of_diverging(spec):
    results = launch(drift_worker, 3, spec, timeout=240)
    for rank, r in enumerate(results):
        assert len(r["sizes"]) == 1, f"expected two buckets of one size, found {r['sizes']}"
        healthy = r["outcomes"][:FAIL_AT]
        assert healthy == ["ok"] * FAIL_AT, (rank, r["outcomes"])
        after = r["outcomes"][FAIL_AT:]
        if rank == 1:
            # its own failure shows at that step (with the first paired bucket's error behind it, one per step)
            assert after[0] in ("injected", "sequence"), after
        # every step after the failure raised on every rank: no step was summed out of order
        assert all(o in ("sequence", "injected") for o in after), (rank, after)
        assert after.count("sequence") >= STEPS - FAIL_AT - 1, (rank, after)
    # up to the failure the replicas were identical
    for step in range(FAIL_AT):
        assert len({r["digests"][step] for r in results}) == 1, step
