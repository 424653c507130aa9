"""Bytes per rank from CompressedComm.stats under ``mpiexec -n 2, 4, 8`` on 100,000 floats.

``scatter-reduce-allgather`` sends about ``2 (P - 1) / P`` compressed vectors
per rank, roughly flat in P; ``allgather`` sends the rank's packet to each of
the ``P - 1`` others, so it grows linearly with P.
"""

import re
import statistics

import pytest

from .launch import assert_check, assert_clean, run_mpi_cached

pytest.importorskip("mpi4py")
pytestmark = pytest.mark.slow

SIZES = (2, 4, 8)
NUMEL = 100_000
_BYTES = re.compile(r"(\S+) (\S+) size=(\d+) rank=(\d+) sent=(\d+) received=(\d+) packet=(\d+)")


def counters(n):
    result = run_mpi_cached("bytes_scaling.py", n, "--numel", NUMEL, timeout=240.0)
    assert_clean(result, n)
    table = {}
    for text in result.markers("BYTES"):
        m = _BYTES.fullmatch(text)
        assert m, f"unparsable BYTES marker {text!r}"
        spec, alg, size, rank, sent, received, _ = m.groups()
        table.setdefault((spec, alg), {})[int(rank)] = (int(sent), int(received))
    for key, per_rank in table.items():
        assert sorted(per_rank) == list(range(n)), f"{key}: BYTES from ranks {sorted(per_rank)}"
    return result, table


def mean_bytes(n, spec, alg):
    _, table = counters(n)
    per_rank = table[(spec, alg)]
    return (statistics.mean(s for s, _ in per_rank.values()), statistics.mean(r for _, r in per_rank.values()))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("spec", ["topk", "sign"])
def test_allgather_counters_follow_the_byte_model(n, spec):
    result, _ = counters(n)
    assert_check(result, f"bytes/model-{spec}-allgather", n)


@pytest.mark.parametrize("spec", ["topk:ratio=0.01", "sign"])
def test_scatter_reduce_allgather_bytes_stay_flat(spec):
    sent2, recv2 = mean_bytes(2, spec, "scatter-reduce-allgather")
    sent4, recv4 = mean_bytes(4, spec, "scatter-reduce-allgather")
    sent8, recv8 = mean_bytes(8, spec, "scatter-reduce-allgather")
    # 2 (P - 1) / P compressed vectors: 1 at P=2, 1.75 at P=8 (plus 88-byte headers per chunk packet)
    assert sent8 / sent2 < 2.2, (sent2, sent4, sent8)
    assert recv8 / recv2 < 2.2, (recv2, recv4, recv8)
    assert sent4 / sent2 < 2.2 and recv4 / recv2 < 2.2


@pytest.mark.parametrize("spec", ["topk:ratio=0.01", "sign"])
def test_allgather_bytes_grow_with_world_size(spec):
    sent2, recv2 = mean_bytes(2, spec, "allgather")
    sent4, recv4 = mean_bytes(4, spec, "allgather")
    sent8, recv8 = mean_bytes(8, spec, "allgather")
    # P - 1 packets: 1 at P=2, 3 at P=4, 7 at P=8
    assert sent2 < sent4 < sent8 and recv2 < recv4 < recv8
    assert sent8 / sent2 > 5, (sent2, sent4, sent8)
    assert recv8 / recv2 > 5, (recv2, recv4, recv8)


def test_at_eight_ranks_scatter_reduce_allgather_sends_far_less():
    for spec in ("topk:ratio=0.01", "sign"):
        assert mean_bytes(8, spec, "scatter-reduce-allgather")[0] < mean_bytes(8, spec, "allgather")[0] / 3
    # and both far less than the dense float32 allreduce
    assert mean_bytes(8, "sign", "scatter-reduce-allgather")[0] < mean_bytes(8, "none", "dense")[0] / 20
