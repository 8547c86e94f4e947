"""Durable caption output: small atomic part files while running, compaction afterwards.

Layout of a caption output directory DIR (local or any Beam filesystem, e.g. gs://):

    DIR/captions/part-<time_ns>-<uuid>.parquet     rows committed while the run goes
    DIR/dead_letter/part-<time_ns>-<uuid>.parquet
    DIR/captions/captions-<meta hash>-00000-of-00001.parquet       after compaction
    DIR/dead_letter/dead_letter-<meta hash>-00000-of-00001.parquet
    DIR/caption_summary.json

Captions cost money, so they reach disk as the run goes: `WritePartsFn` commits a part
file every `commit_every` rows or `commit_seconds` and at bundle end, each written
atomically (temp file + rename). A run killed at any moment keeps every committed part;
`done_keys` reads their key columns so the rerun skips those keys.

`compact(DIR)` merges the parts into a few sorted files, one set per distinct metadata
(captioner, prompt, settings), and resolves duplicates so every key is in exactly one of
{captions, dead_letter}: a caption beats a dead letter (a retried dead key that succeeded),
and among rows of one table the newest file wins (a bundle Beam retried, or a dead key that
failed again).

    textok compact DIR
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from textok import storage as rio
from textok.atomic import TEMP_PREFIX
from textok.lease import hold_lease
from textok.faults import maybe_fail
from textok.schemas.captions import CAPTIONS_SCHEMA, DEAD_LETTER_SCHEMA
from textok.schemas.common import KEY_META, SchemaError, with_metadata, write_table_atomic

log = logging.getLogger("textok.caption")

CAPTIONS = "captions"
DEAD_LETTER = "dead_letter"
STAGE = "caption"
SCHEMAS = {CAPTIONS: CAPTIONS_SCHEMA, DEAD_LETTER: DEAD_LETTER_SCHEMA}
PART_PREFIX = "part-"
SUMMARY_FILE = "caption_summary.json"
COMPACT_ROWS_PER_FILE = 200_000


def table_dir(output_dir: str, table: str) -> str:
    if table not in SCHEMAS:
        raise ValueError(f"unknown caption table {table!r}; expected one of {sorted(SCHEMAS)}")
    return FileSystems.join(output_dir, table)


def list_table_files(output_dir: str, table: str) -> list[str]:
    """Parquet files of one table (parts and compacted), sorted by name. Temp files and files of
    other stages (`textok encode --output` this folder writes dead_letter/encode-*.parquet) are
    skipped: only `part-*` and `{table}-*` files belong to the caption stage."""
    pattern = FileSystems.join(table_dir(output_dir, table), "*.parquet")
    found = FileSystems.match([pattern])[0].metadata_list
    return sorted(m.path for m in found if os.path.basename(m.path).startswith((PART_PREFIX, f"{table}-")))


def open_parquet(path: str) -> pq.ParquetFile:
    try:
        if "://" in path:
            with FileSystems.open(path) as f:
                return pq.ParquetFile(pa.BufferReader(f.read()))
        return pq.ParquetFile(path)
    except FileNotFoundError as e:
        # Listed a moment ago, gone now: another process compacted or cleaned this folder while we
        # read it. The file is not damaged and no row is lost (compaction writes its outputs before
        # deleting inputs); the writer lease (textok.lease) exists to stop exactly this.
        raise SchemaError(f"{path}: disappeared while being read: another process compacted or cleaned this "
                          "output folder at the same time (two writers on one folder; was --force-unlock used "
                          "on a live run?). Nothing is lost: rerun once the other run has ended") from e
    except (OSError, pa.ArrowInvalid) as e:
        raise SchemaError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e}); "
                          "move it aside and rerun to caption its keys again") from e


def read_key_splits(output_dir: str, table: str) -> dict[str, str | None]:
    """key -> split of every row of one table under DIR (parts included)."""
    out: dict[str, str | None] = {}
    for path in list_table_files(output_dir, table):
        t = open_parquet(path).read(columns=["key", "split"])
        out.update(zip(t.column("key").to_pylist(), t.column("split").to_pylist()))
    return out


def read_keys(output_dir: str, table: str) -> set[str]:
    return set(read_key_splits(output_dir, table))


def parts_tagged(output_dir: str, table: str, tag: str) -> list[str]:
    """The part files of one table whose name carries `tag` (WritePartsFn's part_tag), sorted."""
    pattern = FileSystems.join(table_dir(output_dir, table), f"{PART_PREFIX}*-{tag}-*.parquet")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def done_keys(output_dir: str) -> tuple[set[str], set[str]]:
    """(captioned keys, dead-lettered keys) already on disk under DIR (parts included)."""
    return read_keys(output_dir, CAPTIONS), read_keys(output_dir, DEAD_LETTER)


class WritePartsFn(beam.DoFn):
    """Sink DoFn: buffer rows of one table and commit them as small atomic Parquet parts.

    The in-process FnApiRunner may hand the whole input to one bundle, so committing only
    at bundle end would keep every caption in memory until the run ends; the row/time
    checks inside `process` are what bound the loss of a killed run.
    """

    def __init__(self, output_dir: str, table: str, meta: dict[str, Any], commit_every: int = 256,
                 commit_seconds: float = 60.0, progress_seconds: float = 10.0, part_tag: str = ""):
        if commit_every < 1 or commit_seconds <= 0:
            raise ValueError(f"--commit-every must be >= 1 and --commit-seconds > 0, "
                             f"got {commit_every} and {commit_seconds}")
        self.output_dir, self.table, self.meta = output_dir, table, meta
        self.part_tag = part_tag  # in every part name: part-<time_ns>-<tag>-<uuid> (see parts_tagged)
        self.commit_every, self.commit_seconds = commit_every, commit_seconds
        self.progress_seconds = progress_seconds
        self.parts_written = Metrics.counter("textok", f"parts_written_{table}")

    def setup(self) -> None:
        self._schema = with_metadata(SCHEMAS[self.table], self.table, STAGE, self.meta)
        self._dir = table_dir(self.output_dir, self.table)
        self._rows_total = self._parts_total = 0
        self._started = self._last_log = time.monotonic()

    def start_bundle(self) -> None:
        self._buffer: list[dict] = []
        self._last_commit = time.monotonic()

    def process(self, row):  # a row dict; a sink, emits nothing
        self._buffer.append(row)
        now = time.monotonic()
        if len(self._buffer) >= self.commit_every or now - self._last_commit >= self.commit_seconds:
            self._commit()
        if now - self._last_log >= self.progress_seconds:
            self._log_progress(now)
        return ()

    def finish_bundle(self) -> None:
        self._commit()
        if self._rows_total:
            self._log_progress(time.monotonic())

    def _commit(self) -> None:
        self._last_commit = time.monotonic()
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=self._schema)
        tag = f"{self.part_tag}-" if self.part_tag else ""
        name = f"{PART_PREFIX}{time.time_ns():020d}-{tag}{uuid.uuid4().hex[:12]}.parquet"
        write_table_atomic(table, FileSystems.join(self._dir, name), fault_point="caption.part_temp_written")
        maybe_fail("caption.part_committed")
        self._rows_total += len(self._buffer)
        self._parts_total += 1
        self.parts_written.inc()
        self._buffer = []

    def _log_progress(self, now: float) -> None:
        self._last_log = now
        elapsed = max(now - self._started, 1e-9)
        log.info("caption writer [%s]: %d rows committed in %d parts (+%d buffered), %.1f rows/s over %.0f s",
                 self.table, self._rows_total, self._parts_total, len(self._buffer),
                 self._rows_total / elapsed, elapsed)


def _file_meta(pf: pq.ParquetFile, path: str) -> str:
    md = pf.schema_arrow.metadata or {}
    raw = md.get(KEY_META)
    if raw is None:
        raise SchemaError(f"{path}: no {KEY_META.decode()!r} in the Parquet metadata; not a textok caption part")
    return json.dumps(json.loads(raw), sort_keys=True)


def _load_rows(paths: list[str], table: str) -> tuple[pa.Table, list[str], list[int]]:
    """Concatenate files oldest first: compacted files, then parts in commit-time order."""
    schema = SCHEMAS[table]
    ordered = sorted(paths, key=lambda p: (os.path.basename(p).startswith(PART_PREFIX), os.path.basename(p)))
    tables, metas, group_of_row = [], [], []
    for path in ordered:
        pf = open_parquet(path)
        meta = _file_meta(pf, path)
        t = pf.read()
        try:
            t = t.select(schema.names).cast(schema)
        except (KeyError, pa.ArrowInvalid, ValueError) as e:
            raise SchemaError(f"{path}: does not match the {table} schema ({e})") from e
        if meta not in metas:
            metas.append(meta)
        group_of_row += [metas.index(meta)] * t.num_rows
        tables.append(t)
    combined = pa.concat_tables(tables) if tables else schema.empty_table()
    return combined, metas, group_of_row


def _rewrite(output_dir: str, table: str, exclude_keys: set[str], rows_per_file: int,
             lease_start: float) -> tuple[dict, set[str]]:
    inputs = list_table_files(output_dir, table)
    combined, metas, group_of_row = _load_rows(inputs, table)
    keys = combined.column("key").to_pylist()
    newest: dict[str, int] = {}
    for i, key in enumerate(keys):
        newest[key] = i  # later rows come from newer files
    excluded = [k for k in newest if k in exclude_keys]
    for k in excluded:
        del newest[k]
    by_group: dict[int, list[tuple[str, int]]] = {}
    for key, i in newest.items():
        by_group.setdefault(group_of_row[i], []).append((key, i))
    outputs = []
    for gid, items in by_group.items():
        items.sort()
        meta = json.loads(metas[gid])
        schema = with_metadata(SCHEMAS[table], table, STAGE, meta)
        tag = hashlib.sha256(metas[gid].encode()).hexdigest()[:8]
        n_files = -(-len(items) // rows_per_file)
        for f in range(n_files):
            chunk = [i for _, i in items[f * rows_per_file:(f + 1) * rows_per_file]]
            out = combined.take(pa.array(chunk, pa.int64())).cast(schema)
            path = FileSystems.join(table_dir(output_dir, table), f"{table}-{tag}-{f:05d}-of-{n_files:05d}.parquet")
            write_table_atomic(out, path)
            outputs.append(path)
    # Delete the inputs only once every output is in place, older compacted files before
    # parts: a crash at any point leaves duplicates whose newest copy is still the one the
    # next compaction keeps (parts rank newest), never a lost row.
    maybe_fail("compact.outputs_written")
    stale = [p for p in inputs if p not in set(outputs)]
    # Temp files only of writers that died before this compaction's lease was taken: a temp file
    # newer than that could be a live writer's in-flight part (never delete it under its feet).
    stale += [p for p, mtime in rio.list_with_mtime(table_dir(output_dir, table), recursive=False)
              if rio.basename(p).startswith(TEMP_PREFIX) and mtime < lease_start]
    for is_part in (False, True):
        batch = [p for p in stale if os.path.basename(p).startswith(PART_PREFIX) == is_part]
        if batch:
            FileSystems.delete(batch)
            maybe_fail("compact.between_deletes")
    stats = {"files_in": len(inputs), "files_out": len(outputs), "rows": len(newest),
             "duplicates_dropped": len(keys) - len(newest) - len(excluded)}
    if excluded:
        stats["superseded_by_caption"] = len(excluded)
    return stats, set(newest)


def compact(output_dir: str, rows_per_file: int = COMPACT_ROWS_PER_FILE) -> dict[str, Any]:
    """Merge part files into sorted, deduplicated files; every key ends in exactly one table."""
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    if not any(list_table_files(output_dir, table) for table in SCHEMAS):
        raise FileNotFoundError(f"{output_dir}: no Parquet files under {CAPTIONS}/ or {DEAD_LETTER}/ "
                                "(expected the --output DIR of `textok caption`)")
    t0 = time.monotonic()
    with hold_lease(output_dir, "compact") as lease:  # re-entered when a caption run compacts its own output
        cap_stats, captioned = _rewrite(output_dir, CAPTIONS, set(), rows_per_file, lease.started_unix)
        lease.check()
        dead_stats, _ = _rewrite(output_dir, DEAD_LETTER, captioned, rows_per_file, lease.started_unix)
    stats = {CAPTIONS: cap_stats, DEAD_LETTER: dead_stats, "seconds": round(time.monotonic() - t0, 3)}
    log.info("compacted %s: %s", output_dir, stats)
    return stats


def has_parts(output_dir: str) -> bool:
    return any(os.path.basename(p).startswith(PART_PREFIX)
               for table in SCHEMAS for p in list_table_files(output_dir, table))
