"""Issue 10 item 14: ``gcomp emulate --cleanup-stale`` works alone, and bad options are refused at parse time."""

import subprocess
import sys

import pytest

from gcomp.cli import main
from gcomp.train.emulate import can_emulate, list_namespaces
from gcomp.train.netns import tbf_params


@pytest.mark.parametrize("argv, fragment", [
    (["--master-port", "70000"], "master-port"),
    (["--master-port", "0"], "master-port"),
    (["--subnet", "127.0.0.0/24"], "loopback"),
    (["--subnet", "169.254.0.0/24"], "link-local"),
    (["--subnet", "not-a-subnet"], "subnet"),
    (["--subnet", "10.0.0.0/31", "--workers", "2"], "room"),
    (["--link", "1bit"], "tc tbf"),
    (["--link", "100gbit"], "tc tbf"),
])
def test_bad_options_are_refused_before_anything_runs(argv, fragment, capsys):
    assert main(["emulate", *argv, "--", sys.executable, "-c", "raise SystemExit(3)"]) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("rate", [1e3, 20e6, 1e10])
def test_rates_tc_can_shape_are_accepted(rate):
    assert tbf_params(rate)["rate_bps"] == int(rate)


@pytest.mark.skipif(not can_emulate()[0], reason=f"cannot emulate here: {can_emulate()[1]}")
def test_cleanup_stale_alone_removes_what_a_killed_run_left():
    # a pid that is not alive: find one above the current maximum
    with open("/proc/sys/kernel/pid_max") as f:
        dead = int(f.read()) + 1
    stale = f"gcomp-{dead}-0-w0"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        out = subprocess.run([sys.executable, "-m", "gcomp.cli", "emulate", "--cleanup-stale"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert stale in out.stderr
        assert stale not in list_namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
