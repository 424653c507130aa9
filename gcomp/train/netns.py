"""Emulated edge links: network namespaces, veth pairs and ``tc tbf`` shaping on one Linux box.

Every worker gets its own network namespace with one interface, ``eth0``,
addressed ``10.77.0.(i+1)/24``; all ``eth0`` are veth pairs whose other ends
are ports of one bridge in a hub namespace (a star, like an access point or a
switch).  The egress of each worker's ``eth0`` -- its uplink -- is shaped with a
token bucket filter at the rate of that worker's :class:`~gcomp.train.links.Link`.
Downlinks are not shaped: what a worker receives is limited by its senders'
uplinks, as in the model of :mod:`gcomp.train.links`.

Two-level layouts (links from ``parse_links(..., groups=...)``, whose
:class:`~gcomp.train.links.Link` objects carry a ``group``): each group gets its
own bridge ``gG`` in the hub namespace, the group's workers are its ports, and
a veth pair ``uG``/``dG`` joins it to the core bridge ``br0``.  Worker
uplinks (``eth0``) are shaped at the intra-group rate; the egress of ``uG``
-- everything group G sends to other groups, its members' traffic together --
at the group's inter-group rate.  Traffic inside a group never reaches ``uG``.

Only the rate is emulated.  Latency, loss and jitter would need ``netem``,
which is not available everywhere (it is not on the machines this was built
on); a link's latency stays modelled and :class:`EmulatedNetwork` warns once
per process when a link carries one.  See docs/emulation.md.

::

    from gcomp.train.links import parse_links
    from gcomp.train.netns import EmulatedNetwork

    with EmulatedNetwork(parse_links("20mbit", 4)) as net:
        ...                                   # net.command(i, argv), net.env(i, port), net.counters(i)

Running processes on such a network is :mod:`gcomp.train.supervise`'s job
(:func:`~gcomp.train.supervise.run_emulated`); :mod:`gcomp.train.emulate`
re-exports both and holds ``gcomp emulate``.

Requirements: root, iproute2 (``ip`` and ``tc``), kernel support for network
namespaces, veth, bridge and the tbf qdisc -- :func:`can_emulate` checks them.
(Measured on the machines this was built on: tbf, htb and the u32 filter
exist; netem, prio and the flower filter do not.)

Cleanup: :meth:`EmulatedNetwork.close` kills what still runs inside the
namespaces and deletes every namespace (which takes their interfaces and
qdiscs with them).  It runs on leaving the ``with`` block (also on an
exception), on SIGINT/SIGTERM (handlers that clean up, then hand the signal
on), at interpreter exit, and when setup fails half-way.  A run killed with
SIGKILL cannot clean up; :func:`cleanup_stale` removes namespaces whose
creating process is gone.
"""

import atexit
import functools
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import warnings

from .links import Link, format_groups, groups_of

__all__ = [
    "can_emulate",
    "EmulatedNetwork",
    "EmulationError",
    "cleanup_stale",
    "list_namespaces",
    "tbf_params",
    "parse_tc_rate",
    "DEFAULT_SUBNET",
    "IFNAME",
]

#: addresses of the emulated workers: worker i gets host i+1 of this subnet
DEFAULT_SUBNET = "10.77.0.0/24"
#: the rates tbf_params accepts (bit/s)
MIN_RATE_BPS, MAX_RATE_BPS = 1e3, 1e10
#: name of every worker's interface inside its namespace
IFNAME = "eth0"
#: Linux IFNAMSIZ (16) less the terminating NUL
_IFNAMSIZ = 15
#: tbf bucket: this much time at the link rate, at least _MIN_BURST bytes
_BURST_SECONDS = 0.005
_MIN_BURST = 4096
#: tbf queue: this much time at the link rate, at least _MIN_QUEUE bytes (plus the burst)
_QUEUE_SECONDS = 0.4
_MIN_QUEUE = 64 * 1024
_NO_IPV6 = "for k in all default; do echo 1 > /proc/sys/net/ipv6/conf/$k/disable_ipv6; done 2>/dev/null; true"
_PREFIX = re.compile(r"^[A-Za-z0-9_.]{1,32}$")

_COUNTER = itertools.count()
_LIVE = []  # open EmulatedNetwork instances, in creation order
_LIVE_LOCK = threading.RLock()
_PREV_HANDLERS = {}  # signum -> handler that was installed before ours
_ATEXIT_REGISTERED = False
_LATENCY_WARNED = False


class EmulationError(RuntimeError):
    """Setting up or running the emulated network failed; the message says which command and why."""


def _run(argv, check=True, timeout=30):
    """Run one iproute2 command; on failure raise EmulationError with its stderr."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        if check:
            raise EmulationError(f"{' '.join(argv)}: {exc}") from exc
        return None
    if check and proc.returncode != 0:
        raise EmulationError(f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def list_namespaces():
    """Names of all named network namespaces (``ip netns list``)."""
    proc = _run(["ip", "netns", "list"], check=False)
    if proc is None or proc.returncode != 0:
        return []
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _namespace_pids(ns):
    proc = _run(["ip", "netns", "pids", ns], check=False)
    if proc is None or proc.returncode != 0:
        return []
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _kill_namespace_processes(ns, grace=1.0):
    """SIGTERM, then SIGKILL, every process still inside namespace ``ns`` (only processes we started live there)."""
    pids = [p for p in _namespace_pids(ns) if p != os.getpid()]
    if not pids:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = [p for p in _namespace_pids(ns) if p != os.getpid()]
            if not pids:
                return
            time.sleep(0.02)


def _delete_namespace(ns):
    _kill_namespace_processes(ns)
    _run(["ip", "netns", "del", ns], check=False)


@functools.lru_cache(maxsize=1)
def can_emulate():
    """``(True, "")`` when this process can build emulated networks, else ``(False, reason)``.

    Checks: running as root, ``ip`` and ``tc`` on PATH, and a trial namespace
    in which a bridge, a veth pair and a tbf qdisc can be created.  Cached.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "network emulation needs root (it creates network namespaces and tc qdiscs); run as root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return False, f"network emulation needs iproute2; not found on PATH: {', '.join(missing)}"
    probe = f"gcomp-{os.getpid()}-{next(_COUNTER)}-probe"
    try:
        proc = _run(["ip", "netns", "add", probe], check=False)
        if proc is None or proc.returncode != 0:
            err = proc.stderr.strip() if proc is not None else "could not run ip"
            return False, f"cannot create a network namespace (ip netns add): {err}"
        steps = [
            (["ip", "-n", probe, "link", "add", "gbr", "type", "bridge"], "a bridge"),
            (["ip", "-n", probe, "link", "add", "gv0", "type", "veth", "peer", "name", "gv1"], "a veth pair"),
            (["tc", "-n", probe, "qdisc", "add", "dev", "gv0", "root", "tbf", "rate", "1mbit", "burst", "4096",
              "limit", "65536"], "a tbf qdisc"),
        ]
        for argv, what in steps:
            proc = _run(argv, check=False)
            if proc is None or proc.returncode != 0:
                err = proc.stderr.strip() if proc is not None else "could not run it"
                return False, f"cannot create {what} in a network namespace ({' '.join(argv[3:])}): {err}"
        return True, ""
    finally:
        _run(["ip", "netns", "del", probe], check=False)


def tbf_params(link_or_rate):
    """``{"rate_bps", "burst_bytes", "limit_bytes"}`` of the tbf qdisc that shapes a link (or a rate in bit/s).

    * burst: 5 ms at the link rate, at least 4 KiB (a few full-size frames);
      larger bursts would let short transfers beat the rate, smaller ones
      cannot pass a 1514-byte frame (or need a timer tick per packet);
    * limit (queue length in bytes): 400 ms at the link rate, at least 64 KiB,
      plus the burst.  A deep queue keeps TCP from seeing local drops at low
      rates (as a real edge radio's buffer would); it adds queueing delay to
      small messages sent behind a bulk transfer, as on the real link.
    """
    rate = float(link_or_rate.rate_bps if isinstance(link_or_rate, Link) else link_or_rate)
    if not MIN_RATE_BPS <= rate <= MAX_RATE_BPS:
        # measured: tc refuses rates under 8 bit/s, passes no full frame with the burst it computes at a few
        # hundred bit/s, and overflows its burst (shown as 0b) somewhere above 30 Gbit/s
        raise ValueError(f"expected a link rate tc tbf can shape, {MIN_RATE_BPS / 1e3:g} kbit/s to "
                         f"{MAX_RATE_BPS / 1e9:g} Gbit/s, found {rate:g} bit/s")
    burst = max(_MIN_BURST, int(rate / 8 * _BURST_SECONDS))
    limit = burst + max(_MIN_QUEUE, int(rate / 8 * _QUEUE_SECONDS))
    return {"rate_bps": int(round(rate)), "burst_bytes": burst, "limit_bytes": limit}


def check_subnet(subnet, hosts):
    """The IPv4 network of ``subnet`` with room for ``hosts``; loopback and link-local ranges are refused."""
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError as exc:
        raise ValueError(f"expected an IPv4 subnet such as {DEFAULT_SUBNET}, found {subnet!r}: {exc}") from None
    if net.version != 4 or net.is_loopback or net.is_link_local or net.is_multicast:
        raise ValueError(f"expected a private IPv4 subnet for the namespaces (not loopback, link-local or multicast), "
                         f"found {subnet}")
    if net.num_addresses - 2 < hosts:
        raise ValueError(f"subnet {subnet} has room for fewer than {hosts} IPv4 hosts")
    return net


_TC_RATE = re.compile(r"\brate\s+([0-9.]+)\s*([KMGT]?)(bit|bps)\b")


def parse_tc_rate(text):
    """Rate in bit/s of the first ``rate 20Mbit`` in ``tc qdisc show`` output (None if absent)."""
    m = _TC_RATE.search(text)
    if not m:
        return None
    value = float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[m.group(2)]
    return value * (8 if m.group(3) == "bps" else 1)


def _warn_latency(links):
    global _LATENCY_WARNED
    if _LATENCY_WARNED or not any(link.latency_s or (link.group_link is not None and link.group_link.latency_s)
                                  for link in links):
        return
    _LATENCY_WARNED = True
    warnings.warn(
        "link latency cannot be emulated without netem; the emulated network shapes the rate only "
        "(latency stays modelled)",
        RuntimeWarning,
        stacklevel=3,
    )


def _install_handlers():
    """Install SIGINT/SIGTERM handlers and the atexit hook (main thread only; idempotent)."""
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:
        atexit.register(_close_all)
        _ATEXIT_REGISTERED = True
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signum in _PREV_HANDLERS:
            continue
        prev = signal.getsignal(signum)
        if prev is signal.SIG_IGN:
            continue
        _PREV_HANDLERS[signum] = prev
        signal.signal(signum, _on_signal)


def _restore_handlers():
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, prev in list(_PREV_HANDLERS.items()):
        if signal.getsignal(signum) is _on_signal:  # leave alone a handler someone installed after ours
            signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
        del _PREV_HANDLERS[signum]


def _close_all():
    with _LIVE_LOCK:
        live = list(_LIVE)
    for net in reversed(live):
        try:
            net.close()
        except Exception:  # noqa: BLE001 - cleanup of one network must not stop the others
            pass


def _on_signal(signum, frame):
    """Clean up every open network, then hand the signal to whoever had it before."""
    prev = _PREV_HANDLERS.get(signum)
    _close_all()
    _restore_handlers()
    if callable(prev):
        prev(signum, frame)  # SIGINT's default handler raises KeyboardInterrupt
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


class EmulatedNetwork:
    """A star of shaped uplinks (or a star of groups): one network namespace per worker, bridged in a hub namespace.

    ``EmulatedNetwork(links)`` builds it (and cleans up if that fails half-way);
    use it as a context manager or call :meth:`close`.

    Attributes: ``links``, ``namespaces`` (worker namespace names),
    ``addresses`` (worker IPv4 addresses as strings), ``hub`` (hub namespace),
    ``ifname`` (``"eth0"``), ``name`` (the instance's ``PREFIX-PID-N`` stem),
    ``groups`` (rank lists of a two-level layout, else None) and
    ``group_ports`` (the hub interfaces ``uG`` that carry each group's
    traffic to the other groups, shaped at its inter-group rate; [] if flat).

    Namespace names are ``PREFIX-PID-N-hub`` and ``PREFIX-PID-N-wI`` (PID of
    the creating process, N a per-process counter), so parallel runs never
    collide and :func:`cleanup_stale` can tell whose they are.  Interfaces are
    created directly inside the namespaces (``br0`` and ``pI`` in the hub,
    ``eth0`` in each worker), never in the root namespace, so their names
    cannot clash with anything either.
    """

    ifname = IFNAME

    def __init__(self, links, prefix="gcomp", subnet=DEFAULT_SUBNET):
        links = list(links)
        if not links:
            raise ValueError("expected at least one link (one per worker)")
        if not all(isinstance(link, Link) for link in links):
            raise TypeError("expected a list of gcomp.train.links.Link (see parse_links)")
        if not _PREFIX.match(prefix):
            raise ValueError(f"expected a prefix of letters, digits, '_' or '.', found {prefix!r}")
        net = check_subnet(subnet, len(links))
        self.groups = groups_of(links)  # None for a flat star; refuses inconsistent groups before anything is created
        for link in links:
            tbf_params(link)  # a rate tc cannot shape is refused here, before anything is created
            if link.group_link is not None:
                tbf_params(link.group_link)
        self.links = links
        self.group_ports = [f"u{g}" for g in range(len(self.groups or []))]
        self.prefix = prefix
        self.subnet = net
        self.name = f"{prefix}-{os.getpid()}-{next(_COUNTER)}"
        self.hub = f"{self.name}-hub"
        self.namespaces = [f"{self.name}-w{i}" for i in range(len(links))]
        self.addresses = [str(net.network_address + i + 1) for i in range(len(links))]
        self._created = []  # namespaces that may exist, in creation order
        self._closed = False
        _warn_latency(links)
        ok, reason = can_emulate()
        if not ok:
            raise EmulationError(reason)
        with _LIVE_LOCK:
            _LIVE.append(self)
            _install_handlers()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # -- setup -------------------------------------------------------------------------------------------------

    def _add_namespace(self, ns):
        self._created.append(ns)  # recorded first: a signal between the two lines still gets it deleted
        _run(["ip", "netns", "add", ns])
        # IPv6 off before any interface exists: no router solicitations, DAD or MLD reports in the byte counters
        # (best effort: a kernel without IPv6 has nothing to switch off)
        _run(["ip", "netns", "exec", ns, "sh", "-c", _NO_IPV6], check=False)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _bridge(self, name):
        _run(["ip", "-n", self.hub, "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
        _run(["ip", "-n", self.hub, "link", "set", name, "up"])

    @staticmethod
    def _shape(ns, dev, link):
        p = tbf_params(link)
        _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{p['rate_bps']}bit",
              "burst", str(p["burst_bytes"]), "limit", str(p["limit_bytes"])])

    def _setup(self):
        self._add_namespace(self.hub)
        self._bridge("br0")
        bridges = ["br0"] * len(self.links)
        for g, members in enumerate(self.groups or []):
            # group G: bridge gG, joined to the core bridge br0 by the veth pair uG (group side) / dG (core side);
            # the egress of uG is all the group sends to other groups, shaped at the group's inter-group rate
            up, down = self.group_ports[g], f"d{g}"
            assert max(len(f"g{g}"), len(up), len(down)) <= _IFNAMSIZ
            self._bridge(f"g{g}")
            _run(["ip", "-n", self.hub, "link", "add", up, "type", "veth", "peer", "name", down])
            _run(["ip", "-n", self.hub, "link", "set", up, "master", f"g{g}"])
            _run(["ip", "-n", self.hub, "link", "set", down, "master", "br0"])
            _run(["ip", "-n", self.hub, "link", "set", up, "up"])
            _run(["ip", "-n", self.hub, "link", "set", down, "up"])
            self._shape(self.hub, up, self.links[members[0]].group_link)
            for w in members:
                bridges[w] = f"g{g}"
        prefixlen = self.subnet.prefixlen
        for i, (ns, addr, link) in enumerate(zip(self.namespaces, self.addresses, self.links, strict=True)):
            port = f"p{i}"
            assert len(port) <= _IFNAMSIZ and len(self.ifname) <= _IFNAMSIZ
            self._add_namespace(ns)
            _run(["ip", "-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", self.ifname, "netns", ns])
            _run(["ip", "-n", self.hub, "link", "set", port, "master", bridges[i]])
            _run(["ip", "-n", self.hub, "link", "set", port, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/{prefixlen}", "dev", self.ifname])
            _run(["ip", "-n", ns, "link", "set", self.ifname, "up"])
            self._shape(ns, self.ifname, link)

    # -- use ---------------------------------------------------------------------------------------------------

    def __len__(self):
        return len(self.namespaces)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def _check_open(self):
        if self._closed:
            raise EmulationError(f"emulated network {self.name} is closed")

    def command(self, i, argv):
        """``argv`` prefixed to run inside worker ``i``'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[i], *argv]

    def env(self, i, master_port=29500):
        """The caller's environment plus the ``torch.distributed`` env:// variables for worker ``i``.

        Each namespace stands for a separate machine, so ``LOCAL_RANK`` is 0 and
        ``LOCAL_WORLD_SIZE`` 1; ``MASTER_ADDR`` is worker 0's address and
        ``GLOO_SOCKET_IFNAME`` makes gloo use ``eth0``.  ``GCOMP_EMULATED_LINK``
        holds the worker's link spec; in a two-level layout
        ``GCOMP_EMULATED_GROUP`` its group index, ``GCOMP_EMULATED_GROUPS`` all
        groups (``0,1/2,3``, as ``--groups`` takes them) and
        ``GCOMP_EMULATED_GROUP_LINK`` its group's inter-group link spec.
        """
        env = dict(os.environ)
        env.update({
            "RANK": str(i),
            "WORLD_SIZE": str(len(self.namespaces)),
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": self.addresses[0],
            "MASTER_PORT": str(int(master_port)),
            "GLOO_SOCKET_IFNAME": self.ifname,
            "GCOMP_EMULATED_LINK": self.links[i].spec,
        })
        for key in ("GCOMP_EMULATED_GROUP", "GCOMP_EMULATED_GROUPS", "GCOMP_EMULATED_GROUP_LINK"):
            env.pop(key, None)  # a flat network inside a grouped run's worker must not inherit its layout
        if self.groups is not None:
            env.update({
                "GCOMP_EMULATED_GROUP": str(self.links[i].group),
                "GCOMP_EMULATED_GROUPS": format_groups(self.groups),
                "GCOMP_EMULATED_GROUP_LINK": self.links[i].group_link.spec,
            })
        return env

    def counters(self, i):
        """``(tx_bytes, rx_bytes)`` of worker ``i``'s ``eth0`` (link-layer bytes, headers included)."""
        self._check_open()
        stats = f"/sys/class/net/{self.ifname}/statistics"
        proc = _run(self.command(i, ["cat", f"{stats}/tx_bytes", f"{stats}/rx_bytes"]))
        tx, rx = (int(v) for v in proc.stdout.split())
        return tx, rx

    def qdisc_show(self, i):
        """``tc qdisc show dev eth0`` inside worker ``i``'s namespace."""
        self._check_open()
        return _run(self.command(i, ["tc", "qdisc", "show", "dev", self.ifname])).stdout

    def _group_port(self, g):
        self._check_open()
        if self.groups is None:
            raise EmulationError(f"emulated network {self.name} is flat: it has no group uplinks")
        return self.group_ports[g]

    def group_counters(self, g):
        """``(tx_bytes, rx_bytes)`` of group ``g``'s uplink ``uG``: bytes it sent to, and received from, other groups."""
        stats = f"/sys/class/net/{self._group_port(g)}/statistics"
        proc = _run(["ip", "netns", "exec", self.hub, "cat", f"{stats}/tx_bytes", f"{stats}/rx_bytes"])
        tx, rx = (int(v) for v in proc.stdout.split())
        return tx, rx

    def group_qdisc_show(self, g):
        """``tc qdisc show dev uG`` in the hub: the tbf that shapes group ``g``'s traffic to the other groups."""
        return _run(["tc", "-n", self.hub, "qdisc", "show", "dev", self._group_port(g)]).stdout

    def close(self):
        """Kill what still runs in the namespaces and delete them all; idempotent, safe to call from a handler."""
        while self._created:
            ns = self._created[-1]
            _delete_namespace(ns)  # takes its interfaces (the veth pairs, the bridge) and qdiscs with it
            if self._created and self._created[-1] == ns:
                self._created.pop()
        if not self._closed:
            self._closed = True
            with _LIVE_LOCK:
                if self in _LIVE:
                    _LIVE.remove(self)
                if not _LIVE:
                    _restore_handlers()

    def __repr__(self):
        state = "closed" if self._closed else "open"
        layout = ""
        if self.groups is not None:
            layout = (f" groups {format_groups(self.groups)} inter "
                      f"[{', '.join(self.links[m[0]].group_link.spec for m in self.groups)}]")
        return (f"<EmulatedNetwork {self.name} {len(self)} workers [{', '.join(x.spec for x in self.links)}]{layout} "
                f"{state}>")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix="gcomp"):
    """Delete namespaces ``PREFIX-PID-...`` whose creating process no longer exists; returns their names.

    A run killed with SIGKILL (or a crashed interpreter) leaves its namespaces
    behind; this removes them (and kills anything still running inside them).
    Namespaces of live processes, this one included, are left alone.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-")
    removed = []
    for ns in list_namespaces():
        m = pattern.match(ns)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        _delete_namespace(ns)
        removed.append(ns)
    return removed

