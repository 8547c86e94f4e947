"""`textok encode`: captions -> frozen text encoder -> training shards (resumable per shard).

    textok encode --captions runs/cap --output runs/data --encoder /models/t5-v1_1-xl --image-size 256
    textok encode --captions runs/cap --output runs/data --encoder /models/t5-v1_1-xl \
        --exclude-flagged runs/cap_report/flags.parquet --flags dup,short,boilerplate
"""
from __future__ import annotations

import click

from textok.pipeline.commands.options import BeamCommand, _echo, _encoder_flags, _shard_flags, dead_letter_flag, lease_flag


@click.command("encode", cls=BeamCommand)
@click.option("--captions", required=True, help="Caption DIR (output of `textok caption`) or captions files.")
@click.option("--output", "output_dir", required=True, help="Output DIR (shards/, dead_letter/, summary).")
@click.option("--split", default="train", show_default=True)
@_encoder_flags()
@_shard_flags
@click.option("--exclude-flagged", default=None,
              help="flags.parquet of `textok caption-report`: leave its flagged keys out (recorded in the shard "
                   "metadata).")
@click.option("--flags", "exclude_checks", default=None,
              help="With --exclude-flagged: the checks that exclude a key, e.g. dup,short (default: its `flagged` "
                   "column, every check but non_ascii).")
@lease_flag
@dead_letter_flag
@click.pass_context
def encode_cmd(ctx, captions, output_dir, split, encoder, max_tokens, revision, batch_size, dtype, device,
               pool_holdout_fraction, seed, image_size, rows_per_shard, shard_mb, emb_dtype, exclude_flagged,
               exclude_checks, max_dead_letter_fraction):
    """Encode captions with a frozen text encoder into training shards (resumable per shard)."""
    from textok.pipeline.encode.pipeline import run_encode
    from textok.pipeline.run_outcome import check_encode_run

    summary = (run_encode(captions, output_dir, encoder=encoder, split=split, batch_size=batch_size,
                     max_tokens=max_tokens, image_size=image_size, rows_per_shard=rows_per_shard,
                     shard_mb=shard_mb, dtype=dtype, device=device, revision=revision,
                     pool_holdout_fraction=pool_holdout_fraction, seed=seed, emb_dtype=emb_dtype,
                     exclude_flagged=exclude_flagged, exclude_checks=exclude_checks, beam_args=tuple(ctx.args)))
    _echo(summary)
    check_encode_run(summary, output_dir, max_dead_letter_fraction)  # after the summary: it exists on failure
