"""Emulate an edge cluster's uplinks on one Linux box: ``gcomp emulate``, and the emulation API in one place.

The work is split in two modules, whose public names this one re-exports
(``from gcomp.train.emulate import ...`` keeps working):

* :mod:`gcomp.train.netns` -- the network: one namespace per worker, veth
  pairs to a bridge in a hub namespace, ``tc tbf`` on every uplink
  (:class:`EmulatedNetwork`, :func:`tbf_params`, :func:`parse_tc_rate`), the
  checks (:func:`can_emulate`) and the cleanup (signal-safe teardown,
  :func:`cleanup_stale`);
* :mod:`gcomp.train.supervise` -- the processes: :func:`run_emulated` runs one
  per worker through the supervisor that ``gcomp train`` uses too, and
  collects :class:`WorkerResult` / :class:`EmulationResult`.

This module holds the command line, ``gcomp emulate`` (also ``python -m
gcomp.train.emulate``).  See docs/emulation.md.

::

    from gcomp.train.links import parse_links
    from gcomp.train.emulate import EmulatedNetwork, run_emulated

    with EmulatedNetwork(parse_links("20mbit", 4)) as net:
        ...                                   # net.command(i, argv), net.env(i, port), net.counters(i)

    result = run_emulated(parse_links("20mbit,5mbit", 2), ["python", "train.py"], timeout=600)
    result.returncodes, result.outputs, [w.tx_bytes for w in result.workers]

    # two groups of two: 1 Gbit/s inside a group, 20 Mbit/s from each group to the other
    run_emulated(parse_links("intra=1gbit inter=20mbit", 4, groups="2x2"), ["python", "train.py"])
"""

import argparse
import sys

from .links import describe_layout, parse_groups, parse_links
from .netns import (
    DEFAULT_SUBNET,
    IFNAME,
    EmulatedNetwork,
    EmulationError,
    can_emulate,
    check_subnet,
    cleanup_stale,
    list_namespaces,
    parse_tc_rate,
    tbf_params,
)
from .supervise import EmulationResult, WorkerResult, run_emulated

__all__ = [
    "can_emulate",
    "EmulatedNetwork",
    "EmulationError",
    "WorkerResult",
    "EmulationResult",
    "run_emulated",
    "cleanup_stale",
    "list_namespaces",
    "tbf_params",
    "parse_tc_rate",
    "add_emulate_arguments",
    "cmd_emulate",
    "main_emulate",
    "DEFAULT_SUBNET",
    "IFNAME",
]


def _human_bytes(n):
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def add_emulate_arguments(parser):
    """Add the ``gcomp emulate`` options to an argparse parser (or subparser)."""
    parser.add_argument("--workers", "-n", type=int, default=None, metavar="N",
                        help="number of workers (default: as many as --groups holds, else 2)")
    parser.add_argument("--link", action="append", metavar="SPEC",
                        help="uplink per worker: RATE[/LATENCY] or a comma list, one per worker (default 20mbit); "
                             "with --groups: intra=SPEC (each worker's uplink inside its group, 1 or one per worker) "
                             "and inter=SPEC (each group's uplink to the other groups, shared by its members, 1 or one "
                             "per group), e.g. --link intra=1gbit --link inter=20mbit; only the rate is emulated")
    parser.add_argument("--groups", default=None, metavar="GxS|RANKS",
                        help="two-level layout: G groups of S consecutive ranks (2x2), or rank lists split by '/' "
                             "(0,2/1,3); traffic between groups also passes its group's inter-group uplink")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S",
                        help="kill all workers after S seconds (default 600)")
    parser.add_argument("--master-port", type=int, default=29500, metavar="PORT",
                        help="MASTER_PORT given to the workers (default 29500; every run has its own namespaces)")
    parser.add_argument("--subnet", default=DEFAULT_SUBNET, help=f"worker addresses (default {DEFAULT_SUBNET})")
    parser.add_argument("--quiet", "-q", action="store_true", help="do not echo the workers' output")
    parser.add_argument("--cleanup-stale", action="store_true",
                        help="delete namespaces left by killed gcomp runs (alone: only that, then exit)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                        help="command run once per worker inside its namespace, with RANK, WORLD_SIZE, LOCAL_RANK, "
                             "MASTER_ADDR, MASTER_PORT and GLOO_SOCKET_IFNAME=eth0 set (with --groups also "
                             "GCOMP_EMULATED_GROUP, GCOMP_EMULATED_GROUPS and GCOMP_EMULATED_GROUP_LINK)")
    return parser


def cmd_emulate(args):
    """Run ``gcomp emulate`` from parsed arguments; returns the exit status."""
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd and args.cleanup_stale:  # standalone: remove what SIGKILLed runs left, nothing else
        ok, reason = can_emulate()
        if not ok:
            print(f"gcomp emulate: cannot clean up here: {reason}", file=sys.stderr)
            return 2
        removed = cleanup_stale()
        for ns in removed:
            print(f"removed stale namespace {ns}", file=sys.stderr)
        print(f"gcomp emulate: removed {len(removed)} stale namespace(s)")
        return 0
    if not cmd:
        print("gcomp emulate: expected a command after --, e.g. gcomp emulate --workers 2 -- python train.py",
              file=sys.stderr)
        return 2
    if not 1 <= args.master_port <= 65535:
        print(f"gcomp emulate: expected --master-port in [1, 65535], found {args.master_port}", file=sys.stderr)
        return 2
    try:
        workers = args.workers
        if args.groups is not None:
            groups = parse_groups(args.groups)
            held = sum(len(g) for g in groups)
            if workers is not None and workers != held:
                raise ValueError(f"expected --workers to match the {held} workers --groups {args.groups} holds, "
                                 f"found --workers {workers}")
            workers = held
        workers = 2 if workers is None else workers
        if workers < 1:
            raise ValueError(f"expected --workers >= 1, found {workers}")
        links = parse_links(" ".join(args.link or ["20mbit"]), workers, groups=args.groups)
        for link in links:
            tbf_params(link)
            if link.group_link is not None:
                tbf_params(link.group_link)
        check_subnet(args.subnet, workers)
    except ValueError as exc:
        print(f"gcomp emulate: {exc}", file=sys.stderr)
        return 2
    ok, reason = can_emulate()
    if not ok:
        print(f"gcomp emulate: cannot emulate the network here: {reason}", file=sys.stderr)
        return 2
    if args.cleanup_stale:
        for ns in cleanup_stale():
            print(f"removed stale namespace {ns}", file=sys.stderr)
    try:
        result = run_emulated(links, cmd, timeout=args.timeout, master_port=args.master_port, subnet=args.subnet,
                              stream=not args.quiet)
    except (EmulationError, ValueError, OSError) as exc:
        print(f"gcomp emulate: {exc}", file=sys.stderr)
        return 1
    layout = describe_layout(links)
    print(f"gcomp emulate: {len(links)} workers, {result.elapsed_s:.2f} s"
          + (f", groups {layout['groups_spec']}, inter-group uplinks {','.join(layout['inter'])}" if layout else "")
          + (f", timed out after {args.timeout:g} s" if result.timed_out else ""))
    for w in result.workers:
        if w.returncode is not None and w.returncode < 0:
            status = f"killed by signal {-w.returncode}" + (" (by gcomp emulate)" if w.killed else "")
        else:
            status = f"exit {w.returncode}"
        group = f"group {w.link.group} " if w.link.group is not None else ""
        print(f"  worker {w.rank} {w.address:<12} {group}{w.link.spec:<10} {status:<28} "
              f"sent {_human_bytes(w.tx_bytes)} ({w.tx_bytes} B), received {_human_bytes(w.rx_bytes)} ({w.rx_bytes} B)")
    return 0 if result.ok else 1


def main_emulate(argv=None):
    """``gcomp emulate [--workers N] [--groups GxS] [--link SPEC]... [--timeout S] -- CMD ...`` standalone."""
    parser = argparse.ArgumentParser(
        prog="gcomp emulate",
        description="Run CMD once per worker, each in its own network namespace whose uplink is shaped to the "
                    "link rate (tc tbf); with --groups, each group's traffic to the other groups also passes the "
                    "group's shaped uplink; print each worker's exit status and bytes sent/received.",
    )
    add_emulate_arguments(parser)
    return cmd_emulate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main_emulate(sys.argv[1:]))
