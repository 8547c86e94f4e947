"""`textok encode` end to end on real files: shards contents, interop, dead letters, resume, runners."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import ROOT, pythonpath
from textok.pipeline.encode.pipeline import in_holdout, read_captions, run_encode
from textok.schemas.captions import CAPTIONS_SCHEMA
from textok.schemas.common import read_meta, validate, with_metadata, write_table_atomic
from textok.schemas.shards import image_bytes, text_emb_type, text_emb_views
from test_text_encoder import build_tiny_t5, caption_set

CLASSES = ["circle", "square", "star"]


def make_captions_dir(root: str, n_train: int = 24, n_val: int = 12, corrupt: tuple[str, ...] = (),
                      size: int = 20) -> str:
    """A `textok caption`-style folder: images on disk + `captions/part-*.parquet` (two files)."""
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        texts = caption_set(n, seed=1 if split == "train" else 2)
        for i in range(n):
            label = i % len(CLASSES)
            key = f"{CLASSES[label]}/{split}_{i:04d}"
            path = os.path.join(root, "images", split, key + (".png" if i % 2 else ".jpg"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if key in corrupt:
                with open(path, "wb") as f:
                    f.write(b"\x89PNG\r\n\x1a\n not really")
            else:
                Image.new("RGB", (size + i % 5, size), (40 * label, 8 * i % 255, 100)).save(path)
            rows.append({"key": key, "split": split, "label": label, "class_name": CLASSES[label], "source_uri": path,
                         "caption": texts[i], "num_words": len(texts[i].split()), "captioner": "template",
                         "prompt_version": "t1", "input_tokens": None, "output_tokens": None, "attempts": 1,
                         "width": size + i % 5, "height": size})
    schema = with_metadata(CAPTIONS_SCHEMA, "captions", "caption", {"captioner": "template", "prompt_version": "t1"})
    half = len(rows) // 2  # two part files, interleaved order: the reader must sort
    for j, part in enumerate((rows[half:], rows[:half])):
        write_table_atomic(pa.Table.from_pylist(part, schema=schema), os.path.join(root, "captions", f"part-{j}.parquet"))
    return root


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(str(tmp_path_factory.mktemp("t5")))


@pytest.fixture(scope="module")
def captions_dir(tmp_path_factory):
    return make_captions_dir(str(tmp_path_factory.mktemp("cap")), corrupt=("star/train_0005",))


def _all_rows(out: str, split: str = "train") -> pa.Table:
    files = sorted(f for f in os.listdir(os.path.join(out, "shards")) if f.startswith(split) and f.endswith(".parquet"))
    return pa.concat_tables([pq.read_table(os.path.join(out, "shards", f)) for f in files])


def test_encode_shards_contents_and_interop(t5_dir, captions_dir, tmp_path):
    out = str(tmp_path / "data")
    s = run_encode(captions_dir, out, encoder=t5_dir, rows_per_shard=10, batch_size=4, device="cpu")
    assert (s["shards"], s["rows"], s["dead_letter"]) == (3, 23, 1)
    names = sorted(f for f in os.listdir(os.path.join(out, "shards")) if f.endswith(".parquet"))
    assert names == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
    infos = validate(os.path.join(out, "shards"), expect_table="shards")
    meta = infos[0]["meta"]
    assert meta["D"] == 32 and meta["storage_dtype"] == "float16" and meta["compute_dtype"] == "float32"
    assert meta["encoder_hash"].startswith("sha256:") and meta["image_mode"] == "original"
    assert [i["meta"]["num_rows"] for i in infos] == [i["num_rows"] for i in infos]
    table = _all_rows(out)
    assert table["key"].to_pylist() == sorted(table["key"].to_pylist())
    # embeddings == the encoder run directly, lengths right, zero-copy views
    from textok.text_encoder import TextEncoder

    enc = TextEncoder(t5_dir, device="cpu").load()
    views = text_emb_views(table["text_emb"], 32)
    ref = enc.encode(table["caption"].to_pylist())
    for v, r, n in zip(views, ref, table["text_len"].to_pylist()):
        assert v.dtype == np.float16 and v.shape == (n, 32) and not v.flags.owndata
        np.testing.assert_allclose(v.astype(np.float32), r.astype(np.float32), rtol=2e-3, atol=2e-3)
    # original bytes kept, decodable, sizes right
    caps = {r["key"]: r for r in read_captions(captions_dir, "train").to_pylist()}
    for row in table.slice(0, 4).to_pylist():
        with open(caps[row["key"]]["source_uri"], "rb") as f:
            assert row["image"] == {"bytes": f.read(), "path": None}  # datasets' Image() storage
        assert Image.open(io.BytesIO(row["image"]["bytes"])).size == (row["width"], row["height"])
    # dead letter with the reason
    dl = pq.read_table(os.path.join(out, "dead_letter")).to_pylist()
    assert [(d["key"], d["stage"], d["error_type"]) for d in dl] == [("star/train_0005", "encode", "truncated")]
    assert read_meta(os.path.join(out, "dead_letter", os.listdir(os.path.join(out, "dead_letter"))[0]))["table"] \
        == "dead_letter"
    # opens unchanged in HF datasets and DuckDB
    import datasets
    import duckdb

    ds = datasets.load_dataset("parquet", data_files=os.path.join(out, "shards", "train-*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 23 and ds.features["text_emb"] == datasets.Value("binary")
    # the documented one-line reader of a version 3 row, in datasets
    emb = np.frombuffer(ds[0]["text_emb"], "<f2").reshape(ds[0]["text_len"], 32)
    assert np.array_equal(emb, views[0])
    assert isinstance(ds.features["image"], datasets.Image)  # from the features in the Parquet metadata
    first = ds[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (first["width"], first["height"])
    assert np.array_equal(np.asarray(first["image"]), np.asarray(Image.open(io.BytesIO(table["image"][0]["bytes"].as_py()))))
    con = duckdb.connect()
    got = con.execute(f"SELECT count(*), sum(text_len), max(octet_length(text_emb) // (2 * 32)), "
                      f"sum(octet_length(image.bytes)) FROM read_parquet('{out}/shards/train-*.parquet')").fetchone()
    assert got == (23, sum(table["text_len"].to_pylist()), max(table["text_len"].to_pylist()),
                   sum(len(b) for b in image_bytes(table["image"])))
    key, blob, n = con.execute(f"SELECT key, text_emb, text_len FROM read_parquet('{out}/shards/train-*.parquet') "
                               f"ORDER BY key LIMIT 1").fetchone()
    assert key == table["key"][0].as_py() and np.array_equal(np.frombuffer(blob, "<f2").reshape(n, 32), views[0])
    # compression only where it pays: none on image bytes and embeddings, zstd on the rest
    md = pq.ParquetFile(infos[0]["path"]).metadata
    codecs = {md.row_group(0).column(c).path_in_schema: md.row_group(0).column(c).compression
              for c in range(md.num_columns)}
    assert codecs["image.bytes"] == codecs["text_emb"] == "UNCOMPRESSED" and codecs["caption"] == "ZSTD"
    assert infos[0]["schema_version"] == "3"


def test_image_size_and_holdout(t5_dir, captions_dir, tmp_path):
    out = str(tmp_path / "data")
    s = run_encode(captions_dir, out, encoder=t5_dir, rows_per_shard=100, image_size=16, device="cpu",
                   pool_holdout_fraction=0.3, seed=7)
    table = _all_rows(out)
    held = {k for k in read_captions(captions_dir, "train")["key"].to_pylist() if in_holdout(k, 0.3, 7)}
    assert 0 < len(held) < 24 and s["held_out_for_pools"] == len(held)
    assert not held & set(table["key"].to_pylist())
    assert s["rows"] + s["dead_letter"] == 24 - len(held)
    for row in table.to_pylist():
        img = Image.open(io.BytesIO(row["image"]["bytes"]))
        assert img.size == (16, 16) == (row["width"], row["height"])
        src_png = row["key"].split("_")[-1] and int(row["key"][-4:]) % 2 == 1
        assert row["image_format"] == ("png" if src_png else "jpeg") == img.format.lower()
    meta = read_meta(os.path.join(out, "shards", "train-00000-of-00001.parquet"))["meta"]
    assert meta["image_mode"] == "resize_center_crop:16" and meta["pool_holdout_fraction"] == 0.3
    # changing the plan against existing shards is refused, not mixed
    with pytest.raises(ValueError, match="planned with different"):
        run_encode(captions_dir, out, encoder=t5_dir, rows_per_shard=5, image_size=16, device="cpu",
                   pool_holdout_fraction=0.3, seed=7)


_CRASH_SCRIPT = """
import sys
import textok.pipeline.encode.pipeline as ep
real = ep.shards_table
calls = []
def crashing(rows, meta):
    calls.append(1)
    if len(calls) == 3:
        raise RuntimeError("simulated crash after two shards")
    return real(rows, meta)
ep.shards_table = crashing
ep.run_encode(sys.argv[1], sys.argv[2], encoder=sys.argv[3], rows_per_shard=4, device="cpu")
"""


def test_resume_after_crash_keeps_done_shards(t5_dir, captions_dir, tmp_path):
    out = str(tmp_path / "data")
    env = dict(os.environ, PYTHONPATH=pythonpath(), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, captions_dir, out, t5_dir], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "simulated crash" in proc.stderr
    done = sorted(f for f in os.listdir(os.path.join(out, "shards")) if f.endswith(".parquet"))
    assert len(done) == 2  # committed as they completed, before the crash
    before = {f: os.stat(os.path.join(out, "shards", f)).st_mtime_ns for f in done}
    s = run_encode(captions_dir, out, encoder=t5_dir, rows_per_shard=4, device="cpu")
    assert s["shards_skipped_done"] == 2 and s["shards"] == 6
    assert all(os.stat(os.path.join(out, "shards", f)).st_mtime_ns == t for f, t in before.items())
    keys = _all_rows(out)["key"].to_pylist() + pq.read_table(os.path.join(out, "dead_letter"))["key"].to_pylist()
    assert sorted(keys) == sorted(read_captions(captions_dir, "train")["key"].to_pylist())  # each exactly once


def test_multiprocess_runner_gives_identical_shards(t5_dir, captions_dir, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run_encode(captions_dir, a, encoder=t5_dir, rows_per_shard=12, device="cpu", split="val")
    run_encode(captions_dir, b, encoder=t5_dir, rows_per_shard=12, device="cpu", split="val",
               beam_args=["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"])
    ta, tb = _all_rows(a, "val"), _all_rows(b, "val")
    assert ta.num_rows == 12 and ta.equals(tb)


def test_bad_inputs_fail_clearly(t5_dir, captions_dir, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        run_encode(captions_dir, str(tmp_path / "o"), encoder=t5_dir, rows_per_shard=4, shard_mb=1.0, device="cpu")
    with pytest.raises(ValueError, match="no captions of split 'test'"):
        run_encode(captions_dir, str(tmp_path / "o"), encoder=t5_dir, split="test", device="cpu")
    with pytest.raises(Exception, match="no such folder.*hf download ORG/MODEL --local-dir"):
        run_encode(captions_dir, str(tmp_path / "o"), encoder=str(tmp_path / "missing"), device="cpu")
    dup = make_captions_dir(str(tmp_path / "dup"), n_train=3, n_val=0)
    t = pq.read_table(os.path.join(dup, "captions", "part-0.parquet"))
    write_table_atomic(t, os.path.join(dup, "captions", "part-9.parquet"))
    with pytest.raises(Exception, match="appears twice"):
        read_captions(dup, "train")


def test_shard_mb_sizes_shards(t5_dir, captions_dir, tmp_path):
    # ~1.2 KB PNG/JPEG images + ~10 tokens x 32 x 2 bytes: a 0.01 MiB target holds a handful of rows
    s = run_encode(captions_dir, str(tmp_path / "o"), encoder=t5_dir, shard_mb=0.01, device="cpu", split="val")
    assert 1 < s["rows_per_shard"] < 12 and s["shards"] == -(-12 // s["rows_per_shard"]) and s["rows"] == 12


def test_encode_captions_transform_in_testpipeline(t5_dir, captions_dir):
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that

    from textok.pipeline.encode.pipeline import EncodeCaptions

    rows = [r for r in read_captions(captions_dir, "train").to_pylist() if r["key"].startswith("star/")][:4]
    assert "star/train_0005" in [r["key"] for r in rows]  # the corrupt image
    opts = {"encoder": t5_dir, "max_tokens": 128, "batch_size": 4, "device": "cpu", "dtype": "float32",
            "revision": None}

    def check(outputs):
        [(tag, good, dead)] = outputs
        assert tag == "unit-0" and [d["key"] for d in dead] == ["star/train_0005"]
        assert sorted(r["key"] for r in good + dead) == sorted(r["key"] for r in rows)
        for r in good:
            assert r["text_emb"].dtype == np.float16 and r["text_emb"].shape == (r["text_len"], 32)
            assert r["image_format"] in ("png", "jpeg") and r["width"] >= 20

    with TestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create([("unit-0", rows)]) | EncodeCaptions(opts, image_size=None)
        assert_that(out, check)


def test_rerun_drops_a_stale_dead_letter_file_of_a_shard_that_now_encodes_cleanly(t5_dir, captions_dir, tmp_path):
    """A run killed between a shard's dead letters and the shard itself, then a rerun where the
    image reads fine (fixed, or the read error was transient): the key must end in the shard only."""
    from textok.pipeline.encode.pipeline import dead_letter_row, dead_letter_table

    out = str(tmp_path / "data")
    first = read_captions(captions_dir, "val").to_pylist()[0]
    stale = os.path.join(out, "dead_letter", "encode-val-00000-of-00001.parquet")
    write_table_atomic(dead_letter_table([dead_letter_row(first, "read_error", "transient")], {}), stale)
    s = run_encode(captions_dir, out, encoder=t5_dir, rows_per_shard=16, device="cpu", split="val")
    assert (s["rows"], s["dead_letter"]) == (12, 0) and not os.path.exists(stale)


def test_text_encoder_loads_once_per_worker_process(t5_dir, monkeypatch):
    """Several DoFn instances (worker threads) of the encode stage share one T5 through Shared."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from textok import text_encoder
    from textok.pipeline.beam_utils import make_pipeline
    from textok.pipeline.encode.pipeline import EncodeCaptions

    loads = []
    real_load = text_encoder.TextEncoder.load
    monkeypatch.setattr(text_encoder.TextEncoder, "load", lambda self: loads.append(1) or real_load(self))
    opts = {"encoder": t5_dir, "max_tokens": 16, "batch_size": 4, "device": "cpu", "dtype": "float32",
            "revision": None}
    units = [(i, [{"key": f"k{i}", "caption": "a red circle on the left"}]) for i in range(12)]
    with make_pipeline(["--direct_running_mode", "multi_threading", "--direct_num_workers", "3"]) as p:
        out = (p | beam.Create(units) | beam.Reshuffle()
               | EncodeCaptions(opts, with_images=False) | beam.Map(lambda e: (e[0], e[1][0]["text_len"] > 0)))
        assert_that(out, equal_to([(i, True) for i in range(12)]))
    assert len(loads) == 1
