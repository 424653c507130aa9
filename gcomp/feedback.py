"""Error feedback: memories that add back what compression dropped.

Each memory wraps any compressor and keeps its state per *key* (a bucket index
or tensor name, given by the caller):

* :class:`ResidualFeedback` (EF-SGD, Seide et al. 2014; Karimireddy et al. 2019):
  send ``C(x + e)``, keep ``e <- x + e - D(C(x + e))``.  Over any run, what was
  sent plus the final residual sums to exactly what came in.
* :class:`EF21Feedback` (Richtarik et al., NeurIPS 2021): each worker keeps an
  estimate ``g``; it sends ``c = C(x - g)`` and sets ``g <- g + D(c)``.  The
  receivers' aggregate ``G <- G + mean_i D(c_i)`` (see :meth:`EF21Feedback.aggregate`)
  equals the mean of the workers' ``g``.
* :class:`DGCFeedback` (Lin et al., ICLR 2018): momentum correction
  (``u <- m u + g``, ``v <- v + u``, send top entries of v), momentum-factor
  masking (sent entries of u and v are zeroed) and local gradient clipping.
  Use it with plain SGD: the momentum lives here.

The whole life of a memory is here, in the methods the collectives call:
created on a key's first use, applied (:meth:`ErrorFeedback.compress` before
sending; :meth:`ErrorFeedback.before_phases` / :meth:`ErrorFeedback.after_phases`
around a phased compressor's allreduce; :meth:`ErrorFeedback.after_reduce`
on the reduced result), given a server-side twin for two-phase algorithms
(:meth:`ErrorFeedback.server_memory`), reset (:meth:`ErrorFeedback.reset`,
e.g. after a non-finite step or when a DDP bucket regroups) and checkpointed.

Every memory has ``state_dict()`` / ``load_state_dict()`` holding residuals,
momenta, steps and the compressor's own state (PowerSGD's warm start), with a
``version`` key.  Arrays are stored as CPU torch tensors so that
``torch.save`` / ``torch.load(weights_only=True)`` round-trip them.  Restoring
into a fresh memory gives bit-identical later outputs.
"""

import copy
import math

import numpy as np

from .compressors import Compressor
from .compressors import compressor as build_compressor
from .compressors.base import as_flat_f32
from .errors import ConfigError, StateError

__all__ = ["ErrorFeedback", "ResidualFeedback", "EF21Feedback", "DGCFeedback", "NoFeedback", "feedback", "FEEDBACK"]

STATE_VERSION = 1


def _to_tensor(a):
    import torch

    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def _to_numpy(t, what):
    if type(t).__module__.startswith("torch"):
        t = t.detach().cpu().numpy()
    a = np.array(t, dtype=np.float32, copy=True)
    if a.ndim != 1:
        raise StateError(f"expected {what} to be a 1-D array, found shape {a.shape}")
    return a


class ErrorFeedback:
    """Base class: a compressor plus per-key memory.  Subclasses name their buffers in ``buffers``."""

    kind = ""
    buffers: tuple = ()

    def __init__(self, compressor):
        self.compressor = build_compressor(compressor) if not isinstance(compressor, Compressor) else compressor
        self._state = {}  # key -> {buffer name: float32 array}
        self._steps = {}  # key -> next step

    # -- per-key memory ------------------------------------------------
    def _entry(self, key, numel):
        entry = self._state.get(key)
        if entry is None:
            entry = {name: np.zeros(numel, np.float32) for name in self.buffers}
            self._state[key] = entry
            return entry
        for name, buf in entry.items():
            if buf.shape[0] != numel:
                raise StateError(
                    f"expected {buf.shape[0]} entries for key {key!r} (its stored {name}), found {numel}; "
                    "each key must always carry the same tensor (reset(key) to start over)"
                )
        return entry

    def options(self) -> dict:
        """Options that must agree across ranks (fingerprinted by the collectives)."""
        return {}

    def step_of(self, key):
        """The step the next compress() of ``key`` uses."""
        return self._steps.get(key, 0)

    def reset(self, key=None):
        """Forget the memory of ``key`` (or of every key), the compressor's own state for it included."""
        self.compressor.reset(key)
        if key is None:
            self._state.clear()
            self._steps.clear()
        else:
            self._state.pop(key, None)
            self._steps.pop(key, None)

    def memory_array(self, key, numel, name=None):
        """The live buffer ``name`` (default: the first) of ``key``, created as zeros if new."""
        return self._entry(key, numel)[name or self.buffers[0]]

    def rebase(self, compressor) -> "ErrorFeedback":
        """This memory on another compressor (the adaptive policy's switch): the same kind, options and per-key
        state, shared with this object (which the caller drops)."""
        clone = copy.copy(self)
        clone.compressor = build_compressor(compressor) if not isinstance(compressor, Compressor) else compressor
        return clone

    def take(self, key):
        """``key``'s memory as one additive term of the next input (a float32 array), forgotten here; None when
        it has none or the kind keeps no additive memory (only ``residual`` does: EF21's estimates and DGC's
        momenta do not carry across a compressor switch)."""
        return None

    def memory(self, key, name=None):
        """A copy of ``key``'s buffer ``name`` (default: the first), or None before the first step."""
        entry = self._state.get(key)
        if entry is None:
            return None
        return entry[name or self.buffers[0]].copy()

    def compress(self, x, key=0, *, step=None):
        """Compress ``x`` for ``key`` through this memory; returns the Compressed to send."""
        flat, _ = as_flat_f32(x)
        if step is None:
            step = self._steps.get(key, 0)
        c = self._compress(flat, key, step)  # memories only read their input
        self._steps[key] = step + 1
        return c

    def _compress(self, x, key, step):
        raise NotImplementedError

    # -- around the collective ---------------------------------------------
    def phase_buffer(self, key, numel):
        """The buffer a ``fuses_residual`` compressor updates in its phases in place of :meth:`before_phases` and
        :meth:`after_phases`, or None when this memory is not a plain residual (then those two run)."""
        return None

    def before_phases(self, x, key, scale=1.0):
        """The vector a phased compressor (PowerSGD) runs on for ``key``: ``x * scale`` (a new array unless the
        scale is 1), plus whatever the memory adds."""
        return x * np.float32(scale) if scale != 1.0 else x

    def after_phases(self, key, v, result, size):
        """After a phased allreduce: ``v`` was this rank's input, ``result`` the sum over ``size`` ranks."""

    def after_reduce(self, key, result):
        """The reduced vector the caller gets, from the mean of the ranks' decoded messages (EF21 keeps an aggregate)."""
        return result

    def server_memory(self) -> "ErrorFeedback":
        """The memory a two-phase algorithm's server side uses (residual error feedback on what it re-compresses)."""
        return ResidualFeedback(self.compressor)

    # -- checkpointing -------------------------------------------------
    def state_dict(self):
        """Per-key buffers and steps plus the compressor's config and state, with a version key."""
        return {
            "version": STATE_VERSION,
            "kind": self.kind,
            "compressor": self.compressor.get_config(),
            "compressor_state": _tensors(self.compressor.state_dict()),
            "steps": dict(self._steps),
            "entries": {key: {name: _to_tensor(buf) for name, buf in entry.items()} for key, entry in self._state.items()},
        }

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output; raises StateError on a mismatch of version, kind or compressor."""
        if not isinstance(state, dict):
            raise StateError(f"expected a state dict, found {type(state).__name__}")
        if state.get("version") != STATE_VERSION:
            raise StateError(f"expected state version {STATE_VERSION}, found {state.get('version')!r}")
        if state.get("kind") != self.kind:
            raise StateError(f"expected state of a {self.kind!r} memory, found {state.get('kind')!r}")
        if state.get("compressor") != self.compressor.get_config():
            raise StateError(
                f"expected state saved with compressor {self.compressor.get_config()}, found {state.get('compressor')}"
            )
        entries = {}
        for key, bufs in state.get("entries", {}).items():
            if set(bufs) != set(self.buffers):
                raise StateError(f"expected buffers {sorted(self.buffers)} for key {key!r}, found {sorted(bufs)}")
            arrays = {name: _to_numpy(bufs[name], f"{name} of key {key!r}") for name in self.buffers}
            sizes = {a.shape[0] for a in arrays.values()}
            if len(sizes) != 1:
                raise StateError(f"expected the buffers of key {key!r} to have one size, found {sorted(sizes)}")
            entries[key] = arrays
        steps = {}
        for key, value in state.get("steps", {}).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise StateError(f"expected a non-negative integer step for key {key!r}, found {value!r}")
            steps[key] = value
        self.compressor.load_state_dict(_arrays(state.get("compressor_state", {})))
        self._state = entries
        self._steps = steps


def _tensors(obj):
    if isinstance(obj, np.ndarray):
        import torch

        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k: _tensors(v) for k, v in obj.items()}
    return obj


def _arrays(obj):
    if type(obj).__module__.startswith("torch"):
        return obj.detach().cpu().numpy().copy()
    if isinstance(obj, dict):
        return {k: _arrays(v) for k, v in obj.items()}
    return obj


class NoFeedback(ErrorFeedback):
    """No memory: each step compresses its input alone."""

    kind = "none"
    buffers = ()

    def _compress(self, x, key, step):
        return self.compressor.compress(x, step=step, key=key)

    def server_memory(self):
        return NoFeedback(self.compressor)


class ResidualFeedback(ErrorFeedback):
    """EF-SGD: compress ``x + e``, keep what was dropped in ``e`` (fused in one pass where kernels allow)."""

    kind = "residual"
    buffers = ("residual",)

    def take(self, key):
        entry = self._state.pop(key, None)
        return None if entry is None else entry["residual"]

    def _compress(self, x, key, step):
        residual = self._entry(key, x.shape[0])["residual"]
        return self.compressor.compress_with_residual(x, residual, step=step, key=key)

    def before_phases(self, x, key, scale=1.0):
        v = x * np.float32(scale)  # one new array: scaled, then the residual added in place
        v += self._entry(key, x.shape[0])["residual"]
        return v

    def phase_buffer(self, key, numel):
        """The residual of ``key`` itself, for a compressor that fuses the update into its phases
        (``fuses_residual``: it forms ``v`` there and leaves ``v - result / P``, as the two methods here do)."""
        return self._entry(key, numel)["residual"]

    def after_phases(self, key, v, result, size):
        # result approximates the sum over ranks of v; this rank keeps v - result / P (torch's M - mean, scaled),
        # computed in the residual itself (no temporary)
        residual = self._entry(key, v.shape[0])["residual"]
        np.divide(result, np.float32(size), out=residual)
        np.subtract(v, residual, out=residual)


class EF21Feedback(ErrorFeedback):
    """EF21: send ``C(x - g)``, then ``g <- g + D(C(x - g))``; receivers keep ``G`` via :meth:`aggregate`."""

    kind = "ef21"
    buffers = ("estimate", "aggregate")

    def _compress(self, x, key, step):
        entry = self._entry(key, x.shape[0])
        g = entry["estimate"]
        c = self.compressor.compress(x - g, step=step, key=key)
        self.compressor.decompress_add(c, g)
        return c

    def aggregate(self, key, mean_decoded):
        """``G <- G + mean_decoded`` (the mean over ranks of their decoded messages); returns a copy of G."""
        mean_decoded, _ = as_flat_f32(mean_decoded)
        entry = self._entry(key, mean_decoded.shape[0])
        entry["aggregate"] += mean_decoded
        return entry["aggregate"].copy()

    def after_reduce(self, key, result):
        return self.aggregate(key, result)


class DGCFeedback(ErrorFeedback):
    """DGC momentum correction, momentum-factor masking and local gradient clipping, for sparse compressors."""

    kind = "dgc"
    buffers = ("momentum", "velocity")

    def __init__(self, compressor, momentum=0.9, clip_norm=None, masking=True):
        super().__init__(compressor)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise ConfigError(f"dgc feedback: expected momentum in [0, 1), found {momentum!r}")
        if clip_norm is not None and (
            isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float)) or not clip_norm > 0 or math.isinf(clip_norm)
        ):
            raise ConfigError(f"dgc feedback: expected clip_norm > 0 or None, found {clip_norm!r}")
        if not isinstance(masking, bool):
            raise ConfigError(f"dgc feedback: expected masking true or false, found {masking!r}")
        self.momentum = float(momentum)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.masking = masking

    def _compress(self, x, key, step):
        entry = self._entry(key, x.shape[0])
        u, v = entry["momentum"], entry["velocity"]
        if self.clip_norm is not None:
            norm = float(np.sqrt(np.dot(x.astype(np.float64), x.astype(np.float64))))
            if norm > self.clip_norm:
                x = x * np.float32(self.clip_norm / norm)
        u *= np.float32(self.momentum)
        u += x
        v += u
        c = self.compressor.compress(v, step=step, key=key)
        idx = c.arrays.get("indices")
        if idx is None:
            raise ConfigError(
                f"dgc feedback needs a sparse compressor (one that sends indices), found {self.compressor.name!r}"
            )
        v[idx] = 0.0
        if self.masking:
            u[idx] = 0.0
        return c

    def options(self):
        return {"momentum": self.momentum, "clip_norm": self.clip_norm, "masking": self.masking}

    def state_dict(self):
        state = super().state_dict()
        state["options"] = self.options()
        return state

    def load_state_dict(self, state):
        options = {"momentum": self.momentum, "clip_norm": self.clip_norm, "masking": self.masking}
        if isinstance(state, dict) and state.get("options", options) != options:
            raise StateError(f"expected dgc options {options}, found {state.get('options')}")
        super().load_state_dict(state)


#: name -> memory class, for ``error_feedback=`` options elsewhere
FEEDBACK = {"none": NoFeedback, "residual": ResidualFeedback, "ef21": EF21Feedback, "dgc": DGCFeedback}


def feedback(kind, compressor, **options) -> ErrorFeedback:
    """Build a memory by name: ``none``, ``residual``, ``ef21``, ``dgc``, or ``auto`` (the compressor's
    ``default_feedback``: none for unbiased compressors, residual for biased ones)."""
    if kind == "auto":
        compressor = build_compressor(compressor) if not isinstance(compressor, Compressor) else compressor
        kind = compressor.default_feedback
    cls = FEEDBACK.get(kind)
    if cls is None:
        raise ConfigError(f"unknown error feedback {kind!r}; known: auto, {', '.join(sorted(FEEDBACK))}")
    return cls(compressor, **options)
