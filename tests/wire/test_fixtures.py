"""The frozen wire fixtures in tests/fixtures/wire/v1 decode bit-identically, forever.

Each ``<name>.bin`` was written by tests/fixtures/wire/make_fixtures.py with
wire version 1.0.  Every later gcomp that reads major 1 must

* decode it (``gcomp.wire.decode``) without error,
* decompress it to exactly the bits of ``<name>.expected.npy``,
* re-encode the decoded ``Compressed`` to exactly the same bytes.

A failure here is a wire-format break, not a fixture to regenerate
(docs/wire-format.md, "Versioning").
"""

import json
from pathlib import Path

import numpy as np
import pytest

import gcomp
from gcomp import wire

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "wire" / "v1"
MANIFEST = json.loads((FIXTURE_DIR / "manifest.json").read_text())
BY_NAME = {entry["name"]: entry for entry in MANIFEST}
NAMES = sorted(BY_NAME)


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.dtype, a.shape, a.view(np.uint8).tobytes()


def _as_numpy(dense):
    """Decompressed output as numpy (a bfloat16 tensor becomes its exact float32, as the fixtures store it)."""
    if isinstance(dense, np.ndarray):
        return dense
    return dense.float().numpy()


def _load(name):
    packet = (FIXTURE_DIR / f"{name}.bin").read_bytes()
    expected = np.load(FIXTURE_DIR / f"{name}.expected.npy", allow_pickle=False)
    return packet, expected


def test_fixture_set_is_complete():
    files = {p.name for p in FIXTURE_DIR.iterdir()}
    want = {"manifest.json"} | {f"{n}.bin" for n in NAMES} | {f"{n}.expected.npy" for n in NAMES}
    assert files == want, f"unexpected or missing fixture files: {sorted(files ^ want)}"
    assert {e["codec"] for e in MANIFEST} >= {"none", "fp16", "bf16", "topk", "dgc", "randomk", "threshold", "qsgd",
                                              "uniform", "sign", "terngrad", "natural", "powersgd"}
    flags = {e["flags"] for e in MANIFEST}
    assert {0, 1, 2, 3} <= flags, "fixtures must cover plain, zstd, bitmap and zstd+bitmap packets"
    total = sum(p.stat().st_size for p in FIXTURE_DIR.iterdir())
    assert total < 300_000


def test_every_registered_builtin_codec_has_a_fixture():
    covered = {e["codec"] for e in MANIFEST}
    builtin = {name for name, codec in wire.CODECS.items() if codec.codec_id < 128}
    assert builtin <= covered, f"codecs without a v1 fixture: {sorted(builtin - covered)}"


@pytest.mark.parametrize("name", NAMES)
def test_fixture_decodes_bit_identically(name):
    entry = BY_NAME[name]
    packet, expected = _load(name)
    assert len(packet) == entry["packet_bytes"]
    c = wire.decode(packet)
    assert c.codec == entry["codec"]
    assert c.numel == entry["numel"]
    assert c.count == entry["count"]
    assert c.params == entry["params"]
    assert c.dtype == entry["dtype"]
    assert wire.peek(packet).flags == entry["flags"]
    # decompression with the compressor as the sender configured it
    dense = _as_numpy(gcomp.compressor(entry["config"]).decompress(c))
    assert str(dense.dtype) == entry["expected_dtype"] == str(expected.dtype)
    assert _bits(dense) == _bits(expected)
    # re-encoding gives the identical bytes (the format has one byte string per packet)
    assert wire.encode(c, zstd=entry["zstd"]) == packet


#: parameters a compressor cannot be built without, though decoding does not read them: deliberately not the
#: fixtures' values (threshold's tau is required because no default suits every gradient scale)
BUILD_ONLY = {"threshold": {"tau": 123.0}}


@pytest.mark.parametrize("name", NAMES)
def test_fixture_decompresses_with_the_codec_name_alone(name):
    """A receiver needs only the packet: ``gcomp.compressor(<codec name>)`` reads every parameter from it."""
    packet, expected = _load(name)
    c = wire.decode(packet)
    dense = _as_numpy(gcomp.compressor(c.codec, **BUILD_ONLY.get(c.codec, {})).decompress(c))
    assert _bits(dense) == _bits(expected)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_decodes_from_every_buffer_type(name):
    packet, _ = _load(name)
    ref = wire.decode(packet)
    for buf in (bytearray(packet), memoryview(packet), np.frombuffer(packet, dtype=np.uint8)):
        c = wire.decode(buf, expected_numel=ref.numel)
        assert wire.encode(c, zstd=BY_NAME[name]["zstd"]) == packet


def test_make_fixtures_refuses_to_overwrite(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURE_DIR.parent / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # the frozen directory itself is refused without --force
    assert mod.main(["--out", str(FIXTURE_DIR)]) == 1
    # a fresh directory is written once, then refused; the same script reproduces the frozen packets' decodings
    assert mod.main(["--out", str(tmp_path)]) == 0
    assert mod.main(["--out", str(tmp_path)]) == 1
    for name in NAMES:
        fresh = np.load(tmp_path / f"{name}.expected.npy", allow_pickle=False)
        c = wire.decode((tmp_path / f"{name}.bin").read_bytes())
        assert c.codec == BY_NAME[name]["codec"] and fresh.shape == (BY_NAME[name]["numel"],)
