"""What ``gcomp train`` shows: the summary table and the plots (accuracy against time and against bytes sent).

Everything here reads the results dict that :func:`gcomp.train.train` returns
(and writes as ``results.json``); nothing is recomputed from the workers' raw
records.  The one derived quantity is the modelled link time of a run, which
the table shows as its own column: it is recomputed from the bytes each epoch
sent and the header's links with the same model the runner adds to the
measured local time (:func:`gcomp.train.links.modelled_comm_seconds`).
"""

import os
import textwrap

__all__ = ["build_figures", "plot_results", "summary_table", "run_label", "federated_figures", "federated_table",
           "adaptive_figure", "adaptive_series"]

#: The summary table's width limit, in characters.
TABLE_WIDTH = 100
#: A time axis is logarithmic when the longest run lasts this many times the shortest (or more): on a linear axis
#: the shortest would fill a fifth of the width or less.
LOG_TIME_SPAN = 5.0

_NAME_WIDTH = 15
#: (heading, width) of the table's columns after the compressor's name.
_COLUMNS = (("final acc", 9), ("to target", 11), ("compute", 7), ("compress", 8), ("comm", 7), ("other", 7),
            ("total", 7), ("KB/step", 7), ("ratio", 5), ("energy", 6))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
#: Line styles of gcomp's compressors: solid first, then long dashes whose gaps show any line drawn under them.
_GCOMP_STYLES = ("-", (0, (8, 2)), (0, (8, 2, 1, 2)), (0, (8, 2, 1, 2, 1, 2)), (0, (14, 3)))
#: Line styles of the baselines (none and torch's hooks): short dashes, dots, dash-dots.
_BASELINE_STYLES = ((0, (4, 2)), (0, (1, 1.5)), (0, (4, 1.5, 1, 1.5)), (0, (2, 2)))


def run_label(run):
    """A run's name in the table and the plots: ``ring/topk:ratio=0.01`` when decentralized, else the compressor."""
    if run.get("architecture", "centralized") == "decentralized":
        return f"{run.get('topology') or 'gossip'}/{run['compressor']}"
    if run.get("architecture") == "hybrid":  # gcomp's hierarchical hook over --groups
        return f"hybrid/{run['compressor']}"
    if run.get("local_dp"):  # federated with Flower's LocalDpMod before compression
        return f"{run['compressor']}+ldp"
    return run["compressor"]


def _links_text(header):
    """The links in a title: ``20mbit,5mbit``, or with --groups ``groups 0,1/2,3: intra 1gbit, inter 20mbit``."""
    layout = header.get("layout")
    if layout and layout.get("inter"):
        return (f"groups {layout['groups_spec']}: intra {','.join(sorted(set(layout['intra'])))}, "
                f"inter {','.join(sorted(set(layout['inter'])))}")
    return ",".join(sorted(set(header["links"])))


def _mb_per_worker(epoch):
    sent = epoch["bytes_sent_per_worker"]
    return sum(sent) / len(sent) / 1e6


def _log_scale(series, always):
    """Whether an x axis showing ``series`` (one list of x values per run) should be logarithmic.

    Never when a value is not positive (a log axis cannot show it); otherwise
    always for bytes (``always``), and for time when the runs' lengths differ
    by :data:`LOG_TIME_SPAN` or more.
    """
    values = [x for xs in series for x in xs]
    if not values or min(values) <= 0:
        return False
    ends = [xs[-1] for xs in series]
    return always or max(ends) / min(ends) >= LOG_TIME_SPAN


def _line_styles(runs):
    """One (marker, line style) per run, all pairs distinct: baselines dashed or dotted, gcomp's runs solid first."""
    counts = {"baseline": 0, "gcomp": 0}
    styles = []
    for i, run in enumerate(runs):
        pool = _BASELINE_STYLES if run["kind"] == "baseline" else _GCOMP_STYLES
        styles.append((_MARKERS[i % len(_MARKERS)], pool[counts[run["kind"]] % len(pool)]))
        counts[run["kind"]] += 1
    return styles


def _plain_log_ticks(ax):
    """Label a log x axis with plain numbers (0.1, 1, 10), and 2 and 5 between decades when it spans under three."""
    from matplotlib.ticker import FuncFormatter

    low, high = ax.get_xlim()
    few = high / low < 1000
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _pos: f"{value:g}" if few and f"{value:.0e}"[0] in "25"
                                               else ""))


def build_figures(results):
    """``{file name: matplotlib Figure}`` of accuracy against time and against MB sent per worker.

    Every point is an epoch end as measured (no invented starting point).  The
    bytes axis is logarithmic, the time axis too when the runs' lengths differ
    by :data:`LOG_TIME_SPAN` or more; log axes are labelled with plain numbers.
    Each run has its own colour, marker and line style; markers are hollow so
    that runs on top of each other (DGC and top-k) both stay visible.  Decentralized runs add
    ``consensus_distance.png``; runs with the adaptive policy ``adaptive_settings.png`` (:func:`adaptive_figure`).
    """
    if results["header"].get("architecture") == "federated":
        return federated_figures(results)
    from matplotlib.figure import Figure

    header = results["header"]
    runs = results["runs"]
    emulated = header["emulated"]
    clock = "measured_wall_s" if emulated else "modelled_s"
    panels = (
        ("accuracy_vs_time.png", "measured wall-clock time on the emulated links (s)" if emulated
         else "modelled time (s): measured local time + link model", lambda ep: ep[clock], False),
        ("accuracy_vs_bytes.png", "MB sent per worker (" + ("interface counters, TCP/IP headers included)" if emulated
                                                            else "gcomp's counters; ring model for the baselines)"),
         _mb_per_worker, True),
    )
    target = header["target_accuracy"]
    lowest = min([target] + [ep["accuracy"] for run in runs for ep in run["epochs"]])
    styles = _line_styles(runs)
    title = (f"{header['model']} on {header.get('dataset', 'digits')}, {header['workers']} workers, "
             f"links {_links_text(header)} ({'emulated' if emulated else 'link model'})")
    figures = {}
    for name, xlabel, xfn, bytes_axis in panels:
        series = [[xfn(ep) for ep in run["epochs"]] for run in runs]
        fig = Figure(figsize=(8.4, 4.4), dpi=110)
        ax = fig.add_subplot()
        for i, (run, xs) in enumerate(zip(runs, series, strict=True)):
            marker, linestyle = styles[i]
            ax.plot(xs, [ep["accuracy"] for ep in run["epochs"]], label=run_label(run), color=f"C{i % 10}",
                    marker=marker, markersize=6, markerfacecolor="none", markeredgewidth=1.3, linestyle=linestyle,
                    linewidth=1.3 if run["kind"] == "baseline" else 1.8)
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label=f"target {target:.2f}")
        if _log_scale(series, always=bytes_axis):
            ax.set_xscale("log")
            _plain_log_ticks(ax)
            xlabel += ", log scale"
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel("test accuracy")
        ax.set_ylim(max(0.0, int(20 * lowest - 0.5) / 20), 1.0)  # from a multiple of 0.05 at least 0.025 under all
        ax.grid(alpha=0.3)
        ax.grid(alpha=0.12, which="minor")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        figures[name] = fig
    gossiped = [(i, run) for i, run in enumerate(runs) if any("consensus_distance" in ep for ep in run["epochs"])]
    if gossiped:
        fig = Figure(figsize=(8.4, 4.4), dpi=110)
        ax = fig.add_subplot()
        for i, run in gossiped:
            points = [(ep["epoch"], ep["consensus_distance"]) for ep in run["epochs"] if "consensus_distance" in ep]
            marker, linestyle = styles[i]
            ax.plot([e for e, _ in points], [d for _, d in points], label=run_label(run), color=f"C{i % 10}",
                    marker=marker, markerfacecolor="none", linestyle=linestyle)
        if all(d > 0 for _, run in gossiped for ep in run["epochs"] for d in [ep.get("consensus_distance", 1.0)]):
            ax.set_yscale("log")
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel("consensus distance: mean_i ||x_i - mean||^2 (sketched)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        figures["consensus_distance.png"] = fig
    adaptive = [(i, run) for i, run in enumerate(runs) if run.get("adaptive")]
    if adaptive:
        figures["adaptive_settings.png"] = adaptive_figure(adaptive, title)
    return figures


def _rung_labels(ladder):
    """The ladder settings' short names from their configurations (``uniform:bits=4``): the parameters that differ
    from the compressor's defaults or between settings of the same compressor (the seed left out; all of them when
    the compressor is unknown here)."""
    import gcomp

    labels = []
    for config in ladder:
        try:
            defaults = gcomp.compressor(config["name"]).get_config()
        except (gcomp.errors.GcompError, KeyError, TypeError):
            defaults = {}
        kin = [other for other in ladder if other.get("name") == config.get("name")]
        rest = ",".join(f"{k}={v}" for k, v in config.items() if k not in ("name", "seed") and (
            defaults.get(k, object()) != v or any(other.get(k) != v for other in kin)))
        labels.append(config.get("name", "?") + (f":{rest}" if rest else ""))
    return labels


def adaptive_series(summary):
    """What :func:`adaptive_figure` draws for one run, from its policy summary (``runs[i]["adaptive"]``).

    Returns
    -------
    dict
        ``names``: one label per ladder setting, least compression first (the policy's own names where its
        records give them); ``steps`` / ``rungs``: the setting in force from each step on (a step plot: the
        start, then one point after every decision, then the last step); ``rate_steps`` / ``rate_mbps``: the
        bottleneck link rate (MB/s) each decision measured (decisions without measurements left out);
        ``switch_steps``: the steps of the switches.
    """
    ladder = summary["config"]["ladder"]
    names = _rung_labels(ladder)
    history = summary["history"]
    for record in history:  # the policy's names for the settings it used
        names[record["rung"]] = record["setting"]
    first = history[0]["rung"] if history else names.index(summary["setting"]) if summary["setting"] in names else 0
    steps, rungs = [0], [first]
    for record in history:
        steps.append(record["step"])
        rungs.append(record["target"] if record["switched"] else record["rung"])
    if summary["steps"] > steps[-1]:
        steps.append(summary["steps"])
        rungs.append(rungs[-1])
    measured = [r for r in history if r.get("bandwidth_Bps")]
    return {"names": names, "steps": steps, "rungs": rungs, "rate_steps": [r["step"] for r in measured],
            "rate_mbps": [r["bandwidth_Bps"] / 1e6 for r in measured],
            "switch_steps": [s["step"] for s in summary["switches"]]}


def adaptive_figure(adaptive, title):
    """One panel per adaptive run: the setting over the steps (left axis, the ladder's levels) next to the
    bottleneck link rate the policy measured at each decision (right axis, MB/s).

    Parameters
    ----------
    adaptive : list of (int, dict)
        ``(index in runs, run)`` of the runs that carry a policy summary (``run["adaptive"]``).
    title : str
        The figure's title.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(8.4, 1.4 + 3.0 * len(adaptive)), dpi=110)
    axes = fig.subplots(len(adaptive), 1, squeeze=False)[:, 0]
    for ax, (i, run) in zip(axes, adaptive, strict=True):
        data = adaptive_series(run["adaptive"])
        ax.step(data["steps"], data["rungs"], where="post", color=f"C{i % 10}", linewidth=1.8,
                label="setting in force (left axis)")
        ax.set_yticks(range(len(data["names"])), data["names"], fontsize=7)
        ax.set_ylim(len(data["names"]) - 0.5, -0.5)  # least compression on top
        ax.set_ylabel("setting (more compression down)", fontsize=8)
        ax.grid(alpha=0.3)
        rate = ax.twinx()
        rate.plot(data["rate_steps"], data["rate_mbps"], color="grey", marker="o", markersize=3,
                  markerfacecolor="none", linestyle=(0, (1, 1.5)), linewidth=1.0,
                  label="link rate the policy measured at each decision (right axis)")
        if data["rate_mbps"] and min(data["rate_mbps"]) > 0 and max(data["rate_mbps"]) / min(data["rate_mbps"]) >= 10:
            rate.set_yscale("log")
            rate.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
            rate.yaxis.set_minor_formatter(FuncFormatter(lambda value, _pos: f"{value:g}" if f"{value:.0e}"[0] in "25"
                                                         else ""))
        rate.set_ylabel("bottleneck link rate, MB/s\n(bytes / collective seconds)", fontsize=8)
        config = run["adaptive"]["config"]
        switches = len(data["switch_steps"])
        ax.set_title("\n".join(textwrap.wrap(run_label(run), 90, break_on_hyphens=False)
                               + [f"budget {config['budget']:g}, a decision every {config['every']} steps, dwell "
                                  f"{config['dwell']}: {switches} switch{'es' if switches != 1 else ''}"]),
                     fontsize=8, loc="left")
    handles, labels = (a + b for a, b in zip(axes[0].get_legend_handles_labels(),
                                             rate.get_legend_handles_labels(), strict=True))
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncols=2, frameon=False)
    axes[-1].set_xlabel("step (the policy's count: after the hook's dense warm-up)", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1))
    return fig


def plot_results(results, out_dir):
    """Write accuracy_vs_time.png, accuracy_vs_bytes.png, for decentralized runs consensus_distance.png and for
    runs with the adaptive policy adaptive_settings.png (see :func:`build_figures`) into ``out_dir``; return their
    paths."""
    paths = []
    for name, fig in build_figures(results).items():
        path = os.path.join(out_dir, name)
        fig.savefig(path)
        paths.append(path)
    return paths


def _time_split(run, header, decimals):
    """``(compute, compress or None, comm, other, total)`` seconds, rounded to ``decimals``, summing exactly.

    ``other`` is the remainder, taken after rounding so that the printed columns add up to the printed total.
    ``compress`` is None where nothing measured it: ``none`` does not compress, torch's hooks compress inside
    their communication.
    """
    split = run["time_split_s"]
    if header["emulated"]:
        total, comm = run["measured_wall_s"], split["communication"]
    else:
        total, comm = run["modelled_s"], run["modelled_comm_s"]
    compress = round(split["compression"], decimals) if run["kind"] == "gcomp" else None
    compute, comm, total = (round(x, decimals) for x in (split["compute"], comm, total))
    other = round(total - compute - (compress or 0.0) - comm, decimals)
    return compute, compress, comm, other, total


def _ratio(run, header):
    """Dense float32 bytes over the bytes gcomp counted (the ring model's for the baselines), or None if unknown.

    When emulated, ``compression_ratio`` divides by the interface counters (TCP/IP headers included, so ``none``
    would show 0.9); the counted ratio then comes from ``counted_compression_ratio`` where the runner provides it.
    """
    if header["emulated"]:
        return run.get("counted_compression_ratio")
    return run["compression_ratio"]


def _cells(texts):
    return " ".join(f"{text:>{width}}" for text, (_, width) in zip(texts, _COLUMNS, strict=True))


def _legend(header, runs):
    """The paragraphs under the table: what each column holds, measured or modelled, in this mode."""
    steps = ("compute: the median local forward+backward+step, times the steps.  compress: gcomp's hook (compression "
             "and decompression).")
    if header["emulated"]:
        paragraphs = [
            "Seconds on rank 0, all measured (meas.) on the emulated links: total = compute + compress + comm + other.",
            steps,
            "comm: the rest of each step (transfers through the shaped links; torch's hooks' compression).  "
            "other: the remainder of the total (evaluation, data loading).",
            "KB/step: bytes sent per worker per step, from the interface counters (TCP/IP headers included).  "
            "ratio: dense float32 ring allreduce / the bytes gcomp counted (ring model for the baselines).",
        ]
        if any(_ratio(run, header) is None for run in runs):
            paragraphs.append("ratio -: these results lack gcomp's own byte counts (the interface counters include "
                              "TCP/IP headers, so they cannot give it).")
    else:
        paragraphs = [
            "Seconds on rank 0: total = compute + compress + comm + other.  meas.: measured here; model: modelled; "
            "rest: measured remainder.",
            steps,
            f"comm: the bytes sent, through the link model ({_links_text(header)}).  other: the rest of the measured "
            "local time (loopback transfers, DDP and hook overhead, torch's hooks' compression, evaluation).  "
            "total: measured local time + comm.",
            "KB/step: bytes sent per worker per step (gcomp's counters; ring model for the baselines).  "
            "ratio: dense float32 ring allreduce / KB/step.",
        ]
    paragraphs.append("compress -: not measured (none does not compress; torch's hooks compress inside their "
                      "communication).  energy: modelled (docs/energy.md).")
    if any(run.get("architecture") == "hybrid" for run in runs):
        paragraphs.append("Hybrid (hybrid/COMPRESSOR): gcomp's hierarchical hook over the --groups: a dense sum inside "
                          "each group, the compressor between the group leaders, a broadcast back (hybrid/none: plain "
                          "DDP); comm is modelled with the bytes inside and between groups at their own rates.")
    gossiped = [run for run in runs if run.get("architecture") == "decentralized"]
    if gossiped:
        paragraphs.append("Decentralized (TOPOLOGY/COMPRESSOR): each worker gossips its parameters with its neighbours "
                          "(CHOCO-SGD; none: exact gossip); final acc is rank 0's own model; KB/step counts the "
                          "gossip packets; ratio compares them with a dense ring allreduce.  Final consensus "
                          "distance (mean_i ||x_i - mean||^2): "
                          + ", ".join(f"{run_label(run)} {run['final_consensus_distance']:.3g}" for run in gossiped
                                      if run.get("final_consensus_distance") is not None) + ".")
    return paragraphs


def summary_table(results) -> str:
    """The end of ``gcomp train``: one row per run, columns labelled measured or modelled, at most 100 characters wide.

    The time columns add up to the total (see :func:`_time_split`); a legend under the table says what each
    column holds and how it was obtained in this mode.  A compressor name longer than its column gets a line of
    its own above its numbers.
    """
    if results["header"].get("architecture") == "federated":
        return federated_table(results)
    header = results["header"]
    runs = results["runs"]
    emulated = header["emulated"]
    clock, tag = ("measured", "meas.") if emulated else ("modelled", "model")
    longest = max([run["measured_wall_s"] if emulated else run["modelled_s"] for run in runs], default=0.0)
    decimals = max(0, 2 - max(0, len(f"{longest:.0f}") - 4))  # at most 7 characters up to 9,999,999 s
    arch = header.get("architecture", "centralized")
    title = (f"gcomp train: {header['workers']} workers, {arch}, {header['backend']}, {header['model']}, links "
             f"{_links_text(header)} ({'emulated' if emulated else 'link model'}), target accuracy "
             f"{header['target_accuracy']:.2f}")
    lines = textwrap.wrap(title, TABLE_WIDTH)
    named = any(run.get("architecture", "centralized") != "centralized" for run in runs)
    lines.append(f"{'run' if named else 'compressor':<{_NAME_WIDTH}} " + _cells([heading for heading, _ in _COLUMNS]))
    lines.append(f"{'':<{_NAME_WIDTH}} " + _cells(["%", f"{clock} s", "meas. s", "meas. s", f"{tag} s", "rest s",
                                                    f"{tag} s", "per wkr", "", "J"]))
    for run in runs:
        compute, compress, comm, other, total = _time_split(run, header, decimals)
        ratio = _ratio(run, header)
        to_target = run["time_to_target_s"]
        name = run_label(run)
        if len(name) > _NAME_WIDTH:
            lines.extend(textwrap.wrap(name, TABLE_WIDTH, break_on_hyphens=False))
            name = ""
        lines.append(f"{name:<{_NAME_WIDTH}} " + _cells([
            f"{100 * run['final_accuracy']:.1f}%",
            "not reached" if to_target is None else f"{to_target:.{decimals}f}",
            f"{compute:.{decimals}f}",
            "-" if compress is None else f"{compress:.{decimals}f}",
            f"{comm:.{decimals}f}",
            f"{other:.{decimals}f}",
            f"{total:.{decimals}f}",
            f"{run['bytes_sent_per_worker_per_step'] / 1024:.1f}",
            "-" if ratio is None else f"{ratio:.{1 if ratio < 100 else 0}f}",
            f"{run['energy_joules_total']:.{1 if run['energy_joules_total'] < 1000 else 0}f}",
        ]))
    lines.append("")
    for paragraph in _legend(header, runs):
        lines.extend(textwrap.wrap(paragraph, TABLE_WIDTH))
    return "\n".join(lines)


# -- federated runs (gcomp.train.federated) ---------------------------------------------------------


def _federated_title(header):
    return (f"{header['model']} on {header.get('dataset', 'digits')}, federated: {header['clients']} clients, "
            f"{header['fraction']:g} per round, {header['partition']}, {header['local_epochs']} local epoch(s)")


def federated_figures(results):
    """``{file name: Figure}`` of a federated run: test accuracy against rounds and against uplink MB (all clients).

    One point per round, after its aggregation (the initial model's accuracy is in results.json); the uplink
    axis is cumulative and logarithmic.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    header, runs = results["header"], results["runs"]
    styles = _line_styles(runs)
    target = header["target_accuracy"]
    lowest = min([target] + [ep["accuracy"] for run in runs for ep in run["epochs"]])
    panels = (
        ("accuracy_vs_rounds.png", "round", lambda run: [ep["round"] for ep in run["epochs"]],
         lambda run: [ep["accuracy"] for ep in run["epochs"]], False),
        ("accuracy_vs_uplink.png", "uplink MB, all clients, cumulative (the payloads Flower carried)",
         lambda run: _cumulative([ep["uplink_bytes"] / 1e6 for ep in run["epochs"]]),
         lambda run: [ep["accuracy"] for ep in run["epochs"]], True),
    )
    figures = {}
    for name, xlabel, xfn, yfn, log_axis in panels:
        fig = Figure(figsize=(8.4, 4.4), dpi=110)
        ax = fig.add_subplot()
        series = [xfn(run) for run in runs]
        for i, (run, xs) in enumerate(zip(runs, series, strict=True)):
            marker, linestyle = styles[i]
            ax.plot(xs, yfn(run), label=run_label(run), color=f"C{i % 10}", marker=marker, markersize=4,
                    markerfacecolor="none", linestyle=linestyle, linewidth=1.3 if run["kind"] == "baseline" else 1.8)
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label=f"target {target:.2f}")
        if log_axis and _log_scale(series, always=True):
            ax.set_xscale("log")
            _plain_log_ticks(ax)
            xlabel += ", log scale"
        elif not log_axis:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel("test accuracy of the global model")
        ax.set_ylim(max(0.0, int(20 * lowest - 0.5) / 20), 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.set_title(_federated_title(header), fontsize=9)
        fig.tight_layout()
        figures[name] = fig
    return figures


def _cumulative(values):
    total, out = 0.0, []
    for v in values:
        total += v
        out.append(total)
    return out


_FED_COLUMNS = (("final acc", 9), ("rounds to", 9), ("MB up to", 9), ("MB up", 8), ("KB/client", 9), ("ratio", 6),
                ("time", 8), ("dropped", 7), ("energy", 7))


def federated_table(results) -> str:
    """The end of a federated ``gcomp train``: one row per compressor, at most 100 characters wide, and a legend."""
    header, runs = results["header"], results["runs"]
    lines = textwrap.wrap(f"gcomp train: {_federated_title(header)}, {header['rounds']} rounds, links "
                          f"{_links_text(header)} (link model), target accuracy {header['target_accuracy']:.2f}",
                          TABLE_WIDTH)

    def cells(texts):
        return " ".join(f"{text:>{width}}" for text, (_, width) in zip(texts, _FED_COLUMNS, strict=True))

    lines.append(f"{'compressor':<{_NAME_WIDTH}} " + cells([h for h, _ in _FED_COLUMNS]))
    lines.append(f"{'':<{_NAME_WIDTH}} " + cells(["%", "target", "target", "total", "/round", "", "model s", "",
                                                   "J"]))
    for run in runs:
        name = run_label(run)
        if len(name) > _NAME_WIDTH:
            lines.extend(textwrap.wrap(name, TABLE_WIDTH, break_on_hyphens=False))
            name = ""
        ratio = run["compression_ratio"]
        lines.append(f"{name:<{_NAME_WIDTH}} " + cells([
            f"{100 * run['final_accuracy']:.1f}%",
            "-" if run["rounds_to_target"] is None else str(run["rounds_to_target"]),
            "-" if run["uplink_mb_to_target"] is None else f"{run['uplink_mb_to_target']:.2f}",
            f"{run['uplink_bytes_total'] / 1e6:.2f}",
            f"{run['uplink_bytes_per_client_per_round'] / 1024:.1f}",
            "-" if ratio is None else f"{ratio:.{1 if ratio < 100 else 0}f}",
            f"{run['modelled_s']:.1f}",
            str(run["dropped_total"]),
            f"{run['energy_joules_total']:.{1 if run['energy_joules_total'] < 1000 else 0}f}",
        ]))
    lines.append("")
    legend = ("rounds to / MB up to target: the first round whose global model reaches the target accuracy on the "
              "test split, and the uplink megabytes all clients sent until then (- : not reached).  MB up: the "
              "array payloads of every training reply Flower carried (gcomp packets; dense float32 for none).  "
              "KB/client/round: per sampled client per round.  ratio: dense model bytes / KB/client/round.  time: "
              "modelled, per round the slowest sampled client's measured local training plus its bytes down and up "
              "through its own link.  dropped: replies the server rejected.  energy: modelled (docs/energy.md).")
    lines.extend(textwrap.wrap(legend, TABLE_WIDTH))
    return "\n".join(lines)
