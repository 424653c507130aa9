"""`gcomp train --compressor adaptive`: the policy's record in results.json and its plot, adaptive_settings.png."""

import json

import pytest

from gcomp.adapt import AdaptivePolicy
from gcomp.cli import main
from gcomp.train import report

LADDER = [{"name": "none"}, {"name": "fp16"}, {"name": "uniform", "bits": 4}, {"name": "topk", "ratio": 0.01}]
NAMES = ["none", "fp16", "uniform:bits=4", "topk:ratio=0.01"]


def _decision(step, rung, target, switched, bandwidth):
    record = {"step": step, "setting": NAMES[rung], "rung": rung, "target": target, "switched": switched,
              "reason": "scripted"}
    if bandwidth is not None:
        record["bandwidth_Bps"] = bandwidth
    return record


def _summary():
    """A policy summary as AdaptivePolicy.summary() writes it: none -> topk at 5, -> uniform 4 at 25 (a probe)."""
    history = [
        _decision(5, 0, 3, True, 2.0e6),
        _decision(10, 3, 3, False, 0.4e6),
        _decision(15, 3, 3, False, None),  # a decision without measurements: no rate point
        _decision(20, 3, 3, False, 0.5e6),
        _decision(25, 3, 2, True, 0.6e6),
        _decision(30, 2, 2, False, 1.5e6),
    ]
    switches = [{"step": r["step"], "from": NAMES[r["rung"]], "to": NAMES[r["target"]], "reason": r["reason"]}
                for r in history if r["switched"]]
    config = {"name": "adaptive", "ladder": LADDER, "budget": 1.0, "every": 5, "dwell": 10, "margin": 0.8,
              "probe": 10, "start": 0}
    return {"config": config, "setting": "uniform:bits=4", "steps": 33, "switches": switches, "history": history}


def _results():
    epochs = [{"epoch": e, "accuracy": a, "measured_wall_s": 2.0 * e, "modelled_s": 2.0 * e,
               "bytes_sent_per_worker": [1e5 * e, 1e5 * e]} for e, a in enumerate((0.8, 0.9, 0.96), 1)]
    run = {"compressor": "adaptive", "kind": "gcomp", "epochs": epochs, "adaptive": _summary()}
    dense = {"compressor": "none", "kind": "baseline", "epochs": epochs}
    hybrid = {**run, "architecture": "hybrid"}
    header = {"workers": 2, "model": "mlp", "links": ["20mbit"], "emulated": False, "target_accuracy": 0.95}
    return {"header": header, "runs": [dense, run, hybrid]}


def test_series_come_from_the_history():
    data = report.adaptive_series(_summary())
    assert data["names"] == NAMES
    # the setting in force from each step on: the start, after each decision, until the last step
    assert data["steps"] == [0, 5, 10, 15, 20, 25, 30, 33]
    assert data["rungs"] == [0, 3, 3, 3, 3, 2, 2, 2]
    assert data["rate_steps"] == [5, 10, 20, 25, 30]
    assert data["rate_mbps"] == pytest.approx([2.0, 0.4, 0.5, 0.6, 1.5])
    assert data["switch_steps"] == [5, 25]


def test_names_of_unused_settings_come_from_the_ladder():
    summary = _summary()
    summary["config"]["ladder"] = [{"name": "none"}, {"name": "randk", "ratio": 0.1, "seed": 7}] + LADDER[1:]
    summary["history"] = summary["switches"] = []
    summary["setting"], summary["steps"] = "none", 4
    data = report.adaptive_series(summary)
    assert data["names"][:2] == ["none", "randk:ratio=0.1"]
    assert (data["steps"], data["rungs"], data["rate_steps"]) == ([0, 4], [0, 0], [])


def test_unused_settings_of_the_default_ladder_get_the_policys_names():
    policy = AdaptivePolicy()
    summary = {**policy.summary(), "steps": 3}
    assert report.adaptive_series(summary)["names"] == policy.names


def test_the_plot_is_written_one_panel_per_adaptive_run(tmp_path):
    results = _results()
    figures = report.build_figures(results)
    assert "adaptive_settings.png" in figures
    fig = figures["adaptive_settings.png"]
    settings = [ax for ax in fig.axes if ax.get_ylabel().startswith("setting")]
    assert [ax.get_title(loc="left").splitlines()[0] for ax in settings] == ["adaptive", "hybrid/adaptive"]
    line = settings[0].get_lines()[0]
    assert list(line.get_xdata()) == [0, 5, 10, 15, 20, 25, 30, 33]
    assert list(line.get_ydata()) == [0, 3, 3, 3, 3, 2, 2, 2]
    assert [t.get_text() for t in settings[0].get_yticklabels()] == NAMES
    rates = [ax for ax in fig.axes if ax.get_ylabel().startswith("bottleneck")]
    assert len(rates) == 2
    assert list(rates[0].get_lines()[0].get_ydata()) == pytest.approx([2.0, 0.4, 0.5, 0.6, 1.5])
    paths = report.plot_results(results, tmp_path)
    assert str(tmp_path / "adaptive_settings.png") in paths
    with open(tmp_path / "adaptive_settings.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_no_plot_without_an_adaptive_run():
    results = _results()
    results["runs"] = results["runs"][:1]
    assert "adaptive_settings.png" not in report.build_figures(results)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_short_adaptive_run_records_its_decisions(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["train", "--workers", "2", "--epochs", "1", "--hidden", "64", "--quiet", "--out", str(out),
                 "--compressor", "adaptive:every=2,dwell=2,ladder=none;fp16;topk:ratio=0.01"])
    printed = capsys.readouterr().out
    assert code == 0
    with open(out / "results.json") as f:
        results = json.load(f)
    (run,) = results["runs"]
    summary = run["adaptive"]
    assert summary["config"]["every"] == 2 and len(summary["config"]["ladder"]) == 3
    # the policy counts the steps after the hook's dense warm-up (--start-iter, 1 for gcomp's hook)
    assert summary["steps"] == run["steps"] - 1
    # the first decision at step 2 (the first measured step), then every 2 steps, but one step after a probe
    steps = [h["step"] for h in summary["history"]]
    assert steps[0] == 2 and len(steps) >= summary["steps"] // 2 - 1
    for before, after in zip(summary["history"], steps[1:], strict=False):
        probe = before["switched"] and before["reason"].startswith("probe")
        assert after - before["step"] == (1 if probe else 2), steps
    # it starts at its floor, the ladder's last setting
    assert summary["history"][0]["setting"] == "topk:ratio=0.01" and summary["config"]["floor"] == 2
    assert any(h.get("bandwidth_Bps", 0) > 0 for h in summary["history"])
    for switch in summary["switches"]:
        assert switch["from"] != switch["to"] and switch["to"] in ("none", "fp16", "topk:ratio=0.01")
    assert run["ranks_agree"]
    assert (out / "adaptive_settings.png").is_file()
    assert "adaptive_settings.png" in printed


def test_titles_name_both_levels_of_a_group_layout():
    results = _results()
    results["header"]["layout"] = {"groups": [[0, 1], [2, 3]], "groups_spec": "0,1/2,3",
                                   "intra": ["1gbit"] * 4, "inter": ["20mbit"] * 2}
    results["header"]["links"] = ["1gbit"] * 4
    figures = report.build_figures(results)
    for name in ("accuracy_vs_time.png", "adaptive_settings.png"):
        text = figures[name].axes[0].get_title() + figures[name].get_suptitle()
        assert "groups 0,1/2,3: intra 1gbit, inter 20mbit" in text, (name, text)
