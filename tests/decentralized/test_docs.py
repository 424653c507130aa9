"""docs/decentralized.md: its first example runs as written, and the page names what exists."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "decentralized.md"


def test_first_example_runs():
    block = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    namespace = {}
    exec(compile(block, "docs/decentralized.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert len(namespace["results"]) == 4


def test_named_api_exists():
    import gcomp.decentralized as gd
    from gcomp.transports import Transport

    text = DOC.read_text()
    for name in ("spectral_summary", "consensus_distance", "state_dict", "bytes_by_peer", "neighbor_exchange",
                 "neighbor_post"):
        assert name in text
        assert hasattr(gd, name) or hasattr(gd.Gossip, name) or hasattr(Transport, name), name
