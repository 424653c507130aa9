"""Plots for ``gcomp train``: accuracy against time and against bytes sent (matplotlib, PNG)."""

import os

__all__ = ["plot_results"]


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
