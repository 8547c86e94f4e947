"""extract-latents on tiny real shards with a tiny random TexTok: schema, statistics, resume, loader."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from textok.schemas.common import SchemaError, validate
from textok.schemas.latents import combine_moments, moments, read_latent_meta, z_column, z_view
from test_data import write_shards
from textok.trainer.data.latents import ExtractConfig, LatentLoader, extract_latents

TEXT_DIM, MAX_TOKENS, NUM_TOKENS = 16, 8, 8


def make_tokenizer(path, seed: int = 0, text_dim: int = TEXT_DIM, encoder: str | None = "tiny-t5",
                   text_mode: str = "both") -> str:
    """A tiny random TexTok saved as train-tokenizer exports it: with the record of its text
    encoder (`encoder=None`: without one, as a hand-saved model)."""
    from textok.trainer.models.textok import TexTok, textok_config
    from textok.trainer.run_dir import write_text_encoder

    torch.manual_seed(seed)
    TexTok(textok_config("tiny", text_dim=text_dim, max_text_tokens=MAX_TOKENS, num_tokens=NUM_TOKENS,
                         text_mode=text_mode)).save_pretrained(str(path))
    if encoder is not None:
        write_text_encoder({"encoder": encoder, "D": text_dim, "max_tokens": MAX_TOKENS}, str(path))
    return str(path)


def make_latents(root, encoder: str = "tiny-t5", with_text: bool = True, rows_per_file: int = 12,
                 text_dim: int = TEXT_DIM) -> dict:
    """Shards (2 files) -> tokenizer -> latents under root; returns the paths."""
    paths = {"shards": os.path.join(root, "shards"), "tok": os.path.join(root, "tok"),
             "latents": os.path.join(root, "latents")}
    write_shards(paths["shards"], num_files=2, rows_per_file=rows_per_file, dim=text_dim, max_tokens=MAX_TOKENS,
                 image_size=32, encoder=encoder)
    make_tokenizer(paths["tok"], text_dim=text_dim, encoder=encoder)
    paths["summary"] = extract_latents(ExtractConfig(tokenizer=paths["tok"], shards=paths["shards"],
                                                     output=paths["latents"], batch_size=5, device="cpu",
                                                     with_text=with_text, num_workers=0))
    return paths


@pytest.fixture(scope="module")
def lat(tmp_path_factory):
    return make_latents(str(tmp_path_factory.mktemp("lat")))


def test_latents_validate_and_match_the_tokenizer(lat):
    from textok.trainer.data.loader import ShardLoader
    from textok.trainer.models.textok import TexTok

    infos = validate(lat["latents"], expect_table="latents")
    assert [os.path.basename(i["path"]) for i in infos] == sorted(os.listdir(lat["shards"]))
    assert sum(i["num_rows"] for i in infos) == 24
    meta = infos[0]["meta"]
    assert meta["num_tokens"] == NUM_TOKENS and meta["token_dim"] == 8 and meta["has_text"] is True
    assert meta["encoder"] == "tiny-t5" and meta["D"] == TEXT_DIM and meta["tokenizer_sha256"].startswith("sha256:")

    import pyarrow.parquet as pq

    table = pq.read_table(infos[0]["path"])
    shard = pq.read_table(os.path.join(lat["shards"], os.path.basename(infos[0]["path"])))
    assert table.column("key").to_pylist() == shard.column("key").to_pylist()
    # latents keep the typed float16 list; the values are the shard's (version 3 blob) ones
    from textok.schemas.shards import text_emb_arrays, text_emb_views

    assert all(np.array_equal(a, b) for a, b in zip(text_emb_views(table.column("text_emb")),
                                                    text_emb_arrays(shard, TEXT_DIM)))
    # z of the first rows == the tokenizer on the centre-cropped image with its own caption
    model = TexTok.from_pretrained(lat["tok"]).eval()
    batch = next(iter(ShardLoader(infos[0]["path"].replace("latents", "shards"), 32, 4, train=False)))
    with torch.no_grad():
        want = model.encode(batch["images"], batch["text_emb"].float(), batch["text_mask"]).numpy()
    got = z_view(table.column("z"))[:4].astype(np.float32)
    assert batch["key"] == table.column("key").to_pylist()[:4]
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=2e-3)  # float16 storage


def test_statistics_are_the_per_channel_moments_of_all_z(lat):
    import pyarrow.parquet as pq

    files = sorted(os.path.join(lat["latents"], f) for f in os.listdir(lat["latents"]) if f.endswith(".parquet"))
    allz = np.concatenate([z_view(pq.read_table(f).column("z")) for f in files]).astype(np.float64)
    meta = read_latent_meta(files)
    np.testing.assert_allclose(meta["mean"], allz.reshape(-1, 8).mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(meta["std"], allz.reshape(-1, 8).std(0, ddof=1), rtol=1e-9)
    assert meta["count"] == 24 * NUM_TOKENS
    stats = json.load(open(os.path.join(lat["latents"], "stats.json")))
    assert stats["mean"] == meta["mean"] and stats["std"] == meta["std"]
    assert lat["summary"]["files_written"] == 2 and lat["summary"]["mean"] == meta["mean"]


def test_combine_moments_independent_of_split():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 5, 3)) * [1, 2, 3] + [0, 5, -1]
    parts = [moments(x[:1]), moments(x[1:20]), moments(x[20:20]), moments(x[20:])]
    mean, std, count = combine_moments(parts)
    np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(0))
    np.testing.assert_allclose(std, x.reshape(-1, 3).std(0, ddof=1))
    assert count == 37 * 5


def test_z_view_zero_copy_and_slices():
    z = np.arange(5 * 4 * 3, dtype=np.float16).reshape(5, 4, 3)
    col = z_column(z)
    view = z_view(col)
    np.testing.assert_array_equal(view, z)
    assert np.shares_memory(view, z_view(col))  # both views on the Arrow buffer
    np.testing.assert_array_equal(z_view(col.slice(2, 2)), z[2:4])
    np.testing.assert_array_equal(z_view(pa.chunked_array([col.slice(0, 1), col.slice(3)])), z[[0, 3, 4]])
    with pytest.raises(SchemaError, match="inf/NaN"):
        z_column(np.full((1, 2, 3), 1e6))


def test_rerun_skips_done_files_and_refuses_another_tokenizer(lat, tmp_path):
    files = sorted(f for f in os.listdir(lat["latents"]) if f.endswith(".parquet"))
    before = {f: os.stat(os.path.join(lat["latents"], f)).st_mtime_ns for f in files}
    again = extract_latents(ExtractConfig(tokenizer=lat["tok"], shards=lat["shards"], output=lat["latents"],
                                          device="cpu", num_workers=0))
    assert again["files_written"] == 0 and again["files_skipped"] == 2 and again["mean"] == lat["summary"]["mean"]
    assert before == {f: os.stat(os.path.join(lat["latents"], f)).st_mtime_ns for f in files}
    # one output file lost (an interrupted run): only that one is redone
    os.remove(os.path.join(lat["latents"], files[0]))
    redo = extract_latents(ExtractConfig(tokenizer=lat["tok"], shards=lat["shards"], output=lat["latents"],
                                         device="cpu", num_workers=0))
    assert redo["files_written"] == 1 and redo["files_skipped"] == 1 and redo["std"] == lat["summary"]["std"]
    other = make_tokenizer(tmp_path / "tok2", seed=1)
    with pytest.raises(SchemaError, match="new --output"):
        extract_latents(ExtractConfig(tokenizer=other, shards=lat["shards"], output=lat["latents"], device="cpu",
                                      num_workers=0))


def test_wrong_text_dim_refused(lat, tmp_path):
    tok = make_tokenizer(tmp_path / "tok32", text_dim=32)
    with pytest.raises(SchemaError, match="D=16"):
        extract_latents(ExtractConfig(tokenizer=tok, shards=lat["shards"], output=str(tmp_path / "out"), device="cpu"))


def test_shards_of_another_text_encoder_refused(lat, tmp_path):
    from textok.trainer.run_dir import check_text_encoder
    from textok.trainer.run_dir import write_text_encoder

    tok = make_tokenizer(tmp_path / "tok_other")
    write_text_encoder({"encoder": "google/t5-v1_1-xl", "D": TEXT_DIM, "max_tokens": MAX_TOKENS}, tok)
    with pytest.raises(SchemaError, match="encoder='tiny-t5'.*encoder='google/t5-v1_1-xl'.*text_encoder.json"):
        extract_latents(ExtractConfig(tokenizer=tok, shards=lat["shards"], output=str(tmp_path / "out"),
                                      device="cpu", num_workers=0))
    assert not os.path.exists(tmp_path / "out")
    # same encoder id: the weights' hash is compared when both sides record one
    write_text_encoder({"encoder": "tiny-t5", "encoder_hash": "sha256:aaa"}, tok)
    check_text_encoder(tok, {"encoder": "tiny-t5"}, "shards")
    check_text_encoder(tok, {"encoder": "tiny-t5", "encoder_hash": "sha256:aaa"}, "shards")
    with pytest.raises(SchemaError, match="encoder_hash='sha256:bbb'.*encoder_hash='sha256:aaa'"):
        check_text_encoder(tok, {"encoder": "tiny-t5", "encoder_hash": "sha256:bbb"}, "shards")
    # the same weights through another path: the hash decides, not the path string
    write_text_encoder({"encoder": "/models/a/t5", "encoder_hash": "sha256:aaa", "D": TEXT_DIM}, tok)
    check_text_encoder(tok, {"encoder": "/mnt/copy/t5", "encoder_hash": "sha256:aaa", "D": TEXT_DIM}, "shards")
    with pytest.raises(SchemaError, match="D=32.*D=16"):
        check_text_encoder(tok, {"encoder": "/mnt/copy/t5", "encoder_hash": "sha256:aaa", "D": 32}, "shards")


def test_tokenizer_without_an_encoder_record_is_refused_unless_it_ignores_text(lat, tmp_path):
    """Decision (issue 10): a text-reading tokenizer with no text_encoder.json cannot prove which
    embedding space it learned, so extract-latents refuses it instead of accepting any encoder."""
    bare = make_tokenizer(tmp_path / "bare", encoder=None)
    with pytest.raises(SchemaError, match="no text_encoder.json.*tokenizer/ folder train-tokenizer exports"):
        extract_latents(ExtractConfig(tokenizer=bare, shards=lat["shards"], output=str(tmp_path / "out"),
                                      device="cpu", num_workers=0))
    assert not os.path.exists(tmp_path / "out")
    no_text = make_tokenizer(tmp_path / "none", encoder=None, text_mode="none")
    s = extract_latents(ExtractConfig(tokenizer=no_text, shards=lat["shards"], output=str(tmp_path / "out2"),
                                      device="cpu", num_workers=0))
    assert s["files_written"] == 2


def test_loader_batches_resume_and_text(lat):
    loader = LatentLoader(lat["latents"], 5, with_text=True, seed=3, shuffle_buffer=6)
    it = iter(loader)
    first = [next(it) for _ in range(4)]
    assert first[0]["z"].shape == (5, NUM_TOKENS, 8) and first[0]["z"].dtype == torch.float32
    assert first[0]["text_emb"].shape == (5, MAX_TOKENS, TEXT_DIM) and first[0]["text_mask"].any(1).all()
    resumed = LatentLoader(lat["latents"], 5, with_text=True, seed=3, shuffle_buffer=6)
    fresh = LatentLoader(lat["latents"], 5, with_text=True, seed=3, shuffle_buffer=6)
    fresh_it = iter(fresh)
    for _ in range(2):
        next(fresh_it)
    resumed.load_state_dict(fresh.state_dict())
    b = next(iter(resumed))
    assert b["key"] == first[2]["key"] and torch.equal(b["z"], first[2]["z"])
    # one epoch in eval mode covers every row once
    keys = [k for batch in LatentLoader(lat["latents"], 5, train=False) for k in batch["key"]]
    assert sorted(keys) == [f"k{i:05d}" for i in range(24)]


def test_latents_without_text_refused_for_text(tmp_path):
    p = make_latents(str(tmp_path), with_text=False, rows_per_file=4)
    assert validate(p["latents"])[0]["meta"]["has_text"] is False
    LatentLoader(p["latents"], 2)  # class-conditional use is fine
    with pytest.raises(SchemaError, match="--text"):
        LatentLoader(p["latents"], 2, with_text=True)


def test_cli_extract_latents(lat, tmp_path):
    from click.testing import CliRunner

    from textok.cli import main

    res = CliRunner().invoke(main, ["extract-latents", "--tokenizer", lat["tok"], "--shards", lat["shards"],
                                    "--output", str(tmp_path / "l"), "--device", "cpu", "--num-workers", "0",
                                    "--no-text"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["files_written"] == 2 and out["count"] == 24 * NUM_TOKENS
    assert "text_emb" not in pa.parquet.read_schema(validate(str(tmp_path / "l"))[0]["path"]).names


def test_latents_open_in_duckdb_and_datasets(lat, tmp_path):
    import datasets
    import duckdb

    pattern = os.path.join(lat["latents"], "*.parquet")
    rows = duckdb.sql(f"select count(*), min(len(z)), max(len(z[1])) from read_parquet('{pattern}')").fetchall()
    assert rows == [(24, NUM_TOKENS, 8)]
    ds = datasets.load_dataset("parquet", data_files=pattern, split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 24 and np.asarray(ds[0]["z"]).shape == (NUM_TOKENS, 8)


def test_a_shards_dir_holding_two_splits_extracts_only_the_asked_split(tmp_path):
    # a shards/ dir holds train-* and val-*: val latents must not end up in the DiT's training set
    shards = str(tmp_path / "shards")
    for split in ("train", "val"):
        write_shards(shards, num_files=1, rows_per_file=4, dim=TEXT_DIM, max_tokens=MAX_TOKENS, image_size=32,
                     split=split)
    tok = make_tokenizer(tmp_path / "tok")
    extract_latents(ExtractConfig(tokenizer=tok, shards=shards, output=str(tmp_path / "lat"), device="cpu",
                                  num_workers=0))
    assert sorted(os.listdir(tmp_path / "lat")) == ["stats.json", "train-00000-of-00001.parquet"]
    extract_latents(ExtractConfig(tokenizer=tok, shards=shards, output=str(tmp_path / "lat_val"), split="val",
                                  device="cpu", num_workers=0))
    assert sorted(os.listdir(tmp_path / "lat_val")) == ["stats.json", "val-00000-of-00001.parquet"]
