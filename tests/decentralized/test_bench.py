"""bench/gossip.py runs (a tiny in-process configuration) and writes its JSON and Markdown."""

import importlib.util
import json
import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench", "gossip.py")


def test_bench_gossip_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gossip", BENCH)
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    try:
        spec.loader.exec_module(module)  # it puts bench/ first on sys.path, where bench/ddp.py and bench/mpi.py would
    finally:                             # shadow tests/ddp and tests/mpi for every later import (and spawned rank)
        sys.path[:] = saved
    out, md = tmp_path / "g.json", tmp_path / "g.md"
    assert module.main(["--numel", "2000", "--sizes", "4,8", "--rounds", "1", "--warmup", "0", "--topologies", "ring",
                        "--methods", "exact;choco topk 1%", "--json", str(out), "--md", str(md)]) == 0
    doc = json.loads(out.read_text())
    rows = {(r["P"], r["method"]): r for r in doc["records"]}
    assert rows[(4, "exact")]["bytes_per_rank_round"] == rows[(8, "exact")]["bytes_per_rank_round"] == 2 * (8000 + 128)
    assert rows[(8, "choco topk 1%")]["bytes_per_rank_round"] < 0.1 * rows[(8, "exact")]["bytes_per_rank_round"]
    assert doc["flatness"]["ring / exact (P=8 over P=4)"] == 1.0
    assert "| P | topology |" in md.read_text()
