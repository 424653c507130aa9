"""What ``gcomp train`` shows: the summary table and the plots (accuracy against time and against bytes sent)."""

import os

__all__ = ["plot_results", "summary_table"]


def plot_results(results, out_dir):
    """Write accuracy_vs_time.png and accuracy_vs_bytes.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    emulated = results["header"]["emulated"]
    clock = "measured_wall_s" if emulated else "modelled_s"
    target = results["header"]["target_accuracy"]
    paths = []
    for name, xlabel, xfn in (
        ("accuracy_vs_time.png", f"{'measured' if emulated else 'modelled'} wall-clock time (s)", lambda ep: ep[clock]),
        ("accuracy_vs_bytes.png", "MB sent per worker", lambda ep: sum(ep["bytes_sent_per_worker"]) / len(
            ep["bytes_sent_per_worker"]) / 1e6),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        for run in results["runs"]:
            xs = [0.0] + [xfn(ep) for ep in run["epochs"]]
            ys = [0.1] + [ep["accuracy"] for ep in run["epochs"]]
            ax.plot(xs, ys, marker="o", markersize=3, label=run["compressor"],
                    linestyle="--" if run["kind"] == "baseline" else "-")
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label=f"target {target:.2f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        if name == "accuracy_vs_bytes.png":
            ax.set_xscale("symlog", linthresh=0.01)
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        h = results["header"]
        ax.set_title(f"{h['model']} on digits, {h['workers']} workers, {','.join(sorted(set(h['links'])))}", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def summary_table(results) -> str:
    """A fixed-width table of the runs (the end of ``gcomp train``)."""
    h = results["header"]
    clock = "measured" if h["emulated"] else "modelled"
    lines = [f"gcomp train: {h['workers']} workers, {h['backend']}, {h['model']}, links {','.join(sorted(set(h['links'])))}"
             f"{' (emulated)' if h['emulated'] else ' (link model)'}, target accuracy {h['target_accuracy']:.2f}",
             f"{'compressor':<26} {'final acc':>9} {'to target':>10} {'total':>9} {'KB/step':>9} {'ratio':>7} "
             f"{'compute':>8} {'compress':>8} {'comm':>8} {'energy J':>9}",
             f"{'':<26} {'':>9} {clock + ' s':>10} {clock + ' s':>9} {'per wkr':>9} {'':>7} {'s':>8} {'s':>8} {'s':>8} {'total':>9}"]
    for r in results["runs"]:
        ttt = "not reached" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
        total = r["measured_wall_s"] if h["emulated"] else r["modelled_s"]
        split = r["time_split_s"]
        ratio = f"{r['compression_ratio']:.1f}" if r["compression_ratio"] else "-"
        lines.append(f"{r['compressor']:<26} {100 * r['final_accuracy']:>8.1f}% {ttt:>10} {total:>9.1f} "
                     f"{r['bytes_sent_per_worker_per_step'] / 1024:>9.1f} {ratio:>7} {split['compute']:>8.2f} "
                     f"{split['compression']:>8.2f} {split['communication']:>8.2f} {r['energy_joules_total']:>9.1f}")
    return "\n".join(lines)
