"""A third-party compressor works everywhere after one file and one registration, with no edit inside gcomp.

``blockk.py`` (beside this file) is the whole plugin: a class with its wire
codec (id 200) and hypothesis strategy, and ``gcomp.register(BlockK)``.  Here
it goes through the registry, the wire format, the property battery, the
``gcomp.compressors`` entry point route (a second plugin, codec id 201, found
through a fake installed distribution), the DDP hook on a 3-rank gloo group,
and gcomp.mpi under ``mpiexec -n 3``.

The plugin is imported (so registered) by the ``blockk`` fixture, not at
collection, and unregistered after this module: other test modules see gcomp's
own registry whatever the order they run in (several parametrize over it at
collection, and tests/wire uses codec id 200 as an unknown id).
"""

import os
import struct
import sys

import numpy as np
import pytest
from ddp.launch import batch, digest, launch, make_model, train_step
from hypothesis import given, settings
from hypothesis import strategies as st
from mpi.launch import assert_check, assert_clean, run_mpi

import gcomp
import gcomp.compressors as compressors
import gcomp.testing
from gcomp import wire
from gcomp.compressors import Codec
from gcomp.compressors.codec import sparse_values
from gcomp.errors import ChecksumError, ConfigError, SizeError, WireFormatError

HERE = os.path.dirname(os.path.abspath(__file__))
COUNT_OFFSET, SEED_OFFSET = 20, 36  # header fields (gcomp/wire.py)


@pytest.fixture(scope="module")
def blockk():
    """The plugin module, registered for this module's tests (importing it registers "blockk")."""
    from . import blockk

    gcomp.register(blockk.BlockK)  # a no-op after the import; registers again if the module was imported earlier
    yield blockk
    if compressors.REGISTRY.get("blockk") is blockk.BlockK:
        del compressors.REGISTRY["blockk"]
        del compressors._BY_CODEC_ID[200]


@pytest.fixture
def registry(monkeypatch, blockk):
    """Private copies of the registry dicts: whatever a test registers is gone afterwards."""
    monkeypatch.setattr(compressors, "REGISTRY", dict(compressors.REGISTRY))
    monkeypatch.setattr(compressors, "_BY_CODEC_ID", dict(compressors._BY_CODEC_ID))


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# -- registration ------------------------------------------------------------------
def test_registered_by_name_everywhere(blockk):
    comp = gcomp.compressor("blockk:ratio=0.05")
    assert type(comp) is blockk.BlockK and comp.get_config() == {"name": "blockk", "ratio": 0.05, "seed": 0}
    assert gcomp.compressor(comp.get_config()) == comp
    assert gcomp.list_compressors()["blockk"] == blockk.BlockK.description
    assert wire.CODECS["blockk"].codec_id == 200 and compressors.codec_by_id(200) is blockk.BlockK
    assert gcomp.register(blockk.BlockK) is blockk.BlockK  # registering the same class again is a no-op


@pytest.mark.parametrize("codec_id", [200, 0, 6, 127, 255])
def test_codec_id_taken_or_out_of_range_raises(blockk, registry, codec_id):
    class Other(blockk.BlockK):
        name = "other"
        codec = Codec(codec_id, sparse_values, regenerate_indices=blockk.block_indices)

    with pytest.raises(ConfigError, match="already used" if codec_id == 200 else r"\[128, 254\]"):
        gcomp.register(Other)
    assert "other" not in compressors.REGISTRY and compressors.codec_by_id(200) is blockk.BlockK


def test_name_taken_raises(blockk, registry):
    class Impostor(blockk.BlockK):
        codec = Codec(202, sparse_values, regenerate_indices=blockk.block_indices)

    with pytest.raises(ConfigError, match="already registered"):
        gcomp.register(Impostor)


# -- wire ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 7, 1000])
@pytest.mark.parametrize("zstd", [False, True])
def test_wire_round_trip(blockk, n, zstd):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    comp = blockk.BlockK(ratio=0.1, seed=5)
    c = comp.compress(x, step=3, key="w")
    buf = wire.encode(c, zstd=zstd)
    assert buf[6] == 200
    if not zstd:
        assert len(buf) == wire.HEADER_SIZE + 4 * comp.k(n)  # only the values travel
    d = wire.decode(buf, expected_numel=n)
    assert (d.codec, d.numel, d.count, d.seed) == ("blockk", n, comp.k(n), comp.seed_for(3, "w"))
    np.testing.assert_array_equal(d.arrays["indices"], c.arrays["indices"])
    assert np.array_equal(bits(d.arrays["values"]), bits(c.arrays["values"]))
    assert np.array_equal(bits(blockk.BlockK().decompress(d)), bits(comp.decompress(c)))


@pytest.mark.parametrize(("offset", "value", "error"), [(COUNT_OFFSET, 101, SizeError), (COUNT_OFFSET, 9, SizeError),
                                                     (SEED_OFFSET, 12345, ChecksumError)],
                         ids=["count-above-numel", "count-not-matching-payload", "seed-of-another-block"])
def test_hostile_header_raises(blockk, offset, value, error):
    buf = bytearray(wire.encode(blockk.BlockK(ratio=0.1).compress(np.ones(100, np.float32), step=1)))
    struct.pack_into("<Q", buf, offset, value)
    with pytest.raises(error):
        wire.decode(bytes(buf))


def test_truncated_or_padded_packets_raise(blockk):
    good = wire.encode(blockk.BlockK(ratio=0.1).compress(np.ones(100, np.float32), step=1))
    for cut in range(len(good)):
        with pytest.raises(WireFormatError):
            wire.decode(good[:cut])
    with pytest.raises(WireFormatError):
        wire.decode(good + b"\0")


# -- property battery ------------------------------------------------------------------
def test_property_battery(blockk):
    report = gcomp.testing.check_compressor(blockk.BlockK(ratio=0.1))
    passed = "\n".join(report.passed)
    assert "wire round trip" in passed and "linearity" in passed and "bit flip" in passed
    assert "unbiasedness (not declared)" in report.skipped


@settings(max_examples=25)
@given(data=st.data())
def test_drawn_configs_are_valid(blockk, data):
    config = data.draw(gcomp.testing.compressor_configs(["blockk"]))
    x = data.draw(gcomp.testing.gradients(max_size=300))
    comp = gcomp.compressor(config)
    assert comp.get_config() == config
    c = comp.compress(x, step=2, key=1)
    idx = blockk.block_indices(x.size, comp.k(x.size), comp.seed_for(2, 1))
    np.testing.assert_array_equal(c.arrays["indices"], idx)
    want = np.zeros_like(x)
    want[idx] = x[idx]
    got = gcomp.compressor(config).decompress(wire.decode(wire.encode(c)))
    assert np.array_equal(bits(got), bits(want))


# -- the entry point route ----------------------------------------------------------------
PLUGIN_MODULE = "fake_gcomp_plugin_blockk2"
PLUGIN_SOURCE = '''
import numpy as np

from gcomp.compressors import Codec, Compressed, Compressor
from gcomp.compressors.codec import F16


class Half(Compressor):
    name = "blockk2"
    description = "float16 values (an entry point plugin)"
    codec = Codec(201, lambda numel, count, params: [("values", F16, numel)])

    def max_payload_bytes(self, numel):
        return 2 * numel

    def _compress(self, x, *, step, seed):
        return Compressed(self.name, x.shape[0], "float32", {"values": x.astype(np.float16)})

    def _decompress(self, c):
        return c.arrays["values"].astype(np.float32)
'''


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch, registry):
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    info = tmp_path / "fake_gcomp_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-gcomp-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[gcomp.compressors]\nblockk2 = {PLUGIN_MODULE}:Half\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(compressors, "_plugins_loaded", False)
    yield
    sys.modules.pop(PLUGIN_MODULE, None)


def test_entry_point_plugin(fake_distribution, monkeypatch):
    assert "blockk2" not in compressors.REGISTRY
    comp = gcomp.compressor("blockk2")  # an unknown name loads the entry points
    assert type(comp).__module__ == PLUGIN_MODULE and "blockk2" in gcomp.list_compressors()
    x = np.linspace(-2, 2, 33, dtype=np.float32)
    buf = wire.encode(comp.compress(x))
    assert buf[6] == 201 and wire.CODECS["blockk2"].codec_id == 201
    want = bits(x.astype(np.float16).astype(np.float32))
    assert np.array_equal(bits(comp.decompress(wire.decode(buf))), want)
    # a receiver that never built the compressor: an unknown codec id loads the entry points too
    monkeypatch.setattr(compressors, "REGISTRY", {k: v for k, v in compressors.REGISTRY.items() if k != "blockk2"})
    monkeypatch.setattr(compressors, "_BY_CODEC_ID", {k: v for k, v in compressors._BY_CODEC_ID.items() if k != 201})
    monkeypatch.setattr(compressors, "_plugins_loaded", False)
    d = wire.decode(buf)
    assert np.array_equal(bits(gcomp.compressor("blockk2").decompress(d)), want)


def test_entry_point_plugin_left_no_trace():
    assert "blockk2" not in compressors.REGISTRY and compressors.codec_by_id(201) is None


# -- the DDP hook on a real 3-rank gloo group -------------------------------------------------
#: algorithm asked for -> algorithm the stats must show ("auto" picks allreduce for a linear compressor)
DDP_ALGORITHMS = {"allgather": "allgather", "scatter-reduce-allgather": "scatter-reduce-allgather", "auto": "allreduce"}


def ddp_worker(rank, world_size, steps):
    """Top level, so spawned ranks can import it."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    import gcomp.ddp

    from . import blockk  # noqa: F401  (a fresh rank: importing the plugin registers "blockk")

    out = {}
    for algorithm in DDP_ALGORITHMS:
        model = make_model(seed=0)
        ddp = DDP(model)
        state = gcomp.ddp.register(ddp, "blockk:ratio=0.1", algorithm=algorithm, start_iter=0, min_numel=0)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        start = digest(model)
        for step in range(steps):
            train_step(ddp, opt, *batch(rank, step))
        state.wait()
        out[algorithm] = {"start": start, "end": digest(model), "algorithms": sorted({s.algorithm for s in state.stats}),
                          "compressor": type(state.compressor).__qualname__}
        state.close()
    return out


@pytest.mark.slow
def test_ddp_hook_trains_identically_on_every_rank():
    results = launch(ddp_worker, 3, 4, timeout=180)
    for algorithm, used in DDP_ALGORITHMS.items():
        per_rank = [r[algorithm] for r in results]
        assert {r["end"] for r in per_rank} == {per_rank[0]["end"]}, f"{algorithm}: ranks ended with different parameters"
        assert per_rank[0]["end"] != per_rank[0]["start"], f"{algorithm}: the parameters did not change"
        assert all(r["algorithms"] == [used] and r["compressor"] == "BlockK" for r in per_rank), (algorithm, per_rank)


# -- gcomp.mpi under mpiexec -n 3 ----------------------------------------------------------------
MPI_ALGORITHMS = ["allreduce", "allgather", "scatter-reduce-allgather"]


@pytest.fixture(scope="module")
def mpi_job():
    pytest.importorskip("mpi4py")
    return run_mpi(os.path.join(HERE, "scripts", "thirdparty_mpi.py"), 3, timeout=240)


@pytest.mark.slow
def test_mpi_job_completes(mpi_job):
    assert_clean(mpi_job, 3)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", MPI_ALGORITHMS)
def test_mpi_allreduce_matches_reference(mpi_job, algorithm):
    assert_check(mpi_job, f"blockk/{algorithm}", 3)
