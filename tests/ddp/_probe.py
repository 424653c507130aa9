import datetime, hashlib, time
import torch, torch.nn as nn, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
import gcomp.ddp

def model_fn(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4)).to(dtype)

def probe(rank, world, spec, hook=True, steps=4, cap=None, **opts):
    t0=time.time()
    m = model_fn()
    kw = {} if cap is None else {"bucket_cap_mb": cap}
    ddp = DDP(m, **kw)
    st = None
    if hook:
        st = gcomp.ddp.register(ddp, spec, **opts)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)
    out = []
    for s in range(steps):
        x = torch.randn(16, 32, generator=g); y = torch.randn(16, 4, generator=g)
        loss = ((ddp(x) - y) ** 2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        out.append((loss.item(), hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in m.parameters())).hexdigest()[:12]))
    return {"out": out, "t": time.time()-t0, "last": st.last_step() if st else None, "nb": len(st.steps) if st else None}
