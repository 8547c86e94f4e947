"""`make bench`'s data-path benches in their tiny mode: they run from a fresh checkout and print the
JSON every figure of issue 20 is read from (the figures themselves are machine-dependent: not asserted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(name: str, *args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", name), "--tiny", *args], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_loader_throughput_tiny_reports_every_ratio(tmp_path):
    out = run_bench("loader_throughput.py", "--workers", "0,1", "--out", str(tmp_path / "r.json"))
    s = out["sets"]["tiny"]
    assert s["bound_per_s"] > 0 and set(s["bound_ms_per_example"]) == {"read", "decode", "resize_crop"}
    for loader in ("shardloader", "imagefolder", "hf_datasets"):
        assert set(s[loader]) == {"0", "1"} and all(v > 0 for v in s[loader].values()), loader
    assert {"shardloader_0w_vs_bound", "shardloader_1w_vs_bound", "shardloader_vs_imagefolder_1w",
            "shardloader_vs_datasets_0w"} <= set(s["ratios"])
    assert json.loads((tmp_path / "r.json").read_text()) == out


def test_shard_layout_tiny_measures_every_layout_and_reader():
    out = run_bench("shard_layout.py")
    assert set(out["layouts"]) == {f"{lay}/{c}" for lay in ("nested", "flat", "fixed", "blob") for c in ("none", "zstd")}
    blob, nested = out["layouts"]["blob/none"], out["layouts"]["nested/none"]
    # what each reader shows is a fact of the format, not of the machine
    assert (blob["pyarrow"], blob["duckdb"]) == ("binary", "BLOB") and "binary" in blob["datasets"]
    assert nested["duckdb"] == "FLOAT[][]" and "float16" in nested["datasets"]
    assert out["choice"]["layout"] == "blob/none" and out["choice"]["shards_version"] == "3"
