"""`textok prepare` writes train and val shards with every row in exactly one split (issue 19 item
18: a manifest without a split column used to land in both), and a stage whose inputs all end in
the dead letter exits 1 with the top reasons and the dead-letter path (issue 21)."""
from __future__ import annotations

import glob
import json
import os

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from textok.cli import main
from textok.pipeline.sources.demo_data import make_demo_data
from textok.pipeline.sources.splits import in_val
from test_text_encoder import build_tiny_t5


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(str(tmp_path_factory.mktemp("t5")))


def _manifest(tmp_path, n=40, drop_split=True, blank_captions=False) -> tuple[str, list[dict]]:
    make_demo_data(str(tmp_path / "demo"), n=n, size=16, seed=0, val_fraction=0.25)
    path = tmp_path / "demo" / "manifest.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        if drop_split:
            row.pop("split", None)
        if blank_captions:
            row["caption"] = "   "
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), rows


def _shard_keys(out: str, split: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(out, "shards", f"{split}-*.parquet")))
    return [k for f in files for k in pq.read_table(f, columns=["key"])["key"].to_pylist()]


def _prepare(manifest, out, t5_dir, *extra):
    return CliRunner().invoke(main, ["prepare", "--input", manifest, "--output", out, "--captioner", "provided",
                                     "--encoder", t5_dir, "--encoder-device", "cpu", "--per-class", "2",
                                     "--rows-per-shard", "16", *extra])


def test_manifest_without_split_column_gives_disjoint_train_and_val_shards(t5_dir, tmp_path):
    manifest, rows = _manifest(tmp_path, n=40)
    out = str(tmp_path / "run")
    r = _prepare(manifest, out, t5_dir, "--val-fraction", "0.25")
    assert r.exit_code == 0, r.output
    train, val = _shard_keys(out, "train"), _shard_keys(out, "val")
    assert train and val, "prepare must write val shards too"
    assert not set(train) & set(val), "a key in both splits leaks evaluation images into training"
    assert len(train) == len(set(train)) and len(val) == len(set(val))
    all_keys = {r["key"] for r in rows}
    assert set(train) | set(val) == all_keys  # every row in exactly one split
    assert set(val) == {k for k in all_keys if in_val(k, 0.25, 0)}  # the stated rule, nothing else
    pools = pq.read_table(os.path.join(out, "pools", "val.parquet"), columns=["key"])["key"].to_pylist()
    assert pools and set(pools) <= set(val)  # pools come from images never trained on
    with open(os.path.join(out, "prepare_summary.json")) as f:
        summary = json.load(f)
    assert summary["finished"] and summary["splits"]["rows_without_split"] == 40
    assert summary["splits"]["val"] == len(val) and summary["splits"]["val_fraction"] == 0.25


def test_manifest_with_splits_keeps_them_and_writes_val_shards(t5_dir, tmp_path):
    manifest, rows = _manifest(tmp_path, n=24, drop_split=False)
    out = str(tmp_path / "run")
    r = _prepare(manifest, out, t5_dir)
    assert r.exit_code == 0, r.output
    want_val = {r["key"] for r in rows if r["split"] == "val"}
    assert set(_shard_keys(out, "val")) == want_val and want_val
    assert not set(_shard_keys(out, "train")) & want_val


def test_every_row_dead_lettered_exits_1_naming_reasons_and_path(t5_dir, tmp_path):
    manifest, _ = _manifest(tmp_path, n=12, drop_split=False, blank_captions=True)
    out = str(tmp_path / "cap")
    r = CliRunner().invoke(main, ["caption", "--input", manifest, "--output", out, "--captioner", "provided"])
    assert r.exit_code == 1
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("Error: caption: 9 of 9 images ended in the dead letter (100%)"), last
    assert "9x missing_caption" in last and os.path.join(out, "dead_letter") in last
    with open(os.path.join(out, "caption_summary.json")) as f:  # the summary is written on failure too
        assert json.load(f)["dead_letter"] == 9
    # prepare stops after the caption stage, with its own summary saying how far it got
    r = _prepare(manifest, str(tmp_path / "run"), t5_dir)
    assert r.exit_code == 1 and "missing_caption" in r.output.strip().splitlines()[-1]
    with open(tmp_path / "run" / "prepare_summary.json") as f:
        s = json.load(f)
    assert not s["finished"] and s["caption_train"]["dead_letter"] == 9 and "encode" not in s


def test_dead_letter_fraction_threshold(tmp_path):
    """Above --max-dead-letter-fraction: exit 1; at or under it: exit 0."""
    manifest, rows = _manifest(tmp_path, n=20, drop_split=False)
    blank = [i for i, r in enumerate(rows) if r["split"] == "train"][:2]  # 2 of 15 train rows: 13 %
    for i in blank:
        rows[i]["caption"] = ""
    with open(manifest, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    base = ["caption", "--input", manifest, "--captioner", "provided"]
    r = CliRunner().invoke(main, base + ["--output", str(tmp_path / "a")])
    assert r.exit_code == 1 and "more than --max-dead-letter-fraction 0.05" in r.output
    r = CliRunner().invoke(main, base + ["--output", str(tmp_path / "b"), "--max-dead-letter-fraction", "0.2"])
    assert r.exit_code == 0, r.output
