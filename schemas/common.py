"""Shared machinery for every textok table: metadata keys, atomic Parquet writes, validation.

Every textok Parquet file carries, in its key-value metadata:
  textok.schema_version  -- the table's version (SCHEMA_VERSION below unless its TableSpec says)
  textok.table           -- which table this is ("captions", "dead_letter", "shards", ...)
  textok.stage           -- the stage that wrote it
  textok.meta            -- JSON with stage settings (captioner, model, prompt, encoder, ...)

A table module registers itself with `register_table(TableSpec(...))`; `validate(path)`
finds the spec from the file's own metadata and checks schema + metadata.
"""
from __future__ import annotations

import json
import os
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
    version: str = SCHEMA_VERSION  # bumped when the table's columns change
    # older versions -> what they were and what to do about them (named in validate's error)
    old_versions: dict[str, str] = field(default_factory=dict)
    # older versions still read as they are (validate accepts them; extra_check sees the version)
    readable_versions: tuple[str, ...] = ()


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

    for mod in ("captions", "shards", "pools", "latents", "caption_flags"):
        importlib.import_module(f"textok.schemas.{mod}")


def make_metadata(table: str, stage: str, meta: dict[str, Any] | None = None,
                  version: str | None = None) -> dict[bytes, bytes]:
    """`version`: the table's current one unless given (tests writing an older layout)."""
    version = version or (_TABLES[table].version if table in _TABLES else SCHEMA_VERSION)
    return {
        KEY_VERSION: version.encode(),
        KEY_TABLE: table.encode(),
        KEY_STAGE: stage.encode(),
        KEY_META: json.dumps(meta or {}, sort_keys=True, default=str).encode(),
    }


def with_metadata(schema: pa.Schema, table: str, stage: str, meta: dict[str, Any] | None = None,
                  version: str | None = None) -> pa.Schema:
    existing = dict(schema.metadata or {})
    existing.update(make_metadata(table, stage, meta, version))
    return schema.with_metadata(existing)


def read_meta(path: str) -> dict[str, Any]:
    """Return {'schema_version', 'table', 'stage', 'meta'} of a textok Parquet file."""
    return meta_from_schema(pq.read_schema(parquet_source(path)), path)


def meta_from_schema(schema: pa.Schema, path: str) -> dict[str, Any]:
    """`read_meta` of a schema already read (`path` names the file in errors)."""
    md = schema.metadata or {}
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
                       compression: str = "zstd", fault_point: str | None = None, **kwargs) -> str:
    """Write a Parquet file to `path` atomically (temp file + rename), local or remote.

    Local paths use os.replace from a temp name that never matches `*.parquet`
    (`textok.atomic.temp_path`), so a kill between write and rename leaves nothing a reader
    globbing `*.parquet` would count; the writer's next run removes it (`clean_temps`). On other
    filesystems (gs://, s3://) the file goes to an in-flight name outside the `*.parquet` glob and
    is renamed through Beam's FileSystems (`storage`). `fault_point` names the moment
    between write and rename for the fault-matrix tests (textok.faults).
    """
    from textok.atomic import temp_path
    from textok.faults import maybe_fail

    if "://" not in path:
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        tmp = temp_path(os.path.join(d, os.path.basename(path)))
        try:
            pq.write_table(table, tmp, row_group_size=row_group_size, compression=compression, **kwargs)
            if fault_point:
                maybe_fail(fault_point)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path
    from textok.storage import write_bytes_atomic

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size, compression=compression, **kwargs)
    return write_bytes_atomic(sink.getvalue().to_pybytes(), path)


def parquet_source(path: str):
    """What pyarrow opens: a local path as is, a remote one (gs://, s3://) as a Beam stream."""
    if "://" not in path:
        return path
    from textok.storage import open_input

    return open_input(path)


def list_parquet(path: str) -> list[str]:
    """Parquet files under a directory (recursively, sorted, hidden/temp files skipped), or [path].
    Remote folders (gs://, s3://) are listed through Beam's FileSystems."""
    if "://" in path:
        from textok.storage import list_remote_parquet

        return list_remote_parquet(path)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, f) for f in files if f.endswith(".parquet") and not f.startswith(".")]
    return sorted(out)


def count_rows(files: list[str]) -> int:
    """Rows of Parquet files, from their footers (no data read): the total of a progress bar."""
    return sum(pq.ParquetFile(parquet_source(f)).metadata.num_rows for f in files)


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
        pf = pq.ParquetFile(parquet_source(path))
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError on corrupt files
        raise SchemaError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    info = meta_from_schema(pf.schema_arrow, path)
    if expect_table and info["table"] != expect_table:
        raise SchemaError(f"{path}: metadata textok.table is {info['table']!r}, expected {expect_table!r}")
    spec = table_spec(info["table"])
    if info["schema_version"] != spec.version and info["schema_version"] not in spec.readable_versions:
        raise SchemaError(f"{path}: metadata textok.schema_version is {info['schema_version']!r}, this textok reads "
                          f"{spec.name} version {spec.version!r}"
                          + (f": {spec.old_versions[info['schema_version']]}"
                             if info["schema_version"] in spec.old_versions else ""))
    check_schema(path, pf.schema_arrow, spec.schema)
    for k in spec.required_meta:
        if k not in info["meta"]:
            raise SchemaError(f"{path}: metadata textok.meta lacks required key {k!r} for table {spec.name!r}")
    # Required (non-nullable) columns must hold no nulls. Statistics are per Parquet leaf column: a
    # nested column (image {bytes, path}) has several, and a null row is null in its first one.
    leaves = [pf.metadata.schema.column(i).path for i in range(pf.metadata.num_columns)]
    for f in spec.schema:
        if not f.nullable:
            leaf = next(i for i, p in enumerate(leaves) if p == f.name or p.startswith(f.name + "."))
            for rg in range(pf.num_row_groups):
                stats = pf.metadata.row_group(rg).column(leaf).statistics
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
