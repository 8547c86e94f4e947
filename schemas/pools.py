"""The per-class caption pools table.

Class-conditional generation with TexTok needs a caption at sampling time: one is drawn from a
pool of captions of *unseen* images of the class (val split, or a held-out slice of train that
the training shards exclude). Columns: label, class_name, key, caption, text_emb, text_len —
`text_emb` has the same type as in the shards (`list<fixed_size_list<float16, D>>`), decoded
zero-copy with `schemas.shards.text_emb_views`.

Metadata (`textok.meta`): the shards' encoder keys (encoder, D, max_tokens, compute_dtype,
storage_dtype, ...) + per_class (K), seed, source_split, pool_holdout_fraction, captions (the source folder).
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from textok.schemas.common import SchemaError, TableSpec, register_table
from textok.schemas.shards import TEXT_META_KEYS, check_text_columns, text_emb_type

POOL_META_KEYS = TEXT_META_KEYS + ("per_class", "seed", "source_split")


def pools_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("label", pa.int32(), nullable=False),
        pa.field("class_name", pa.string()),
        pa.field("key", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("text_emb", text_emb_type(dim), nullable=False),
        pa.field("text_len", pa.int32(), nullable=False),
    ])


def _check_pools(path: str, info: dict, pf: pq.ParquetFile) -> None:
    check_text_columns(path, info, pf)
    if int(info["meta"]["per_class"]) <= 0:
        raise SchemaError(f"{path}: metadata per_class must be positive, got {info['meta']['per_class']!r}")


# As for shards, `text_emb` is checked against the file's own D in `check_text_columns`.
POOLS = register_table(TableSpec(
    "pools",
    pa.schema([f for f in pools_schema(1) if f.name != "text_emb"]),
    required_meta=POOL_META_KEYS,
    extra_check=_check_pools,
))
