"""The training shards table and zero-copy `text_emb` decoding.

Columns: key, split, label, class_name, caption, image, image_format, width, height, text_emb,
text_len. `width`/`height` are those of the decoded image with its EXIF orientation applied
(`schemas.images.decode_image`), so decode `image` the same way.

`image` is a struct {bytes: encoded image (JPEG/PNG, original or re-encoded), path: null}: the
storage of Hugging Face `datasets`' `Image()` feature. The Parquet schema metadata carries the
`datasets` features (key b"huggingface"), so

    datasets.load_dataset("parquet", data_files="out/shards/train-*.parquet")["train"][0]["image"]

is a PIL image (and the Hub's dataset viewer shows pictures); pyarrow and DuckDB read
`image.bytes` (`SELECT image.bytes FROM 'train-*.parquet'`). `image_bytes` reads the bytes of
either version of the column, so the trainer still loads version 1 shards (plain binary `image`);
`validate` names the upgrade (re-encode) for them.

`text_emb` is `list<fixed_size_list<float16, D>>`: one unpadded `[text_len, D]` matrix per
row, stored as a typed Arrow list (opens as-is in pyarrow, `datasets` and DuckDB).
`text_emb_views` turns a column into numpy `[text_len, D]` views of the Arrow buffer,
without copying.

int8 storage (`textok encode --emb-dtype int8`, metadata storage_dtype "int8"): `text_emb` is
`list<fixed_size_list<int8, D>>` and a column `text_emb_scale` (`list<float16>`, one scale per
token) holds each token's absmax / 127, so a token vector is `q * scale` (symmetric per-token
quantisation: one outlier channel costs only its own token's resolution). At T5-XL's D = 2048
this halves the embedding bytes (1 byte per value + 2 per token), which at ImageNet scale are
most of the dataset. `text_emb_arrays(table)` decodes either storage to float16 `[len, D]`
(zero-copy for float16).

Metadata (`textok.meta`): encoder, encoder_revision, encoder_hash, D, max_tokens,
compute_dtype, storage_dtype ("float16" or "int8"), image_mode, split, num_rows.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from textok.schemas.common import SchemaError, TableSpec, register_table

TEXT_META_KEYS = ("encoder", "D", "max_tokens", "compute_dtype", "storage_dtype")
SHARDS_VERSION = "2"  # 1: `image` was plain binary (datasets saw bytes, not pictures)
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])  # datasets' Image()
_HF_VALUES = {pa.string(): "string", pa.int8(): "int8", pa.int32(): "int32", pa.int64(): "int64", pa.float16(): "float16",
              pa.float32(): "float32", pa.bool_(): "bool"}
EMB_DTYPES = {"float16": pa.float16(), "int8": pa.int8()}
SCALE_COLUMN = "text_emb_scale"
SCALE_TYPE = pa.list_(pa.float16())


def text_emb_type(dim: int, dtype: str = "float16") -> pa.DataType:
    if dtype not in EMB_DTYPES:
        raise SchemaError(f"embedding storage dtype {dtype!r}: expected one of {sorted(EMB_DTYPES)}")
    return pa.list_(pa.list_(EMB_DTYPES[dtype], int(dim)))


def shards_schema(dim: int, dtype: str = "float16") -> pa.Schema:
    scale = [pa.field(SCALE_COLUMN, SCALE_TYPE, nullable=False)] if dtype == "int8" else []
    schema = pa.schema([
        pa.field("key", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("label", pa.int32()),
        pa.field("class_name", pa.string()),
        pa.field("caption", pa.string(), nullable=False),
        # nullable in the file: `datasets` applies the Image() feature only to a field equal to its
        # own (nullable) one; validate still refuses null images (REQUIRED_IMAGE below)
        pa.field("image", IMAGE_TYPE),
        pa.field("image_format", pa.string(), nullable=False),  # "jpeg", "png", ... (PIL format, lower case)
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("text_emb", text_emb_type(dim, dtype), nullable=False),
        pa.field("text_len", pa.int32(), nullable=False),
    ] + scale)
    return schema.with_metadata({b"huggingface": json.dumps({"info": {"features": hf_features(schema)}}).encode()})


def hf_features(schema: pa.Schema) -> dict:
    """The `datasets` features of a textok table, as `datasets.Features.to_dict()` writes them:
    `image` columns are `Image()` (decoded to PIL), typed lists `Sequence` (the spelling every
    `datasets` version since 2.x reads), scalars `Value`."""
    def feature(t: pa.DataType) -> dict:
        if t.equals(IMAGE_TYPE):
            return {"_type": "Image"}
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
            return {"feature": feature(t.value_type), "length": t.list_size if pa.types.is_fixed_size_list(t) else -1,
                    "_type": "Sequence"}
        return {"dtype": _HF_VALUES[t], "_type": "Value"}

    return {f.name: feature(f.type) for f in schema}


def image_column(images: list[bytes]) -> pa.Array:
    """Encoded image bytes -> the `image` column ({bytes, path=None} per row)."""
    return pa.StructArray.from_arrays([pa.array(images, pa.binary()), pa.nulls(len(images), pa.string())],
                                      fields=list(IMAGE_TYPE))


def image_bytes(column: pa.Array | pa.ChunkedArray) -> list[bytes]:
    """The encoded bytes of each row of an `image` column, of this version ({bytes, path}) or of
    version 1 shards (plain binary)."""
    if pa.types.is_struct(column.type):
        column = pa.chunked_array([c.field("bytes") for c in column.chunks]) \
            if isinstance(column, pa.ChunkedArray) else column.field("bytes")
    return column.to_pylist()


def parquet_write_options(schema: pa.Schema) -> dict:
    """`pq.write_table` options for a table with `text_emb`: float16 values without dictionary
    encoding. float16 has only 65,536 values, so Parquet dictionary-encodes the column, which makes
    it larger and its reads ~3.5x slower (measured: 75 vs 20 ms per 32 rows of [55, 1024]), and
    reading is the loader's cost. int8 keeps it: there the dictionary is both smaller and fast."""
    if schema.field("text_emb").type.value_type.value_type == pa.float16():
        return {"use_dictionary": [n for n in schema.names if n != "text_emb"]}
    return {}


def quantize_int8(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float `[len, D]` -> (int8 `[len, D]`, float16 `[len]` scale): symmetric per-token absmax.

    The scale is rounded to float16 *before* quantising, so `q * scale` decodes with the very
    scale that is stored. An all-zero token gets scale 0 and decodes to zeros.
    """
    x = np.asarray(emb, dtype=np.float32)
    if not np.isfinite(x).all():
        raise SchemaError("text_emb holds inf/NaN: refusing to quantise it")
    scale = (np.abs(x).max(axis=1) / 127.0).astype(np.float16)
    s32 = scale.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s32[:, None] > 0, np.rint(x / s32[:, None]), 0.0)
    return np.clip(q, -127, 127).astype(np.int8), scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(int8 `[len, D]`, float16 `[len]`) -> float16 `[len, D]` (computed in float32)."""
    return (q.astype(np.float32) * scale.astype(np.float32)[:, None]).astype(np.float16)


def _list_column(flat: np.ndarray, lengths: np.ndarray, dim: int | None, type_: pa.DataType) -> pa.Array:
    values = pa.array(flat, type=type_)
    inner = pa.FixedSizeListArray.from_arrays(values, dim) if dim else values
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


def text_emb_int8_columns(embeddings: list[np.ndarray], dim: int) -> tuple[pa.Array, pa.Array]:
    """(`text_emb` int8 column, `text_emb_scale` column) from unpadded float `[len_i, D]` arrays."""
    for i, e in enumerate(embeddings):
        if e.ndim != 2 or e.shape[1] != dim:
            raise SchemaError(f"text_emb row {i}: shape {e.shape}, expected [text_len, {dim}]")
    pairs = [quantize_int8(e) for e in embeddings]
    lengths = np.array([e.shape[0] for e in embeddings], dtype=np.int32)
    q = np.concatenate([p[0].reshape(-1) for p in pairs]) if pairs else np.zeros(0, np.int8)
    s = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.float16)
    return _list_column(q, lengths, dim, pa.int8()), _list_column(s, lengths, None, pa.float16())


def text_emb_column(embeddings: list[np.ndarray], dim: int) -> pa.Array:
    """Build the `text_emb` Arrow column from unpadded float16 `[len_i, D]` arrays.

    Refuses inf/NaN (float16 overflow) loudly: a silently corrupted embedding would train.
    """
    lengths = np.fromiter((e.shape[0] for e in embeddings), dtype=np.int32, count=len(embeddings))
    for i, e in enumerate(embeddings):
        if e.ndim != 2 or e.shape[1] != dim:
            raise SchemaError(f"text_emb row {i}: shape {e.shape}, expected [text_len, {dim}]")
    flat = np.concatenate([np.asarray(e, dtype=np.float16).reshape(-1) for e in embeddings]) if embeddings \
        else np.zeros(0, np.float16)
    if not np.isfinite(flat).all():
        raise SchemaError("text_emb holds inf/NaN after the cast to float16 (an overflow): refusing to store it")
    return _list_column(flat, lengths, dim, pa.float16())


def text_emb_views(column: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """Zero-copy numpy `[text_len, D]` views of a `text_emb` column (one per row; float16, or the
    raw int8 values of int8 storage -- `text_emb_arrays` decodes those)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out: list[np.ndarray] = []
    for chunk in chunks:
        if chunk.null_count:
            raise SchemaError("text_emb column holds nulls")
        inner = chunk.values  # FixedSizeListArray backing the list (the list's own slice ignored)
        dim = inner.type.list_size
        # `.values` of a fixed-size list ignores its offset too; skip it by hand.
        flat = inner.values.to_numpy(zero_copy_only=True)[inner.offset * dim:]
        mat = flat[: (len(flat) // dim) * dim].reshape(-1, dim)
        offsets = chunk.offsets.to_numpy(zero_copy_only=True)  # absolute into `inner`
        out.extend(mat[int(offsets[i]): int(offsets[i + 1])] for i in range(len(chunk)))
    return out


def _scale_views(column: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """Zero-copy float16 `[text_len]` views of a `text_emb_scale` column."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out: list[np.ndarray] = []
    for chunk in chunks:
        if chunk.null_count:
            raise SchemaError(f"{SCALE_COLUMN} column holds nulls")
        flat = chunk.values.to_numpy(zero_copy_only=True)  # a primitive child keeps its own offset
        offsets = chunk.offsets.to_numpy(zero_copy_only=True)  # absolute into `values`
        out.extend(flat[int(offsets[i]):int(offsets[i + 1])] for i in range(len(chunk)))
    return out


def text_emb_arrays(table: pa.Table) -> list[np.ndarray]:
    """float16 `[text_len, D]` per row of a table holding `text_emb` (+ `text_emb_scale` when int8).

    float16 storage: zero-copy views. int8 storage: decoded (`q * scale`), one copy per row.
    """
    column = table.column("text_emb")
    if column.type.value_type.value_type == pa.float16():
        return text_emb_views(column)
    if SCALE_COLUMN not in table.column_names:
        raise SchemaError(f"int8 text_emb needs its {SCALE_COLUMN!r} column: read it with text_emb")
    return [dequantize_int8(q, s) for q, s in zip(text_emb_views(column), _scale_views(table.column(SCALE_COLUMN)))]


def check_text_columns(path: str, info: dict, pf: pq.ParquetFile) -> None:
    """`text_emb` has the file's own D and storage dtype (int8: with its scale column); positive
    max_tokens (shards and pools)."""
    meta = info["meta"]
    dim = int(meta["D"])
    dtype = meta.get("storage_dtype")
    if dtype not in EMB_DTYPES:
        raise SchemaError(f"{path}: metadata storage_dtype is {dtype!r}, expected one of {sorted(EMB_DTYPES)}")
    expected = text_emb_type(dim, dtype)
    got = pf.schema_arrow.field("text_emb").type
    if not got.equals(expected):
        raise SchemaError(f"{path}: column 'text_emb' has type {got}, expected {expected} "
                          f"(metadata D={dim}, storage_dtype={dtype})")
    if dtype == "int8":
        idx = pf.schema_arrow.get_field_index(SCALE_COLUMN)
        if idx < 0 or not pf.schema_arrow.field(idx).type.equals(SCALE_TYPE):
            raise SchemaError(f"{path}: storage_dtype int8 needs a column {SCALE_COLUMN!r} of type {SCALE_TYPE}")
    if int(meta["max_tokens"]) <= 0:
        raise SchemaError(f"{path}: metadata max_tokens must be positive, got {meta['max_tokens']!r}")


# The registered schema uses D=1 as a placeholder for the type check of the other columns;
# `check_text_columns` checks `text_emb` against the file's own D.
REQUIRED_IMAGE = pa.field("image", IMAGE_TYPE, nullable=False)
SHARDS = register_table(TableSpec(
    "shards",
    pa.schema([REQUIRED_IMAGE if f.name == "image" else f for f in shards_schema(1) if f.name != "text_emb"]),
    required_meta=TEXT_META_KEYS,
    extra_check=check_text_columns,
    version=SHARDS_VERSION,
    old_versions={"1": "version 1 shards store `image` as plain bytes (datasets shows bytes, not pictures); the "
                       "trainer still reads them; re-run `textok encode` into a new --output to "
                       "upgrade (the captions are reused, nothing is re-captioned)"},
))
