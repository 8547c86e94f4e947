"""`textok prepare`: images -> captions -> shards + pools in one command (each stage resumable).

    textok prepare --input demo/data/manifest.jsonl --output runs/demo --captioner provided \
        --encoder /models/t5-v1_1-xl
"""
from __future__ import annotations

import click

from textok.pipeline.commands.options import (BeamCommand, _echo, _encoder_flags, _shard_flags, caption_flags, lease_flag,
                                         captioner_options, check_captioner, source_options)


@click.command("prepare", cls=BeamCommand)
@click.option("--input", "input_path", required=True, help="Image folder, ImageNet root, manifest or hf://.")
@click.option("--source", type=click.Choice(["auto", "imagenet", "folder", "manifest", "hf"]), default="auto",
              show_default=True)
@click.option("--output", "output_dir", required=True,
              help="Output DIR: caption/{split}/, shards/, pools/, dead_letter/.")
@click.option("--train-split", default="train", show_default=True)
@click.option("--pool-split", default="val", show_default=True,
              help="Split captioned for the pools (ignored with --pool-holdout-fraction).")
@click.option("--per-class", type=int, default=50, show_default=True)
@click.option("--no-pools", is_flag=True, help="Only captions + shards.")
@caption_flags
@_encoder_flags("encoder-")
@_shard_flags
@lease_flag
@click.pass_context
def prepare_cmd(ctx, input_path, source, output_dir, train_split, pool_split, per_class, no_pools,
                encoder, max_tokens, revision, encoder_batch_size, encoder_dtype, encoder_device,
                pool_holdout_fraction, seed, image_size, rows_per_shard, shard_mb, emb_dtype, **kwargs):
    """Images -> captions -> shards + pools, as consecutive Beam pipelines, each resumable.

    Captions go to DIR/caption/{split}/ (their own artifact: rerunning with another
    --encoder re-encodes without re-captioning anything).
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
        caption_batch_size=kwargs["batch_size"], source_options=source_options(kwargs), beam_args=tuple(ctx.args)))
