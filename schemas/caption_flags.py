"""The caption flags table (`REPORT/flags.parquet`, written by `textok caption-report`).

One row per caption row read: `key`, `split`, one boolean column per check (CHECKS), `flagged`
(any of the checks in the file's `default_checks`), `language`, `clip_score` (null without
--clip or when the image could not be read), `reason` ("; "-joined, one part per check that
fired, "" when none). Metadata (`textok.meta`): captions path, the checks' settings,
`default_checks`, the CLIP model when used, and the counts per check (report.json's `flags`).

Consumers pick keys with `flagged_keys`:

    textok encode --captions OUT --output DATA --exclude-flagged REPORT/flags.parquet --flags dup,short
    textok caption --input SRC --output OUT_v2 --recaption-flagged REPORT/flags.parquet --captioner ...
"""
from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from textok.schemas.common import (
    SchemaError,
    TableSpec,
    parquet_source,
    read_meta,
    register_table,
)

# check name -> what it means (the names --flags takes; also the bool columns)
CHECKS = {
    "dup": "same normalised text as an earlier row (the first occurrence is not flagged)",
    "near_dup": "MinHash estimate of word-set Jaccard >= the threshold with an earlier, different caption",
    "short": "fewer words than --min-words",
    "long": "more words than --max-words",
    "boilerplate": "an opener, refusal or markdown/label wrapper the caption rules remove",
    "non_ascii": "a character outside ASCII (informational; not in the default checks)",
    "non_english": "the offline language heuristic says another language or script",
    "no_class": "names neither its class nor a synonym (null when the row has no class)",
    "clip_low": "image–text agreement in the lowest --clip-percentile (null without --clip)",
}
DEFAULT_CHECKS = tuple(c for c in CHECKS if c != "non_ascii")

FLAGS_SCHEMA = pa.schema(
    [pa.field("key", pa.string(), nullable=False), pa.field("split", pa.string())]
    + [pa.field(c, pa.bool_()) for c in CHECKS]
    + [pa.field("flagged", pa.bool_(), nullable=False), pa.field("language", pa.string()),
       pa.field("clip_score", pa.float32()), pa.field("reason", pa.string(), nullable=False)])

CAPTION_FLAGS = register_table(TableSpec("caption_flags", FLAGS_SCHEMA, required_meta=("captions", "default_checks")))


def parse_checks(spec: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """"dup,short" -> ("dup", "short"); None/"" -> None (the file's default checks). Unknown names fail."""
    if spec is None:
        return None
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"--flags {','.join(names)}: unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
    return tuple(names) or None


def flagged_keys(path: str, checks: Iterable[str] | None = None) -> tuple[set[str], dict]:
    """(keys flagged by any of `checks`, a record of the selection for metadata) from a flags file.

    `checks` None: the file's `flagged` column (its default checks)."""
    info = read_meta(path)
    if info["table"] != "caption_flags":
        raise SchemaError(f"{path}: textok.table is {info['table']!r}, expected 'caption_flags' "
                          "(the flags.parquet that `textok caption-report` writes)")
    checks = parse_checks(checks) if checks is not None else None
    columns = list(checks) if checks else ["flagged"]
    table = pq.read_table(parquet_source(path), columns=["key"] + columns)
    mask = None
    for c in columns:
        col = pa.compute.fill_null(table[c], False)
        mask = col if mask is None else pa.compute.or_(mask, col)
    keys = set(table["key"].filter(mask).to_pylist()) if table.num_rows else set()
    record = {"flags": path, "checks": list(checks or info["meta"]["default_checks"]), "keys": len(keys),
              "flags_rows": table.num_rows, "captions": info["meta"].get("captions")}
    return keys, record
