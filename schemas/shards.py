"""The training shards table and zero-copy `text_emb` decoding.

Columns: key, split, label, class_name, caption, image (encoded bytes), image_format,
width, height, text_emb, text_len. `width`/`height` are those of the decoded image with its
EXIF orientation applied (`pipeline.images.decode_image`), so decode `image` the same way.

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

from textok.schemas.common import SchemaError, TableSpec, register_table

TEXT_META_KEYS = ("encoder", "D", "max_tokens", "compute_dtype", "storage_dtype")


def text_emb_type(dim: int) -> pa.DataType:
    return pa.list_(pa.list_(pa.float16(), int(dim)))


def shards_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("key", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("label", pa.int32()),
        pa.field("class_name", pa.string()),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("image_format", pa.string(), nullable=False),  # "jpeg", "png", ... (PIL format, lower case)
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("text_emb", text_emb_type(dim), nullable=False),
        pa.field("text_len", pa.int32(), nullable=False),
    ])


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
SHARDS = register_table(TableSpec(
    "shards",
    pa.schema([f for f in shards_schema(1) if f.name != "text_emb"]),
    required_meta=TEXT_META_KEYS,
    extra_check=check_text_columns,
))
