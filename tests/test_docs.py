"""The examples in docs/ and README run as written."""

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_testing_md_example_runs():
    block = python_blocks(DOCS / "testing.md")[0]
    namespace = {}
    exec(compile(block, "docs/testing.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["report"].passed


def test_testing_md_strategy_example_runs():
    block = python_blocks(DOCS / "testing.md")[1]
    namespace = {}
    exec(compile(block, "docs/testing.md", "exec"), namespace)  # noqa: S102
    namespace["test_roundtrip_size"]()


def test_cli_help_lists_commands():
    from gcomp.cli import build_parser

    text = build_parser().format_help()
    for command in ("info", "list", "train"):
        assert command in text


@pytest.mark.parametrize("argv", [["info"], ["list"]])
def test_cli_commands_run(argv, capsys):
    from gcomp.cli import main

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert ("numba" in out) if argv == ["info"] else ("topk" in out and "qsgd" in out)


def test_testing_md_blocks_run_as_written_outside_the_suite(tmp_path):
    """Every python block of docs/testing.md, in a fresh interpreter without tests/conftest.py's hypothesis profile
    (which sets deadline=None): what a reader who copies them gets.  Functions named test_* are called."""
    import subprocess
    import sys

    script = (
        "import re, sys\n"
        "blocks = re.findall(r'```python\\n(.*?)```', open(sys.argv[1]).read(), flags=re.S)\n"
        "assert len(blocks) >= 2, len(blocks)\n"
        "for i, block in enumerate(blocks):\n"
        "    ns = {}\n"
        "    exec(compile(block, f'docs/testing.md block {i}', 'exec'), ns)\n"
        "    for name, fn in list(ns.items()):\n"
        "        if name.startswith('test_') and callable(fn):\n"
        "            fn()\n"
        "print('ran', len(blocks))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(DOCS / "testing.md")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ran" in proc.stdout
