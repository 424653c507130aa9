"""The zstd stage with a valid CRC-32: frames of the wrong size, garbage, trailing data after the frame and
frames whose header claims a huge content size raise ``WireFormatError`` without allocating more than
``raw_len`` (docs/wire-format.md, section 5).
"""

import numpy as np
import pytest
import zstandard
from _header import HEADER_SIZE, ZSTD, fields_for, frame_with_content_size, header_fields, make_packet, rewrite
from _packets import LIMIT, _base, _peak_during, assert_valid

from gcomp import wire
from gcomp.errors import CodecError, SizeError, WireFormatError

pytestmark = pytest.mark.usefixtures("no_pickle")


def _zstd_packet(base_name, frame):
    return rewrite(_base(base_name), frame, flags=header_fields(_base(base_name))["flags"] | ZSTD, payload_len=len(frame))


def test_zstd_frame_of_the_wrong_size():
    raw = _base("none")[HEADER_SIZE:]  # 256 bytes
    for content in (raw[:-4], raw + b"\0\0\0\0", b"", raw[:1]):
        frame = zstandard.ZstdCompressor().compress(content)
        if len(frame) >= len(raw):
            continue
        with pytest.raises((SizeError, CodecError)):
            wire.decode(_zstd_packet("none", frame))
    # the right size but a different content decodes (the CRC covers the compressed form)
    frame = zstandard.ZstdCompressor().compress(bytes(256))
    d = wire.decode(_zstd_packet("none", frame))
    assert not d.arrays["values"].any()


def test_zstd_garbage_never_crashes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 255))
        junk = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        if rng.random() < 0.5:
            junk = b"\x28\xb5\x2f\xfd" + junk
        try:
            d = wire.decode(_zstd_packet("none", junk[:255]))
        except WireFormatError:
            continue
        assert_valid(d)


def test_zstd_trailing_bytes_after_the_frame_are_refused():
    """The payload must be exactly one zstd frame (docs/wire-format.md, section 5)."""
    d = wire.decode(_base("none_zstd"))
    frame = zstandard.ZstdCompressor().compress(d.arrays["values"].tobytes())
    assert wire.decode(_zstd_packet("none_zstd", frame)).numel == 300
    accepted = []
    for label, extra in (("trailing zeros", b"\0\0\0"), ("second frame", zstandard.ZstdCompressor().compress(b"")),
                         ("skippable frame", b"\x50\x2a\x4d\x18\0\0\0\0")):
        try:
            wire.decode(_zstd_packet("none_zstd", frame + extra))
        except WireFormatError:
            continue
        accepted.append(label)
    assert not accepted, f"decode accepted a zstd payload with {accepted} after the frame"


def test_a_skippable_frame_is_a_codec_error():
    """Section 5: a skippable frame anywhere in the payload is refused with CodecError (issue 10 item 16)."""
    d = wire.decode(_base("none_zstd"))
    frame = zstandard.ZstdCompressor().compress(d.arrays["values"].tobytes())
    skippable = b"\x50\x2a\x4d\x18\x04\0\0\0abcd"
    for payload in (skippable + frame, frame + skippable, skippable):
        with pytest.raises(CodecError):
            wire.decode(_zstd_packet("none_zstd", payload))


def test_zstd_frame_claiming_a_huge_content_size_raises_wireformaterror():
    """A 100-byte packet whose zstd frame header claims 2**40 bytes must raise WireFormatError, not MemoryError."""
    frame = frame_with_content_size(1 << 40, bytes(100))
    buf = _zstd_packet("none", frame)  # numel 64, raw_len 256: a perfectly ordinary header
    with pytest.raises(WireFormatError):
        wire.decode(buf, expected_numel=64)


def test_zstd_frame_content_size_does_not_drive_allocation():
    """raw_len (256) bounds the output buffer, not the frame header's claimed content size (256 MiB)."""
    frame = frame_with_content_size(1 << 28, bytes(100))
    buf = _zstd_packet("none", frame)
    peak = _peak_during(lambda: wire.decode(buf, expected_numel=64))
    assert peak < LIMIT, f"decoding a {len(buf)}-byte packet allocated {peak} bytes"


def test_zstd_frame_without_content_size_does_not_preallocate_raw_len():
    """A header claiming raw_len 256 MiB with a tiny streaming frame must fail without allocating 256 MiB."""
    numel = 1 << 26
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(100))
    f = fields_for("none", numel, flags=ZSTD, raw_len=4 * numel, payload_len=len(frame))
    buf = make_packet(f, frame)
    peak = _peak_during(lambda: wire.decode(buf))
    assert peak < LIMIT, f"decoding a {len(buf)}-byte packet allocated {peak} bytes"
