"""`textok prepare`: images -> captions -> train + val shards + pools in one command (each stage resumable).

    textok prepare --input demo/data/manifest.jsonl --output runs/demo --captioner provided \
        --encoder /models/t5-v1_1-xl
    textok prepare --input photos.csv --output runs/mine --captioner local --model models/smolvlm \
        --encoder models/t5-v1_1-xl --val-fraction 0.1     # rows without a split: 10 % val by key hash
"""
from __future__ import annotations

import click

from textok.pipeline.commands.options import (BeamCommand, _echo, _encoder_flags, _shard_flags, caption_flags,
                                              captioner_options, check_captioner, dead_letter_flag, lease_flag,
                                              source_options)
from textok.pipeline.sources.splits import DEFAULT_VAL_FRACTION


@click.command("prepare", cls=BeamCommand)
@click.option("--input", "input_path", required=True, help="Image folder, ImageNet root, manifest or hf://.")
@click.option("--source", type=click.Choice(["auto", "imagenet", "folder", "manifest", "hf"]), default="auto",
              show_default=True)
@click.option("--output", "output_dir", required=True,
              help="Output DIR: caption/{split}/, shards/ (train-*, val-*), pools/, prepare_summary.json.")
@click.option("--train-split", default="train", show_default=True)
@click.option("--pool-split", default="val", show_default=True,
              help="The held-out split: its shards are for evaluation, its captions fill the pools (unless "
                   "--pool-holdout-fraction).")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=DEFAULT_VAL_FRACTION,
              show_default=True,
              help="Rows without a split of their own (no split column, no train/ val/ folders) go to the held-out "
                   "split when sha256(seed, key) < this, else to train; the same share of train is held out when "
                   "the input has no held-out split at all. 0: all such rows train.")
@click.option("--per-class", type=int, default=50, show_default=True)
@click.option("--no-pools", is_flag=True, help="Only captions + shards.")
@caption_flags
@_encoder_flags("encoder-")
@_shard_flags
@lease_flag
@dead_letter_flag
@click.pass_context
def prepare_cmd(ctx, input_path, source, output_dir, train_split, pool_split, val_fraction, per_class, no_pools,
                encoder, max_tokens, revision, encoder_batch_size, encoder_dtype, encoder_device,
                pool_holdout_fraction, seed, image_size, rows_per_shard, shard_mb, emb_dtype,
                max_dead_letter_fraction, **kwargs):
    """Images -> captions -> train and val shards + pools, as consecutive Beam pipelines, each resumable.

    Every row is in exactly one split (rows without one: --val-fraction by key hash). Captions go
    to DIR/caption/{split}/ (their own artifact: rerunning with another --encoder re-encodes
    without re-captioning anything).
    """
    from textok.pipeline.prepare import run_prepare

    check_captioner(kwargs["captioner"], captioner_options(kwargs), kwargs["max_words"], ctx.args)
    _echo(run_prepare(
        input_path, output_dir, source=source, train_split=train_split, pool_split=pool_split,
        per_class=per_class, no_pools=no_pools, encoder=encoder, max_tokens=max_tokens, revision=revision,
        encoder_batch_size=encoder_batch_size, encoder_dtype=encoder_dtype, encoder_device=encoder_device,
        pool_holdout_fraction=pool_holdout_fraction, seed=seed, image_size=image_size,
        rows_per_shard=rows_per_shard, shard_mb=shard_mb, emb_dtype=emb_dtype, captioner=kwargs["captioner"],
        captioner_options=captioner_options(kwargs), max_words=kwargs["max_words"],
        caption_batch_size=kwargs["batch_size"], source_options=source_options(kwargs), beam_args=tuple(ctx.args),
        val_fraction=val_fraction, max_dead_letter_fraction=max_dead_letter_fraction))
