"""Shared machinery for every textok table: metadata keys, atomic Parquet writes, validation.

Every textok Parquet file carries, in its key-value metadata:
  textok.schema_version  -- SCHEMA_VERSION below
  textok.table           -- which table this is ("captions", "dead_letter", "shards", ...)
  textok.stage           -- the stage that wrote it
  textok.meta            -- JSON with stage settings (captioner, model, prompt, encoder, ...)

A table module registers itself with `register_table(TableSpec(...))`; `validate(path)`
finds the spec from the file's own metadata and checks schema + metadata.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"
KEY_VERSION = b"textok.schema_version"
KEY_TABLE = b"textok.table"
KEY_STAGE = b"textok.stage"
KEY_META = b"textok.meta"


class SchemaError(ValueError):
    """A textok table does not match its contract. The message names file, column, expectation."""


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: pa.Schema
    required_meta: tuple[str, ...] = ()
    # extra check(path, table_metadata_dict, parquet_file) -> None, raising SchemaError
    extra_check: Callable[[str, dict, pq.ParquetFile], None] | None = None


_TABLES: dict[str, TableSpec] = {}


def register_table(spec: TableSpec) -> TableSpec:
    _TABLES[spec.name] = spec
    return spec


def table_spec(name: str) -> TableSpec:
    _ensure_registered()
    if name not in _TABLES:
        raise SchemaError(f"unknown textok table {name!r}; known: {sorted(_TABLES)}")
    return _TABLES[name]


def _ensure_registered() -> None:
    # Import the table modules so they register themselves (lazy to avoid import cycles).
    import importlib

    for mod in ("textok.schemas.captions", "textok.schemas.shards", "textok.schemas.pools", "textok.schemas.latents"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a table module not written yet
            if e.name != mod:
                raise


def make_metadata(table: str, stage: str, meta: dict[str, Any] | None = None) -> dict[bytes, bytes]:
    return {
        KEY_VERSION: SCHEMA_VERSION.encode(),
        KEY_TABLE: table.encode(),
        KEY_STAGE: stage.encode(),
        KEY_META: json.dumps(meta or {}, sort_keys=True, default=str).encode(),
    }


def with_metadata(schema: pa.Schema, table: str, stage: str, meta: dict[str, Any] | None = None) -> pa.Schema:
    existing = dict(schema.metadata or {})
    existing.update(make_metadata(table, stage, meta))
    return schema.with_metadata(existing)


def read_meta(path: str) -> dict[str, Any]:
    """Return {'schema_version', 'table', 'stage', 'meta'} of a textok Parquet file."""
    md = pq.read_schema(path).metadata or {}
    if KEY_TABLE not in md:
        raise SchemaError(f"{path}: not a textok table (no {KEY_TABLE.decode()!r} in Parquet key-value metadata)")
    try:
        meta = json.loads(md.get(KEY_META, b"{}"))
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}: metadata {KEY_META.decode()!r} is not valid JSON: {e}") from e
    return {
        "schema_version": md.get(KEY_VERSION, b"").decode(),
        "table": md[KEY_TABLE].decode(),
        "stage": md.get(KEY_STAGE, b"").decode(),
        "meta": meta,
    }


def write_table_atomic(table: pa.Table, path: str, row_group_size: int | None = None,
                       compression: str = "zstd", **kwargs) -> str:
    """Write a Parquet file to `path` atomically (temp file + rename), local or remote.

    Local paths use os.replace; other filesystems (gs://, s3://) go through Beam's
    FileSystems, whose object stores make a single upload atomic anyway.
    """
    if "://" not in path:
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        try:
            pq.write_table(table, tmp, row_group_size=row_group_size, compression=compression, **kwargs)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path
    from apache_beam.io.filesystems import FileSystems

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size, compression=compression, **kwargs)
    with FileSystems.create(path) as f:
        f.write(sink.getvalue().to_pybytes())
    return path


def list_parquet(path: str) -> list[str]:
    """Parquet files under a directory (recursively, sorted, hidden/temp files skipped), or [path]."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, f) for f in files if f.endswith(".parquet") and not f.startswith(".")]
    return sorted(out)


def check_schema(path: str, actual: pa.Schema, expected: pa.Schema) -> None:
    for f in expected:
        idx = actual.get_field_index(f.name)
        if idx < 0:
            raise SchemaError(f"{path}: column {f.name!r} is missing (expected type {f.type})")
        got = actual.field(idx)
        if not got.type.equals(f.type):
            raise SchemaError(f"{path}: column {f.name!r} has type {got.type}, expected {f.type}")
        if not f.nullable and got.nullable:
            # Nullability in the file is advisory; the data check below catches real nulls.
            pass


def validate_file(path: str, expect_table: str | None = None) -> dict[str, Any]:
    """Validate one textok Parquet file; return its metadata dict plus 'num_rows'."""
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError on corrupt files
        raise SchemaError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    info = read_meta(path)
    if info["schema_version"] != SCHEMA_VERSION:
        raise SchemaError(f"{path}: metadata textok.schema_version is {info['schema_version']!r}, "
                          f"expected {SCHEMA_VERSION!r}")
    if expect_table and info["table"] != expect_table:
        raise SchemaError(f"{path}: metadata textok.table is {info['table']!r}, expected {expect_table!r}")
    spec = table_spec(info["table"])
    check_schema(path, pf.schema_arrow, spec.schema)
    for k in spec.required_meta:
        if k not in info["meta"]:
            raise SchemaError(f"{path}: metadata textok.meta lacks required key {k!r} for table {spec.name!r}")
    # Required (non-nullable) columns must hold no nulls.
    for f in spec.schema:
        if not f.nullable:
            for rg in range(pf.num_row_groups):
                stats = pf.metadata.row_group(rg).column(pf.schema_arrow.get_field_index(f.name)).statistics
                if stats is not None and stats.has_null_count and stats.null_count > 0:
                    raise SchemaError(f"{path}: column {f.name!r} holds {stats.null_count} nulls in row group {rg}, "
                                      f"expected none")
    if spec.extra_check:
        spec.extra_check(path, info, pf)
    info["num_rows"] = pf.metadata.num_rows
    info["path"] = path
    return info


def validate(path: str, expect_table: str | None = None) -> list[dict[str, Any]]:
    """Validate a textok table file or every Parquet file under a directory."""
    files = list_parquet(path)
    if not files:
        raise SchemaError(f"{path}: no Parquet files found")
    return [validate_file(f, expect_table) for f in files]


def iter_rows(paths: Iterable[str], columns: list[str] | None = None):
    for p in paths:
        for batch in pq.ParquetFile(p).iter_batches(columns=columns):
            yield from batch.to_pylist()
