"""``gcomp train``'s launcher on the shared supervisor: a failing or hanging run becomes a RuntimeError that says why."""

import os
import time

import pytest

from gcomp.train import runner
from gcomp.train.links import parse_links


class _NoProgress:
    def update(self, done, acc):
        raise AssertionError("no progress expected")


def _opts(**kw):
    return runner.TrainOptions(workers=2, progress=False, plots=False, **kw)


def test_failed_workers_are_reported_with_their_output(tmp_path):
    opts = _opts(timeout=120)
    cfg = {"compressor": "none", "run_dir": str(tmp_path)}  # no "seed", "model", ...: every worker fails
    with pytest.raises(RuntimeError) as info:
        runner._launch(opts, cfg, os.path.join(tmp_path, "config.json"), parse_links("20mbit", 2), _NoProgress())
    msg = str(info.value)
    assert msg.startswith("run 'none' failed on worker(s) [0, 1]:")
    assert "--- worker 0 (exit 1) ---" in msg and "--- worker 1 (exit 1) ---" in msg
    assert "Error" in msg  # the workers' tracebacks


def test_timeout(tmp_path, monkeypatch):
    # Workers that never finish and print nothing: the supervisor kills them at the timeout.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setattr(runner.sys, "executable", str(fake))
    opts = _opts(timeout=1)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"^run 'none' exceeded the 1 s timeout$"):
        runner._launch(opts, {"compressor": "none"}, os.path.join(tmp_path, "config.json"), parse_links("20mbit", 2),
                       _NoProgress())
    assert time.monotonic() - t0 < 10
