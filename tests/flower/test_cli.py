"""gcomp train --architecture federated: options are checked before Flower starts, with one-line errors."""

import pytest

from gcomp.cli import main


@pytest.mark.parametrize("extra, message", [
    (["--clients", "1"], "expected 2 to 200 --clients"),
    (["--fraction", "0"], "expected --fraction in (0, 1]"),
    (["--fraction", "1.5"], "expected --fraction in (0, 1]"),
    (["--rounds", "0"], "expected at least one --rounds"),
    (["--local-epochs", "0"], "expected --local-epochs >= 1"),
    (["--non-iid", "-1"], "expected --non-iid ALPHA > 0"),
    (["--compressor", "torch-fp16"], "torch's DDP hooks do not apply"),
    (["--compressor", "nosuch"], "unknown compressor"),
    (["--error-feedback", "ef21"], "expected --error-feedback auto, residual or none"),
    (["--local-dp", "clip=0,epsilon=1"], "expected clip > 0"),
    (["--local-dp", "epsilon=1"], "expected --local-dp to give clip"),
    (["--local-dp", "clip=1,eps=1"], "expected --local-dp clip=C,epsilon=E"),
    (["--downlink", "nosuch"], "--downlink nosuch"),
    (["--emulate"], "--emulate is not available"),
    (["--dataset", "mnist1d", "--model", "cnn"], "cnn takes 8x8 digit images"),
    (["--link", "20mbit,5mbit"], "expected 1 or 20 link specs"),
])
def test_bad_federated_options_fail_before_starting(extra, message, capsys, tmp_path):
    rc = main(["train", "--architecture", "federated", "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
