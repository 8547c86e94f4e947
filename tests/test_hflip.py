"""Horizontal flips are explicit: off by default in the training loader, opt-in mirrored latents."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import torch

from test_data import write_shards
from test_latents import MAX_TOKENS, TEXT_DIM, make_tokenizer
from textok.schemas.common import read_meta
from textok.schemas.latents import z_view
from textok.trainer.data.latents import HFLIP_SUFFIX, ExtractConfig, extract_latents
from textok.trainer.data.loader import ShardLoader


def test_training_loader_does_not_flip_unless_asked(tmp_path):
    # write_shards draws a block over the top-left quarter: a flip moves it to the right
    write_shards(str(tmp_path), num_files=1, rows_per_file=16, dim=8, max_tokens=4, image_size=40)
    centre = next(iter(ShardLoader(str(tmp_path), 32, 16, train=False)))
    block = dict(zip(centre["key"], centre["images"][:, :, 1, 1]))

    def block_on_the_left(**kw) -> list[bool]:
        batch = next(iter(ShardLoader(str(tmp_path), 32, 16, train=True, seed=0, **kw)))
        return [torch.allclose(x[:, 1, 1], block[k], atol=1e-6) for k, x in zip(batch["key"], batch["images"])]

    assert all(block_on_the_left())  # default: random crops, never a flip
    assert all(block_on_the_left(hflip=False))
    flipped = block_on_the_left(hflip=True)
    assert 0 < flipped.count(False) < 16, flipped  # p = 0.5 when asked for


def test_extract_latents_hflip_adds_mirrored_views(tmp_path):
    shards, tok = str(tmp_path / "shards"), make_tokenizer(tmp_path / "tok")
    write_shards(shards, num_files=1, rows_per_file=6, dim=TEXT_DIM, max_tokens=MAX_TOKENS, image_size=32)
    name = os.listdir(shards)[0]
    plain = extract_latents(ExtractConfig(tokenizer=tok, shards=shards, output=str(tmp_path / "a"), device="cpu",
                                          num_workers=0))
    both = extract_latents(ExtractConfig(tokenizer=tok, shards=shards, output=str(tmp_path / "b"), device="cpu",
                                         num_workers=0, hflip=True))
    assert both["count"] == 2 * plain["count"]  # per-channel statistics over twice the rows
    a, b = (pq.read_table(str(tmp_path / d / name)) for d in ("a", "b"))
    keys = a.column("key").to_pylist()
    assert b.column("key").to_pylist() == keys + [k + HFLIP_SUFFIX for k in keys]
    assert b.column("caption").to_pylist() == a.column("caption").to_pylist() * 2  # same caption rule
    za, zb = z_view(a.column("z")), z_view(b.column("z"))
    assert np.array_equal(zb[:6], za)  # the unflipped rows are unchanged
    assert not np.array_equal(zb[6:], za)  # the mirrored views encode other images
    assert read_meta(str(tmp_path / "b" / name))["meta"]["hflip"] is True
    assert read_meta(str(tmp_path / "a" / name))["meta"]["hflip"] is False
