"""Issue 10 item 11: hostile or damaged checkpoints are refused at load with StateError, not later.

The engine's per-key ``steps`` and the DDP hook's ``iter`` used to be taken as
they were: a string, a float, a negative or a huge number failed later as a
``TypeError``, a ``struct.error`` in the wire encoder, or silently extra dense
steps.
"""

import numpy as np
import pytest
from ddp.launch import capture, launch, make_model

import gcomp.ddp
from gcomp.collectives import CompressedAllreduce
from gcomp.errors import StateError
from gcomp.transports import run_local

BAD_STEPS = ["3", 2.5, -1, 2**64, True, None, [1]]


def _engine_state(t):
    engine = CompressedAllreduce(t, "topk:ratio=0.5", error_feedback="residual")
    engine(np.arange(16, dtype=np.float32), key="w")
    return engine


@pytest.mark.parametrize("bad", BAD_STEPS)
def test_engine_refuses_bad_steps(bad):
    def fn(t):
        engine = _engine_state(t)
        state = engine.state_dict()
        state["steps"] = {"w": bad}
        with pytest.raises(StateError, match="steps"):
            _engine_state(t).load_state_dict(state)
        state["steps"] = "not a dict"
        with pytest.raises(StateError, match="steps"):
            _engine_state(t).load_state_dict(state)
        good = engine.state_dict()
        fresh = _engine_state(t)
        fresh.load_state_dict(good)  # a valid state still loads
        return fresh.state_dict()["steps"]

    assert run_local(1, fn) == [{"w": 1}]


def _hook_case(rank, bad):
    from torch.nn.parallel import DistributedDataParallel as DDP

    state = gcomp.ddp.register(DDP(make_model(seed=0)), "topk:ratio=0.5")
    saved = state.state_dict()
    saved["iter"] = bad
    fresh = gcomp.ddp.register(DDP(make_model(seed=0)), "topk:ratio=0.5")
    outcome = capture(fresh.load_state_dict, saved)
    state.close()
    fresh.close()
    return outcome


def hook_worker(rank, world_size):
    return {repr(bad): _hook_case(rank, bad) for bad in BAD_STEPS}


def both_worker(rank, world_size):
    """hook_worker's cases, then second_register_worker's, in one launch (one spawned rank importing torch, not two);
    the hook cases close every state they build, and the second register counts threads around its own call."""
    return hook_worker(rank, world_size), second_register_worker(rank, world_size)


@pytest.fixture(scope="module")
def one_rank():
    (results,) = launch(both_worker, 1, timeout=180)
    return results


@pytest.mark.slow
def test_hook_refuses_bad_iter(one_rank):
    results = one_rank[0]
    for bad in BAD_STEPS:
        outcome = results[repr(bad)]
        assert outcome[0] == "raised" and outcome[1] == "StateError" and "iter" in outcome[2], (bad, outcome)


def _second_register(rank):
    import threading

    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP(make_model(seed=0))
    state = gcomp.ddp.register(ddp, "topk")
    threads = threading.active_count()
    outcome = capture(gcomp.ddp.register, ddp, "qsgd")
    new_threads = threading.active_count() - threads
    state.close()
    return outcome, new_threads


def second_register_worker(rank, world_size):
    return _second_register(rank)


@pytest.mark.slow
def test_second_register_is_refused_before_building_anything(one_rank):
    """Issue 10 item 21: a second register() is refused with ConfigError, with no new thread or group made."""
    outcome, new_threads = one_rank[1]
    assert outcome[0] == "raised" and outcome[1] == "ConfigError" and "hook" in outcome[2], outcome
    assert new_threads == 0
