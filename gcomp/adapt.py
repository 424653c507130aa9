"""The adapt layer: the adaptive policy, the compressor setting follows the measured link.

Above ``collectives`` (it switches an engine's compressor), below the adapters
(the DDP hook and ``gcomp.mpi`` drive it); docs/hybrid.md, "The adaptive policy".

One :class:`AdaptivePolicy` drives one engine (:class:`gcomp.collectives.CompressedAllreduce`)
from the DDP hook (``gcomp.ddp.CompressionState("adaptive")``) or from
``gcomp.mpi.CompressedComm(comm, "adaptive")``, or from a training loop of
your own.  It walks a *ladder* of settings ordered from the least compression
to the most (default :data:`DEFAULT_LADDER`: none, fp16, uniform 8/4/2 bit,
top-k 10%/1%/0.1%).

What it measures, per step, with an injectable ``clock`` (seconds) and
``byte_counter`` (bytes sent so far on the slow links; default: the engine's
:meth:`~gcomp.collectives.CompressedAllreduce.bottleneck_bytes`):

* each collective's seconds and bytes (:meth:`AdaptivePolicy.run` wraps it);
* the time the training loop waited for communication: from the step's last
  collective being launched to its end (``blocking=True``: all the
  collectives' time, as with blocking MPI calls);
* the compute time: the step's wall time (from the end of the previous step)
  less that wait.

The decision.  The first comes at the end of step 2, right after the first
measured step (step 1 has no previous end to time its compute from); then
one every ``every`` steps, and one a single step after a probe.  From the
window's totals of every rank (one small allgather of float64 numbers, so
every rank decides on the same inputs and takes the same decision):

* ``compute`` = the least, over ranks, of compute seconds per step;
* ``bandwidth`` = the least, over ranks that sent bytes, of bytes / seconds of
  their collectives (the bottleneck link);
* ``bytes[k]`` = the most, over ranks, of what setting ``k`` would send per
  step (the engine's estimate for the step's vectors);
* ``predicted[k]`` = the communication seconds per step last measured at
  setting ``k`` (the slowest rank's) if it ran since the link last changed,
  else ``bytes[k] / bandwidth``; the link *changed* when the current setting's
  measured seconds differ from its previous measurement by more than
  ``LINK_CHANGE`` (2x either way), and then every other setting's
  measurement is forgotten; ``limit = budget * compute``;
* only settings up to the **floor** are candidates: ``floor`` is the most
  compressed setting the policy may use (default: top-k 1% on
  :data:`DEFAULT_LADDER`, see :data:`DEFAULT_FLOOR`; the last setting of any
  other ladder).  The rule weighs time, not accuracy: the floor is the
  declared quality limit;
* ``fit`` = the first (least compressed) setting up to the floor with
  ``predicted <= limit``, else the floor;
* more compression when the current setting does not fit (``fit > current``:
  go to ``fit``); less when a lighter setting fits with headroom (the first
  with ``predicted <= margin * limit``, if it is lighter than the current);
  otherwise stay;
* probe: after ``probe * 2**b`` decisions in a row without a switch, at a
  setting other than the first, go one setting lighter for one step.  ``b``
  counts the probes in a row that went back (at most :data:`PROBE_BACKOFF`);
  it is 0 again after a probe that stays, and when the current setting's
  measured seconds fall by more than ``LINK_CHANGE``.  The decision one step
  after the probe closes it: if the rule then wants a heavier setting than the
  probed one, it goes there at once (the return is not held by the dwell),
  else it stays.  The bandwidth is bytes over seconds, latency included: on
  small messages (a small model, heavily compressed) it reads low, and the
  rule alone would keep the compression after the link got faster; the
  probe's larger messages measure the link again;
* hysteresis: at most one switch per ``dwell`` steps, a probe's return
  excepted (the first switch may come at the first decision; a probe waits for
  the dwell too).  On a steady link the probes come ever more rarely: at most
  two switches per ``probe * every`` steps at first, then per twice, four
  times ... that (up to ``2**PROBE_BACKOFF``), each probe costing one step.

The policy starts at ``start``, by default the floor: before its first
measurement no step sends more than the most compressed setting allowed (a
dense start costs its first steps on a slow link; on a fast one the first
decision moves back).

Every switch is logged (``gcomp.adapt`` logger) and appended to
:attr:`gcomp.adapt.AdaptivePolicy.switches`; every decision, with its inputs, to
:attr:`gcomp.adapt.AdaptivePolicy.history` (for a plot of the setting next to the
bandwidth).  Error-feedback memories carry over a switch (the engine adds a
key's old memories into its next input).  ``state_dict()`` holds the setting,
the counters, the open window and the records.
"""

import logging
import math
import time

import numpy as np

from .compressors import Compressor, with_seed
from .errors import ConfigError, StateError

__all__ = ["AdaptivePolicy", "DEFAULT_LADDER", "DEFAULT_FLOOR", "LINK_CHANGE", "PROBE_BACKOFF", "is_adaptive",
           "build_policy"]

log = logging.getLogger("gcomp.adapt")

#: from the least compression to the most
DEFAULT_LADDER = ("none", "fp16", "uniform:bits=8", "uniform:bits=4", "uniform:bits=2", "topk:ratio=0.1",
                  "topk:ratio=0.01", "topk:ratio=0.001")
#: the default ladder's floor, its most compressed setting the policy uses unless told (``floor=``): top-k 0.1%
#: does not reach the dense run's accuracy in docs/results.md's runs, top-k 1% does
DEFAULT_FLOOR = "topk:ratio=0.01"
STATE_VERSION = 2
#: error feedbacks whose memory carries over a switch (residual: exactly; none: nothing to carry)
FEEDBACKS = ("residual", "none")
KEEP_HISTORY = 10000
#: a setting's measured time changing by more than this factor between two of its windows means the link changed
LINK_CHANGE = 2.0
#: the probe interval doubles after each probe that went back, at most this many times (to ``probe * 2**3``)
PROBE_BACKOFF = 3


def _positive(name, value, *, integer=False, low=0.0, high=math.inf, closed_high=True):
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer) if integer else (int, float, np.number))
    if ok:
        ok = low < float(value) and (float(value) <= high if closed_high else float(value) < high)
    if not ok or (not integer and not math.isfinite(float(value))):
        kind = "an integer" if integer else "a number"
        bound = f" at most {high}" if high != math.inf else ""
        raise ConfigError(f"adaptive policy: expected {name} {kind} above {low}{bound}, found {value!r}")
    return int(value) if integer else float(value)


class AdaptivePolicy:
    """Picks the engine's compressor setting, step by step, from measured compute time and link rate.

    The module docstring states the rule.  The configuration must be identical
    on every rank (the adapters check it); the clock and counter are local and
    may differ.

    Parameters
    ----------
    ladder : list of str, dict or gcomp.Compressor
        The settings, least compression first (default :data:`DEFAULT_LADDER`).
    budget : float
        Communication seconds allowed per second of compute (1.0: hidden behind compute).
    every : int
        Steps per decision (the first comes at step 2, after the first measured step; one comes a step after a probe).
    dwell : int
        At least this many steps between two switches, a probe's return excepted (0: no hysteresis).
    margin : float
        In (0, 1]: a lighter setting must fit within ``margin * budget * compute`` before the policy moves back to it.
    probe : int
        Decisions in a row without a switch before trying one setting lighter for one step (0: never); doubled after
        each probe that went back, up to ``2**PROBE_BACKOFF`` times.
    start : int or str
        Index or spec of the first setting, or ``"floor"`` (the default): the floor.
    floor : int, str or None
        Index or spec of the most compressed setting the policy may use; None: :data:`DEFAULT_FLOOR` on the default
        ladder, else the ladder's last setting.
    seed : int or None
        Replaces every setting's seed (as the adapters' ``seed=``); None keeps the specs' seeds.
    clock : callable or None
        Seconds, as ``time.perf_counter`` (the default) gives them.
    byte_counter : callable or None
        Bytes sent so far on the slow links; default the attached engine's
        :meth:`~gcomp.collectives.CompressedAllreduce.bottleneck_bytes`.

    Examples
    --------
    >>> from gcomp.adapt import AdaptivePolicy
    >>> policy = AdaptivePolicy(["none", "fp16", "topk:ratio=0.01"], every=2, dwell=4)
    >>> policy.setting  # it starts at its floor, the ladder's last setting here
    'topk:ratio=0.01'
    >>> policy.config()["ladder"][2]
    {'name': 'topk', 'ratio': 0.01}
    >>> AdaptivePolicy().names[AdaptivePolicy().floor]  # the default ladder stops short of top-k 0.1%
    'topk:ratio=0.01'
    >>> AdaptivePolicy(start="none").setting
    'none'
    """

    def __init__(self, ladder=DEFAULT_LADDER, *, budget=1.0, every=10, dwell=10, margin=0.8, probe=10, start="floor",
                 floor=None, seed=None, clock=None, byte_counter=None):
        if isinstance(ladder, (str, dict, Compressor)) or not hasattr(ladder, "__iter__"):
            raise ConfigError(f"adaptive policy: expected the ladder as a list of compressor specs, found {ladder!r}")
        ladder = list(ladder)
        rungs = [with_seed(spec, seed) for spec in ladder]
        if len(rungs) < 1:
            raise ConfigError("adaptive policy: expected at least one setting in the ladder, found none")
        configs = [c.get_config() for c in rungs]
        if any(configs.count(c) > 1 for c in configs):
            raise ConfigError(f"adaptive policy: expected every ladder setting once, found repeats in {configs}")
        self.ladder = rungs
        # each setting's name in records: its spec as given, or a short spec of its configuration
        self.names = [spec.strip() if isinstance(spec, str) else _spec(c) for spec, c in zip(ladder, rungs, strict=True)]
        self.budget = _positive("budget", budget)
        self.every = _positive("every", every, integer=True)
        self.dwell = _positive("dwell", dwell, integer=True, low=-1)
        self.margin = _positive("margin", margin, high=1.0)
        self.probe = _positive("probe", probe, integer=True, low=-1)
        if floor is None:
            default = [with_seed(spec, seed).get_config() for spec in DEFAULT_LADDER]
            floor = default.index(with_seed(DEFAULT_FLOOR, seed).get_config()) if configs == default else len(rungs) - 1
        self.floor = _index("floor", floor, configs, seed)
        start = self.floor if isinstance(start, str) and start.strip() == "floor" else _index("start", start, configs,
                                                                                              seed)
        if start > self.floor:
            raise ConfigError(f"adaptive policy: expected start at or above the floor (index {self.floor}, "
                              f"{self.names[self.floor]}) because the policy never uses settings past it, found "
                              f"index {start} ({self.names[start]})")
        if clock is not None and not callable(clock):
            raise ConfigError(f"adaptive policy: expected clock a callable giving seconds, found {clock!r}")
        if byte_counter is not None and not callable(byte_counter):
            raise ConfigError(f"adaptive policy: expected byte_counter a callable giving bytes, found {byte_counter!r}")
        self.start = int(start)
        self.rung = self.start
        self.clock = clock or time.perf_counter
        self.byte_counter = byte_counter
        self.engine = None
        self.step = 0  # steps ended so far
        self.last_switch = None  # step of the last switch
        self.stays = 0  # decisions in a row without a switch
        self.measured = {}  # setting -> its communication seconds per step, measured since the link last changed
        self.next_decision = 2  # the step whose end decides next (step 2: the first measured step)
        self.backoff = 0  # probes in a row that went back: the probe interval is probe * 2**backoff
        self.probing = None  # the setting a probe left, until the decision that closes the probe
        #: The switches in order, each a dict with ``step``, ``from``, ``to``, ``reason``, ``compute_s``,
        #: ``bandwidth_Bps`` and ``predicted_s``.
        self.switches = []
        #: The decisions in order (the last 10 000), each a dict with ``step``, ``setting``, ``rung``, ``target``,
        #: ``switched``, ``reason`` and, when measured, ``compute_s``, ``bandwidth_Bps``, ``limit_s``, ``bytes``,
        #: ``predicted_s`` and ``measured_s``.
        self.history = []
        self._estimates = {}  # numel -> bytes per setting (the engine's estimate)
        self._prev_end = None
        self._reset_step()
        self._reset_window()

    # -- configuration ---------------------------------------------------------
    @property
    def compressor(self) -> Compressor:
        """The current setting."""
        return self.ladder[self.rung]

    @property
    def setting(self) -> str:
        """The current setting's name (its spec as the ladder gave it, ``"topk:ratio=0.01"``)."""
        return self.names[self.rung]

    def config(self) -> dict:
        """What must agree across ranks (fingerprinted by the adapters)."""
        return {"name": "adaptive", "ladder": [c.get_config() for c in self.ladder], "budget": self.budget,
                "every": self.every, "dwell": self.dwell, "margin": self.margin, "probe": self.probe,
                "start": self.start, "floor": self.floor}

    def attach(self, engine):
        """Drive ``engine``: it is switched to the current setting now and at every switch.

        Parameters
        ----------
        engine : gcomp.collectives.CompressedAllreduce
            The engine whose compressor the policy sets (built with ``algorithm="auto"``).

        Returns
        -------
        AdaptivePolicy
            This policy.
        """
        self.engine = engine
        if engine.compressor.get_config() != self.compressor.get_config():
            engine.switch(self.compressor)
        return self

    def warm_up(self, numel) -> float:
        """Compile every setting's kernels for a call of ``numel`` entries, so a switch does not compile inside a
        measured step.  Local: nothing is sent.

        Parameters
        ----------
        numel : int
            Entries of the vectors the engine will reduce.

        Returns
        -------
        float
            The seconds it took.
        """
        if self.engine is None:
            raise ConfigError("expected the policy attached to an engine (attach()) before warm_up")
        return sum(self.engine.warm_up(numel, c) for c in self.ladder)

    # -- measurement -------------------------------------------------------------
    def _bytes_now(self):
        if self.byte_counter is not None:
            return int(self.byte_counter())
        return self.engine.bottleneck_bytes() if self.engine is not None else 0

    def _reset_step(self):
        self._comm = 0.0
        self._bytes = 0
        self._numels = []
        self._last_launch = None
        self._last_done = None

    def _reset_window(self):
        self._win_steps = 0
        self._win_compute = 0.0
        self._win_comm = 0.0
        self._win_bytes = 0
        self._win_est = [0.0] * len(self.ladder)

    def launched(self):
        """A collective was handed to communication (the training loop goes on computing or waits for it)."""
        self._last_launch = self.clock()

    def run(self, fn, numel):
        """Run ``fn()`` (one collective of ``numel`` entries), measuring its seconds and slow-link bytes.

        Parameters
        ----------
        fn : callable
            The collective, called with no arguments.
        numel : int
            Entries of its vector (the policy estimates each setting's bytes for it).

        Returns
        -------
        object
            What ``fn`` returned.
        """
        before = self._bytes_now()
        t0 = self.clock()
        try:
            return fn()
        finally:
            t1 = self.clock()
            self._comm += t1 - t0
            self._bytes += self._bytes_now() - before
            self._numels.append(int(numel))
            self._last_done = t1
            if self._last_launch is None:
                self._last_launch = t0

    def _estimate(self, numel):
        est = self._estimates.get(numel)
        if est is None:
            if self.engine is not None:
                est = [float(self.engine.estimate_bytes(numel, c)) for c in self.ladder]
            else:  # no engine: what one rank's packet would take
                est = [float(c.max_payload_bytes(numel)) for c in self.ladder]
            self._estimates[numel] = est
        return est

    def end_step(self, transport=None, *, blocking=False):
        """Close a step; on a decision step decide (collective over ``transport``: call it on every rank).

        Parameters
        ----------
        transport : gcomp.transports.Transport or None
            Where the ranks' measurements are allgathered (None: this rank alone).
        blocking : bool
            The loop waited for every collective (blocking calls), so all their time counts as waiting.

        Returns
        -------
        dict or None
            The decision record on a decision step, else None.
        """
        now = self.clock()
        if self._prev_end is not None and self._numels:
            if blocking:
                wait = self._comm
            else:
                wait = max(0.0, (self._last_done if self._last_done is not None else now) - self._last_launch)
            self._win_steps += 1
            self._win_compute += max(0.0, (now - self._prev_end) - wait)
            self._win_comm += self._comm
            self._win_bytes += self._bytes
            for numel in self._numels:
                for k, b in enumerate(self._estimate(numel)):
                    self._win_est[k] += b
        self._prev_end = now
        self._reset_step()
        self.step += 1
        if self.step < self.next_decision:
            return None
        return self._decide(transport)

    # -- the decision ----------------------------------------------------------------
    def _gather(self, transport):
        mine = np.array([self._win_steps, self._win_compute, self._win_comm, self._win_bytes, *self._win_est],
                        np.float64)
        if transport is None or transport.size == 1:
            return [mine]
        rows = [np.frombuffer(bytes(b), np.float64) for b in transport.allgatherv(mine.view(np.uint8))]
        if any(r.shape != mine.shape for r in rows):
            # the configuration was agreed at construction, so this is a rank that runs another gcomp
            raise ConfigError(f"adaptive policy: expected {mine.shape[0]} measurements from every rank, found "
                              f"{[r.shape[0] for r in rows]}")
        return rows

    def _decide(self, transport):
        rows = self._gather(transport)
        self._reset_window()
        self.next_decision = self.step + self.every
        record = {"step": self.step, "setting": self.setting, "rung": self.rung}
        steps = [r[0] for r in rows]
        speeds = [r[3] / r[2] for r in rows if r[3] > 0 and r[2] > 0]
        if min(steps) < 1 or not speeds:
            record.update(reason="no measurements", switched=False, target=self.rung)
            self.stays += 1
            self.probing = None
            self._keep(record)
            return record
        compute = float(min(r[1] / r[0] for r in rows))
        bandwidth = float(min(speeds))
        per_step = [float(max(r[4 + k] / r[0] for r in rows)) for k in range(len(self.ladder))]
        seconds = float(max(r[2] / r[0] for r in rows))  # the current setting's communication per step, slowest rank
        before = self.measured.get(self.rung)
        if before is not None and not before / LINK_CHANGE <= seconds <= before * LINK_CHANGE:
            self.measured = {}  # the link changed: the other settings' measurements no longer hold
            if seconds < before / LINK_CHANGE:
                self.backoff = 0  # faster: probe again soon
        self.measured[self.rung] = seconds
        predicted = [self.measured.get(k, b / bandwidth) for k, b in enumerate(per_step)]
        limit = self.budget * compute
        fit = next((k for k in range(self.floor + 1) if predicted[k] <= limit), self.floor)
        if fit > self.rung:
            target, reason = fit, "communication over budget"
        elif fit < self.rung:
            target = next((k for k in range(self.floor + 1) if predicted[k] <= self.margin * limit), self.rung)
            target, reason = min(target, self.rung), "room under budget"
        else:
            target, reason = self.rung, "within budget" if predicted[self.rung] <= limit else "over budget at the floor"
        returning = False
        if self.probing is not None:  # this decision closes a probe
            if target > self.rung:
                returning, reason = True, f"{reason}; the probe goes back"
                self.backoff = min(self.backoff + 1, PROBE_BACKOFF)
            else:
                target, reason = self.rung, f"{reason}; the probe stays"
                self.backoff = 0
            self.probing = None
        interval = self.probe * 2 ** self.backoff
        probing = (not returning and target == self.rung and self.rung > 0 and self.probe > 0
                   and self.stays >= interval)
        if probing:
            target, reason = self.rung - 1, f"probe after {self.stays} decisions without a switch"
        record.update(compute_s=compute, bandwidth_Bps=bandwidth, limit_s=limit, bytes=per_step, predicted_s=predicted,
                      measured_s={str(k): v for k, v in sorted(self.measured.items())}, target=target)
        held = not returning and self.last_switch is not None and self.step - self.last_switch < self.dwell
        if target != self.rung and held:
            reason = f"{reason}; held: last switch at step {self.last_switch}, dwell {self.dwell}"
        record["reason"] = reason
        record["switched"] = target != self.rung and not held
        if record["switched"]:
            if probing:
                self.probing = self.rung
                self.next_decision = self.step + 1  # the probe lasts one step
            self._switch(target, record)
            self.stays = 0
        else:
            self.stays += 1
        self._keep(record)
        return record

    def _keep(self, record):
        self.history.append(record)
        del self.history[: max(0, len(self.history) - KEEP_HISTORY)]

    def _switch(self, target, record):
        old = self.setting
        self.rung = target
        self.last_switch = self.step
        if self.engine is not None:
            self.engine.switch(self.compressor)
        entry = {"step": self.step, "from": old, "to": self.setting, "reason": record["reason"],
                 "compute_s": record["compute_s"], "bandwidth_Bps": record["bandwidth_Bps"],
                 "predicted_s": record["predicted_s"][target]}
        self.switches.append(entry)
        log.info("gcomp adaptive: step %d: %s -> %s (%s; compute %.4g s, bandwidth %.4g B/s, predicted %.4g s)",
                 self.step, old, self.setting, record["reason"], record["compute_s"], record["bandwidth_Bps"],
                 entry["predicted_s"])

    def summary(self) -> dict:
        """For a results file: the configuration, the current setting, every switch and every decision.

        Returns
        -------
        dict
            ``{"config", "setting", "steps", "switches", "history"}``, plain numbers and strings.
        """
        return {"config": self.config(), "setting": self.setting, "steps": self.step, "switches": list(self.switches),
                "history": list(self.history)}

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The setting, counters, the open window and the records (plain values; no clock, no engine)."""
        return {"version": STATE_VERSION, "config": self.config(), "rung": self.rung, "step": self.step,
                "last_switch": self.last_switch, "stays": self.stays, "next_decision": self.next_decision,
                "backoff": self.backoff, "probing": self.probing,
                "measured": {str(k): v for k, v in sorted(self.measured.items())}, "switches": [dict(s) for s in self.switches],
                "history": [dict(h) for h in self.history],
                "window": [self._win_steps, self._win_compute, self._win_comm, self._win_bytes, list(self._win_est)],
                # seconds since the last step ended: the step that spans a restart counts its time before the save
                "since_step_end": None if self._prev_end is None else self.clock() - self._prev_end}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output of the same configuration; switches the attached engine.

        Parameters
        ----------
        state : dict
            What :meth:`state_dict` returned (on this rank, with this configuration).
        """
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise StateError(f"expected an adaptive policy state with version {STATE_VERSION}, found "
                             f"{state.get('version') if isinstance(state, dict) else type(state).__name__!r}")
        if state.get("config") != self.config():
            raise StateError(f"expected an adaptive policy state saved with {self.config()}, found {state.get('config')}")
        rung, step, last = state.get("rung"), state.get("step"), state.get("last_switch")
        window = state.get("window")
        ints = (int, np.integer)
        if (isinstance(rung, bool) or not isinstance(rung, ints) or not 0 <= rung < len(self.ladder)
                or isinstance(step, bool) or not isinstance(step, ints) or step < 0
                or not (last is None or (isinstance(last, ints) and not isinstance(last, bool) and 0 <= last <= step))
                or not isinstance(window, (list, tuple)) or len(window) != 5
                or not isinstance(window[4], (list, tuple)) or len(window[4]) != len(self.ladder)):
            raise StateError(f"expected an adaptive policy state with a rung in [0, {len(self.ladder)}), a step, the "
                             f"last switch and a window of {len(self.ladder)} estimates, found rung {rung!r}, step "
                             f"{step!r}, last switch {last!r}, window {str(window)[:200]}")
        since, stays = state.get("since_step_end"), state.get("stays", 0)
        if isinstance(stays, bool) or not isinstance(stays, ints) or stays < 0:
            raise StateError(f"expected the policy's stays a non-negative integer, found {stays!r}")
        self.stays = int(stays)
        following, backoff, probing = state.get("next_decision"), state.get("backoff"), state.get("probing")
        if (isinstance(following, bool) or not isinstance(following, ints) or following <= step
                or isinstance(backoff, bool) or not isinstance(backoff, ints) or not 0 <= backoff <= PROBE_BACKOFF
                or not (probing is None or (isinstance(probing, ints) and not isinstance(probing, bool)
                                            and 0 <= probing < len(self.ladder)))):
            raise StateError(f"expected the policy's next decision after step {step}, a probe backoff in "
                             f"[0, {PROBE_BACKOFF}] and the setting a probe left (or None), found {following!r}, "
                             f"{backoff!r}, {probing!r}")
        self.next_decision, self.backoff = int(following), int(backoff)
        self.probing = None if probing is None else int(probing)
        measured = state.get("measured", {})
        if not isinstance(measured, dict) or not all(
                isinstance(k, str) and k.isdigit() and int(k) < len(self.ladder) and isinstance(v, (int, float))
                and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for k, v in measured.items()):
            raise StateError(f"expected the policy's measured times as {{setting index: seconds}}, found "
                             f"{str(measured)[:200]}")
        self.measured = {int(k): float(v) for k, v in measured.items()}
        self.rung, self.step, self.last_switch = int(rung), int(step), None if last is None else int(last)
        self._win_steps, self._win_compute, self._win_comm, self._win_bytes = (
            int(window[0]), float(window[1]), float(window[2]), int(window[3]))
        self._win_est = [float(v) for v in window[4]]
        self.switches = [dict(s) for s in state.get("switches", [])]
        self.history = [dict(h) for h in state.get("history", [])]
        self._prev_end = None if since is None else self.clock() - float(since)
        self._reset_step()
        if self.engine is not None and self.engine.compressor.get_config() != self.compressor.get_config():
            self.engine.switch(self.compressor)


def _index(name, value, configs, seed) -> int:
    """The index in the ladder (``configs``) of ``value``: an index or a spec of one of its settings."""
    if isinstance(value, (str, dict)):
        wanted = with_seed(value, seed).get_config()
        if wanted not in configs:
            raise ConfigError(f"adaptive policy: expected {name} to be one of the ladder's settings {configs}, "
                              f"found {wanted}")
        return configs.index(wanted)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < len(configs):
        raise ConfigError(f"adaptive policy: expected {name} an index in [0, {len(configs)}) or a ladder spec, "
                          f"found {value!r}")
    return int(value)


def _spec(comp) -> str:
    """A short spec of ``comp``: its name and the parameters that differ from the defaults."""
    config = comp.get_config()
    try:
        defaults = with_seed(config["name"]).get_config()
    except ConfigError:  # a required parameter: keep them all
        defaults = {}
    rest = ",".join(f"{k}={v}" for k, v in config.items() if k != "name" and defaults.get(k, object()) != v)
    return config["name"] + (f":{rest}" if rest else "")


def is_adaptive(spec) -> bool:
    """Whether an adapter's ``compressor`` argument asks for the adaptive policy.

    Parameters
    ----------
    spec : object
        The argument: an :class:`AdaptivePolicy`, ``"adaptive[:options]"``, ``{"name": "adaptive", ...}`` or anything.

    Returns
    -------
    bool

    Examples
    --------
    >>> from gcomp.adapt import is_adaptive
    >>> is_adaptive("adaptive:budget=0.5"), is_adaptive("topk")
    (True, False)
    """
    return isinstance(spec, AdaptivePolicy) or (isinstance(spec, str) and spec.split(":", 1)[0].strip() == "adaptive") \
        or (isinstance(spec, dict) and spec.get("name") == "adaptive")


def adapter_compressor(spec, seed, error_feedback, algorithm):
    """``(policy or None, compressor, error_feedback)`` for an adapter given ``spec`` (the DDP hook, gcomp.mpi).

    An adaptive spec gives its policy, the policy's current setting and residual error feedback for "auto"; it
    refuses other feedback and a fixed algorithm.  Any other spec gives no policy and the compressor with ``seed``.
    """
    from .compressors import with_seed

    if not is_adaptive(spec):
        return None, with_seed(spec, seed), error_feedback
    policy = build_policy(spec, seed)
    if error_feedback == "auto":
        error_feedback = "residual"
    if error_feedback not in ("residual", "none") or algorithm != "auto":
        raise ConfigError(f"expected error_feedback 'residual' or 'none' and algorithm 'auto' with the adaptive "
                          f"policy, because only residual memories carry over a switch and each setting takes "
                          f"its own algorithm; found {error_feedback!r} and {algorithm!r}")
    return policy, policy.compressor, error_feedback


def build_policy(spec, seed=None) -> AdaptivePolicy:
    """An :class:`AdaptivePolicy` from an adapter's ``compressor`` argument.

    Parameters
    ----------
    spec : AdaptivePolicy, dict or str
        An AdaptivePolicy (returned as it is; ``seed`` must then be None), a
        dict ``{"name": "adaptive", **options}`` or a string
        ``"adaptive:budget=0.5,every=10,dwell=10,margin=0.8,probe=10,start=0,floor=2,ladder=none;fp16;topk:ratio=0.01"``
        (``ladder``, its settings separated by ``;``, must come last: a setting may hold commas).
    seed : int or None
        Replaces every setting's seed (None keeps them).

    Returns
    -------
    AdaptivePolicy

    Examples
    --------
    >>> from gcomp.adapt import build_policy
    >>> policy = build_policy("adaptive:budget=0.5,ladder=none;topk:ratio=0.01")
    >>> policy.budget, policy.names
    (0.5, ['none', 'topk:ratio=0.01'])
    """
    if isinstance(spec, AdaptivePolicy):
        if seed is not None:
            raise ConfigError("expected seed=None with an AdaptivePolicy object: give the policy its seed")
        return spec
    if isinstance(spec, dict):
        options = {k: v for k, v in spec.items() if k != "name"}
    else:
        options = {}
        rest = spec.split(":", 1)[1] if ":" in spec else ""
        head, sep, ladder = rest.partition("ladder=")
        if sep:
            if head and not head.endswith(","):
                raise ConfigError(f"adaptive spec: expected 'ladder=' to start an option, found {spec!r}")
            options["ladder"] = [r.strip() for r in ladder.split(";") if r.strip()]
        for part in filter(None, (p.strip() for p in head.split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                raise ConfigError(f"adaptive spec: expected key=value, found {part!r} in {spec!r}")
            options[key.strip()] = _value(value.strip())
    known = {"ladder", "budget", "every", "dwell", "margin", "probe", "start", "floor"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"adaptive spec: unknown options {unknown}; known: {sorted(known)}")
    return AdaptivePolicy(**options, seed=seed)


def _value(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
