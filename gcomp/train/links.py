"""Link and energy models for edge experiments.

A link spec is ``RATE[/LATENCY]`` with RATE like ``20mbit``, ``1gbit``,
``500kbit`` (bits per second, decimal prefixes as in ``tc``) and LATENCY like
``5ms``; a list ``20mbit,20mbit,50mbit,5mbit`` gives one uplink per worker.

Modelled communication time of one step: every worker pushes the bytes it
sent through its own uplink, and a collective finishes when the slowest
worker's uplink has drained (plus one latency per communication round):
``max_w (bytes_sent_w * 8 / rate_w) + rounds * max_w latency_w``.

Energy (docs/energy.md): radio energy ``bytes * 8 * joules_per_bit`` for the
link's technology plus ``cpu_seconds * cpu_watts``.  The constants are
order-of-magnitude figures from the literature, configurable, not measurements.
"""

import dataclasses
import re

__all__ = ["Link", "parse_link", "parse_links", "parse_rate", "parse_duration", "ENERGY_PER_BIT", "energy_joules",
           "modelled_comm_seconds", "DEFAULT_CPU_WATTS"]

_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)?\s*$", re.I)
_DUR = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*$", re.I)
_FACTORS = {"bit": 1, "bps": 1, "kbit": 1e3, "kbps": 1e3, "mbit": 1e6, "mbps": 1e6, "gbit": 1e9, "gbps": 1e9}

#: joules per bit by link technology (order of magnitude; see docs/energy.md for sources and caveats)
ENERGY_PER_BIT = {
    "ethernet": 5e-9,
    "wifi": 1e-7,
    "lte": 5e-7,
}
#: assumed CPU power of an edge box while computing or compressing (watts)
DEFAULT_CPU_WATTS = 10.0


def parse_rate(text: str) -> float:
    """Bits per second of ``20mbit`` / ``1gbit`` / ``500kbit`` (a bare number is bits per second)."""
    m = _RATE.match(str(text))
    if not m:
        raise ValueError(f"expected a rate like 20mbit, 1gbit or 500kbit, found {text!r}")
    value = float(m.group(1)) * _FACTORS[(m.group(2) or "bit").lower()]
    if value <= 0:
        raise ValueError(f"expected a positive rate, found {text!r}")
    return value


def parse_duration(text: str) -> float:
    """Seconds of ``5ms`` / ``200us`` / ``0.1s`` (a bare number is milliseconds)."""
    m = _DUR.match(str(text))
    if not m:
        raise ValueError(f"expected a latency like 5ms, found {text!r}")
    unit = (m.group(2) or "ms").lower()
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


@dataclasses.dataclass(frozen=True)
class Link:
    """One worker's uplink: rate in bit/s, one-way latency in seconds, technology for energy."""

    rate_bps: float
    latency_s: float = 0.0
    technology: str = "wifi"

    @property
    def spec(self):
        rate = self.rate_bps
        text = f"{rate / 1e9:g}gbit" if rate >= 1e9 else f"{rate / 1e6:g}mbit" if rate >= 1e6 else f"{rate / 1e3:g}kbit"
        return text + (f"/{self.latency_s * 1e3:g}ms" if self.latency_s else "")

    def seconds_for(self, nbytes, rounds=1):
        return nbytes * 8.0 / self.rate_bps + rounds * self.latency_s


def parse_link(text: str, technology: str | None = None) -> Link:
    """``RATE[/LATENCY]`` -> Link; technology defaults by rate (>= 100 Mbit/s Ethernet, else Wi-Fi)."""
    rate, _, latency = str(text).partition("/")
    bps = parse_rate(rate)
    tech = technology or ("ethernet" if bps >= 100e6 else "wifi")
    if tech not in ENERGY_PER_BIT:
        raise ValueError(f"expected a link technology in {sorted(ENERGY_PER_BIT)}, found {tech!r}")
    return Link(bps, parse_duration(latency) if latency else 0.0, tech)


def parse_links(text: str, workers: int, technology: str | None = None) -> list:
    """One Link per worker from ``20mbit`` (all alike) or a comma list of exactly ``workers`` specs."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if len(parts) == 1:
        parts = parts * workers
    if len(parts) != workers:
        raise ValueError(f"expected 1 or {workers} link specs (one per worker), found {len(parts)}: {text!r}")
    return [parse_link(p, technology) for p in parts]


def modelled_comm_seconds(bytes_sent_per_worker, links, rounds=1) -> float:
    """Time for every worker to push its bytes through its uplink; the slowest decides."""
    if len(bytes_sent_per_worker) != len(links):
        raise ValueError(f"expected one byte count per link ({len(links)}), found {len(bytes_sent_per_worker)}")
    return max(link.seconds_for(b, rounds) for b, link in zip(bytes_sent_per_worker, links, strict=True))


def energy_joules(bytes_sent, bytes_received, link: Link, cpu_seconds: float, cpu_watts: float = DEFAULT_CPU_WATTS):
    """Radio energy for bytes sent and received on ``link`` plus CPU energy."""
    return (bytes_sent + bytes_received) * 8.0 * ENERGY_PER_BIT[link.technology] + cpu_seconds * cpu_watts
