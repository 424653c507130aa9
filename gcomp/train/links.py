"""Link and energy models for edge experiments.

A link spec is ``RATE[/LATENCY]`` with RATE like ``20mbit``, ``1gbit``,
``500kbit`` (bits per second, decimal prefixes as in ``tc``) and LATENCY like
``5ms``; a list ``20mbit,20mbit,50mbit,5mbit`` gives one uplink per worker.

Two-level layouts (hybrid cloud-edge-device): ``groups="2x2"`` (G groups of S
workers, consecutive ranks) or an explicit ``groups="0,2/1,3"`` puts workers
into groups, and the link text names two kinds of links::

    parse_links("intra=1gbit inter=20mbit", 4, groups="2x2")

``intra=`` is each worker's uplink to its group's switch (1 or one per
worker), ``inter=`` each group's shared uplink to the other groups (1 or one
per group).  A plain spec in the same text is the default for a missing key.
Every :class:`Link` of such a list carries its ``group`` and the group's
``group_link``; :func:`groups_of` gives the groups back.

Modelled communication time of one step (:func:`modelled_comm_seconds`):
every worker pushes the bytes it sent through its own uplink, and a
collective finishes when the slowest worker's uplink has drained (plus one
latency per communication round):
``max_w (bytes_sent_w * 8 / rate_w) + rounds * max_w latency_w``.  In a
two-level layout the collective is taken to be a ring in rank order: worker w
sends its bytes to w+1 (mod P); an edge inside a group runs at w's uplink, an
edge that leaves group g also through g's uplink, which the edges leaving g
share equally; the slowest edge decides.  A hierarchical step, whose bytes
inside and between groups are counted apart, is
:func:`hierarchical_comm_seconds`.

Energy (docs/energy.md): radio energy ``bytes * 8 * joules_per_bit`` for the
link's technology plus ``cpu_seconds * cpu_watts``.  The constants are
order-of-magnitude figures from the literature, configurable, not measurements.
"""

import dataclasses
import re

__all__ = ["Link", "parse_link", "parse_links", "parse_rate", "parse_duration", "ENERGY_PER_BIT", "energy_joules",
           "modelled_comm_seconds", "DEFAULT_CPU_WATTS", "parse_groups", "groups_of", "format_groups",
           "describe_layout", "hierarchical_comm_seconds", "links_summary"]

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
    """One worker's uplink: rate in bit/s, one-way latency in seconds, technology for energy.

    In a two-level layout also ``group`` (the worker's group index) and
    ``group_link`` (that group's uplink to the other groups, shared by its
    members); both None in a flat layout.
    """

    rate_bps: float
    latency_s: float = 0.0
    technology: str = "wifi"
    group: int | None = None
    group_link: "Link | None" = None

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


def _spec_list(text, count, what, technology):
    parts = [p for p in str(text).split(",") if p.strip()]
    if len(parts) == 1:
        parts = parts * count
    if len(parts) != count:
        raise ValueError(f"expected 1 or {count} link specs (one per {what}), found {len(parts)}: {text!r}")
    return [parse_link(p, technology) for p in parts]


_GRID = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_groups(spec, workers: int | None = None) -> list:
    """Groups of ranks from ``"GxS"`` (G groups of S consecutive ranks), ``"0,2/1,3"`` or a list of rank lists.

    Every rank ``0..workers-1`` must be in exactly one group and every group
    non-empty; ``workers`` None takes the count from the spec.  Returns a
    list of sorted rank lists, ordered by their smallest rank.
    """
    if isinstance(spec, str):
        m = _GRID.match(spec)
        if m:
            g, size = int(m.group(1)), int(m.group(2))
            if g < 1 or size < 1:
                raise ValueError(f"expected groups GxS with G >= 1 and S >= 1, found {spec!r}")
            groups = [list(range(i * size, (i + 1) * size)) for i in range(g)]
        else:
            try:
                groups = [[int(r) for r in part.split(",") if r.strip()] for part in spec.split("/")]
            except ValueError:
                raise ValueError(f"expected groups as GxS (e.g. 2x2) or rank lists split by '/' (e.g. 0,2/1,3), "
                                 f"found {spec!r}") from None
    else:
        try:
            groups = [[int(r) for r in group] for group in spec]
        except (TypeError, ValueError):
            raise ValueError(f"expected groups as a list of rank lists, found {spec!r}") from None
    if not groups or any(not group for group in groups):
        raise ValueError(f"expected non-empty groups, found {spec!r}")
    ranks = sorted(r for group in groups for r in group)
    n = len(ranks) if workers is None else workers
    if ranks != list(range(n)):
        missing = sorted(set(range(n)) - set(ranks))
        extra = sorted({r for r in ranks if not 0 <= r < n} | {r for r in ranks if ranks.count(r) > 1})
        raise ValueError(f"expected groups that hold each of the {n} workers' ranks 0..{n - 1} exactly once, found "
                         f"{spec!r}" + (f" (missing {missing})" if missing else "")
                         + (f" (out of range or repeated {extra})" if extra else ""))
    return sorted((sorted(group) for group in groups), key=lambda group: group[0])


def format_groups(groups) -> str:
    """The explicit form of ``groups``: ``[[0, 1], [2, 3]]`` -> ``"0,1/2,3"`` (accepted by :func:`parse_groups`)."""
    return "/".join(",".join(str(r) for r in group) for group in groups)


def parse_links(text: str, workers: int, technology: str | None = None, groups=None) -> list:
    """One Link per worker from ``20mbit`` (all alike) or a comma list of exactly ``workers`` specs.

    With ``groups`` (see :func:`parse_groups`), ``text`` holds whitespace-separated
    ``intra=SPEC`` (each worker's uplink inside its group: 1 or ``workers``
    specs) and ``inter=SPEC`` (each group's uplink to the other groups: 1 or
    one per group); a plain SPEC there is the default for a missing key.
    The links then carry ``group`` and ``group_link``.
    """
    plain, keyed = [], {}
    text = re.sub(r"\s*([,=])\s*", r"\1", str(text))  # "20mbit, 5mbit" and "intra = 1gbit" stay one token
    for token in text.split():
        key, eq, value = token.partition("=")
        if not eq:
            plain.append(token)
            continue
        key = key.strip().lower()
        if key not in ("intra", "inter"):
            raise ValueError(f"expected link keys intra= or inter=, found {token!r}")
        if key in keyed:
            raise ValueError(f"expected {key}= once, found it twice in {text!r}")
        keyed[key] = value
    if len(plain) > 1:
        raise ValueError(f"expected one link spec (a comma list gives one per worker), found {len(plain)}: {text!r}")
    if groups is None:
        if keyed:
            raise ValueError(f"intra= and inter= describe a two-level layout: expected groups (--groups GxS) "
                             f"with them, found none in {text!r}")
        if not plain:
            raise ValueError(f"expected a link spec such as 20mbit, found {text!r}")
        return _spec_list(plain[0], workers, "worker", technology)
    groups = parse_groups(groups, workers)
    default = plain[0] if plain else None
    missing = [key for key in ("intra", "inter") if key not in keyed and default is None]
    if missing:
        raise ValueError(f"a two-level layout needs intra=RATE (inside a group) and inter=RATE (between groups), "
                         f"found no {' or '.join(k + '=' for k in missing)} in {text!r}")
    intra = _spec_list(keyed.get("intra", default), workers, "worker", technology)
    inter = _spec_list(keyed.get("inter", default), len(groups), "group", technology)
    group_of = {r: g for g, members in enumerate(groups) for r in members}
    return [dataclasses.replace(link, group=group_of[w], group_link=inter[group_of[w]]) for w, link in enumerate(intra)]


def groups_of(links) -> list | None:
    """The groups (sorted rank lists) of a two-level list of links, or None for a flat one.

    Raises ValueError when only some links have a group, a group index is
    skipped, or members of one group disagree on the group's uplink.
    """
    links = list(links)
    flags = [link.group is not None for link in links]
    if not any(flags):
        return None
    if not all(flags):
        raise ValueError(f"expected every link to have a group or none, found groups only on workers "
                         f"{[w for w, f in enumerate(flags) if f]}")
    count = max(link.group for link in links) + 1
    groups = [[w for w, link in enumerate(links) if link.group == g] for g in range(count)]
    if any(not members for members in groups) or min(link.group for link in links) < 0:
        raise ValueError(f"expected group indices 0..{count - 1}, each with a worker, found "
                         f"{[link.group for link in links]}")
    for g, members in enumerate(groups):
        uplinks = {links[w].group_link for w in members}
        if len(uplinks) != 1 or None in uplinks:
            raise ValueError(f"expected the workers of group {g} ({members}) to share one group uplink (group_link), "
                             f"found {sorted(str(u) for u in uplinks)}")
    return groups


def describe_layout(links) -> dict | None:
    """JSON-able layout of a two-level list of links, None for a flat one.

    ``{"groups": [[0, 1], [2, 3]], "groups_spec": "0,1/2,3", "intra": [per-worker spec],
    "inter": [per-group spec]}``.
    """
    links = list(links)
    groups = groups_of(links)
    if groups is None:
        return None
    return {"groups": groups, "groups_spec": format_groups(groups), "intra": [link.spec for link in links],
            "inter": [links[members[0]].group_link.spec for members in groups]}


def links_summary(links) -> str:
    """One line for logs: ``20mbit,5mbit`` (the distinct rates) or ``groups 0,1/2,3: intra 1gbit, inter 20mbit``."""
    links = list(links)
    layout = describe_layout(links)
    distinct = ",".join(sorted({link.spec for link in links}))
    if layout is None:
        return distinct
    return f"groups {layout['groups_spec']}: intra {distinct}, inter {','.join(sorted(set(layout['inter'])))}"


def modelled_comm_seconds(bytes_sent_per_worker, links, rounds=1) -> float:
    """Time for every worker to push its bytes through its uplink; the slowest decides.

    Two-level links (:func:`groups_of`): a ring in rank order, each worker
    sending its bytes to the next; an edge leaving a group also crosses the
    group's uplink, shared equally by the edges that leave that group (plus
    its latency per round).
    """
    links = list(links)
    if len(bytes_sent_per_worker) != len(links):
        raise ValueError(f"expected one byte count per link ({len(links)}), found {len(bytes_sent_per_worker)}")
    groups = groups_of(links)
    if groups is None:
        return max(link.seconds_for(b, rounds) for b, link in zip(bytes_sent_per_worker, links, strict=True))
    world = len(links)
    leaving = [0] * len(groups)
    for w in range(world):
        if links[w].group != links[(w + 1) % world].group:
            leaving[links[w].group] += 1
    seconds = []
    for w, (nbytes, link) in enumerate(zip(bytes_sent_per_worker, links, strict=True)):
        if world == 1 or link.group == links[(w + 1) % world].group:
            seconds.append(link.seconds_for(nbytes, rounds))
            continue
        up = link.group_link
        rate = min(link.rate_bps, up.rate_bps / leaving[link.group])
        seconds.append(nbytes * 8.0 / rate + rounds * (link.latency_s + up.latency_s))
    return max(seconds)


def hierarchical_comm_seconds(intra_bytes_per_worker, inter_bytes_per_worker, links, intra_rounds=1,
                              inter_rounds=1) -> float:
    """Modelled time of a hierarchical step on two-level links: the phase inside the groups, then the one between.

    ``intra_bytes_per_worker[w]``: bytes w sent to members of its own group
    (reduce and broadcast inside the group); ``inter_bytes_per_worker[w]``:
    bytes w sent to other groups.  Inside: ``max_w intra_w * 8 / rate_w``.
    Between: per group, its members' inter bytes share the group's uplink
    (``sum * 8 / group rate``) and each member's also pass its own uplink; the
    slowest group decides.  Each phase adds its rounds times the largest
    latency on its path.
    """
    links = list(links)
    if groups_of(links) is None:
        raise ValueError("expected two-level links (parse_links(..., groups=...)) for a hierarchical step, found a "
                         "flat list")
    if not len(intra_bytes_per_worker) == len(inter_bytes_per_worker) == len(links):
        raise ValueError(f"expected one intra and one inter byte count per link ({len(links)}), found "
                         f"{len(intra_bytes_per_worker)} and {len(inter_bytes_per_worker)}")
    inside = max(b * 8.0 / link.rate_bps for b, link in zip(intra_bytes_per_worker, links, strict=True))
    inside += intra_rounds * max(link.latency_s for link in links)
    between = 0.0
    for members in groups_of(links):
        up = links[members[0]].group_link
        drain = max(sum(inter_bytes_per_worker[w] for w in members) * 8.0 / up.rate_bps,
                    max(inter_bytes_per_worker[w] * 8.0 / links[w].rate_bps for w in members))
        between = max(between, drain + inter_rounds * (up.latency_s + max(links[w].latency_s for w in members)))
    return inside + between


def energy_joules(bytes_sent, bytes_received, link: Link, cpu_seconds: float, cpu_watts: float = DEFAULT_CPU_WATTS):
    """Radio energy for bytes sent and received on ``link`` plus CPU energy."""
    return (bytes_sent + bytes_received) * 8.0 * ENERGY_PER_BIT[link.technology] + cpu_seconds * cpu_watts
