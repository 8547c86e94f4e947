"""Shard loader: an `IterableDataset` over textok training shards, resumable to the batch.

    from textok.trainer.data.loader import ShardLoader
    loader = ShardLoader("out/shards", image_size=256, batch_size=32, text_dim=2048,
                         max_tokens=128, seed=0, rank=0, world_size=1, num_workers=4)
    for batch in loader:   # infinite when train=True
        batch["images"]    # [B,3,H,W] float32 in [-1,1] (workers send uint8 [B,H,W,3]; cast here)
        batch["text_emb"]  # [B,max_tokens,D] float16, zero-padded (workers send it packed, unpadded)
        batch["text_mask"] # [B,max_tokens] bool, True = real token
        batch["label"], batch["key"], batch["caption"]
    state = loader.state_dict()   # goes into the checkpoint; loader.load_state_dict(state) resumes

Work split: the unit of reading is a (file, row group[, row stride]) slice. Each epoch the
units are permuted with a generator seeded by (seed, epoch) -- the same on every process --
and unit j goes to stream j % (world_size * num_workers), so streams never overlap and
together cover every row once per epoch. When there are fewer row groups than streams,
each row group is cut into row strides so that no stream is left without data.

Each stream (one DataLoader worker of one rank) batches its own samples and never ends in
training mode (epochs follow each other), so the DataLoader's round-robin over workers is
fixed: batch i of a rank comes from worker i % num_workers. The resume position is just the
number of batches a rank consumed: on resume each worker replays its deterministic stream
and skips, without decoding images, the samples it had already produced.
"""
from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from textok.schemas.common import SchemaError, list_parquet
from textok.schemas.shards import SCALE_COLUMN, image_bytes, text_emb_arrays
from textok.trainer.data.shard_files import is_remote, list_shard_files, open_parquet, shard_meta

COLUMNS = ["key", "label", "caption", "image", "text_emb", "text_len"]


def resolve_shards(spec: str | Sequence[str], split: str | None = None) -> list[str]:
    """A directory (recursive), a glob, a single file, or a list of any of these -> sorted files.

    In a directory only `{split}-*.parquet` files are taken when `split` is given: one shards/
    directory holds every split (`train-00000-of-00008.parquet`, `val-...`). Files named
    explicitly, or matched by a glob, are taken as they are.
    """
    if isinstance(spec, (list, tuple)):
        return sorted({f for s in spec for f in resolve_shards(s, split)})
    spec = os.fspath(spec)
    if is_remote(spec):  # s3:// or gs://, streamed through pyarrow.fs (trainer/data/shard_files.py)
        files = list_shard_files(spec)
        named = spec.endswith(".parquet") or any(c in spec for c in "*?[")
        if split and not named:
            files = [f for f in files if f.rsplit("/", 1)[-1].startswith(f"{split}-")]
    elif any(c in spec for c in "*?["):
        files = sorted(glob.glob(spec, recursive=True))
    else:
        files = list_parquet(spec)
        if split and os.path.isdir(spec):
            found = files
            files = [f for f in files if os.path.basename(f).startswith(f"{split}-")]
            if found and not files:
                names = sorted({os.path.basename(f).split("-")[0] for f in found})
                raise FileNotFoundError(f"{spec}: no shards of split {split!r} (files start with {names}); "
                                        f"pass --split with one of those")
    files = [f for f in files if f.endswith(".parquet")]
    if not files:
        raise FileNotFoundError(f"{spec}: no .parquet shard files found (pass a shards dir, a glob or files)")
    return files


def check_shard_meta(files: Sequence[str], text_dim: int | None = None, max_tokens: int | None = None,
                     encoder: str | None = None) -> dict:
    """Check every shard agrees with the others and with the run's config; return the common meta.

    Expected values of None are taken from the first file.
    """
    expected = {"D": text_dim, "max_tokens": max_tokens, "encoder": encoder}
    source = {k: "the run's config" for k, v in expected.items() if v is not None}
    common = None
    for path in files:
        info = shard_meta(path)
        if info["table"] != "shards":
            raise SchemaError(f"{path}: metadata textok.table is {info['table']!r}, expected 'shards'")
        meta = info["meta"]
        for field in expected:
            if field not in meta:
                raise SchemaError(f"{path}: shard metadata lacks {field!r}")
            got = int(meta[field]) if field != "encoder" else meta[field]
            if expected[field] is None:
                expected[field], source[field] = got, files[0]
            elif got != expected[field]:
                raise SchemaError(f"{path}: shard metadata {field}={got!r} does not match {field}={expected[field]!r} "
                                  f"from {source[field]}; use shards encoded with one encoder setting, or set the "
                                  f"run's text_dim/max_text_tokens to match")
        common = common or dict(meta)
    return {**common, **expected}


@dataclass(frozen=True)
class Unit:
    """A slice of a shard: one row group, optionally every `stride`-th row from `offset`."""
    path: str
    row_group: int
    offset: int = 0
    stride: int = 1

    def read(self, columns: Sequence[str]):
        """This slice's rows of `columns` as a pyarrow Table."""
        pf = open_parquet(self.path)
        if SCALE_COLUMN in pf.schema_arrow.names and "text_emb" in columns:  # int8 storage: its scales too
            columns = list(columns) + [SCALE_COLUMN]
        table = pf.read_row_group(self.row_group, columns=list(columns))
        return table.take(np.arange(self.offset, table.num_rows, self.stride)) if self.stride > 1 else table


def plan_units(files: Sequence[str], num_streams: int) -> list[Unit]:
    groups = [(f, rg) for f in files for rg in range(open_parquet(f).num_row_groups)]
    if not groups:
        raise SchemaError(f"{files[0]}...: the shards hold no row groups")
    cuts = max(1, math.ceil(num_streams / len(groups)))
    return [Unit(f, rg, k, cuts) for f, rg in groups for k in range(cuts)]


def resize_crop(img: Image.Image, image_size: int, train: bool, rng: np.random.Generator) -> np.ndarray:
    """Short side -> S (bicubic), then an S x S crop (random, or centre) -> [S,S,3] uint8.

    The crop is chosen in resized coordinates but only its box is resampled (`resize(box=...)`,
    whose filter still reads the pixels around the box): the same pixels as resizing the whole
    image and cropping (within 1/255, rounding), ~40 % less resampling work on a 4:3 image.
    """
    w, h = img.size
    scale = image_size / min(w, h)
    rw, rh = (max(image_size, round(w * scale)), max(image_size, round(h * scale))) if scale != 1.0 else (w, h)
    if train:
        top, left = int(rng.integers(0, rh - image_size + 1)), int(rng.integers(0, rw - image_size + 1))
    else:
        top, left = (rh - image_size) // 2, (rw - image_size) // 2
    if (w, h) == (image_size, image_size):  # stored at the training size (encode --image-size): no work
        pass
    elif scale == 1.0:
        img = img.crop((left, top, left + image_size, top + image_size))
    else:
        sx, sy = rw / w, rh / h
        img = img.resize((image_size, image_size), Image.BICUBIC,
                         box=(left / sx, top / sy, (left + image_size) / sx, (top + image_size) / sy))
    return np.array(img, dtype=np.uint8)


def decode_crop(data: bytes, image_size: int, train: bool, rng: np.random.Generator, where: str,
                hflip: bool = False) -> np.ndarray:
    """Encoded bytes -> [S,S,3] uint8: resize the short side to S, crop (random or centre), and with
    `hflip` (training only) a horizontal flip with p = 0.5 (a view, no copy). Off by default: a flip
    keeps the caption, so "a red circle on the left" then describes an image with it on the right
    (measured: it erases most of TexTok's gain on captions that say where things are)."""
    # The same decode as the pipeline (EXIF orientation, alpha on white, 16-bit scaling), so the
    # pixels trained on match the width/height recorded in the shards.
    from textok.schemas.images import ImageDecodeError, decode_image

    try:
        img = decode_image(data, uri=where, min_short_side=image_size)  # JPEG draft mode when >= 2x
    except ImageDecodeError as e:
        raise ValueError(f"{where}: image does not decode ({e.error_type}: {e.message}); the encode stage should have "
                         f"dead-lettered it -- re-run `textok encode` or drop the shard") from e
    x = resize_crop(img, image_size, train, rng)
    if train and hflip and rng.random() < 0.5:
        x = x[:, ::-1]
    return x


def to_model_images(images_u8: torch.Tensor) -> torch.Tensor:
    """[B,S,S,3] uint8 (what workers send: 4x fewer bytes than float32) -> [B,3,S,S] float32 in [-1,1],
    cast and laid out in one pass (on whatever device `images_u8` is on)."""
    b, h, w, c = images_u8.shape
    out = torch.empty((b, c, h, w), dtype=torch.float32, device=images_u8.device)
    out.copy_(images_u8.permute(0, 3, 1, 2))
    return out.div_(127.5).sub_(1.0)


def pad_packed(packed: torch.Tensor, lengths: torch.Tensor, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed [sum(len_i), D] + lengths [B] -> ([B,max_tokens,D] zero-padded, [B,max_tokens] bool, True = real)."""
    mask = torch.arange(max_tokens, device=lengths.device)[None, :] < lengths[:, None].long()
    # each byte written once (copy the tokens, zero the tail): 2x faster than zeros + a masked scatter
    text = torch.empty((len(lengths), max_tokens, packed.shape[1]), dtype=packed.dtype, device=packed.device)
    start = 0
    for i, n in enumerate(lengths.tolist()):
        text[i, :n].copy_(packed[start:start + n])
        text[i, n:].zero_()
        start += n
    return text, mask


def pad_text(embs: Sequence[np.ndarray], max_tokens: int, where: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpadded float16 [len_i, D] -> ([B,max_tokens,D] float16 zero-padded, [B,max_tokens] bool, True = real).

    `where[i]` names row i in errors ("FILE: row KEY").
    """
    dim = embs[0].shape[1]
    text = torch.zeros(len(embs), max_tokens, dim, dtype=torch.float16)
    mask = torch.zeros(len(embs), max_tokens, dtype=torch.bool)
    for i, e in enumerate(embs):
        if len(e) > max_tokens:
            raise SchemaError(f"{where[i]} has {len(e)} text tokens > max_tokens={max_tokens}")
        if e.shape[1] != dim:
            raise SchemaError(f"{where[i]} text_emb has D={e.shape[1]}, other rows D={dim}")
        text[i, :len(e)].numpy()[:] = e  # copy out of the read-only Arrow view
        mask[i, :len(e)] = True
    return text, mask


def row_fields(rows: list[tuple], epoch: int) -> dict:
    """The batch entries every stream yields besides its tensors (rows are (key, label, caption, ...))."""
    return {"label": torch.tensor([-1 if r[1] is None else r[1] for r in rows], dtype=torch.long),
            "key": [r[0] for r in rows], "caption": [r[2] for r in rows], "epoch": epoch}


class ShardStream(IterableDataset):
    """Yields whole batches (dicts of tensors); see the module docstring for the split and resume."""

    def __init__(self, files: Sequence[str], image_size: int, batch_size: int, max_tokens: int,
                 train: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 shuffle_buffer: int = 1000, skip_batches: int = 0, drop_last: bool | None = None,
                 hflip: bool = False, text_dim: int | None = None):
        self.files = list(files)
        self.text_dim = text_dim  # metadata D: needed to view version 3 (blob) text_emb
        self.hflip = hflip
        self.image_size, self.batch_size, self.max_tokens = image_size, batch_size, max_tokens
        self.train, self.seed, self.rank, self.world_size = train, seed, rank, world_size
        self.num_workers = max(1, num_workers)
        self.shuffle_buffer = shuffle_buffer if train else 0
        self.skip_batches = skip_batches
        self.drop_last = train if drop_last is None else drop_last
        self.units = plan_units(self.files, world_size * self.num_workers)

    def stream_index(self, worker: int) -> int:
        return self.rank * self.num_workers + worker

    def units_for(self, epoch: int, worker: int) -> list[Unit]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units)) if self.train \
            else np.arange(len(self.units))
        n = self.world_size * self.num_workers
        return [self.units[i] for i in order[self.stream_index(worker)::n]]

    def _rows(self, units: list[Unit]) -> Iterator[tuple]:
        for u in units:
            table = u.read(COLUMNS)
            dim = self.text_dim or int(shard_meta(u.path)["meta"]["D"])
            embs = text_emb_arrays(table, dim)  # float16 [len, D]: zero-copy views, or decoded from int8
            cols = {c: table.column(c).to_pylist() for c in ("key", "label", "caption", "text_len")}
            cols["image"] = image_bytes(table.column("image"))  # {bytes, path} (or v1 plain bytes) -> bytes
            for i in range(table.num_rows):
                if len(embs[i]) != cols["text_len"][i]:
                    raise SchemaError(f"{u.path}: row {cols['key'][i]!r} has text_len={cols['text_len'][i]} but "
                                      f"text_emb holds {len(embs[i])} tokens")
                if not np.isfinite(embs[i]).all():  # before training: a NaN would surface as a loss with no row
                    raise SchemaError(f"{u.path}: row {i} (key {cols['key'][i]!r}) has NaN/inf in text_emb; "
                                      "re-encode it (`textok encode` now dead-letters such rows) or drop the file; "
                                      "`textok inspect` lists every such row")
                yield cols["key"][i], cols["label"][i], cols["caption"][i], cols["image"][i], embs[i], u.path

    def _samples(self, worker: int) -> Iterator[tuple]:
        """Raw rows of this stream in their final (shuffled) order, epoch after epoch in train mode."""
        epoch = 0
        while True:
            units = self.units_for(epoch, worker)
            if not units and self.train:
                raise RuntimeError(f"loader stream rank={self.rank} worker={worker} has no shard slices: "
                                   f"{len(self.units)} slices for {self.world_size * self.num_workers} streams")
            rng = np.random.default_rng([self.seed, epoch, self.stream_index(worker), 1])
            buf: list = []
            rows_seen = 0
            for row in self._rows(units):
                rows_seen += 1
                if self.shuffle_buffer <= 1:
                    yield epoch, row
                    continue
                if len(buf) < self.shuffle_buffer:
                    buf.append(row)
                    continue
                j = int(rng.integers(len(buf)))
                yield epoch, buf[j]
                buf[j] = row
            for j in rng.permutation(len(buf)):
                yield epoch, buf[j]
            if not self.train:
                return
            if rows_seen == 0:  # an infinite stream with no rows would hang the rank
                raise RuntimeError(f"loader stream rank={self.rank} worker={worker} got no rows in epoch {epoch}: "
                                   f"too few rows for {self.world_size * self.num_workers} streams; use fewer "
                                   f"--num-workers or processes, or more data")
            epoch += 1

    def _collate(self, rows: list, epoch: int, rng: np.random.Generator) -> dict:
        """The worker's half of a batch: uint8 images in one preallocated [B,S,S,3] tensor and the text
        packed unpadded ([sum(len_i), D] + lengths). Both cross the worker -> main process queue at a
        fraction of float32 / padded bytes (bench: 526 -> 1876 examples/s); `finish_batch` does the rest."""
        s = self.image_size
        images = torch.empty((len(rows), s, s, 3), dtype=torch.uint8)
        out = images.numpy()
        for i, r in enumerate(rows):
            out[i] = decode_crop(r[3], s, self.train, rng, f"{r[5]}: row {r[0]!r}", self.hflip)
        embs = [r[4] for r in rows]
        dim = embs[0].shape[1]
        for r, e in zip(rows, embs):
            if len(e) > self.max_tokens:
                raise SchemaError(f"{r[5]}: row {r[0]!r} has {len(e)} text tokens > max_tokens={self.max_tokens}")
            if e.shape[1] != dim:
                raise SchemaError(f"{r[5]}: row {r[0]!r} text_emb has D={e.shape[1]}, other rows D={dim}")
        packed = torch.empty((sum(len(e) for e in embs), dim), dtype=torch.float16)
        np.concatenate(embs, axis=0, out=packed.numpy())  # the one copy out of the Arrow buffers
        return {"images_u8": images, "text_packed": packed,
                "text_len": torch.tensor([len(e) for e in embs], dtype=torch.int32), **row_fields(rows, epoch)}

    def finish_batch(self, raw: dict) -> dict:
        """Main process: uint8 -> float in [-1,1] [B,3,S,S], packed text -> padded [B,max_tokens,D] + mask."""
        text, mask = pad_packed(raw.pop("text_packed"), raw.pop("text_len"), self.max_tokens)
        return {"images": to_model_images(raw.pop("images_u8")), "text_emb": text, "text_mask": mask, **raw}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        # DataLoader always starts its round-robin at its worker 0; rotate so that worker plays
        # the stream whose turn it is at the resume point (batch `skip_batches` is from stream
        # skip_batches % num_workers).
        worker = ((info.id if info is not None else 0) + self.skip_batches) % self.num_workers
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError(f"ShardStream planned for {self.num_workers} workers, DataLoader runs {info.num_workers}")
        return self.raw_batches(worker)

    def batches(self, worker: int) -> Iterator[dict]:
        """The finished batches of one stream (worker `worker` of this rank), in this process."""
        return map(self.finish_batch, self.raw_batches(worker))

    def raw_batches(self, worker: int) -> Iterator[dict]:
        """The batches of one stream as a worker sends them (`_collate`); `finish_batch` completes them."""
        # Batches this worker already delivered before the resume point (round-robin over workers).
        skip = max(0, math.ceil((self.skip_batches - worker) / self.num_workers))
        rows: list = []
        batch_index = 0
        for epoch, row in self._samples(worker):
            rows.append(row)
            if len(rows) < self.batch_size:
                continue
            if batch_index >= skip:  # skipped batches are never decoded
                yield self._collate(rows, epoch, self._batch_rng(worker, batch_index))
            batch_index += 1
            rows = []
        if rows and not self.drop_last:
            yield self._collate(rows, epoch, self._batch_rng(worker, batch_index))

    def _batch_rng(self, worker: int, batch_index: int) -> np.random.Generator:
        # Augmentation draws are seeded per batch, so skipping batches on resume needs no replay.
        return np.random.default_rng([self.seed, self.stream_index(worker), batch_index, 2])


class ResumableLoader:
    """A DataLoader over a `stream_cls` stream that counts consumed batches for checkpoint/resume.

    Subclasses set `files`, `kwargs` (the stream's arguments: seed, rank, world_size, num_workers,
    batch_size, shuffle_buffer, ...) and `num_workers`, then call `ResumableLoader.__init__`.
    """
    stream_cls: type[ShardStream] = ShardStream
    files: list[str]
    kwargs: dict
    num_workers: int

    def __init__(self) -> None:
        self.batches = self.epoch = 0

    def layout(self) -> dict:
        k = self.kwargs
        return {"seed": k["seed"], "world_size": k["world_size"], "num_workers": max(1, k["num_workers"]),
                "batch_size": k["batch_size"], "shuffle_buffer": k["shuffle_buffer"], "files": len(self.files)}

    def state_dict(self) -> dict:
        # `batches` alone fixes the position; `epoch` (of the last batch's first stream) is for humans
        return {"batches": self.batches, "epoch": self.epoch, **self.layout()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in self.layout().items():
            if state.get(k) != v:
                raise ValueError(f"cannot resume the data position exactly: checkpoint has {k}={state.get(k)!r}, "
                                 f"this run has {k}={v!r}; resume with the same {k}")
        self.batches = int(state["batches"])
        self.epoch = int(state.get("epoch", 0))

    def __iter__(self) -> Iterator[dict]:
        dataset = self.stream_cls(self.files, skip_batches=self.batches, **self.kwargs)
        # Our own generator: a DataLoader iterator otherwise draws its base seed from the global
        # torch RNG, and a resumed run (which starts iterating after restoring the RNG) would then
        # see other dropout / diffusion noise than the uninterrupted one. Per rank, like the streams.
        base_seed = int(np.random.SeedSequence([self.kwargs["seed"], self.kwargs["rank"]]).generate_state(1)[0])
        # prefetch_factor 4: each worker keeps 4 batches ready (uint8 + packed text: small), which
        # absorbs the jitter of a slow row group or a large image
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                            prefetch_factor=4 if self.num_workers else None, pin_memory=torch.cuda.is_available(),
                            generator=torch.Generator().manual_seed(base_seed))
        for raw in loader:
            batch = dataset.finish_batch(raw)
            self.batches += 1
            self.epoch = batch["epoch"]
            yield batch


class ShardLoader(ResumableLoader):
    """Batches of training shards (images decoded and augmented); see ResumableLoader for resume."""

    def __init__(self, shards: str | Sequence[str], image_size: int, batch_size: int, text_dim: int | None = None,
                 max_tokens: int | None = None, encoder: str | None = None, split: str | None = None,
                 train: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, shuffle_buffer: int = 1000,
                 drop_last: bool | None = None, hflip: bool = False):
        super().__init__()
        self.files = resolve_shards(shards, split)
        self.meta = check_shard_meta(self.files, text_dim, max_tokens, encoder)
        self.text_dim, self.max_tokens = int(self.meta["D"]), int(self.meta["max_tokens"])
        self.kwargs = dict(image_size=image_size, batch_size=batch_size, max_tokens=self.max_tokens, train=train,
                           seed=seed, rank=rank, world_size=world_size, num_workers=num_workers,
                           shuffle_buffer=shuffle_buffer, drop_last=drop_last, hflip=hflip, text_dim=self.text_dim)
        self.num_workers = num_workers
