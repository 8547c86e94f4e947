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

`text_emb` (version 3) is a binary blob per row: the unpadded `[text_len, D]` float16 matrix,
little-endian, row-major (`text_len * D * 2` bytes). Chosen by measurement (bench/shard_layout.py,
README "Shard layout v3"): at D=2048 a blob reads and decodes in ~0.05 ms/row against ~0.37 ms for
a flat `list<halffloat>` and ~0.45 ms for version 2's `list<fixed_size_list<float16, D>>` (Parquet
decodes a repetition level per value of a list; a blob has one value per row). The goal was
<= 0.25 ms/row; no typed list meets it, so `datasets` shows `text_emb` as bytes and DuckDB as a BLOB,
and the one-line reader is

    emb = np.frombuffer(row["text_emb"], "<f2").reshape(row["text_len"], D)   # D: metadata "D"

`text_emb_views` turns a column (either version) into numpy `[text_len, D]` views of the Arrow
buffer, without copying. Version 2 shards (`list<fixed_size_list<float16, D>>`) stay readable:
`text_emb_arrays` and the loader take both; `textok inspect` prints the version.

Compression (`shard_write_options`): none on `image.bytes` (JPEG/PNG are already entropy-coded:
zstd saves 0 % and costs a pass) and none on `text_emb` (zstd saves ~8 % of float16 values and
makes their read ~4x slower); zstd on the small columns. Row groups hold ~`ROW_GROUP_BYTES` (32 MiB)
of data, at least 16 and at most 1024 rows: a row group is the loader's unit of reading and of
shuffling (units are permuted across files each epoch), and one is held per worker plus its prefetch.

int8 storage (`textok encode --emb-dtype int8`, metadata storage_dtype "int8"): `text_emb` holds
int8 `[text_len, D]` bytes and a column `text_emb_scale` the float16 `[text_len]` per-token
scales (version 2: `list<fixed_size_list<int8, D>>` and `list<float16>`); each scale is the
token's absmax / 127, so a token vector is `q * scale` (symmetric per-token quantisation: one
outlier channel costs only its own token's resolution). At T5-XL's D = 2048 this halves the
embedding bytes (1 byte per value + 2 per token), which at ImageNet scale are most of the dataset.
`text_emb_arrays(table)` decodes either storage to float16 `[len, D]` (zero-copy for float16).

Pools and latents keep the typed `list<fixed_size_list<float16, D>>` (`text_emb_type`): they are
small, read once, and their readers gain nothing from the blob.

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
SHARDS_VERSION = "3"  # 1: `image` was plain binary; 2: `text_emb` a nested typed list (slow to read)
READABLE_VERSIONS = ("2",)  # older versions the trainer still reads as they are
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])  # datasets' Image()
_HF_VALUES = {pa.string(): "string", pa.int8(): "int8", pa.int32(): "int32", pa.int64(): "int64", pa.float16(): "float16",
              pa.float32(): "float32", pa.bool_(): "bool", pa.binary(): "binary"}
EMB_DTYPES = {"float16": pa.float16(), "int8": pa.int8()}
SCALE_COLUMN = "text_emb_scale"
SCALE_TYPE = pa.list_(pa.float16())  # version 2
BLOB_TYPE = pa.binary()  # version 3 `text_emb` and `text_emb_scale`
ROW_GROUP_BYTES = 32 << 20
ROW_GROUP_ROWS = (16, 1024)  # bounds of a row group in rows


def text_emb_type(dim: int, dtype: str = "float16") -> pa.DataType:
    if dtype not in EMB_DTYPES:
        raise SchemaError(f"embedding storage dtype {dtype!r}: expected one of {sorted(EMB_DTYPES)}")
    return pa.list_(pa.list_(EMB_DTYPES[dtype], int(dim)))


def shards_schema(dim: int, dtype: str = "float16", version: str = SHARDS_VERSION) -> pa.Schema:
    """The shards schema; `version` "2" gives the nested `text_emb` of version 2 (tests of old shards)."""
    if dtype not in EMB_DTYPES:
        raise SchemaError(f"embedding storage dtype {dtype!r}: expected one of {sorted(EMB_DTYPES)}")
    v2 = version == "2"
    scale = [pa.field(SCALE_COLUMN, SCALE_TYPE if v2 else BLOB_TYPE, nullable=False)] if dtype == "int8" else []
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
        pa.field("text_emb", text_emb_type(dim, dtype) if v2 else BLOB_TYPE, nullable=False),
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
    """`pq.write_table` options for a table with a typed-list `text_emb` (version 2, pools, latents):
    float16 values without dictionary encoding. float16 has only 65,536 values, so Parquet
    dictionary-encodes the column, which makes it larger and its reads ~3.5x slower (measured: 75 vs
    20 ms per 32 rows of [55, 1024]), and reading is the loader's cost. int8 keeps it: there the
    dictionary is both smaller and fast. A blob `text_emb` (version 3) is never dictionary-encoded."""
    t = schema.field("text_emb").type
    if t.equals(BLOB_TYPE) or t.value_type.value_type == pa.float16():
        return {"use_dictionary": [n for n in schema.names if n not in ("text_emb", SCALE_COLUMN, "image")]}
    return {}


def shard_row_group_size(table: pa.Table) -> int:
    """Rows per row group: ~ROW_GROUP_BYTES of in-memory data, within ROW_GROUP_ROWS (see the module doc)."""
    per_row = table.nbytes / max(1, table.num_rows)
    return int(min(ROW_GROUP_ROWS[1], max(ROW_GROUP_ROWS[0], ROW_GROUP_BYTES // max(1, per_row))))


def shard_write_options(table: pa.Table) -> dict:
    """`write_table_atomic` / `pq.write_table` options of a shards table: per-column compression
    (none on image bytes and embeddings, zstd on the rest), no dictionary on the big columns,
    row groups of ~ROW_GROUP_BYTES."""
    raw = {"image.bytes", "text_emb", SCALE_COLUMN}
    return {"compression": {n: "none" if n in raw else "zstd" for n in _leaf_paths(table.schema)},
            "row_group_size": shard_row_group_size(table), **parquet_write_options(table.schema)}


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """Parquet column paths of the leaves pyarrow's per-column options name ("image.bytes", ...)."""
    out = []
    for f in schema:
        if pa.types.is_struct(f.type):
            out += [f"{f.name}.{c.name}" for c in f.type]
        else:
            out.append(f.name)
    return out


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


def _blob_column(parts: list[np.ndarray]) -> pa.Array:
    """One binary value per array (its raw bytes): built on the concatenated buffer, no per-row bytes."""
    sizes = np.fromiter((p.nbytes for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if offsets[-1] >= 2 ** 31:
        raise SchemaError(f"text_emb of {len(parts)} rows holds {offsets[-1]} bytes, over the 2 GiB of one binary "
                          f"chunk: write fewer rows per shard (--rows-per-shard)")
    data = np.concatenate([np.ascontiguousarray(p).reshape(-1).view(np.uint8) for p in parts]) if parts \
        else np.zeros(0, np.uint8)
    return pa.Array.from_buffers(BLOB_TYPE, len(parts), [None, pa.py_buffer(offsets.astype(np.int32)),
                                                         pa.py_buffer(data)])


def text_emb_blob_columns(embeddings: list[np.ndarray], dim: int, dtype: str = "float16") -> dict[str, pa.Array]:
    """The version 3 text columns from unpadded float `[len_i, D]` arrays: {"text_emb": float16 or int8
    bytes, + "text_emb_scale": float16 bytes when int8}. Refuses inf/NaN like `text_emb_column`."""
    _check_shapes(embeddings, dim)
    if dtype == "int8":
        pairs = [quantize_int8(e) for e in embeddings]
        return {"text_emb": _blob_column([q for q, _ in pairs]), SCALE_COLUMN: _blob_column([sc for _, sc in pairs])}
    if dtype != "float16":
        raise SchemaError(f"embedding storage dtype {dtype!r}: expected one of {sorted(EMB_DTYPES)}")
    parts = [np.asarray(e, dtype="<f2") for e in embeddings]
    if not all(np.isfinite(p).all() for p in parts):
        raise SchemaError("text_emb holds inf/NaN after the cast to float16 (an overflow): refusing to store it")
    return {"text_emb": _blob_column(parts)}


def _check_shapes(embeddings: list[np.ndarray], dim: int) -> None:
    for i, e in enumerate(embeddings):
        if e.ndim != 2 or e.shape[1] != dim:
            raise SchemaError(f"text_emb row {i}: shape {e.shape}, expected [text_len, {dim}]")


def text_emb_int8_columns(embeddings: list[np.ndarray], dim: int) -> tuple[pa.Array, pa.Array]:
    """(`text_emb` int8 column, `text_emb_scale` column) of version 2 from unpadded float `[len_i, D]` arrays."""
    for i, e in enumerate(embeddings):
        if e.ndim != 2 or e.shape[1] != dim:
            raise SchemaError(f"text_emb row {i}: shape {e.shape}, expected [text_len, {dim}]")
    pairs = [quantize_int8(e) for e in embeddings]
    lengths = np.array([e.shape[0] for e in embeddings], dtype=np.int32)
    q = np.concatenate([p[0].reshape(-1) for p in pairs]) if pairs else np.zeros(0, np.int8)
    s = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.float16)
    return _list_column(q, lengths, dim, pa.int8()), _list_column(s, lengths, None, pa.float16())


def text_emb_column(embeddings: list[np.ndarray], dim: int) -> pa.Array:
    """Build the typed `text_emb` column (version 2 shards, pools, latents) from unpadded float16 `[len_i, D]` arrays.

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


def _blob_views(column: pa.Array | pa.ChunkedArray, dtype, dim: int | None, name: str = "text_emb") -> list[np.ndarray]:
    """Zero-copy `[n, dim]` (or `[n]` when dim is None) views of the values of a binary column."""
    dtype = np.dtype(dtype)
    width = dtype.itemsize * (dim or 1)
    out: list[np.ndarray] = []
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if chunk.null_count:
            raise SchemaError(f"{name} column holds nulls")
        _, offs, buf = chunk.buffers()
        # a sliced chunk keeps the parent's buffers: skip to its own offsets (absolute into the data)
        offsets = np.frombuffer(offs, np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
        data = np.frombuffer(buf, np.uint8) if buf is not None else np.zeros(0, np.uint8)
        for i in range(len(chunk)):
            row = data[int(offsets[i]):int(offsets[i + 1])]
            if len(row) % width:
                raise SchemaError(f"{name} row {i}: {len(row)} bytes is not a whole number of "
                                  f"{dim or 1} x {dtype} tokens (metadata D={dim})")
            row = row.view(dtype)
            out.append(row.reshape(-1, dim) if dim else row)
    return out


def is_blob(column_type: pa.DataType) -> bool:
    """True for a version 3 `text_emb` (raw bytes), False for the typed nested list."""
    return column_type.equals(BLOB_TYPE)


def text_emb_views(column: pa.Array | pa.ChunkedArray, dim: int | None = None, dtype: str = "float16") -> list[np.ndarray]:
    """Zero-copy numpy `[text_len, D]` views of a `text_emb` column (one per row; float16, or the
    raw int8 values of int8 storage -- `text_emb_arrays` decodes those). A version 3 (blob) column
    needs `dim` (metadata "D") and its storage `dtype`; a typed column carries both."""
    if is_blob(column.type):
        if not dim:
            raise SchemaError("a version 3 text_emb (bytes) needs D to be viewed: pass dim=metadata['D']")
        return _blob_views(column, "<f2" if dtype == "float16" else np.int8, dim)
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


def text_emb_arrays(table: pa.Table, dim: int | None = None) -> list[np.ndarray]:
    """float16 `[text_len, D]` per row of a table holding `text_emb` (+ `text_emb_scale` when int8),
    of either shard version (`dim`, metadata "D", is needed for version 3).

    float16 storage: zero-copy views. int8 storage: decoded (`q * scale`), one copy per row.
    """
    column = table.column("text_emb")
    int8 = SCALE_COLUMN in table.column_names
    if not is_blob(column.type):
        if column.type.value_type.value_type == pa.float16():
            return text_emb_views(column)
        int8 = True
    elif not int8:
        return text_emb_views(column, dim)
    if SCALE_COLUMN not in table.column_names:
        raise SchemaError(f"int8 text_emb needs its {SCALE_COLUMN!r} column: read it with text_emb")
    scales = table.column(SCALE_COLUMN)
    scales = _blob_views(scales, "<f2", None, SCALE_COLUMN) if is_blob(scales.type) else _scale_views(scales)
    return [dequantize_int8(q, s) for q, s in zip(text_emb_views(column, dim, "int8"), scales)]


def check_text_columns(path: str, info: dict, pf: pq.ParquetFile) -> None:
    """`text_emb` has the file's own D and storage dtype (int8: with its scale column); positive
    max_tokens (shards and pools)."""
    meta = info["meta"]
    dim = int(meta["D"])
    dtype = meta.get("storage_dtype")
    if dtype not in EMB_DTYPES:
        raise SchemaError(f"{path}: metadata storage_dtype is {dtype!r}, expected one of {sorted(EMB_DTYPES)}")
    blob = info.get("table") == "shards" and info.get("schema_version") == SHARDS_VERSION
    expected = BLOB_TYPE if blob else text_emb_type(dim, dtype)
    got = pf.schema_arrow.field("text_emb").type
    if not got.equals(expected):
        raise SchemaError(f"{path}: column 'text_emb' has type {got}, expected {expected} "
                          f"(metadata D={dim}, storage_dtype={dtype}, version {info.get('schema_version')})")
    if dtype != "int8" and pf.schema_arrow.get_field_index(SCALE_COLUMN) >= 0:
        raise SchemaError(f"{path}: metadata storage_dtype={dtype} but the file has a {SCALE_COLUMN!r} column, which "
                          f"only int8 storage has: the metadata or the column is wrong")
    if dtype == "int8":
        scale_type = BLOB_TYPE if blob else SCALE_TYPE
        idx = pf.schema_arrow.get_field_index(SCALE_COLUMN)
        if idx < 0 or not pf.schema_arrow.field(idx).type.equals(scale_type):
            raise SchemaError(f"{path}: storage_dtype int8 needs a column {SCALE_COLUMN!r} of type {scale_type}")
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
    readable_versions=READABLE_VERSIONS,
    old_versions={"1": "version 1 shards store `image` as plain bytes (datasets shows bytes, not pictures); the "
                       "trainer still reads them; re-run `textok encode` into a new --output to "
                       "upgrade (the captions are reused, nothing is re-captioned)"},
))
