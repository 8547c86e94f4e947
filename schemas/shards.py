"""The training shards table and zero-copy `text_emb` decoding.

Columns: key, split, label, class_name, caption, image, image_format, width, height, text_emb,
text_len. `width`/`height` are those of the decoded image with its EXIF orientation applied
(`pipeline.images.decode_image`), so decode `image` the same way.

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
`text_emb_views` turns a column into numpy `[text_len, D]` float16 views of the Arrow
buffer, without copying.

Metadata (`textok.meta`): encoder, encoder_revision, encoder_hash, D, max_tokens,
compute_dtype, storage_dtype ("float16"), image_mode, split, num_rows.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import json

from textok.schemas.common import SchemaError, TableSpec, register_table

TEXT_META_KEYS = ("encoder", "D", "max_tokens", "compute_dtype", "storage_dtype")
SHARDS_VERSION = "2"  # 1: `image` was plain binary (datasets saw bytes, not pictures)
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])  # datasets' Image()
_HF_VALUES = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64", pa.float16(): "float16",
              pa.float32(): "float32", pa.bool_(): "bool"}


def text_emb_type(dim: int) -> pa.DataType:
    return pa.list_(pa.list_(pa.float16(), int(dim)))


def shards_schema(dim: int) -> pa.Schema:
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
        pa.field("text_emb", text_emb_type(dim), nullable=False),
        pa.field("text_len", pa.int32(), nullable=False),
    ])
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
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float16()), dim)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


def text_emb_views(column: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """Zero-copy numpy float16 `[text_len, D]` views of a `text_emb` column (one per row)."""
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


def check_text_columns(path: str, info: dict, pf: pq.ParquetFile) -> None:
    """`text_emb` has the file's own D; float16 storage; positive max_tokens (shards and pools)."""
    meta = info["meta"]
    dim = int(meta["D"])
    expected = text_emb_type(dim)
    got = pf.schema_arrow.field("text_emb").type
    if not got.equals(expected):
        raise SchemaError(f"{path}: column 'text_emb' has type {got}, expected {expected} (metadata D={dim})")
    if meta.get("storage_dtype") != "float16":
        raise SchemaError(f"{path}: metadata storage_dtype is {meta.get('storage_dtype')!r}, expected 'float16'")
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
