"""int8 text embeddings: per-token absmax quantisation, the shards contract, encode -> inspect -> loader."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from test_encode import make_captions_dir
from test_text_encoder import build_tiny_t5
from textok.cli import main
from textok.pipeline.encode.pipeline import run_encode
from textok.pipeline.inspect_table import inspect_table
from textok.schemas.common import SchemaError, validate, validate_file, with_metadata
from textok.schemas.shards import (SCALE_COLUMN, dequantize_int8, quantize_int8, text_emb_arrays,
                                   text_emb_column, text_emb_int8_columns)
from textok.trainer.data.loader import ShardLoader


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def test_quantize_round_trip_per_token_and_zero_tokens():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 256)).astype(np.float32) * np.array([1e-3, 0.1, 1, 10, 300, 1])[:, None]
    x[5] = 0.0  # an all-zero token
    x[4, 7] = 5000.0  # an outlier costs only its own token's resolution
    q, s = quantize_int8(x)
    assert q.dtype == np.int8 and s.dtype == np.float16 and s.shape == (6,) and np.abs(q).max() == 127
    y = dequantize_int8(q, s)
    assert y.dtype == np.float16 and not y[5].any() and s[5] == 0
    assert _cos(x[:4], y[:4]).min() > 0.999
    with pytest.raises(SchemaError, match="inf/NaN"):
        quantize_int8(np.array([[np.inf, 1.0]]))


def test_int8_columns_decode_like_float16_even_when_sliced():
    rng = np.random.default_rng(1)
    embs = [rng.standard_normal((n, 16)).astype(np.float16) for n in (3, 1, 5, 2)]
    q, s = text_emb_int8_columns(embs, 16)
    table = pa.table({"text_emb": q, SCALE_COLUMN: s})
    for t in (table, table.slice(1, 3), pa.concat_tables([table.slice(0, 2), table.slice(2)])):
        start = 0 if t.num_rows == 4 else 1
        decoded = text_emb_arrays(t)
        assert [len(d) for d in decoded] == [len(e) for e in embs[start:start + t.num_rows]]
        for d, e in zip(decoded, embs[start:]):
            assert _cos(d, e).min() > 0.999
    f16 = pa.table({"text_emb": text_emb_column(embs, 16)})
    assert all(np.shares_memory(v, f16["text_emb"].chunk(0).values.values.to_numpy()) for v in text_emb_arrays(f16))
    with pytest.raises(SchemaError, match=SCALE_COLUMN):
        text_emb_arrays(table.drop_columns([SCALE_COLUMN]))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    t5 = build_tiny_t5(str(root / "t5"), d_model=64)
    caps = make_captions_dir(str(root / "cap"), n_train=10, n_val=2)
    runs = {dt: run_encode(caps, str(root / dt), encoder=t5, rows_per_shard=5, device="cpu", emb_dtype=dt)
            for dt in ("float16", "int8")}
    return root, caps, t5, runs


def test_encode_int8_shards_validate_decode_and_halve_the_embedding_bytes(encoded):
    root, caps, t5, runs = encoded
    assert runs["int8"]["emb_dtype"] == "int8" and runs["int8"]["rows"] == runs["float16"]["rows"] == 10
    infos = validate(str(root / "int8" / "shards"), expect_table="shards")
    assert {i["meta"]["storage_dtype"] for i in infos} == {"int8"}
    f16 = pq.read_table(str(root / "float16" / "shards"))
    i8 = pq.read_table(str(root / "int8" / "shards"))
    assert i8.schema.field("text_emb").type == pa.binary()  # version 3: int8 bytes of [text_len, D]
    assert len(i8["text_emb"][0].as_py()) == i8["text_len"][0].as_py() * 64
    cos = np.concatenate([_cos(a, b) for a, b in zip(text_emb_arrays(i8, 64), text_emb_arrays(f16, 64))])
    assert cos.mean() > 0.999 and cos.min() > 0.99
    r16, r8 = (inspect_table(str(root / dt / "shards"), project_rows=1000) for dt in ("float16", "int8"))
    assert (r16["storage_dtype"], r8["storage_dtype"]) == ("float16", "int8")
    ratio = r8["bytes_per_example"]["embedding"] / r16["bytes_per_example"]["embedding"]
    assert ratio < 0.7, ratio  # D = 64 here: (64 + 2) / 128 before compression
    assert r8["projected"]["embedding_GB"] < r16["projected"]["embedding_GB"]
    r = CliRunner().invoke(main, ["inspect", str(root / "int8" / "shards"), "--project-rows", "1000"])
    assert r.exit_code == 0 and "(int8)" in r.output and "projected for 1000 rows" in r.output, r.output
    with pytest.raises(ValueError, match="emb_dtype"):  # one output folder, one storage dtype
        run_encode(caps, str(root / "int8"), encoder=t5, rows_per_shard=5, device="cpu")


def test_loader_reads_int8_shards_like_float16_ones(encoded):
    root = encoded[0]
    kw = dict(image_size=16, batch_size=5, train=False, split="train")
    b8 = next(iter(ShardLoader(str(root / "int8" / "shards"), **kw)))
    b16 = next(iter(ShardLoader(str(root / "float16" / "shards"), **kw)))
    assert b8["key"] == b16["key"] and b8["text_emb"].dtype == b16["text_emb"].dtype
    assert np.array_equal(b8["text_mask"].numpy(), b16["text_mask"].numpy())
    m = b8["text_mask"].numpy()
    assert _cos(b8["text_emb"].numpy()[m], b16["text_emb"].numpy()[m]).min() > 0.99


def test_int8_contract_violations_fail_clearly(encoded, tmp_path):
    root = encoded[0]
    path = sorted((root / "int8" / "shards").glob("*.parquet"))[0]
    t = pq.read_table(path)
    no_scale = t.drop_columns([SCALE_COLUMN])
    pq.write_table(no_scale, tmp_path / "a.parquet")
    with pytest.raises(SchemaError, match=f"needs a column '{SCALE_COLUMN}'"):
        validate_file(str(tmp_path / "a.parquet"))
    meta = {k.decode(): v for k, v in t.schema.metadata.items()}
    import json

    wrong = json.loads(meta["textok.meta"]) | {"storage_dtype": "float16"}
    pq.write_table(t.replace_schema_metadata(None).cast(with_metadata(t.schema, "shards", "encode", wrong)),
                   tmp_path / "b.parquet")
    with pytest.raises(SchemaError, match="storage_dtype=float16"):
        validate_file(str(tmp_path / "b.parquet"))
    assert os.path.exists(path)
