"""The captions and dead-letter tables.

captions: one row per captioned image. Metadata (`textok.meta`) holds the captioner,
model, prompt version + text and generation settings.
dead_letter: one row per input that could not be turned into an output, with the reason.
Every input key ends in exactly one of {captions, dead_letter}.
"""
from __future__ import annotations

import pyarrow as pa

from textok.schemas.common import TableSpec, register_table

CAPTIONS_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("label", pa.int32()),
    pa.field("class_name", pa.string()),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("caption", pa.string(), nullable=False),
    pa.field("num_words", pa.int32(), nullable=False),
    pa.field("captioner", pa.string(), nullable=False),   # "backend:model_id"
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("input_tokens", pa.int64()),
    pa.field("output_tokens", pa.int64()),
    pa.field("attempts", pa.int32()),
    pa.field("width", pa.int32()),                       # original image size (after EXIF)
    pa.field("height", pa.int32()),
])

DEAD_LETTER_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("split", pa.string()),
    pa.field("stage", pa.string(), nullable=False),       # "read", "decode", "caption", "encode", ...
    pa.field("source_uri", pa.string()),
    pa.field("error_type", pa.string(), nullable=False),  # short machine-readable reason
    pa.field("message", pa.string(), nullable=False),
    pa.field("attempts", pa.int32()),
    pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
])

CAPTIONS = register_table(TableSpec("captions", CAPTIONS_SCHEMA, required_meta=("captioner", "prompt_version")))
DEAD_LETTER = register_table(TableSpec("dead_letter", DEAD_LETTER_SCHEMA))
