"""The DDP hook's hierarchical mode and an injected transport, on 3 real gloo ranks (an odd world size).

Groups ``{0, 1}`` and ``{2}``: a dense sum inside each group, the compressed
collective between the leaders 0 and 2, a broadcast back.  Every rank must end
every step with bit-identical parameters; with ``none`` the result is DDP's bit
for bit (a dense bucket goes through one plain allreduce: ``hierarchical_dense="flat"``,
the default), or, kept hierarchical (``"groups"``), the mean up to float32
summation order; the stats count the in-group bytes apart.
"""

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import gcomp.ddp
from gcomp.transports import TorchTransport

from .launch import batch, capture, digest, flat_params, launch, make_model

pytestmark = pytest.mark.slow

STEPS = 5
LR = 0.1


def _pairs(rank):
    return 0 if rank < 2 else 1


def _run(rank, spec, options):
    model = make_model(seed=0)
    ddp = DDP(model)
    state = gcomp.ddp.register(ddp, spec, start_iter=1, min_numel=256, **options) if spec else None
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    digests, grad_max = [], 0.0
    for step in range(STEPS):
        x, y = batch(rank, step)
        opt.zero_grad(set_to_none=True)
        ((ddp(x) - y) ** 2).mean().backward()
        grad_max = max(grad_max, max(float(p.grad.abs().max()) for p in model.parameters()))
        opt.step()
        digests.append(digest(model))
    out = {"digests": digests, "params": flat_params(model), "grad_max": grad_max}
    if state is not None:
        state.wait()
        compressed = [s for s in state.engine.stats]
        out["algorithms"] = sorted({s.algorithm for s in compressed})
        out["intra_sent"] = sum(s.intra_bytes_sent for s in compressed)
        out["sent"] = sum(s.bytes_sent for s in compressed)
        state.close()
    return out


def hierarchical_worker(rank, world_size):
    out = {
        "baseline": _run(rank, None, {}),
        "none-pairs": _run(rank, "none", {"hierarchical": _pairs}),
        "none-pairs-groups": _run(rank, "none", {"hierarchical": _pairs, "hierarchical_dense": "groups"}),
        "none-node": _run(rank, "none", {"hierarchical": "node", "hierarchical_dense": "groups"}),
        "topk-pairs": _run(rank, "topk:ratio=0.1", {"hierarchical": _pairs, "algorithm": "allgather"}),
        "qsgd-pairs-color": _run(rank, "qsgd", {"hierarchical": _pairs(rank), "algorithm": "scatter-reduce-allgather"}),
        "topk-default": _run(rank, "topk:ratio=0.1", {"algorithm": "allgather"}),
    }
    group = dist.new_group(backend="gloo")
    out["topk-injected"] = _run(rank, "topk:ratio=0.1", {"algorithm": "allgather", "transport": TorchTransport(group)})
    # A transport over other ranks than the process group is refused before anything is sent.
    lone = dist.new_group(ranks=[rank], backend="gloo", use_local_synchronization=True)
    model = DDP(make_model(seed=0))
    out["wrong-transport"] = capture(gcomp.ddp.CompressionState, "topk", transport=TorchTransport(lone))
    del model
    return out


@pytest.fixture(scope="module")
def three_ranks():
    return launch(hierarchical_worker, 3, timeout=240)


@pytest.mark.parametrize("label", ["none-pairs", "none-pairs-groups", "none-node", "topk-pairs", "qsgd-pairs-color",
                                   "topk-injected"])
def test_every_rank_ends_every_step_identical(three_ranks, label):
    assert three_ranks[0][label]["digests"] == three_ranks[1][label]["digests"] == three_ranks[2][label]["digests"]


def test_none_hierarchical_is_ddp_bit_for_bit(three_ranks):
    for result in three_ranks:
        assert result["none-pairs"]["digests"] == result["baseline"]["digests"]
        assert result["none-pairs"]["algorithms"] == ["dense"]


@pytest.mark.parametrize("label", ["none-pairs-groups", "none-node"])
def test_none_hierarchical_is_the_mean(three_ranks, label):
    """Dense in groups, dense between leaders: only float32 summation order differs from DDP (4 P 2**-24 per step)."""
    for result in three_ranks:
        tol = 2 * (STEPS - 1) * LR * 4 * 3 * 2.0**-24 * result["baseline"]["grad_max"]
        err = float(abs(result[label]["params"] - result["baseline"]["params"]).max())
        assert err <= tol, f"{label}: max |diff| {err:.3g} over {tol:.3g}"


def test_algorithms_and_bytes_inside_groups(three_ranks):
    r0, r1, r2 = three_ranks
    assert r0["topk-pairs"]["algorithms"] == ["hierarchical/allgather"]  # leader of {0, 1}
    assert r1["topk-pairs"]["algorithms"] == ["hierarchical"]  # not a leader: no compressed hop
    assert r2["topk-pairs"]["algorithms"] == ["hierarchical/allgather"]  # leader of {2}
    assert r0["qsgd-pairs-color"]["algorithms"] == ["hierarchical/scatter-reduce-allgather"]
    assert r1["topk-pairs"]["intra_sent"] == r1["topk-pairs"]["sent"] > 0
    assert r0["topk-pairs"]["sent"] > r0["topk-pairs"]["intra_sent"] > 0
    assert r2["topk-pairs"]["intra_sent"] == 0  # a group of one sends nothing inside it
    # "node" on one machine: one group, so no compressed hop at all
    assert all(r["none-node"]["algorithms"] == ["hierarchical"] for r in three_ranks)


def test_topk_hierarchical_differs_from_flat(three_ranks):
    # the compressed hop sees group sums, not single ranks: the parameters must differ from flat top-k
    assert three_ranks[0]["topk-pairs"]["digests"][-1] != three_ranks[0]["topk-default"]["digests"][-1]


def test_injected_transport_gives_the_default_result(three_ranks):
    for result in three_ranks:
        assert result["topk-injected"]["digests"] == result["topk-default"]["digests"]


def test_transport_over_other_ranks_is_refused(three_ranks):
    for result in three_ranks:
        outcome = result["wrong-transport"]
        assert outcome[0] == "raised" and outcome[1] == "ConfigError", outcome
        assert "transport" in outcome[2]
