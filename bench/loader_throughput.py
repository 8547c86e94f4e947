"""Shard loader throughput -> JSON: does the loader keep up with JPEG decoding, and what draft mode buys.

    python bench/loader_throughput.py                                  # ~1 minute on 2 CPU cores
    python bench/loader_throughput.py --rows 512 --num-workers 0,2,4,8 --text-dim 2048

Writes synthetic shards (JPEG photos-like images, `--text-dim` embeddings of 20-90 tokens),
then measures, in the same run and over the same image bytes:

- `pil_decode`: the decode bound, a plain loop `Image.open(bytes).convert("RGB")` (full-size
  decode); `pil_decode_draft`: the same with Pillow's JPEG draft mode at the training size;
- `loader`: `ShardLoader` examples/s in-process (num_workers=0: one worker's worth), i.e.
  Parquet read + JPEG decode + resize + random crop + flip + float conversion + text padding;
  its ratio to the decode bound of the same decode mode is the goal (>= 0.9x per worker);
- the same loader with draft mode off (full decode), so `draft_speedup` is what draft buys;
- scaling with `--num-workers` (DataLoader worker processes), and MB/s of shard bytes read;
- where a loader example's time goes: each step timed alone (Parquet read incl. the embedding
  column, text padding, decode, resize + crop, tensor conversion).

Three image sets: `prepared` (256x256, what `textok encode --image-size 256` stores: the loader
only crops, so its ratio is the loader's own overhead), `imagenet` (500x375, about the ImageNet
mean; the loader adds a bicubic resize; no draft at 256 px, the short side is < 2x) and `large`
(1024x768, where draft decodes at 1/2 scale). Each figure is the best of `--repeats` runs: the
machine may be shared, and the best run is the one least disturbed.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import emit  # noqa: E402

SETS = {"prepared": (256, 256), "imagenet": (500, 375), "large": (1024, 768)}


def photo_like(rng: np.random.Generator, w: int, h: int, quality: int = 90) -> bytes:
    """A JPEG with smooth structure and texture, so its size and decode cost resemble a photo's."""
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            fx, fy, ph = rng.uniform(0.002, 0.03, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] += np.sin(xx * fx + yy * fy + ph)
    img = 128 + 40 * img + rng.normal(0, 12, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_shards(out: str, rows: int, size: tuple[int, int], text_dim: int, max_tokens: int, seed: int = 0) -> str:
    from textok.pipeline.encode.pipeline import ROW_GROUP_SIZE, shards_table
    from textok.schemas.common import write_table_atomic
    from textok.schemas.shards import parquet_write_options

    rng = np.random.default_rng(seed)
    quality = 95 if size == SETS["prepared"] else 90  # encode --image-size re-encodes at q95
    images = [photo_like(rng, *size, quality=quality) for _ in range(min(rows, 32))]  # reused: synthesis is slow, decode is not
    meta = {"encoder": "synthetic", "D": text_dim, "max_tokens": max_tokens, "compute_dtype": "bfloat16",
            "storage_dtype": "float16", "image_mode": "original"}
    per_shard = max(1, rows // 4)
    for s in range(0, rows, per_shard):
        part = []
        for i in range(s, min(rows, s + per_shard)):
            n = int(rng.integers(20, min(90, max_tokens) + 1))
            part.append({"key": f"k{i:06d}", "split": "train", "label": i % 10, "class_name": None,
                         "caption": "a photo", "image": images[i % len(images)], "image_format": "jpeg",
                         "width": size[0], "height": size[1], "text_len": n,
                         "text_emb": rng.standard_normal((n, text_dim)).astype(np.float16)})
        table = shards_table(part, meta)  # written as WriteShardFn writes shards
        write_table_atomic(table, os.path.join(out, f"train-{s // per_shard:05d}.parquet"),
                           row_group_size=ROW_GROUP_SIZE, **parquet_write_options(table.schema))
    return out


def best_of(repeats: int, fn, key=lambda r: r):
    return max((fn() for _ in range(repeats)), key=key)


def pil_loop(images: list[bytes], image_size: int | None, repeat: int) -> float:
    """Examples/s of a bare decode loop; `image_size` set: JPEG draft mode as the loader uses it."""
    from PIL import Image

    n, t0 = 0, time.perf_counter()
    for _ in range(repeat):
        for data in images:
            img = Image.open(io.BytesIO(data))
            if image_size:
                w, h = img.size
                if min(w, h) >= 2 * image_size:
                    s = image_size / min(w, h)
                    img.draft(None, (int(np.ceil(w * s)), int(np.ceil(h * s))))
            img.convert("RGB")
            n += 1
    return n / (time.perf_counter() - t0)


def loader_rate(shards: str, image_size: int, batch_size: int, num_workers: int, examples: int,
                draft: bool) -> dict:
    """Examples/s of ShardLoader (after its first batch: worker start-up is not throughput)."""
    import textok.schemas.images as images_mod
    from textok.trainer.data.loader import ShardLoader

    real = images_mod.decode_image
    if not draft:  # the loader's decode with draft mode switched off
        images_mod.decode_image = lambda data, **kw: real(data, **{k: v for k, v in kw.items()
                                                                   if k != "min_short_side"})
    try:
        loader = ShardLoader(shards, image_size=image_size, batch_size=batch_size, train=True, seed=0,
                             num_workers=num_workers, shuffle_buffer=64)
        bytes_per_row = sum(os.path.getsize(f) for f in loader.files) / sum(
            __import__("pyarrow.parquet", fromlist=["x"]).ParquetFile(f).metadata.num_rows for f in loader.files)
        n, t0 = 0, None
        for batch in loader:
            if t0 is None:
                t0 = time.perf_counter()
                continue
            n += len(batch["key"])
            if n >= examples:
                break
        dt = time.perf_counter() - t0
    finally:
        images_mod.decode_image = real
    return {"examples_per_s": round(n / dt, 1), "MB_per_s_read": round(n * bytes_per_row / dt / 1e6, 1)}


def breakdown(shards: str, images: list[bytes], image_size: int, batch_size: int) -> dict:
    """Milliseconds per example of each step the loader takes, timed alone (one pass, one thread)."""
    import torch

    from textok.schemas.images import decode_image
    from textok.trainer.data.loader import COLUMNS, Unit, pad_text, plan_units, resize_crop
    from textok.schemas.shards import text_emb_arrays

    units = plan_units(sorted(os.path.join(shards, f) for f in os.listdir(shards)), 1)
    t0 = time.perf_counter()
    tables = [Unit.read(u, COLUMNS) for u in units]
    t_read = time.perf_counter() - t0
    rows = sum(t.num_rows for t in tables)
    embs = [e for t in tables for e in text_emb_arrays(t)]
    t0 = time.perf_counter()
    for i in range(0, len(embs), batch_size):
        pad_text(embs[i:i + batch_size], 128, ["-"] * len(embs[i:i + batch_size]))
    t_pad = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = [decode_image(b, min_short_side=image_size) for b in images]
    t_decode = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    crops = [resize_crop(img, image_size, True, rng) for img in decoded]
    t_crop = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, len(crops), batch_size):
        torch.stack([torch.from_numpy(c).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
                     for c in crops[i:i + batch_size]])
    t_tensor = time.perf_counter() - t0
    ms = lambda t, n: round(t / n * 1e3, 3)  # noqa: E731
    return {"parquet_read_incl_text": ms(t_read, rows), "text_pad": ms(t_pad, len(embs)),
            "decode_as_loader": ms(t_decode, len(images)), "resize_crop": ms(t_crop, len(images)),
            "to_tensor_stack": ms(t_tensor, len(images))}


def run_set(name: str, args, tmp: str) -> dict:
    import pyarrow.parquet as pq

    shards = write_shards(os.path.join(tmp, name), args.rows, SETS[name], args.text_dim, args.max_tokens)
    images = [b for f in sorted(os.listdir(shards))
              for b in pq.read_table(os.path.join(shards, f), columns=["image"])["image"].to_pylist()]
    repeat = max(1, args.examples // len(images))
    bound = {"full": best_of(args.repeats, lambda: pil_loop(images, None, repeat)),
             "draft": best_of(args.repeats, lambda: pil_loop(images, args.image_size, repeat))}
    rate = lambda workers, draft: best_of(  # noqa: E731
        args.repeats, lambda: loader_rate(shards, args.image_size, args.batch_size, workers, args.examples, draft),
        key=lambda r: r["examples_per_s"])
    one = {mode: rate(0, mode == "draft") for mode in ("full", "draft")}
    out = {"stored_size": list(SETS[name]), "jpeg_bytes_mean": round(float(np.mean([len(b) for b in images]))),
           "pil_decode_per_s": round(bound["full"], 1), "pil_decode_draft_per_s": round(bound["draft"], 1),
           "loader_1_worker": one["draft"], "loader_1_worker_draft_off": one["full"],
           "ratio_vs_decode_bound": round(one["draft"]["examples_per_s"] / bound["draft"], 3),
           "ratio_vs_decode_bound_draft_off": round(one["full"]["examples_per_s"] / bound["full"], 3),
           "draft_speedup": round(one["draft"]["examples_per_s"] / one["full"]["examples_per_s"], 2)}
    out["breakdown_ms_per_example"] = breakdown(shards, images, args.image_size, args.batch_size)
    out["scaling"] = {str(w): rate(w, True) for w in args.num_workers if w > 0}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=128, help="rows in the synthetic shards")
    p.add_argument("--examples", type=int, default=192, help="examples timed per measurement")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--text-dim", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--num-workers", default="2", help="comma-separated DataLoader worker counts for the scaling")
    p.add_argument("--sets", default="prepared,imagenet,large", help=f"image sets among {sorted(SETS)}")
    p.add_argument("--repeats", type=int, default=2, help="best of this many runs per figure")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    args.num_workers = [int(w) for w in args.num_workers.split(",") if w.strip()]
    import torch

    torch.set_num_threads(1)  # per-worker figures: one decode thread, like a DataLoader worker
    with tempfile.TemporaryDirectory() as tmp:
        result = {"bench": "loader_throughput", "cpu_count": os.cpu_count(), "python": platform.python_version(),
                  "image_size": args.image_size, "text_dim": args.text_dim, "goal_ratio_per_worker": 0.9,
                  "sets": {name: run_set(name, args, tmp) for name in args.sets.split(",")}}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
