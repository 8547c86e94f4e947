"""Latent extraction (`textok extract-latents`) and the latent-shard loader the DiT trains on.

    textok extract-latents --tokenizer runs/tok/tokenizer --shards out/shards --output out/latents   # train split
    textok extract-latents ... --split val --output out/latents_val
    torchrun --nproc_per_node 8 -m textok extract-latents ...     # shard files split by rank

    from textok.trainer.data.latents import LatentLoader
    loader = LatentLoader("out/latents", batch_size=256, with_text=False, seed=0)
    for batch in loader:        # batch["z"] [B,N,d] float32 (unnormalised), "label", "key", "caption"
        ...                     # with_text=True adds "text_emb" [B,max_tokens,D] f16 + "text_mask" [B,max_tokens]
    loader.meta["mean"], loader.meta["std"]   # per-channel statistics of z over the whole set

Extraction runs the tokenizer (the EMA weights train-tokenizer exports to tokenizer/) on every
shard image, centre-cropped, with its own caption, and writes one latent
file per shard file (same name) under --output. A latent file is written atomically, so an
existing one is complete: a rerun validates it, checks it came from the same tokenizer, and
skips it. Shards encoded by another text encoder than the tokenizer's training shards (its
text_encoder.json, written by train-tokenizer) are refused. Each file carries the per-channel
moments of its z in its metadata; the set's mean/std (what the generator normalises with) are
combined from them exactly, whatever the file split, and also written to OUTPUT/stats.json.

--hflip also encodes each image mirrored (key `<key>#hflip`, same caption), as fast-DiT extracts
both views since DiT trains with flips. Off by default, and warned about for a tokenizer that
reads text: the caption is kept, so "on the left" then names the wrong side (the rule of
train-tokenizer's --hflip).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from textok.atomic import clean_temps, require_output_dir, write_json_atomic
from textok.faults import maybe_fail
from textok.progress import Progress
from textok.schemas.common import SchemaError, count_rows, validate_file, with_metadata, write_table_atomic
from textok.schemas.latents import latents_schema, moments, read_latent_meta, z_column, z_view
from textok.schemas.shards import SCALE_COLUMN, is_blob, text_emb_arrays, text_emb_column, text_emb_views
from textok.trainer.data.shard_files import open_parquet
# pad_text is also imported from here by trainer/evaluation/sample.py
from textok.trainer.data.loader import (ResumableLoader, ShardLoader, ShardStream, check_shard_meta, pad_text, resolve_shards,
                          row_fields)
from textok.trainer.run_dir import check_text_encoder, tokenizer_dir

log = logging.getLogger(__name__)

PASSTHROUGH = ("key", "split", "label", "class_name", "caption")
# shard metadata that describes one file, not the set: not copied into the latent metadata
PER_FILE_KEYS = ("num_rows", "shard_index", "num_shards")
LATENT_ROW_GROUP = 1024  # rows per row group: the unit the loader splits over ranks x workers
HFLIP_SUFFIX = "#hflip"  # key suffix of a mirrored view's latent


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


# ----------------------------------------------------------------------------- extraction

@dataclass
class ExtractConfig:
    tokenizer: str
    shards: str
    output: str
    split: str | None = "train"  # in a shards dir, only {split}-*.parquet (as train-tokenizer reads)
    batch_size: int = 64
    device: str = "auto"
    with_text: bool = True  # keep text_emb/text_len (DiT-T2I needs them; class-conditional does not)
    num_workers: int = 2
    hflip: bool = False  # also the mirrored view of each image (see the module docstring)


def _latent_meta(shard_meta: dict, tok_path: str, tok_sha: str, model, with_text: bool, hflip: bool) -> dict:
    c = model.cfg
    meta = {k: v for k, v in shard_meta.items() if k not in PER_FILE_KEYS}
    meta.update(tokenizer=tok_path, tokenizer_sha256=tok_sha, num_tokens=c.num_tokens, token_dim=c.token_dim,
                image_size=c.image_size, text_mode=c.text_mode, has_text=with_text, hflip=hflip)
    return meta


def _check_done(path: str, tok_sha: str, with_text: bool, hflip: bool) -> int:
    """An existing latent file: valid and from this tokenizer -> its row count; else a clear error."""
    info = validate_file(path, expect_table="latents")
    meta = info["meta"]
    had_flip = bool(meta.get("hflip", False))
    if meta["tokenizer_sha256"] != tok_sha or bool(meta["has_text"]) != with_text or had_flip != hflip:
        raise SchemaError(f"{path} exists but was written by tokenizer {meta['tokenizer']} "
                          f"({meta['tokenizer_sha256'][:19]}..., has_text={meta['has_text']}, hflip={had_flip}); "
                          f"this run uses {tok_sha[:19]}..., has_text={with_text}, hflip={hflip}. Use a new "
                          f"--output for other settings")
    return info["num_rows"]


@torch.no_grad()
def encode_shard(model, shard: str, device: torch.device, batch_size: int, num_workers: int,
                 progress: Progress | None = None, hflip: bool = False) -> dict[str, np.ndarray]:
    """{key: z [N,d] float32} of every row of one shard file (centre crop, own caption); with
    `hflip` also {key + HFLIP_SUFFIX: z of the mirrored image}."""
    from textok.devices import autocast

    c = model.cfg
    loader = ShardLoader(shard, c.image_size, batch_size, text_dim=c.text_dim, max_tokens=None, train=False,
                         num_workers=num_workers, shuffle_buffer=0, drop_last=False)
    if loader.max_tokens > c.max_text_tokens:
        raise SchemaError(f"{shard}: shard max_tokens={loader.max_tokens} > the tokenizer's "
                          f"max_text_tokens={c.max_text_tokens}; encode the shards as for training")
    out: dict[str, np.ndarray] = {}
    for batch in loader:
        images = batch["images"].to(device)
        text, mask = batch["text_emb"].to(device).float(), batch["text_mask"].to(device)
        for suffix, view in [("", images)] + ([(HFLIP_SUFFIX, images.flip(-1))] if hflip else []):
            with autocast(device):
                z = model.encode(view, text, mask)
            for key, zi in zip(batch["key"], z.float().cpu().numpy()):
                if key + suffix in out:
                    raise SchemaError(f"{shard}: key {key + suffix!r} appears twice")
                out[key + suffix] = zi
        if progress is not None:
            progress.update(len(batch["key"]))
    return out


def latent_table(source: pa.Table, z: np.ndarray, meta: dict, with_text: bool) -> pa.Table:
    c_n, c_d = z.shape[1:]
    schema = latents_schema(c_n, c_d, int(meta["D"]) if with_text else None)
    zcol = z_column(z)
    meta = dict(meta, moments=moments(z_view(zcol)))  # from the float16 values the DiT will read
    cols = [source.column(n).cast(schema.field(n).type) for n in PASSTHROUGH] + [zcol]
    if with_text:
        text = source.column("text_emb")
        if SCALE_COLUMN in source.column_names or is_blob(text.type):  # latents keep typed float16 (their contract)
            text = text_emb_column(text_emb_arrays(source, int(meta["D"])), int(meta["D"]))
            meta = dict(meta, storage_dtype="float16")
        cols += [text, source.column("text_len")]
    return pa.Table.from_arrays(cols, schema=with_metadata(schema, "latents", "extract-latents", meta))


def extract_latents(cfg: ExtractConfig) -> dict:
    """Write OUTPUT/<shard name>.parquet per shard file (skipping done ones) + OUTPUT/stats.json."""
    from textok.trainer.training.distributed import distributed
    from textok.trainer.models.textok import TexTok

    start = time.time()
    require_output_dir(cfg.output)
    with distributed(cfg.device) as dist:
        tok_path = tokenizer_dir(cfg.tokenizer, "--tokenizer")
        tok_sha = file_sha256(os.path.join(tok_path, "model.safetensors"))
        model = TexTok.from_pretrained(tok_path).eval().to(dist.device)
        files = resolve_shards(cfg.shards, cfg.split)
        shard_meta = check_shard_meta(files, text_dim=model.cfg.text_dim)
        check_text_encoder(tok_path, shard_meta, cfg.shards, require_record=model.cfg.text_mode != "none")
        if cfg.hflip and model.cfg.text_mode != "none":
            log.warning("extract-latents --hflip with a text-conditioned tokenizer (text_mode=%s): the mirrored "
                        "views keep their captions, which then name the wrong side of the image",
                        model.cfg.text_mode)
        if dist.is_main:
            clean_temps(cfg.output)  # temp files of a killed run (none in flight: ranks start together)
        if dist.enabled:
            torch.distributed.barrier()
        names = [os.path.basename(f) for f in files]
        if len(set(names)) != len(names):
            raise ValueError(f"{cfg.shards}: shard file names repeat across folders; latent files are named after "
                             f"them, so pass one split's folder at a time")
        done = skipped = rows = 0
        mine = files[dist.rank::dist.world_size]
        todo_rows = count_rows([f for f in mine if not os.path.exists(os.path.join(cfg.output, os.path.basename(f)))])
        bar = Progress("extract-latents", total=todo_rows, unit="images", enabled=dist.is_main, output=cfg.output)
        for shard in mine:
            out = os.path.join(cfg.output, os.path.basename(shard))
            if os.path.exists(out):
                rows += _check_done(out, tok_sha, cfg.with_text, cfg.hflip)
                skipped += 1
                continue
            zs = encode_shard(model, shard, dist.device, cfg.batch_size, cfg.num_workers, bar, cfg.hflip)
            columns = list(PASSTHROUGH) + (["text_emb", "text_len"] if cfg.with_text else [])
            pf = open_parquet(shard)
            scale = [SCALE_COLUMN] if cfg.with_text and SCALE_COLUMN in pf.schema_arrow.names else []
            source = pf.read(columns=columns + scale)
            if cfg.hflip:  # the mirrored rows follow the originals, with the same label/caption/text
                flipped = pc.binary_join_element_wise(source.column("key"), HFLIP_SUFFIX, "")
                source = pa.concat_tables([source, source.set_column(0, source.schema.field("key"), flipped)])
            keys = source.column("key").to_pylist()
            missing = [k for k in keys if k not in zs]
            if missing or len(zs) != len(keys):
                raise SchemaError(f"{shard}: the loader returned {len(zs)} latents for {len(keys)} rows "
                                  f"(e.g. missing {missing[:3]})")
            z = np.stack([zs[k] for k in keys])
            meta = dict(_latent_meta(shard_meta, tok_path, tok_sha, model, cfg.with_text, cfg.hflip),
                        source=shard, num_rows=len(keys))
            write_table_atomic(latent_table(source, z, meta, cfg.with_text), out, row_group_size=LATENT_ROW_GROUP,
                               fault_point="latents.after_write_before_rename")
            maybe_fail("latents.after_rename")
            rows += len(keys)
            done += 1
            log.debug("latents %s: %d rows", out, len(keys))
        bar.close()
        if dist.enabled:
            torch.distributed.barrier()
        stats = read_latent_meta([os.path.join(cfg.output, n) for n in names])
        summary = {"output": cfg.output, "files": len(files), "files_written": done, "files_skipped": skipped,
                   "rows_this_rank": rows, "count": stats["count"], "mean": stats["mean"], "std": stats["std"],
                   "tokenizer": tok_path, "wall_s": round(time.time() - start, 2)}
        if dist.is_main:
            write_json_atomic({k: v for k, v in stats.items() if k != "moments"}, os.path.join(cfg.output, "stats.json"))
        return summary


# ----------------------------------------------------------------------------- loading

class LatentStream(ShardStream):
    """ShardStream's split / shuffle / resume over latent files; rows carry z instead of an image."""

    def __init__(self, files, batch_size: int, max_tokens: int, with_text: bool, **kwargs):
        super().__init__(files, image_size=0, batch_size=batch_size, max_tokens=max_tokens, **kwargs)
        self.with_text = with_text

    def _rows(self, units):
        columns = ["key", "label", "caption", "z"] + (["text_emb", "text_len"] if self.with_text else [])
        for u in units:
            table = u.read(columns)
            z = z_view(table.column("z"))
            embs = text_emb_views(table.column("text_emb")) if self.with_text else [None] * table.num_rows
            keys, labels, caps = (table.column(c).to_pylist() for c in ("key", "label", "caption"))
            for i in range(table.num_rows):
                yield keys[i], labels[i], caps[i], z[i], embs[i], u.path

    def _collate(self, rows: list, epoch: int, rng) -> dict:
        batch = {
            "z": torch.from_numpy(np.stack([r[3] for r in rows]).astype(np.float32)),
            **row_fields(rows, epoch),
        }
        if self.with_text:
            batch["text_emb"], batch["text_mask"] = pad_text([r[4] for r in rows], self.max_tokens,
                                                             [f"{r[5]}: row {r[0]!r}" for r in rows])
        return batch

    def finish_batch(self, raw: dict) -> dict:
        return raw  # latent batches are complete in the worker (small: no image to cast)


class LatentLoader(ResumableLoader):
    """Batches of a latent set for a trainer: counts consumed batches for an exact resume (the
    position format of trainer.data.loader.ShardLoader); `meta` holds the set's metadata + mean/std."""
    stream_cls = LatentStream

    def __init__(self, latents: str, batch_size: int, with_text: bool = False, train: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, shuffle_buffer: int = 1000,
                 drop_last: bool | None = None):
        super().__init__()
        self.files = resolve_shards(latents)
        self.meta = read_latent_meta(self.files)
        if with_text and not self.meta["has_text"]:
            raise SchemaError(f"{latents}: the latents were extracted without text (--no-text); DiT-T2I and "
                              f"text-conditioned decoding need them: rerun extract-latents with --text")
        self.text_dim, self.max_tokens = int(self.meta["D"]), int(self.meta["max_tokens"])
        self.kwargs = dict(batch_size=batch_size, max_tokens=self.max_tokens, with_text=with_text, train=train,
                           seed=seed, rank=rank, world_size=world_size, num_workers=num_workers,
                           shuffle_buffer=shuffle_buffer, drop_last=drop_last)
        self.num_workers = num_workers


def max_label(files: list[str]) -> int:
    """The largest label in a latent set (-1 when none): the class count a DiT needs is this + 1."""
    best = -1
    for f in files:
        col = pq.read_table(f, columns=["label"]).column("label")
        if col.null_count:
            raise SchemaError(f"{f}: {col.null_count} rows have no label; a class-conditional DiT needs labels "
                              f"(train with --t2i, or extract latents from labelled shards)")
        if len(col):
            best = max(best, int(pc.max(col).as_py()))
    return best
