"""`textok inspect` on real tables (valid, corrupted, mismatched) and the encode/pools/prepare CLI."""
from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from textok.cli import main
from textok.pipeline.encode.pipeline import run_encode
from textok.pipeline.inspect_table import format_report, inspect_table, text_histogram
from textok.schemas.common import SchemaError, write_table_atomic
from test_encode import make_captions_dir
from test_text_encoder import build_tiny_t5


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(str(tmp_path_factory.mktemp("t5")))


@pytest.fixture(scope="module")
def data(t5_dir, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("insp"))
    caps = make_captions_dir(os.path.join(root, "cap"), n_train=12, n_val=6, corrupt=("square/train_0004",))
    out = os.path.join(root, "data")
    run_encode(caps, out, encoder=t5_dir, rows_per_shard=5, device="cpu")
    return caps, out


def test_inspect_shards_report_and_contact_sheet(data, tmp_path):
    caps, out = data
    png = str(tmp_path / "sheet.png")
    r = inspect_table(os.path.join(out, "shards"), contact_sheet=png, n_images=5)
    assert r["table"] == "shards" and r["files"] == 3 and r["rows"] == 11 and r["D"] == 32 and r["classes"] == 3
    b = r["bytes_per_example"]
    assert b["image"] > 0 and b["embedding"] > 0 and b["other"] > 0
    total = sum(os.path.getsize(os.path.join(out, "shards", f)) for f in os.listdir(os.path.join(out, "shards"))
                if f.endswith(".parquet"))
    assert sum(b.values()) * 11 < total  # column bytes exclude only footers/headers
    text = format_report(r)
    assert "token length" in text and "caption words" in text and "bytes/example" in text
    sheet = Image.open(png)
    assert sheet.size[0] > 4 * 160 and sheet.size[1] > 2 * 160
    # dead letters: counted by reason
    rd = inspect_table(os.path.join(out, "dead_letter"))
    assert rd["table"] == "dead_letter" and rd["error_types"] == {"truncated": 1}
    with pytest.raises(SchemaError, match="no captions or images"):
        inspect_table(os.path.join(out, "dead_letter"), contact_sheet=str(tmp_path / "d.png"))
    # captions tables work too (images through source_uri)
    rc = inspect_table(os.path.join(caps, "captions"), contact_sheet=str(tmp_path / "c.png"), n_images=3)
    assert rc["table"] == "captions" and rc["rows"] == 18 and "text_len" not in rc


def test_inspect_rejects_corrupted_and_mismatched(data, tmp_path):
    _, out = data
    src = os.path.join(out, "shards", "train-00000-of-00003.parquet")
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(open(src, "rb").read()[:300])
    with pytest.raises(SchemaError, match="corrupt.parquet: not a readable Parquet file"):
        inspect_table(str(bad))
    # text_len disagreeing with text_emb's rows
    t = pq.read_table(src)
    lens = t["text_len"].to_pylist()
    lens[1] += 1
    t2 = t.set_column(t.schema.get_field_index("text_len"), t.schema.field("text_len"), pa.array(lens, pa.int32()))
    write_table_atomic(t2.replace_schema_metadata(t.schema.metadata), str(tmp_path / "mismatch.parquet"))
    with pytest.raises(SchemaError, match="mismatch.parquet: row 1 .* has text_len"):
        inspect_table(str(tmp_path / "mismatch.parquet"))
    # metadata D different from the column's width
    md = dict(t.schema.metadata)
    meta = json.loads(md[b"textok.meta"])
    md[b"textok.meta"] = json.dumps(dict(meta, D=64)).encode()
    write_table_atomic(t.replace_schema_metadata(md), str(tmp_path / "wrong_d.parquet"))
    with pytest.raises(SchemaError, match="text_emb.*metadata D=64"):
        inspect_table(str(tmp_path / "wrong_d.parquet"))
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "wrong_d.parquet")])
    assert result.exit_code != 0 and "metadata D=64" in result.output


def test_text_histogram():
    lines = text_histogram([1, 1, 1, 5, 9], bins=3, width=10)
    assert len(lines) == 3 and lines[0].endswith("#" * 10) and "      3" in lines[0]
    assert text_histogram([]) == ["(no values)"]


def test_cli_encode_pools_inspect(t5_dir, data, tmp_path):
    caps, _ = data
    out = str(tmp_path / "o")
    runner = CliRunner()
    r = runner.invoke(main, ["encode", "--captions", caps, "--output", out, "--encoder", t5_dir, "--device", "cpu",
                             "--rows-per-shard", "6", "--image-size", "8", "--direct_num_workers", "1",
                             "--max-dead-letter-fraction", "0.2"])  # 1 of 12 images is corrupt on purpose
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["shards"] == 2
    r = runner.invoke(main, ["pools", "--captions", caps, "--output", out, "--encoder", t5_dir, "--device", "cpu",
                             "--per-class", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["counts"] == {"0": 2, "1": 2, "2": 2}
    r = runner.invoke(main, ["inspect", os.path.join(out, "pools", "val.parquet"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["table"] == "pools"
    r = runner.invoke(main, ["encode", "--captions", caps, "--output", out, "--encoder", t5_dir, "--device", "cpu",
                             "--dtype", "float16"])
    assert r.exit_code != 0 and "float16 is refused for T5" in r.output


def test_cli_prepare_from_images(t5_dir, tmp_path):
    from textok.pipeline.sources.demo_data import make_demo_data

    make_demo_data(str(tmp_path / "demo"), n=30, size=16, seed=0, val_fraction=0.3)
    out = str(tmp_path / "run")
    args = ["prepare", "--input", str(tmp_path / "demo" / "manifest.jsonl"), "--output", out, "--captioner",
            "provided", "--encoder", t5_dir, "--encoder-device", "cpu", "--per-class", "2", "--rows-per-shard", "8"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    with open(tmp_path / "demo" / "manifest.jsonl") as f:
        n_train = sum(json.loads(line).get("split", "train") == "train" for line in f if line.strip())
    assert 0 < n_train < 30
    # every train row of the manifest is captioned (provided captions, valid images), then encoded
    assert s["caption_train"]["captioned"] == n_train and s["caption_train"]["dead_letter"] == 0
    assert n_train == sum(
        pq.ParquetFile(f).metadata.num_rows for f in _files(os.path.join(out, "caption", "train", "captions")))
    assert s["encode"]["rows"] == n_train and s["encode"]["dead_letter"] == 0
    assert os.path.exists(os.path.join(out, "pools", "val.parquet")) and s["pools"]["rows"] > 0
    # rerun: nothing re-captioned, nothing re-encoded
    r2 = CliRunner().invoke(main, args)
    assert r2.exit_code == 0, r2.output
    s2 = json.loads(r2.stdout)
    assert s2["encode"]["shards_written_now"] == 0 and s2["encode"]["rows"] == s["encode"]["rows"]


def _files(d: str) -> list[str]:
    return [os.path.join(d, f) for f in os.listdir(d) if f.endswith(".parquet")]


def test_contact_sheet_keeps_the_spaces_between_words(tmp_path, monkeypatch):
    """Issue 21: wrapped captions read "a photoofa tench" (a 2-px space in Pillow's FreeType default)."""
    import numpy as np

    from textok.pipeline import inspect_table as it

    caption = "a photo of a tench"
    monkeypatch.setattr(it, "_sheet_items", lambda files, kind, n: [(None, "k", caption)])
    png = it.write_contact_sheet(["x.parquet"], "captions", str(tmp_path / "s.png"), n=1)
    img = np.asarray(Image.open(png).convert("L"))
    thumb = 160
    line = img[10 + thumb + 2 + 14: 10 + thumb + 2 + 28, 10: 10 + thumb] < 128  # the caption's first line
    ink = line.any(axis=0)
    cols = np.flatnonzero(ink)
    gaps, run = [], 0
    for x in range(cols[0], cols[-1] + 1):  # blank column runs inside the text
        if ink[x]:
            if run:
                gaps.append(run)
            run = 0
        else:
            run += 1
    assert sum(g >= 4 for g in gaps) == len(caption.split()) - 1, gaps  # one wide gap per space
