"""Per-class caption pools for class-conditional sampling (Apache Beam), from images never trained on.

TexTok's class-conditional DiT generates tokens from a label, and the detokenizer then needs a
caption: it is drawn from a pool of captions of *unseen* images of that class (paper §3.3).

    textok pools --captions runs/cap --output runs/data --encoder /models/t5-xl --per-class 50
    textok pools --captions runs/cap --output runs/data --encoder /models/t5-xl --pool-holdout-fraction 0.02

Source: the `val` split by default; or `--pool-holdout-fraction f`, a deterministic slice of
train (hash of seed + key, `encode.pipeline.in_holdout`) that `textok encode` with the same
fraction and seed leaves out of the training shards. Each class keeps the K keys with the
smallest hash(seed, key): deterministic on every runner, and a class with fewer than K images
keeps all it has (reported in the summary). Per-class part files are written as classes
finish (a rerun skips them), then merged in label order into `pools/{split}.parquet`, with
`pools/{split}_summary.json` beside it.
"""
from __future__ import annotations

import collections
import glob
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from textok import storage as rio
from textok.pipeline.encode.pipeline import (EncodeCaptions, caption_files, encoded_table, encoder_options, in_holdout,
                                             read_captions)
from textok.atomic import clean_temps, require_output_dir
from textok.errors import FlagError
from textok.faults import maybe_fail
from textok.schemas.encoder_identity import check_output_encoder
from textok.progress import open_stage
from textok.schemas.common import parquet_source, read_meta, with_metadata, write_table_atomic
from textok.schemas.pools import pools_schema
from textok.schemas.shards import parquet_write_options

log = logging.getLogger(__name__)

DEFAULT_PER_CLASS = 50


def pool_rank(key: str, seed: int) -> bytes:
    return hashlib.sha256(f"textok-pool:{seed}:{key}".encode()).digest()


def select_pool(rows: Sequence[dict], per_class: int, seed: int) -> list[dict]:
    """The `per_class` rows with the smallest hash(seed, key), returned in key order."""
    chosen = sorted(rows, key=lambda r: (pool_rank(r["key"], seed), r["key"]))[:per_class]
    return sorted(chosen, key=lambda r: r["key"])


def pools_table(rows: list[dict], meta: dict[str, Any]) -> pa.Table:
    return encoded_table(rows, with_metadata(pools_schema(int(meta["D"])), "pools", "pools", meta), int(meta["D"]))


class _PartPath:
    def __init__(self, part_dir: str):
        self.part_dir = part_dir

    def __call__(self, label: int) -> str:
        return rio.join(self.part_dir, f"{label:06d}.parquet")


class WritePoolPartFn(beam.DoFn):
    def __init__(self, part_dir: str, meta: dict[str, Any]):
        self.part_dir = part_dir
        self.meta = meta

    def process(self, element):
        label, rows, _ = element
        table = pools_table(rows, self.meta)
        write_table_atomic(table, _PartPath(self.part_dir)(label), **parquet_write_options(table.schema))
        maybe_fail("pools.part_written")
        yield label, len(rows)


class BuildClassPools(beam.PTransform):
    """PCollection[caption row] -> per-class part files of K encoded captions; yields (label, count)."""

    def __init__(self, encoder_opts: dict[str, Any], per_class: int, seed: int, part_dir: str, meta: dict[str, Any]):
        super().__init__()
        self.encoder_opts, self.per_class, self.seed = encoder_opts, per_class, seed
        self.part_dir, self.meta = part_dir, meta

    def expand(self, rows):
        per_class, seed = self.per_class, self.seed
        return (rows
                | "ByClass" >> beam.Map(lambda r: (int(r["label"]), r))
                | "Group" >> beam.GroupByKey()
                | "SelectK" >> beam.MapTuple(lambda label, rs: (label, select_pool(list(rs), per_class, seed)))
                | "EncodeCaptions" >> EncodeCaptions(self.encoder_opts, with_images=False,
                                                     skip_if_exists=_PartPath(self.part_dir), progress="pools")
                | "WritePart" >> beam.ParDo(WritePoolPartFn(self.part_dir, self.meta)))


def _pool_candidates(path: str, split: str, holdout_fraction: float, seed: int) -> list[dict]:
    """Labelled caption rows of `split` in one caption file (only the hold-out slice when one is set)."""
    rows = read_captions([path], split).to_pylist()
    return [r for r in rows if r["label"] is not None
            and (not holdout_fraction or in_holdout(r["key"], holdout_fraction, seed))]


def _merge_parts(part_files: list[str], path: str) -> None:
    """Concatenate part files (label order) into one file, one row group per class, atomically
    (streamed: the pools of 1000 classes x K captions x T5-XL can be many GB)."""
    with rio.open_output_atomic(path) as sink:
        writer = None
        for f in part_files:
            t = pq.read_table(parquet_source(f))
            if writer is None:
                writer = pq.ParquetWriter(sink, t.schema, compression="zstd", **parquet_write_options(t.schema))
            writer.write_table(t)
        writer.close()


def _check_against_shards(output_dir: str, train_split: str, fraction: float, seed: int) -> None:
    """Pools from a train hold-out are only unseen if the train shards excluded the same slice."""
    plan = rio.join(output_dir, "shards", f".plan-{train_split}.json")
    if not rio.exists(plan):
        return
    p = rio.read_json(plan)
    if (p.get("pool_holdout_fraction", 0.0), p.get("pool_seed", 0)) != (fraction, seed):
        raise ValueError(f"{plan}: the train shards were encoded with --pool-holdout-fraction "
                           f"{p.get('pool_holdout_fraction')} --seed {p.get('pool_seed')}, but pools are asked with "
                           f"{fraction} / {seed}: the pools would hold images the tokenizer trains on. Use the same "
                           f"values for `textok encode` and `textok pools`.")


def pool_summary(table: pa.Table, per_class: int, unlabelled: int) -> dict[str, Any]:
    labels = table["label"].to_numpy()
    names = table["class_name"].to_pylist()
    counts: dict[int, int] = {}
    class_names: dict[int, Any] = {}
    for lab, name in zip(labels.tolist(), names):
        counts[lab] = counts.get(lab, 0) + 1
        class_names.setdefault(lab, name)
    words = [len(c.split()) for c in table["caption"].to_pylist()]
    return {"classes": len(counts), "rows": table.num_rows, "per_class": per_class,
            "counts": {str(k): v for k, v in sorted(counts.items())},
            "class_names": {str(k): v for k, v in sorted(class_names.items())},
            "short_classes": {str(k): v for k, v in sorted(counts.items()) if v < per_class},
            "mean_words": round(float(np.mean(words)), 2) if words else 0.0,
            "mean_text_len": round(float(np.mean(table["text_len"].to_numpy())), 2) if words else 0.0,
            "unlabelled_skipped": unlabelled}


def run_pools(captions: str, output_dir: str, *, encoder: str, per_class: int = DEFAULT_PER_CLASS,
              split: str = "val", pool_holdout_fraction: float = 0.0, seed: int = 0, train_split: str = "train",
              batch_size: int | None = None,
              max_tokens: int = 128, dtype: str | None = None, device: str | None = None,
              revision: str | None = None, beam_args: Sequence[str] = ()) -> dict[str, Any]:
    """Build `output_dir/pools/{split}.parquet` (+ `_summary.json`). Returns the summary.
    Holds output_dir's writer lease (textok.lease) for the whole run."""
    from textok.lease import hold_lease

    rio.set_filesystem_options(beam_args)
    rio.check_destination(output_dir)
    with hold_lease(output_dir, "pools"):  # one writer per output folder; taken before any work
        return _run_pools_held(captions, output_dir, encoder=encoder, per_class=per_class, split=split,
                               pool_holdout_fraction=pool_holdout_fraction, seed=seed, train_split=train_split,
                               batch_size=batch_size, max_tokens=max_tokens, dtype=dtype, device=device,
                               revision=revision, beam_args=beam_args)


def _run_pools_held(captions: str, output_dir: str, *, encoder: str, per_class: int = DEFAULT_PER_CLASS,
                    split: str = "val", pool_holdout_fraction: float = 0.0, seed: int = 0, train_split: str = "train",
                    batch_size: int | None = None,
                    max_tokens: int = 128, dtype: str | None = None, device: str | None = None,
                    revision: str | None = None, beam_args: Sequence[str] = ()) -> dict[str, Any]:
    """The body of `run_pools`, run while the output lease is held."""
    from textok.pipeline.beam_utils import make_pipeline
    from textok.text_encoder import describe_encoder

    start = time.time()
    require_output_dir(output_dir)
    if per_class <= 0:
        raise FlagError(f"--per-class must be positive, got {per_class}")
    if pool_holdout_fraction:
        if not 0.0 < pool_holdout_fraction < 1.0:
            raise FlagError(f"--pool-holdout-fraction must be in (0, 1), got {pool_holdout_fraction}")
        split = train_split
        _check_against_shards(output_dir, split, pool_holdout_fraction, seed)
    elif split == train_split:
        raise FlagError("pools from the train split would reuse training images: use --split val (default) "
                         "or --pool-holdout-fraction f (and the same f for `textok encode`)")
    files = caption_files(captions)
    # The launcher reads keys and labels only; workers read the caption rows themselves, so the
    # Beam graph holds file names, not rows.
    index = [r for r in read_captions(files, split, columns=["key", "split", "label"]).to_pylist()
             if not pool_holdout_fraction or in_holdout(r["key"], pool_holdout_fraction, seed)]
    unlabelled = sum(r["label"] is None for r in index)
    labels = sorted({int(r["label"]) for r in index if r["label"] is not None})
    if not labels:
        raise ValueError(f"{captions}: no labelled captions for pools in split {split!r}"
                         + (f" (hold-out fraction {pool_holdout_fraction}, seed {seed})" if pool_holdout_fraction else ""))
    meta = describe_encoder(encoder, max_tokens=max_tokens, device=device, dtype=dtype, revision=revision)
    check_output_encoder(output_dir, meta, "shards", "pools")  # pools must speak the shards' encoder
    opts = encoder_options(meta, batch_size, revision)
    meta.pop("device")
    meta.update(per_class=per_class, seed=seed, source_split=split, pool_holdout_fraction=pool_holdout_fraction,
                captions=captions)
    # Part files of other settings must never be merged in: the settings name the folder.
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:12]
    pools_dir = rio.join(output_dir, "pools")
    out_path = rio.join(pools_dir, f"{split}.parquet")
    summary_path = rio.join(pools_dir, f"{split}_summary.json")
    part_dir = rio.join(pools_dir, f".parts-{split}-{digest}")
    clean_temps(pools_dir, final_prefix=f"{split}")  # a killed run's temp files (local outputs)
    up_to_date = rio.exists(out_path) and rio.exists(summary_path) and read_meta(out_path)["meta"] == meta
    if not rio.is_remote(pools_dir):
        for stale in glob.glob(os.path.join(pools_dir, f".parts-{split}-*")):
            if stale != part_dir or up_to_date:  # other settings' parts, or parts already merged
                shutil.rmtree(stale, ignore_errors=True)
    if up_to_date:
        log.info("pools %s: %s is up to date, nothing to do", split, out_path)
        return rio.read_json(summary_path)
    clean_temps(part_dir)
    rio.makedirs(part_dir)
    per_label = collections.Counter(int(r["label"]) for r in index if r["label"] is not None)
    to_encode = sum(min(n, per_class) for label, n in per_label.items()  # classes a killed run finished are skipped
                    if not rio.exists(_PartPath(part_dir)(label)))
    with open_stage("pools", to_encode, "captions", output=out_path), make_pipeline(beam_args) as p:
        _ = (p | "CaptionFiles" >> beam.Create(files)
             | "Spread" >> beam.Reshuffle()
             | "ReadCaptions" >> beam.FlatMap(_pool_candidates, split, pool_holdout_fraction, seed)
             | "BuildClassPools" >> BuildClassPools(opts, per_class, seed, part_dir, meta))
    parts = [_PartPath(part_dir)(label) for label in labels]
    missing = [f for f in parts if not rio.exists(f)]
    if missing:
        raise RuntimeError(f"{part_dir}: {len(missing)} class part files missing after the run, e.g. {missing[0]}")
    _merge_parts(parts, out_path)
    summary = pool_summary(pq.read_table(parquet_source(out_path), columns=["label", "class_name", "caption", "text_len"]),
                           per_class, unlabelled)
    summary.update(path=out_path, source_split=split, seed=seed, pool_holdout_fraction=pool_holdout_fraction,
                   encoder=encoder, wall_s=round(time.time() - start, 2))
    rio.write_json_atomic(summary, summary_path)
    maybe_fail("pools.merged_before_cleanup")
    rio.remove_tree(part_dir)
    if summary["short_classes"]:
        log.warning("pools %s: %d classes have fewer than %d captions: %s", split, len(summary["short_classes"]),
                    per_class, summary["short_classes"])
    return summary
