"""Issue 10 item 10: errors raised through DDP's Future do not keep bucket-sized arrays alive.

One gloo rank, a 4M-parameter layer, ``nonfinite="raise"`` and a NaN in every
step's gradient: 200 caught NonFiniteErrors must leave the resident memory
flat (each leaked raise used to keep about 16 MB: the bucket's input, packets
and result, held by the exception's frames).
"""

import pytest
from ddp.launch import launch

pytestmark = pytest.mark.slow

RAISES = 200


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def leak_worker(rank, world_size):
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    import gcomp.ddp

    torch.manual_seed(0)
    model = nn.Linear(2000, 2000)
    ddp = DDP(model, bucket_cap_mb=64)
    gcomp.ddp.register(ddp, "topk:ratio=0.01", nonfinite="raise", start_iter=0, min_numel=0)
    x = torch.randn(4, 2000)
    caught, rss = 0, []
    for step in range(RAISES):
        loss = ddp(x).sum() * torch.tensor(float("nan"))
        try:
            loss.backward()
        except RuntimeError as exc:
            assert "NaN or Inf" in str(exc), str(exc)
            caught += 1
        if step in (20, RAISES - 1):
            rss.append(_rss_mb())
    return {"caught": caught, "rss": rss}


def test_caught_errors_do_not_leak():
    (result,) = launch(leak_worker, 1, timeout=300)
    assert result["caught"] == RAISES
    early, late = result["rss"]
    # a leak of one 16 MB bucket per raise would add about 2.8 GB over these 180 raises
    assert late - early < 200, f"RSS grew from {early:.0f} MB to {late:.0f} MB over {RAISES - 21} caught errors"
