"""Checkpoint and restore: a Gossip rebuilt from ``state_dict()`` (through gcomp.statecodec's bytes, no pickle)
continues bit-identically on 3 ranks, for every algorithm and state layout; bad states are refused."""

import numpy as np
import pytest

from gcomp import statecodec
from gcomp.decentralized import Gossip
from gcomp.errors import StateError
from gcomp.transports import run_local

from ._helpers import start_vector

CASES = {
    "exact-path": {"topology": [[1], [0, 2], [1]]},  # (a ring of 3 is complete: exact in one round)
    "exact-exponential-gamma": {"topology": "exponential", "gamma": 0.5},
    "choco-topk-ring": {"topology": "ring", "compressor": "topk:ratio=0.1", "gamma": 0.2},
    "choco-qsgd-exponential": {"topology": "exponential", "compressor": "qsgd", "gamma": 0.2},  # per-link copies
    "choco-sign-every-2": {"topology": "complete", "compressor": "sign", "gamma": 0.1, "every": 2},
    "choco-randomk-zero-policy": {"topology": "ring", "compressor": "randomk:ratio=0.2,rescale=false", "gamma": 0.3,
                                  "nonfinite": "zero"},
    "choco-powersgd-stateful": {"topology": "ring", "compressor": "powersgd:rank=2", "gamma": 0.2},
}


@pytest.mark.parametrize("case", list(CASES))
def test_restore_continues_bit_identically_on_3_ranks(case):
    opts = CASES[case]

    def fn(t):
        x = start_vector(t.rank, 777)
        g = Gossip(x, transport=t, **opts)
        for _ in range(5):
            g.step()
        saved = statecodec.pack(g.state_dict())  # what a checkpoint file would hold
        saved_x = x.copy()
        for _ in range(7):
            g.step()
        want = x.copy()
        x2 = saved_x.copy()
        g2 = Gossip(x2, transport=t, **opts)
        g2.load_state_dict(statecodec.unpack(saved))
        assert (g2.round, g2.steps) == ((5 if opts.get("every", 1) == 1 else 2), 5)
        for _ in range(7):
            g2.step()
        return want.tobytes() == x2.tobytes(), g.round == g2.round, float(np.abs(want - saved_x).max())

    for same, same_round, moved in run_local(3, fn):
        assert same and same_round and moved > 0


def test_torch_model_restore_continues_bit_identically():
    torch = pytest.importorskip("torch")

    def make(rank):
        torch.manual_seed(rank)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def train(model, g, opt, rank, steps, start):
        for k in range(start, start + steps):
            gen = torch.Generator().manual_seed(1000 * rank + k)
            x = torch.randn(16, 8, generator=gen)
            loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            g.step()

    def fn(t):
        model = make(t.rank)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        g = Gossip(model, topology="ring", compressor="topk:ratio=0.2", gamma=0.3, transport=t)
        train(model, g, opt, t.rank, 4, 0)
        checkpoint = {"model": {k: v.clone() for k, v in model.state_dict().items()},
                      "opt": opt.state_dict(), "gossip": statecodec.unpack(statecodec.pack(g.state_dict()))}
        import copy

        checkpoint["opt"] = copy.deepcopy(checkpoint["opt"])
        train(model, g, opt, t.rank, 5, 4)
        want = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
        model2 = make(t.rank + 100)
        model2.load_state_dict(checkpoint["model"])
        opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
        opt2.load_state_dict(checkpoint["opt"])
        g2 = Gossip(model2, topology="ring", compressor="topk:ratio=0.2", gamma=0.3, transport=t)
        g2.load_state_dict(checkpoint["gossip"])
        train(model2, g2, opt2, t.rank, 5, 4)
        return want == b"".join(p.detach().numpy().tobytes() for p in model2.parameters())

    assert run_local(3, fn) == [True, True, True]


def test_bad_states_are_refused():
    def fn(t):
        x = start_vector(t.rank, 50)
        g = Gossip(x, topology="ring", compressor="topk:ratio=0.1", gamma=0.2, transport=t)
        other = Gossip(x.copy(), topology="ring", compressor="topk:ratio=0.1", gamma=0.3, transport=t)
        state = g.state_dict()
        problems = []
        for bad, text in (
            (other.state_dict(), "another configuration"),
            ({**state, "version": 9}, "version 1"),
            ({**state, "round": -1}, "round a non-negative integer"),
            ({**state, "xhat": np.zeros(49, np.float32)}, "xhat a float32 array of 50 entries"),
            ({**state, "s": state["s"].astype(np.float64)}, "s a float32 array"),
            ([], "gossip state of version 1"),
        ):
            try:
                g.load_state_dict(bad)
            except StateError as exc:
                problems.append(text in str(exc) or str(exc))
            else:
                problems.append("accepted")
        return problems, g.round

    for problems, rnd in run_local(2, fn):
        assert problems == [True] * 6 and rnd == 0


def test_state_dict_holds_copies():
    def fn(t):
        x = start_vector(t.rank, 30)
        g = Gossip(x, topology="exponential", compressor="topk:ratio=0.2", gamma=0.2, transport=t)
        g.step()
        state = g.state_dict()
        sorted_links = (sorted(state["out"]), sorted(state["in"]))
        before = state["out"][sorted_links[0][0]].copy()
        g.step()
        g.step()
        return sorted_links, bool(np.array_equal(before, state["out"][sorted_links[0][0]]))

    (links0, unchanged), *_ = run_local(4, fn)
    assert links0 == ([1, 2], [2, 3]) and unchanged  # rank 0 sends to 1 then 2, hears 3 then 2
