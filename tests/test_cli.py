"""The ``gcomp`` command line: ``gcomp list [NAME ...]`` and Ctrl-C during ``gcomp train`` / ``gcomp emulate``."""

import signal
import subprocess
import sys
import textwrap

import pytest

import gcomp
from gcomp.cli import build_parser, main
from gcomp.compressors import REGISTRY

#: a value for each required parameter, to build an instance to compare with
REQUIRED = {"threshold": {"tau": 1.0}}


def _run(*argv):
    """``python -m gcomp.cli ARGV`` in a fresh interpreter: (exit status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "gcomp.cli", *argv], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


# ----------------------------------------------------------------------------
# gcomp list
# ----------------------------------------------------------------------------
def test_list_columns_are_true(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["name", "feedback", "description"]
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        name, feedback, description = line.split(None, 2)
        rows[name] = (feedback, description)
    assert set(rows) == set(gcomp.list_compressors())
    for name, (feedback, description) in rows.items():
        comp = gcomp.compressor(name, **REQUIRED.get(name, {}))
        assert feedback == comp.default_feedback, name
        assert description == comp.description
    assert rows["threshold"][0] == "residual"  # listed although tau is required
    assert "gcomp list NAME" in out
    assert "torch-fp16" in out and "torch-powersgd" in out  # named as gcomp train baselines, not as compressors


def test_list_name_shows_parameters_defaults_ranges_and_properties(capsys):
    assert main(["list", "topk"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"topk: {REGISTRY['topk'].description}\n")
    row = next(line for line in out.splitlines() if line.split()[:1] == ["ratio"])
    assert row.split()[:4] == ["ratio", "float", "0.01", "(0,"] and "(0, 1]" in row and "density" in row
    assert "error feedback by default: residual" in out
    assert "unbiased: no" in out and "linear (summable on the wire): no" in out
    assert "wire codec id: 4" in out


def test_list_name_says_which_parameters_change_the_properties(capsys):
    assert main(["list", "randomk"]) == 0
    out = capsys.readouterr().out
    assert "error feedback by default: none (residual with rescale=false)" in out
    assert "unbiased: yes (no with rescale=false)" in out
    assert "linear (summable on the wire): yes" in out
    for key, kind, default in (("ratio", "float", "0.01"), ("rescale", "bool", "true"), ("seed", "int", "0")):
        row = next(line for line in out.splitlines() if line.split()[:1] == [key])
        assert row.split()[1:3] == [kind, default]


def test_list_threshold_shows_tau_required_and_how_to_choose_it(capsys):
    assert main(["list", "threshold"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.split()[:1] == ["tau"])
    assert row.split()[1:4] == ["float", "required", ">="]
    assert "tau is required:" in out and "quantile" in out


def test_list_several_names_and_every_name(capsys):
    names = sorted(gcomp.list_compressors())
    assert main(["list", *names]) == 0
    out = capsys.readouterr().out
    for name in names:
        assert f"\n{name}: " in f"\n{out}"
        for key in REGISTRY[name].params:
            assert any(line.split()[:1] == [key] for line in out.splitlines()), (name, key)
    assert main(["list", "uniform"]) == 0
    assert "one of maxmin, absmax" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["topkk", "torch-fp16", "topk:ratio=0.1"])
def test_list_unknown_name_is_one_line_and_exit_2(name, capsys):
    assert main(["list", "topk", name]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing printed for the valid name before the refusal
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gcomp list: unknown compressor {name!r}")
    assert "known compressors: " in lines[0] and all(n in lines[0] for n in gcomp.list_compressors())
    if name == "torch-fp16":
        assert "torch DDP baseline of gcomp train, not a gcomp compressor" in lines[0]


def test_registry_error_lists_only_gcomp_compressors():
    with pytest.raises(gcomp.errors.ConfigError) as info:
        gcomp.compressor("torch-powersgd")
    known = str(info.value).split("known compressors: ")[1].split(", ")
    assert sorted(known) == sorted(REGISTRY) and "torch-fp16" not in str(info.value)


def test_list_in_a_fresh_process():
    rc, out, err = _run("list", "qsgd")
    assert rc == 0 and out.startswith("qsgd: ") and "levels" in out and err == ""
    rc, out, err = _run("list", "nosuch")
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and "Traceback" not in err


def test_help_describes_list_names():
    text = build_parser().format_help()
    assert "show NAME's parameters" in text
    rc, out, _ = _run("list", "--help")
    assert rc == 0 and "NAME" in out and "allowed values" in " ".join(out.split())  # argparse wraps lines


# ----------------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------------
def test_ctrl_c_during_train_prints_one_line(monkeypatch, tmp_path, capsys):
    import gcomp.train

    def interrupted(opts):
        raise KeyboardInterrupt

    monkeypatch.setattr(gcomp.train, "train", interrupted)
    assert main(["train", "--quiet", "--out", str(tmp_path)]) == 130
    captured = capsys.readouterr()
    assert captured.err == "gcomp train: interrupted\n"


def test_an_interrupt_that_names_its_signal(monkeypatch, tmp_path, capsys):
    """gcomp.train raises a KeyboardInterrupt carrying ``signum`` for SIGTERM/SIGHUP: 128 + that signal."""
    import gcomp.train

    class Terminated(KeyboardInterrupt):
        signum = signal.SIGTERM

    def terminated(opts):
        raise Terminated

    monkeypatch.setattr(gcomp.train, "train", terminated)
    assert main(["train", "--quiet", "--out", str(tmp_path)]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "gcomp train: interrupted by SIGTERM\n"


def test_ctrl_c_during_emulate_prints_one_line(monkeypatch, capsys):
    emulate = pytest.importorskip("gcomp.train.emulate")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(emulate, "cmd_emulate", interrupted)
    assert main(["emulate", "--workers", "1", "--", "true"]) == 130
    assert capsys.readouterr().err == "gcomp emulate: interrupted\n"


def test_real_sigint_during_train_in_a_fresh_process(tmp_path):
    """SIGINT delivered to the process while train runs: exit 130 and one line on stderr, no traceback."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        import gcomp.train
        from gcomp.cli import main

        def train(opts):
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
            time.sleep(60)                       # interrupted by the signal, never completed
            raise AssertionError("SIGINT did not interrupt")

        gcomp.train.train = train
        sys.exit(main(["train", "--quiet", "--out", {str(tmp_path)!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "gcomp train: interrupted\n"
