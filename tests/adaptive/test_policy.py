"""The adaptive policy (gcomp.adapt) on in-process ranks, driven by a scripted clock and byte counter.

Each rank's link is scripted: compute advances the clock by the script's
seconds, and a collective advances it by the bytes the engine really sent
divided by the script's rate, while the byte counter reports those bytes.
The tests recompute the documented rule from the same inputs (the engine's
byte estimates, the least bandwidth and compute over ranks) and check the
policy's choice, its floor, its first decision, its probes and their
backoff, its hysteresis, the agreement of every rank, the error feedback
carried across switches, and its checkpoint.
"""

import numpy as np
import pytest

from gcomp.adapt import DEFAULT_FLOOR, DEFAULT_LADDER, PROBE_BACKOFF, AdaptivePolicy, build_policy, is_adaptive
from gcomp.collectives import CompressedAllreduce
from gcomp.errors import ConfigError, MismatchError, StateError
from gcomp.transports import run_local

NUMEL = 20000
COMPUTE = 0.05  # seconds per step
FLOOR = list(DEFAULT_LADDER).index(DEFAULT_FLOOR)  # the default ladder's floor: top-k 1%


class ScriptedLink:
    """A fake clock (seconds) and byte counter (bytes sent) for one rank."""

    def __init__(self):
        self.now = 0.0
        self.sent = 0

    def clock(self):
        return self.now

    def counter(self):
        return self.sent


def drive(t, policy, engine, link, steps, rate, compute=lambda step, rank: COMPUTE, seed=0, first=0, latency=0.0):
    """Run ``steps`` scripted steps (from step ``first``); returns (settings after each step, outputs, inputs)."""
    rng = np.random.default_rng([seed, t.rank, first])
    settings, outs, ins = [], [], []
    for step in range(first, first + steps):
        link.now += compute(step, t.rank)
        x = rng.standard_normal(NUMEL).astype(np.float32)
        policy.launched()

        def call(x=x, step=step):
            before = engine.bottleneck_bytes()
            out = engine(x, key="grad")
            moved = engine.bottleneck_bytes() - before
            link.sent += moved
            link.now += latency + moved / rate(step, t.rank)
            return out

        outs.append(policy.run(call, NUMEL))
        ins.append(x)
        policy.end_step(t)
        settings.append(policy.setting)
    return settings, outs, ins


def make(t, **options):
    options.setdefault("probe", 0)  # the rule alone, unless a test asks for probes
    link = ScriptedLink()
    policy = AdaptivePolicy(clock=link.clock, byte_counter=link.counter, **options)
    engine = CompressedAllreduce(t, policy.compressor, error_feedback="residual")
    policy.attach(engine)
    return policy, engine, link


def rule(estimates, bandwidth, compute, rung, budget=1.0, margin=0.8, floor=FLOOR):
    """The documented rule, written out again, for settings not measured yet: the rung to move to from ``rung``
    (ignoring the dwell and probes)."""
    return choose([b / bandwidth for b in estimates], budget * compute, rung, margin, floor)


def choose(predicted, limit, rung, margin=0.8, floor=FLOOR):
    """The rule's choice from the predicted seconds per step of every setting, among those up to the floor."""
    fits = [k for k, p in enumerate(predicted[: floor + 1]) if p <= limit]
    fit = fits[0] if fits else floor
    if fit > rung:
        return fit
    if fit < rung:
        roomy = [k for k, p in enumerate(predicted[: floor + 1]) if p <= margin * limit]
        return min(roomy[0], rung) if roomy else rung
    return rung


def estimates(size):
    """Every rank's engine estimate of each ladder setting for NUMEL entries; the rule takes the most over ranks."""
    def one(t):
        engine = CompressedAllreduce(t, "none", error_feedback="residual")
        return [engine.estimate_bytes(NUMEL, spec) for spec in DEFAULT_LADDER]

    return [max(col) for col in zip(*run_local(size, one), strict=True)]


def index_of(setting):
    return list(DEFAULT_LADDER).index(setting)


@pytest.mark.parametrize("size", [3, 4])
def test_estimates_bound_the_bytes_sent(size):
    """The policy predicts with the engine's estimates: they must bound what each setting really sends (within 1%)."""
    def fn(t):
        engine = CompressedAllreduce(t, "none", error_feedback="residual")
        x = np.random.default_rng(t.rank).standard_normal(NUMEL).astype(np.float32)
        out = []
        for spec in DEFAULT_LADDER:
            engine.switch(spec)
            engine(x, key="grad")  # the call's own bytes (the first call after a switch also checks agreement)
            out.append((engine.stats[-1].bytes_sent, engine.estimate_bytes(NUMEL)))
        return out

    for rank_result in run_local(size, fn):
        for spec, (sent, estimate) in zip(DEFAULT_LADDER, rank_result, strict=True):
            # an upper bound, up to scatter-reduce-allgather's 64-aligned chunks (the estimate assumes equal ones);
            # index coding often beats the bound
            assert 0.25 * estimate <= sent <= 1.01 * estimate, (spec, sent, estimate)


@pytest.mark.parametrize("rate,label", [(1e9, "fast"), (5e4, "slow"), (4e5, "middle")])
@pytest.mark.parametrize("start", ["floor", 0])
def test_picks_the_setting_its_rule_says(rate, label, start):
    """The first decision comes at step 2 (the first measured step) and moves at once to the rule's setting; then a
    decision every ``every`` steps keeps it.  From the floor (the default start) or from ``none``: the slow link ends
    at the floor, top-k 1%, never at the ladder's last setting (top-k 0.1%)."""
    size, steps, every = 4, 12, 4

    def fn(t):
        policy, engine, link = make(t, every=every, dwell=4, start=start)
        return drive(t, policy, engine, link, steps, lambda s, r: rate)[0], policy.history

    results = run_local(size, fn)
    settings, history = results[0]
    assert all(r == results[0] for r in results)
    first = FLOOR if start == "floor" else 0
    expected = rule(estimates(size), rate, COMPUTE, first)
    assert [h["step"] for h in history] == [2, 6, 10]
    assert settings[0] == DEFAULT_LADDER[first]  # step 1 at the start
    assert [index_of(s) for s in settings[1:]] == [expected] * (steps - 1), (label, settings)
    if label == "fast":
        assert expected == 0
    if label == "slow":
        assert expected == FLOOR < len(DEFAULT_LADDER) - 1  # a sparse setting, and the floor holds
    if label == "middle":
        assert 0 < expected < FLOOR  # neither end: the rule is not trivially satisfied


def test_the_floor_is_an_option():
    """``floor=`` lets the policy go further (to the ladder's last setting); a custom ladder's floor is its last."""
    size = 2

    def fn(t, options):
        policy, engine, link = make(t, every=2, dwell=2, **options)
        return drive(t, policy, engine, link, 4, lambda s, r: 5e4)[0][-1], policy.floor

    assert run_local(size, fn, {})[0] == (DEFAULT_FLOOR, FLOOR)
    last = len(DEFAULT_LADDER) - 1
    assert run_local(size, fn, {"floor": last})[0] == (DEFAULT_LADDER[-1], last)
    assert run_local(size, fn, {"floor": "uniform:bits=2"})[0] == ("uniform:bits=2", 4)
    assert AdaptivePolicy(["none", "topk:ratio=0.001"]).floor == 1


def test_a_changing_link_moves_to_compression_and_back():
    size, every, dwell = 3, 2, 6

    def rate(step, rank):
        return 1e9 if step < 10 or step >= 30 else 2e5

    def fn(t):
        policy, engine, link = make(t, every=every, dwell=dwell, start=0)
        settings = drive(t, policy, engine, link, 50, rate)[0]
        return settings, policy.switches, policy.history

    results = run_local(size, fn)
    settings, switches, history = results[0]
    assert all(r[0] == settings and r[1] == switches for r in results)
    est = estimates(size)
    slow, fast = rule(est, 2e5, COMPUTE, 0), 0
    assert slow > 0
    assert [index_of(s) for s in settings[:10]] == [0] * 10
    assert index_of(settings[15]) == slow  # the first decision that saw only slow steps (steps 12, 13) at step 14
    assert index_of(settings[-1]) == fast
    assert [(s["from"], s["to"]) for s in switches] == [(settings[0], settings[15]), (settings[15], settings[-1])]
    for record in history:
        if "predicted_s" in record:
            assert record["target"] == choose(record["predicted_s"], record["limit_s"], record["rung"])
            for k, (p, b) in enumerate(zip(record["predicted_s"], record["bytes"], strict=True)):
                measured = record["measured_s"].get(str(k))
                assert p == (measured if measured is not None else b / record["bandwidth_Bps"])
            assert str(record["rung"]) in record["measured_s"]  # the current setting was just measured


@pytest.mark.parametrize("probe", [0, 2])
def test_never_switches_faster_than_its_dwell(probe):
    """A link that flips between fast and slow at every decision: the policy switches once per dwell at most, but
    for a probe's return, one step after its probe."""
    size, every, dwell = 2, 2, 8

    def rate(step, rank):
        return 1e9 if (step // every) % 2 == 0 else 1e5

    def fn(t):
        policy, engine, link = make(t, every=every, dwell=dwell, probe=probe)
        drive(t, policy, engine, link, 80, rate, latency=0.002)
        return policy.switches, policy.history

    switches, history = run_local(size, fn)[0]
    steps = [s["step"] for s in switches if "the probe goes back" not in s["reason"]]
    assert len(steps) >= 3, switches  # it does follow the link, slowly
    assert all(b - a >= dwell for a, b in zip(steps, steps[1:], strict=False)), steps
    for s in switches:
        if "the probe goes back" in s["reason"]:
            probe_step = max(x["step"] for x in switches if x["step"] < s["step"])
            assert s["step"] == probe_step + 1
    held = [h for h in history if "held" in h.get("reason", "")]
    assert held, "some decisions wanted a switch inside the dwell and were held"


def probe_stays(history):
    """For each probe that switched: the decisions in a row without a switch before it."""
    out = []
    for p in (h for h in history if h["switched"] and h["reason"].startswith("probe")):
        back = max((h["step"] for h in history if h["switched"] and h["step"] < p["step"]), default=0)
        out.append(len([h for h in history if back < h["step"] < p["step"]]))
    return out


def test_a_probe_measures_a_lighter_setting_again():
    """Each collective costs 30 ms of latency besides its bytes: at the floor the small messages make the link look
    slow (bytes / seconds), and the rule alone stays there after the link got fast; probes (after 3 decisions without
    a switch) try one setting lighter for one step, and the policy walks back to ``none``."""
    size, every = 2, 2

    def rate(step, rank):
        return 5e4 if step < 8 else 1e9

    def fn(t, probe):
        policy, engine, link = make(t, every=every, dwell=2, probe=probe)
        settings = drive(t, policy, engine, link, 60, rate, latency=0.03)[0]
        return settings, policy.switches, policy.history

    without = run_local(size, fn, 0)[0]
    with_probe = run_local(size, fn, 3)[0]
    assert set(without[0]) == {DEFAULT_FLOOR} and without[1] == []  # never left the floor
    probes = [h for h in with_probe[2] if h.get("reason", "").startswith("probe")]
    assert probes and all(p["target"] == p["rung"] - 1 and p["switched"] for p in probes)
    assert all(h["rung"] > 0 for h in probes)
    assert with_probe[0][-1] == "none"  # the fast link, found again


def test_probes_back_off_on_a_steady_link():
    """A steady slow link: every probe (one step, one setting lighter) goes back at the next decision, one step
    later although the dwell holds other switches; the decisions without a switch before the next probe double each
    time, up to ``probe * 2**PROBE_BACKOFF``."""
    size, every, probe = 3, 2, 2

    def fn(t):
        policy, engine, link = make(t, every=every, dwell=6, probe=probe)
        settings = drive(t, policy, engine, link, 300, lambda s, r: 5e4, latency=0.005)[0]
        return settings, policy.switches, policy.history

    results = run_local(size, fn)
    settings, switches, history = results[0]
    assert all(r[1] == switches for r in results)
    probes = [h for h in history if h["switched"] and h["reason"].startswith("probe")]
    assert len(probes) >= PROBE_BACKOFF + 2, [s["step"] for s in switches]
    for p in probes:
        after = next(h for h in history if h["step"] > p["step"])
        assert after["step"] == p["step"] + 1 and after["switched"] and after["target"] == p["rung"], after
        assert "the probe goes back" in after["reason"]
    assert probe_stays(history) == [probe * 2 ** min(i, PROBE_BACKOFF) for i in range(len(probes))]
    # the price: one step one setting lighter per probe, every other step at the floor
    assert sum(index_of(s) != FLOOR for s in settings) == len(probes)
    assert all(index_of(s) in (FLOOR, FLOOR - 1) for s in settings)


def test_a_probe_that_stays_resets_the_backoff():
    """The link of the first test above, fast from step 40: the probes before went back (after 3, then 6
    decisions), the next one stays, and from then on a probe comes after 3 decisions again, up to ``none``."""
    size, every, probe = 2, 2, 3
    fast_from = 40

    def rate(step, rank):
        return 5e4 if step < fast_from else 1e9

    def fn(t):
        policy, engine, link = make(t, every=every, dwell=4, probe=probe)
        settings = drive(t, policy, engine, link, 120, rate, latency=0.03)[0]
        return settings, policy.history, policy.backoff

    settings, history, backoff = run_local(size, fn)[0]
    probes = [h for h in history if h["switched"] and h["reason"].startswith("probe")]
    stays = probe_stays(history)
    early = [s for p, s in zip(probes, stays, strict=True) if p["step"] < fast_from]
    assert early == [3, 6]
    kept = [h for h in history if "the probe stays" in h["reason"]]
    assert kept and kept[0]["step"] > fast_from
    later = [s for p, s in zip(probes, stays, strict=True) if p["step"] > kept[0]["step"]]
    assert later and all(s == probe for s in later), stays
    assert settings[-1] == "none" and backoff == 0


def test_a_measured_setting_is_predicted_at_its_measured_time():
    """A constant 1 MB/s link with 20 ms of latency per collective: ``none`` (80 kB, 100 ms) measures over budget at
    50 ms of compute, so the policy compresses; the smaller messages make the link look slower, so ``none`` predicted
    from bytes would not fit at 150 ms of compute, but its measured time is remembered and does: when compute grows
    to 150 ms, the policy moves back to ``none``."""
    size, every = 2, 2

    def compute(step, rank):
        return 0.05 if step < 20 else 0.15

    def fn(t):
        policy, engine, link = make(t, every=every, dwell=2, start=0)
        settings = drive(t, policy, engine, link, 40, lambda s, r: 1e6, compute, latency=0.02)[0]
        return settings, policy.switches, policy.history

    settings, switches, history = run_local(size, fn)[0]
    assert index_of(settings[10]) > 0 and settings[-1] == "none", switches
    back = [s for s in switches if s["to"] == "none"]
    assert back and back[0]["step"] > 20 and back[0]["reason"] == "room under budget"
    record = next(h for h in history if h["step"] == back[0]["step"])
    from_bytes = record["bytes"][0] / record["bandwidth_Bps"]
    assert record["predicted_s"][0] == record["measured_s"]["0"] < 0.8 * record["limit_s"] < from_bytes


def test_every_rank_takes_the_same_decision_when_measurements_differ():
    """Rank 2's link is 20x slower and rank 1 computes half as long: the decision uses the least of each, on every
    rank, from the allgathered window."""
    size = 3

    def rate(step, rank):
        return 4e7 / (20 if rank == 2 else 1)

    def compute(step, rank):
        return COMPUTE / (2 if rank == 1 else 1)

    def fn(t):
        policy, engine, link = make(t, every=3, dwell=3, start=0)
        settings = drive(t, policy, engine, link, 9, rate, compute)[0]
        return settings, policy.history

    results = run_local(size, fn)
    assert all(r[0] == results[0][0] for r in results)
    assert all(r[1] == results[0][1] for r in results)
    record = results[0][1][0]
    assert record["bandwidth_Bps"] == pytest.approx(4e7 / 20)
    assert record["compute_s"] == pytest.approx(COMPUTE / 2)
    expected = rule(estimates(size), 4e7 / 20, COMPUTE / 2, 0)
    alone = rule(estimates(size), 4e7, COMPUTE, 0)  # what rank 0 would pick on its own measurements
    assert expected != alone
    assert index_of(results[0][0][-1]) == expected


def memories(engine, key="grad"):
    """Every memory the engine's worker and server feedback hold for ``key`` (whole key, chunks, server)."""
    keys = {key} | {f"{key}/chunk{j}" for j in range(engine.transport.size)} | {f"{key}/server"}
    found = [engine.feedback.memory(k) for k in keys] + [engine.server_feedback.memory(k) for k in keys]
    return [m for m in found if m is not None]


@pytest.mark.parametrize("size", [3, 4])
def test_error_feedback_is_carried_across_switches(size):
    """Through every setting of the ladder (allreduce, allgather, scatter-reduce-allgather, dense paths), then back
    to ``none``: what the ranks put in equals P times what came out, as residual error feedback promises, because
    every memory left by one setting is sent by the next.  (fp16 is left out here: its allreduce sums fp16 values
    on the wire, whose rounding no memory records; its carry is checked exactly below.)"""
    order = [2, 3, 4, 5, 6, 7, 3, 6, 0, 7, 2, 0]

    def fn(t):
        engine = CompressedAllreduce(t, DEFAULT_LADDER[0], error_feedback="residual")
        rng = np.random.default_rng([7, t.rank])
        total_in, total_out = np.zeros(NUMEL), np.zeros(NUMEL)
        held = 0.0
        for k in order:
            engine.switch(DEFAULT_LADDER[k])
            for _ in range(2):
                x = rng.standard_normal(NUMEL).astype(np.float32)
                total_in += x
                total_out += engine(x, key="grad")
            if k == 7:
                held = max(held, max(float(np.abs(m).max()) for m in memories(engine)))
        assert memories(engine) == []  # "none" took every memory
        return total_in, total_out, held

    results = run_local(size, fn)
    total_in = sum(r[0] for r in results)
    total_out = results[0][1] * size
    assert all(np.array_equal(r[1], results[0][1]) for r in results)
    assert results[0][2] > 1.0  # top-k 0.1% held a large residual just before the end
    np.testing.assert_allclose(total_out, total_in, atol=2e-3 * size)


@pytest.mark.parametrize("old,new,units", [("topk:ratio=0.01", "fp16", 1.0), ("fp16", "topk:ratio=0.01", 2.0),
                                           ("fp16", "none", 2.0), ("topk:ratio=0.01", "none", 1.0)])
def test_carry_adds_the_old_residual_to_the_next_input(old, new, units):
    """Right after a switch, the first call equals a fresh engine of the new setting fed ``x + e`` (the old
    residual in the input's units: allgather top-k keeps it as is, the fp16 allreduce scaled by 1/P)."""
    size = 2

    def fn(t):
        engine = CompressedAllreduce(t, old, error_feedback="residual")
        rng = np.random.default_rng([9, t.rank])
        engine(rng.standard_normal(NUMEL).astype(np.float32), key="g")
        e = engine.feedback.memory("g")
        engine.switch(new)
        x = rng.standard_normal(NUMEL).astype(np.float32)
        got = engine(x, key="g")
        fresh = CompressedAllreduce(t, new, error_feedback="residual")
        want = fresh(x + e * np.float32(units), key="g")
        return got, want, e

    for got, want, e in run_local(size, fn):
        assert np.abs(e).max() > 0
        np.testing.assert_array_equal(got, want)


def test_state_dict_continues_identically():
    size, every, dwell = 3, 2, 4

    def rate(step, rank):
        return 1e9 if step < 6 or step >= 16 else 2e5 * (1 + rank)

    def fn(t):
        policy, engine, link = make(t, every=every, dwell=dwell)
        drive(t, policy, engine, link, 11, rate)  # ends inside a window (11 % 2) and after a switch
        saved = {"policy": policy.state_dict(), "engine": engine.state_dict()}
        restored_policy, restored_engine, restored_link = make(t, every=every, dwell=dwell)
        # the restored process's clock reads otherwise (another origin); only differences count
        restored_link.now, restored_link.sent = link.now + 1000.0, link.sent
        restored_policy.load_state_dict(saved["policy"])
        restored_engine.load_state_dict(saved["engine"])
        for clock in (link, restored_link):
            clock.now += 0.5  # time after the restore counts for the step that spans it, in both runs
        a = drive(t, policy, engine, link, 14, rate, seed=1, first=11)
        b = drive(t, restored_policy, restored_engine, restored_link, 14, rate, seed=1, first=11)
        return a, b, policy.switches, restored_policy.switches

    for (a_settings, a_outs, _), (b_settings, b_outs, _), a_switches, b_switches in run_local(size, fn):
        assert a_settings == b_settings
        assert len(set(a_settings)) > 1  # it switched after the restore too
        # the same switches (their measured inputs agree up to the last bits of the two clocks' sums)
        assert [(s["step"], s["from"], s["to"]) for s in a_switches] == [(s["step"], s["from"], s["to"]) for s in b_switches]
        assert all(np.array_equal(x, y) for x, y in zip(a_outs, b_outs, strict=True))


def test_a_state_of_another_configuration_is_refused():
    policy = AdaptivePolicy(every=2)
    state = policy.state_dict()
    with pytest.raises(StateError, match="adaptive policy state"):
        AdaptivePolicy(every=3).load_state_dict(state)
    with pytest.raises(StateError):
        AdaptivePolicy(every=2).load_state_dict({**state, "rung": 99})


def test_ranks_with_another_ladder_are_refused_at_the_first_call():
    """Switching is local; the next call's agreement check catches ranks that switched differently."""
    def fn(t):
        engine = CompressedAllreduce(t, "topk:ratio=0.01", error_feedback="residual")
        engine.switch("topk:ratio=0.1" if t.rank == 1 else "fp16")
        try:
            engine(np.ones(NUMEL, np.float32), key="g")
        except MismatchError as exc:
            return exc
        return None

    assert all(isinstance(r, MismatchError) for r in run_local(3, fn))


def test_options_are_checked():
    for bad in ({"budget": 0}, {"every": 0}, {"dwell": -1}, {"margin": 1.5}, {"start": 8}, {"start": "qsgd"},
                {"ladder": []}, {"ladder": ["none", "none"]}, {"ladder": "none"}, {"clock": 3}, {"floor": 8},
                {"floor": "qsgd"}, {"start": 7}, {"start": "topk:ratio=0.001"}, {"floor": 2, "start": 3}):
        with pytest.raises(ConfigError):
            AdaptivePolicy(**bad)


def test_specs():
    policy = build_policy("adaptive:budget=0.5,every=3,dwell=6,ladder=none;topk:ratio=0.01", seed=None)
    assert policy.config()["ladder"] == [{"name": "none"}, {"name": "topk", "ratio": 0.01}]
    assert (policy.budget, policy.every, policy.dwell) == (0.5, 3, 6)
    assert policy.floor == policy.start == 1 and policy.setting == "topk:ratio=0.01"
    named = build_policy("adaptive:start=none,floor=topk:ratio=0.1")
    assert (named.start, named.floor) == (0, 5) and named.config()["floor"] == 5
    assert is_adaptive("adaptive") and is_adaptive(policy) and not is_adaptive("topk")
    seeded = build_policy("adaptive", seed=5)
    assert all(c.get_config().get("seed", 5) == 5 for c in seeded.ladder)
    with pytest.raises(ConfigError, match="unknown options"):
        build_policy("adaptive:speed=3")
    with pytest.raises(ConfigError):
        build_policy(policy, seed=3)


def test_the_docs_example_runs(capsys):
    """docs/hybrid.md's scripted-link example runs as written and both ranks print the same compressed setting."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "hybrid.md").read_text()
    block = re.findall(r"```python\n(.*?)```", text, flags=re.S)[-1]
    exec(compile(block, "docs/hybrid.md", "exec"), {})  # noqa: S102 - our own documentation
    printed = capsys.readouterr().out.strip()
    settings = eval(printed)  # noqa: S307 - the list the example prints
    assert len(settings) == 2 and settings[0] == settings[1] != "none"
