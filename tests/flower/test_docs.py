"""docs/federated.md: its first example builds and serves one round as written, and the page names what exists."""

import pathlib
import re

import numpy as np

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "federated.md"


def test_first_example_runs():
    from gcomp import wire
    from gcomp.flower.records import PACKET_KEY

    from ._helpers import context, train_message

    block = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    namespace = {}
    exec(compile(block, "docs/federated.md", "exec"), namespace)  # noqa: S102 - our own documentation
    model = [np.zeros((64, 10), np.float32), np.zeros(10, np.float32)]
    out = namespace["client"](train_message(model), context())
    packet = wire.decode(out.content["arrays"][PACKET_KEY].data)
    assert packet.codec == "topk" and packet.numel == 650


def test_named_api_exists():
    import gcomp.flower as gf
    import gcomp.flower.downlink as dl

    text = DOC.read_text()
    for name in ("compression_mod", "CompressionStrategy", "iid_partition", "dirichlet_partition", "label_histogram",
                 "bytes_per_round", "history"):
        assert name in text
        assert hasattr(gf, name) or hasattr(gf.CompressionStrategy, name) or name == "history", name
    for key in ("uplink_bytes", "downlink_bytes", "uplink_steps", "dropped", "dense_model_bytes"):
        assert key in text
    assert f'`{dl.CONFIG_KEY}`' in text and gf.PACKET_KEY in text and gf.PACKET_STYPE in text
