"""Captions -> T5 embeddings -> training shards (Apache Beam), resumable at shard granularity.

    textok encode --captions runs/cap --output runs/data --encoder google/t5-v1_1-xl
    textok encode --captions runs/cap --output runs/data --encoder /models/t5-xl --image-size 256 \
        --direct_running_mode multi_processing --direct_num_workers 4
    textok encode --captions s3://bkt/cap --output s3://bkt/data --encoder /models/t5-xl --emb-dtype int8 \
        --s3_endpoint_url http://127.0.0.1:9000

    from textok.pipeline.encode.pipeline import run_encode
    run_encode("runs/cap", "runs/data", encoder="/models/t5-xl", split="train")

How resume works: the launcher sorts the split's caption keys and chunks them into shards of
`rows_per_shard` up front, so shard i of n is a fixed set of keys. Each shard is one Beam
element; the stage encodes it and writes `shards/{split}-{i:05d}-of-{n:05d}.parquet`
atomically as soon as it is done (no GroupByKey before the write, so nothing waits for the
whole run). A file on disk means "done"; a rerun skips those shards. Input and output may be
local or on any Beam filesystem (gs://, s3://; `storage`: on object stores a shard is
uploaded under an in-flight name and renamed, so a shard object exists only when complete). The plan is saved in
`shards/.plan-{split}.json`; a rerun whose captions no longer match it fails instead of
mixing two plans. Keys whose image cannot be read, or whose embedding holds inf/NaN (`non_finite_embedding`), go
to `dead_letter/` (stage "encode"),
written before their shard, so every key ends in exactly one of {shard, dead letter}.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from textok.atomic import clean_temps, require_output_dir
from textok.errors import FlagError
from textok.faults import maybe_fail
from textok import storage as rio
from textok.progress import open_stage, stage_progress
from textok.schemas.captions import DEAD_LETTER_SCHEMA
from textok.schemas.common import (SchemaError, list_parquet, parquet_source, read_meta, with_metadata,
                                   write_table_atomic)
from textok.schemas.shards import (SCALE_COLUMN, SHARDS_VERSION, image_column, is_blob, shard_write_options,
                                   shards_schema, text_emb_blob_columns, text_emb_column, text_emb_int8_columns)

log = logging.getLogger(__name__)

CAPTION_COLUMNS = ["key", "split", "label", "class_name", "source_uri", "caption"]
DEFAULT_ROWS_PER_SHARD = 2048
IMAGE_READ_THREADS = 8  # concurrent image reads per encode worker (I/O latency, not CPU)


# ---------------------------------------------------------------- pure helpers

def in_holdout(key: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic membership of the pool hold-out: hash(seed, key) < fraction. Same on every runner."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"textok-holdout:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < fraction


def caption_files(captions: str) -> list[str]:
    """The captions Parquet files of `DIR/captions/` (or of a file/folder given directly), checked to be captions."""
    folder = rio.join(captions, "captions")
    files = list_parquet(folder if rio.is_dir(folder) else captions)
    if not files:
        raise FileNotFoundError(f"{captions}: no captions Parquet files (looked in {folder})")
    for f in files:
        if read_meta(f)["table"] != "captions":
            raise SchemaError(f"{f}: textok.table is {read_meta(f)['table']!r}, expected 'captions' "
                              f"(--captions takes the output folder of `textok caption`)")
    return files


def read_captions(captions: str | list[str], split: str | None = None, columns: list[str] = CAPTION_COLUMNS,
                  filters: list | None = None) -> pa.Table:
    """Caption rows of `split` (all splits if None), sorted by key; `captions` is a DIR or a list of files.

    Fails on a key present twice (part files of an uncompacted caption run can hold a retried key).
    """
    files = caption_files(captions) if isinstance(captions, str) else captions
    filters = list(filters or []) + ([("split", "==", split)] if split is not None else [])
    tables = []
    for f in files:
        t = pq.read_table(parquet_source(f), columns=columns, filters=filters or None)
        tables.append(t.append_column("_file", pa.array([f] * t.num_rows, pa.string())))
    table = pa.concat_tables(tables).sort_by("key")
    keys = table["key"].to_numpy(zero_copy_only=False)
    dup = np.flatnonzero(keys[1:] == keys[:-1]) if len(keys) > 1 else []
    if len(dup):
        i = int(dup[0])
        raise SchemaError(f"caption key {keys[i]!r} appears twice ({table['_file'][i]} and {table['_file'][i + 1]}); "
                          f"run `textok compact` on the caption folder to deduplicate")
    return table.drop_columns(["_file"])


def excluded_keys(flags: str, checks: tuple[str, ...] | None = None) -> tuple[set[str], dict[str, Any]]:
    """Keys `textok caption-report` flagged (any of `checks`, default its `flagged` column) and the
    record of that choice that goes into the shard metadata."""
    from textok.schemas.caption_flags import flagged_keys

    return flagged_keys(flags, checks)


@dataclass(frozen=True)
class ShardTask:
    """Shard `index` of `count`: the `num_keys` keys of `split` in [first_key, last_key], hold-out excluded."""

    split: str
    index: int
    count: int
    first_key: str = ""
    last_key: str = ""
    num_keys: int = 0

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}"


def plan_shards(keys: list[str], split: str, rows_per_shard: int) -> list[ShardTask]:
    """Chunk sorted keys into shards: shard i of n always holds the same keys. Only key ranges travel
    in the Beam graph (it stays small, e.g. under Dataflow's 10 MB limit, for any dataset size)."""
    if rows_per_shard <= 0:
        raise FlagError(f"--rows-per-shard must be positive, got {rows_per_shard}")
    n = -(-len(keys) // rows_per_shard)
    chunks = [keys[i * rows_per_shard:(i + 1) * rows_per_shard] for i in range(n)]
    return [ShardTask(split, i, n, c[0], c[-1], len(c)) for i, c in enumerate(chunks)]


def prepare_image(data: bytes, uri: str, image_size: int | None) -> tuple[bytes, str, int, int]:
    """(bytes, format, width, height) to store. The image is always fully decoded, so a broken
    file is caught here and dead-lettered. With `image_size`: shorter side -> S, centre crop,
    re-encoded as JPEG q95 (PNG sources stay PNG, so lossless data stays lossless)."""
    from textok.schemas.images import decode_image, encode_image, image_format, resize_center_crop

    fmt = image_format(data)
    img = decode_image(data, uri=uri)
    if image_size is None:
        return data, fmt, img.width, img.height
    img = resize_center_crop(img, image_size)
    out_fmt = "png" if fmt == "png" else "jpeg"
    return encode_image(img, out_fmt, quality=95), out_fmt, img.width, img.height


def dead_letter_row(row: dict, error_type: str, message: str, stage: str = "encode") -> dict:
    return {"key": row["key"], "split": row.get("split"), "stage": stage, "source_uri": row.get("source_uri"),
            "error_type": error_type, "message": message, "attempts": 1,
            "timestamp": dt.datetime.now(dt.timezone.utc)}


def encoded_table(rows: list[dict], schema: pa.Schema, dim: int) -> pa.Table:
    """Encoded rows (dicts with `text_emb` float16 `[len, D]` arrays) -> a table of `schema` (shards, pools).
    A schema with a `text_emb_scale` column stores the embeddings as int8 + per-token scales; a binary
    `text_emb` (shards version 3) stores raw bytes, a typed one (pools) the nested list."""
    embs = [r["text_emb"] for r in rows]
    int8 = schema.get_field_index(SCALE_COLUMN) >= 0
    if is_blob(schema.field("text_emb").type):
        built = text_emb_blob_columns(embs, dim, "int8" if int8 else "float16")
    elif int8:
        built = dict(zip(("text_emb", SCALE_COLUMN), text_emb_int8_columns(embs, dim)))
    else:
        built = {"text_emb": text_emb_column(embs, dim)}
    if schema.get_field_index("image") >= 0:
        built["image"] = image_column([r["image"] for r in rows])  # encoded bytes -> {bytes, path}
    arrays = [built[f.name] if f.name in built else pa.array([r[f.name] for r in rows], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def shards_table(rows: list[dict], meta: dict[str, Any]) -> pa.Table:
    schema = shards_schema(int(meta["D"]), meta.get("storage_dtype", "float16"))
    return encoded_table(rows, with_metadata(schema, "shards", "encode", meta), int(meta["D"]))


def dead_letter_table(rows: list[dict], meta: dict[str, Any]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=with_metadata(DEAD_LETTER_SCHEMA, "dead_letter", "encode", meta))


# ---------------------------------------------------------------- Beam transforms

class ReadShardRowsFn(beam.DoFn):
    """ShardTask -> (task, caption rows): reads the shard's key range from the caption files.
    `exclude` ((flags path, checks) or None): keys a caption report flagged are left out; the
    set is read in `setup()` on the worker, so the graph carries a path, not a million keys."""

    def __init__(self, files: list[str], holdout_fraction: float, seed: int, shard_path,
                 exclude: tuple[str, tuple[str, ...] | None] | None = None):
        self.files, self.holdout_fraction, self.seed, self.shard_path = files, holdout_fraction, seed, shard_path
        self.exclude = exclude

    def setup(self):
        self._excluded = excluded_keys(*self.exclude)[0] if self.exclude else set()

    def process(self, task: ShardTask):
        if rio.exists(self.shard_path(task)):
            return []  # done by an earlier attempt of this bundle
        rows = read_captions(self.files, task.split, filters=[("key", ">=", task.first_key),
                                                              ("key", "<=", task.last_key)]).to_pylist()
        rows = [r for r in rows if not in_holdout(r["key"], self.holdout_fraction, self.seed)
                and r["key"] not in self._excluded]
        if len(rows) != task.num_keys:
            raise RuntimeError(f"shard {task.name}: {len(rows)} caption rows in [{task.first_key!r}, "
                               f"{task.last_key!r}], {task.num_keys} planned: the captions changed during the run")
        return [(task, rows)]


class _SharedEncoderHolder:
    """Weak-referenceable box for `apache_beam.utils.shared.Shared` (one model per worker process)."""

    def __init__(self, encoder):
        self.encoder = encoder


class EncodeBatchFn(beam.DoFn):
    """(tag, caption rows) -> (tag, encoded rows, dead-letter rows).

    The text encoder loads once per worker process in `setup()` and is shared by all DoFn
    threads through `Shared`. `with_images`: each image is read and fully decoded (a broken one
    becomes a dead letter) and kept, or resized to `image_size`.
    """

    def __init__(self, encoder_options: dict[str, Any], shared_handle, with_images: bool,
                 image_size: int | None = None, skip_if_exists=None, progress: str = "encode"):
        self.encoder_options = encoder_options
        self.progress = progress  # the stage name of textok.progress.stage_progress
        self.shared_handle = shared_handle
        self.with_images = with_images
        self.image_size = image_size
        self.skip_if_exists = skip_if_exists  # tag -> path; an existing file means the unit is done
        self.encoded = beam.metrics.Metrics.counter("textok", "encoded")
        self.dead = beam.metrics.Metrics.counter("textok", "encode_dead_letter")
        self.skipped = beam.metrics.Metrics.counter("textok", "encode_skipped_done")

    def setup(self):
        from textok.text_encoder import TextEncoder

        opts = self.encoder_options
        tag = json.dumps(opts, sort_keys=True)
        self._encoder = self.shared_handle.acquire(lambda: _SharedEncoderHolder(TextEncoder(**opts).load()),
                                                   tag=tag).encoder

    def process(self, element):
        from textok.schemas.images import ImageDecodeError
        from textok.pipeline.sources.records import read_image_bytes

        tag, rows = element
        if self.skip_if_exists is not None and rio.exists(self.skip_if_exists(tag)):
            self.skipped.inc()  # a retried bundle, or another worker finished it
            return []
        good, dead = [], []

        def load(row):
            try:  # read_image_bytes reports I/O failures as ImageDecodeError("read_error") too
                data = read_image_bytes(row["source_uri"])
                return row, prepare_image(data, row["source_uri"], self.image_size), None
            except ImageDecodeError as e:
                return row, None, e

        if not self.with_images:
            good = [dict(row) for row in rows]
        else:
            # Reads in flight together: on an object store each is a round trip or two (HEAD + GET)
            # that would otherwise be paid one row after the other; order is kept (map).
            with ThreadPoolExecutor(IMAGE_READ_THREADS) as pool:
                for row, prepared, err in pool.map(load, rows):
                    if err is not None:
                        dead.append(dead_letter_row(row, err.error_type, err.message))
                        continue
                    image, fmt, w, h = prepared
                    good.append(dict(row, image=image, image_format=fmt, width=w, height=h))
        embs = self._encoder.encode([r["caption"] for r in good], keys=[r["key"] for r in good],
                                    non_finite="return") if good else []
        encoded = []
        for r, e in zip(good, embs):
            if isinstance(e, Exception):  # inf/NaN: a dead letter with the reason, never a shard row
                dead.append(dead_letter_row(r, getattr(e, "error_type", "non_finite_embedding"), str(e)))
                continue
            r["text_emb"], r["text_len"] = e, int(e.shape[0])
            encoded.append(r)
        good = encoded
        self.encoded.inc(len(good))
        self.dead.inc(len(dead))
        stage_progress(self.progress, "captions").update(len(rows))
        return [(tag, good, dead)]


class EncodeCaptions(beam.PTransform):
    """PCollection[(tag, list of caption rows)] -> PCollection[(tag, encoded rows, dead-letter rows)].

    Encoded rows gain `text_emb` (float16 `[text_len, D]`), `text_len` and, `with_images`,
    `image`, `image_format`, `width`, `height`. Used for shards (tag = ShardTask) and pools
    (tag = class). No Reshuffle inside: a fusion break here would hold every unit until all are
    read; callers spread units over workers before this.
    """

    def __init__(self, encoder_options: dict[str, Any], *, with_images: bool = True, image_size: int | None = None,
                 skip_if_exists=None, progress: str = "encode"):
        super().__init__()
        from apache_beam.utils.shared import Shared

        self._fn = EncodeBatchFn(encoder_options, Shared(), with_images, image_size, skip_if_exists, progress)

    def expand(self, pcoll):
        return pcoll | "Encode" >> beam.ParDo(self._fn)


class _ShardPath:
    """tag -> shard path (a picklable callable for `skip_if_exists`)."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def __call__(self, task: ShardTask) -> str:
        return rio.join(self.output_dir, "shards", f"{task.name}.parquet")


class WriteShardFn(beam.DoFn):
    """Writes one shard (and first its dead letters) atomically as soon as it is encoded."""

    def __init__(self, output_dir: str, meta: dict[str, Any]):
        self.output_dir = output_dir
        self.meta = meta

    def process(self, element):
        task, rows, dead = element
        meta = dict(self.meta, split=task.split, shard_index=task.index, num_shards=task.count, num_rows=len(rows))
        path = rio.join(self.output_dir, "dead_letter", f"encode-{task.name}.parquet")
        if dead:
            write_table_atomic(dead_letter_table(dead, meta), path)
            maybe_fail("encode.dead_letter_written")
        elif rio.exists(path):  # left by a killed attempt whose failed reads now succeed
            rio.remove(path)
        table = shards_table(rows, meta)
        write_table_atomic(table, _ShardPath(self.output_dir)(task), fault_point="shards.after_write_before_rename",
                           **shard_write_options(table))
        maybe_fail("shards.after_rename")
        yield {"shard": task.name, "rows": len(rows), "dead_letter": len(dead)}


# ---------------------------------------------------------------- launcher

def encoder_options(meta: dict[str, Any], batch_size: int | None, revision: str | None = None) -> dict[str, Any]:
    """TextEncoder kwargs for the workers, from the launcher's `describe_encoder` metadata."""
    return {"encoder": meta["encoder"], "max_tokens": meta["max_tokens"], "batch_size": batch_size,
            "device": meta["device"], "dtype": meta["compute_dtype"], "revision": revision}


def _estimate_rows_per_shard(files: list[str], keys: list[str], split: str, shard_mb: float, dim: int,
                             max_tokens: int, image_size: int | None, value_bytes: int = 2) -> int:
    """Rows that fill about `shard_mb` MiB, from 32 evenly spaced rows: their stored image bytes,
    and text ~ 1.4 tokens per word (T5 SentencePiece on English) + EOS, capped at max_tokens."""
    from textok.schemas.images import ImageDecodeError
    from textok.pipeline.sources.records import read_image_bytes

    sample = keys[:: max(1, len(keys) // 32)][:32]
    rows = read_captions(files, split, filters=[("key", "in", sample)]).to_pylist()
    sizes = []
    for r in rows:
        try:
            sizes.append(len(prepare_image(read_image_bytes(r["source_uri"]), r["source_uri"], image_size)[0]))
        except ImageDecodeError:  # unreadable rows are dead-lettered later; they do not size shards
            continue
    image_bytes = float(np.mean(sizes)) if sizes else 0.0
    tokens = np.mean([min(max_tokens, 1.4 * len(r["caption"].split()) + 1) for r in rows]) if rows else 1
    return max(1, int(shard_mb * 2 ** 20 / (image_bytes + tokens * (dim * value_bytes + 2) + 200)))


def _check_against_pools(output_dir: str, split: str, fraction: float, seed: int) -> None:
    """Pools drawn from a hold-out of this split (built before the shards) must stay out of its shards."""
    path = rio.join(output_dir, "pools", f"{split}.parquet")
    if not rio.exists(path):
        return
    meta = read_meta(path)["meta"]
    held = (meta.get("pool_holdout_fraction", 0.0), meta.get("seed", 0))
    if held[0] and held != (fraction, seed):  # pools of a whole split (val) hold out nothing here
        raise ValueError(f"{path}: these pools hold out a slice of {split!r} with hold-out fraction {held[0]} and seed "
                         f"{held[1]}, but the shards are asked with --pool-holdout-fraction {fraction} --seed {seed}: "
                         f"the tokenizer would train on pool images. Use the same values for `textok encode`.")


def _check_plan(output_dir: str, split: str, keys: list[str], plan: list[ShardTask], settings: dict) -> None:
    """Save the shard plan on first run; refuse to resume against a different one."""
    record = dict(settings, num_shards=len(plan), keys_sha256=hashlib.sha256("\n".join(keys).encode()).hexdigest())
    path = rio.join(output_dir, "shards", f".plan-{split}.json")
    if rio.exists(path):
        old = rio.read_json(path)
        if old != record:
            changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
            raise ValueError(f"{path}: the existing shards of split {split!r} were planned with different "
                               f"{changed} (old {[old.get(k) for k in changed]}, now {[record.get(k) for k in changed]}). "
                               f"Write to a new --output, or delete {rio.dirname(path)} to re-encode.")
        return
    rio.write_json_atomic(record, path)


def run_encode(captions: str, output_dir: str, *, encoder: str, split: str = "train",
               batch_size: int | None = None, max_tokens: int = 128, image_size: int | None = None,
               rows_per_shard: int | None = None,
               shard_mb: float | None = None, dtype: str | None = None, device: str | None = None,
               revision: str | None = None, pool_holdout_fraction: float = 0.0, seed: int = 0,
               emb_dtype: str = "float16", exclude_flagged: str | None = None,
               exclude_checks: Sequence[str] | None = None, beam_args: Sequence[str] = ()) -> dict[str, Any]:
    """Encode one split's captions into shards under `output_dir/shards/` (local or any Beam
    filesystem). `emb_dtype` "int8" stores int8 + per-token scales (schemas.shards).
    `exclude_flagged`: a caption report's flags.parquet; keys flagged by `exclude_checks` (default:
    its `flagged` column) are left out, and the shard metadata records which and how many.
    Returns the summary. Holds output_dir's writer lease (textok.lease) for the whole run."""
    from textok.lease import hold_lease

    rio.set_filesystem_options(beam_args)
    rio.check_destination(output_dir)
    with hold_lease(output_dir, "encode"):  # one writer per output folder; taken before any work
        return _run_encode_held(captions, output_dir, encoder=encoder, split=split, batch_size=batch_size,
                                max_tokens=max_tokens, image_size=image_size, rows_per_shard=rows_per_shard,
                                shard_mb=shard_mb, dtype=dtype, device=device, revision=revision,
                                pool_holdout_fraction=pool_holdout_fraction, seed=seed, emb_dtype=emb_dtype,
                                exclude_flagged=exclude_flagged, exclude_checks=exclude_checks,
                                beam_args=beam_args)


def _run_encode_held(captions: str, output_dir: str, *, encoder: str, split: str = "train",
                     batch_size: int | None = None, max_tokens: int = 128, image_size: int | None = None,
                     rows_per_shard: int | None = None,
                     shard_mb: float | None = None, dtype: str | None = None, device: str | None = None,
                     revision: str | None = None, pool_holdout_fraction: float = 0.0, seed: int = 0,
                     emb_dtype: str = "float16", exclude_flagged: str | None = None,
                     exclude_checks: Sequence[str] | None = None, beam_args: Sequence[str] = ()) -> dict[str, Any]:
    """The body of `run_encode`, run while the output lease is held."""
    from textok.pipeline.beam_utils import make_pipeline
    from textok.text_encoder import describe_encoder

    start = time.time()
    require_output_dir(output_dir)
    for folder in ("shards", "dead_letter"):  # temp files a killed run of this split left (local outputs)
        clean_temps(rio.join(output_dir, folder), final_prefix=f"encode-{split}-" if folder == "dead_letter"
                    else f"{split}-")
    if emb_dtype not in ("float16", "int8"):
        raise FlagError(f"--emb-dtype {emb_dtype!r}: choose float16 or int8")
    if not 0.0 <= pool_holdout_fraction < 1.0:
        raise FlagError(f"--pool-holdout-fraction must be in [0, 1), got {pool_holdout_fraction}")
    _check_against_pools(output_dir, split, pool_holdout_fraction, seed)
    if rows_per_shard is not None and shard_mb is not None:
        raise FlagError("give --rows-per-shard or --shard-mb, not both")
    files = caption_files(captions)  # the captions are checked before the encoder is loaded
    all_keys = read_captions(files, split, columns=["key", "split"])["key"].to_pylist()  # sorted, unique
    if not all_keys:
        raise ValueError(f"{captions}: no captions of split {split!r}")
    exclude, exclusion = None, None
    if exclude_flagged:
        from textok.schemas.caption_flags import parse_checks

        exclude = (exclude_flagged, parse_checks(exclude_checks) if exclude_checks else None)
        flagged, exclusion = excluded_keys(*exclude)
        exclusion["keys_in_split"] = sum(k in flagged for k in all_keys)
        exclusion["keys_sha256"] = hashlib.sha256("\n".join(sorted(flagged)).encode()).hexdigest()
        all_keys = [k for k in all_keys if k not in flagged]
        log.info("encode %s: %d flagged keys left out (%s of %s)", split, exclusion["keys_in_split"],
                 ",".join(exclusion["checks"]), exclude_flagged)
    elif exclude_checks:
        raise FlagError("--flags chooses checks of --exclude-flagged FLAGS.parquet; give that file too")
    meta = describe_encoder(encoder, max_tokens=max_tokens, device=device, dtype=dtype, revision=revision)
    from textok.schemas.encoder_identity import check_output_encoder

    check_output_encoder(output_dir, meta, "pools", "encode")  # before any shard: other pools, other encoder
    keys = [k for k in all_keys if not in_holdout(k, pool_holdout_fraction, seed)]
    if rows_per_shard is None:
        rows_per_shard = (_estimate_rows_per_shard(files, keys, split, shard_mb, meta["D"], max_tokens, image_size,
                                                   1 if emb_dtype == "int8" else 2)
                          if shard_mb else DEFAULT_ROWS_PER_SHARD)
    image_mode = "original" if image_size is None else f"resize_center_crop:{image_size}"
    meta.update(image_mode=image_mode, pool_holdout_fraction=pool_holdout_fraction, pool_seed=seed,
                captions=captions, storage_dtype=emb_dtype)
    if exclusion:
        meta["excluded_flagged"] = exclusion
    opts = encoder_options(meta, batch_size, revision)
    meta.pop("device")
    plan = plan_shards(keys, split, rows_per_shard)
    _check_plan(output_dir, split, keys, plan, {
        "rows_per_shard": rows_per_shard, "image_mode": image_mode, "encoder": encoder,
        "encoder_hash": meta["encoder_hash"], "max_tokens": max_tokens,
        "pool_holdout_fraction": pool_holdout_fraction, "pool_seed": seed,
        "shards_version": SHARDS_VERSION,  # never mix shard layouts (v1: image as plain bytes) in one dir
        # only when not the default, so plans written before int8 existed still resume
        **({"emb_dtype": emb_dtype} if emb_dtype != "float16" else {}),
        **({"excluded_flagged": {k: exclusion[k] for k in ("checks", "keys_sha256")}} if exclusion else {})})
    shard_path = _ShardPath(output_dir)
    todo = [t for t in plan if not rio.exists(shard_path(t))]
    log.info("encode %s: %d keys (%d held out for pools) in %d shards, %d to do", split, len(keys),
             len(all_keys) - len(keys), len(plan), len(todo))
    if todo:
        with open_stage("encode", sum(t.num_keys for t in todo), "captions", output=rio.join(output_dir, "shards")), \
                make_pipeline(beam_args) as p:
            _ = (p | "Shards" >> beam.Create(todo)
                 | "Spread" >> beam.Reshuffle()
                 | "ReadCaptions" >> beam.ParDo(ReadShardRowsFn(files, pool_holdout_fraction, seed, shard_path, exclude))
                 | "EncodeCaptions" >> EncodeCaptions(opts, image_size=image_size, skip_if_exists=shard_path)
                 | "WriteShards" >> beam.ParDo(WriteShardFn(output_dir, meta)))
    summary = summarize_shards(output_dir, split, len(keys))
    summary.update(split=split, held_out_for_pools=len(all_keys) - len(keys), shards_written_now=len(todo),
                   shards_skipped_done=len(plan) - len(todo), rows_per_shard=rows_per_shard,
                   wall_s=round(time.time() - start, 2), encoder=encoder, D=meta["D"], image_mode=image_mode,
                   emb_dtype=emb_dtype)
    if exclusion:
        summary["excluded_flagged"] = exclusion
    summary["captions_per_s"] = round(sum(t.num_keys for t in todo) / max(summary["wall_s"], 1e-9), 2)
    rio.write_json_atomic(summary, rio.join(output_dir, f"encode_summary_{split}.json"))
    return summary


def summarize_shards(output_dir: str, split: str, planned: int) -> dict[str, Any]:
    """Count rows and dead letters on disk; check every planned key ended up exactly once."""
    shard_files = [p for p in list_parquet(rio.join(output_dir, "shards"))
                   if rio.basename(p).startswith(f"{split}-")]
    rows = sum(pq.ParquetFile(parquet_source(p)).metadata.num_rows for p in shard_files)
    dl_dir = rio.join(output_dir, "dead_letter")
    dl_files = [p for p in list_parquet(dl_dir) if rio.basename(p).startswith(f"encode-{split}-")] \
        if rio.is_dir(dl_dir) else []
    dead = sum(pq.ParquetFile(parquet_source(p)).metadata.num_rows for p in dl_files)
    if rows + dead != planned:
        raise RuntimeError(f"{output_dir}: split {split!r} has {rows} shard rows + {dead} dead letters, "
                           f"but {planned} keys were planned; shards are incomplete or stale")
    return {"shards": len(shard_files), "rows": rows, "dead_letter": dead}
