"""The sample packets of _packets.py, which the corruption, hostile-header and fuzzing tests start from,
cover every codec and every combination of the ZSTD and BITMAP flags.
"""

import pytest
from _header import BITMAP, CODEC_IDS, ZSTD, header_fields
from _packets import samples

from gcomp import wire

pytestmark = pytest.mark.usefixtures("no_pickle")


def test_samples_cover_every_codec_and_flag():
    flags = {header_fields(b)["flags"] for b in samples().values()}
    assert flags >= {0, ZSTD, BITMAP, ZSTD | BITMAP}
    assert {wire.decode(b).codec for b in samples().values()} == set(CODEC_IDS)
