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

def params_bytes(m):
    return b"".join(p.detach().float().numpy().tobytes() for p in m.parameters())

def nan_probe(rank, world, spec, policy, **opts):
    import traceback, gcomp.errors as E
    m = model_fn(); ddp = DDP(m, bucket_cap_mb=0.01)
    st = gcomp.ddp.register(ddp, spec, nonfinite=policy, start_iter=1, **opts)
    first = list(m.parameters())[2]  # second Linear weight 64x64
    inject = {"on": False}
    def hook(g):
        if inject["on"] and rank == 1:
            g = g.clone(); g.view(-1)[5] = float("nan"); g.view(-1)[7] = float("inf")
        return g
    first.register_hook(hook)
    res = []
    g = torch.Generator().manual_seed(100 + rank)
    for s in range(4):
        inject["on"] = (s == 2)
        x = torch.randn(16, 32, generator=g); y = torch.randn(16, 4, generator=g)
        try:
            ddp.zero_grad()
            loss = ((ddp(x) - y) ** 2).mean(); loss.backward()
            gr = first.grad.view(-1)
            res.append(("ok", torch.isfinite(gr).all().item(), gr[:10].tolist()))
        except Exception as e:
            res.append(("exc", type(e).__name__, str(e)[:300]))
    return res

def kill_probe(rank, world, spec):
    import time
    m = model_fn(); ddp = DDP(m, bucket_cap_mb=0.01)
    st = gcomp.ddp.register(ddp, spec, timeout=datetime.timedelta(seconds=10), start_iter=1)
    g = torch.Generator().manual_seed(100 + rank)
    t0 = None
    for s in range(6):
        if s == 3 and rank == 2:
            import os; os._exit(3)
        x = torch.randn(16, 32, generator=g); y = torch.randn(16, 4, generator=g)
        try:
            t0 = time.time()
            ddp.zero_grad(); ((ddp(x) - y) ** 2).mean().backward()
        except Exception as e:
            return ("exc", s, type(e).__name__, type(e).__mro__[1].__name__, str(e)[:400], time.time()-t0)
    return "noexc"
