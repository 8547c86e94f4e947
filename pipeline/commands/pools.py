"""`textok pools`: per-class caption pools (with embeddings) from images never used for training.

    textok pools --captions runs/cap_val --output runs/data --encoder /models/t5-v1_1-xl --per-class 50
"""
from __future__ import annotations

import click

from textok.pipeline.commands.options import BeamCommand, _echo, _encoder_flags, lease_flag


@click.command("pools", cls=BeamCommand)
@click.option("--captions", required=True, help="Caption DIR (output of `textok caption`) or captions files.")
@click.option("--output", "output_dir", required=True, help="Output DIR (pools/{split}.parquet + summary).")
@click.option("--split", default="val", show_default=True, help="Source split of unseen images.")
@click.option("--per-class", type=int, default=50, show_default=True, help="Captions per class (K).")
@_encoder_flags()
@lease_flag
@click.pass_context
def pools_cmd(ctx, captions, output_dir, split, per_class, encoder, max_tokens, revision, batch_size, dtype,
              device, pool_holdout_fraction, seed):
    """Per-class caption pools (with embeddings) from images never used for training."""
    from textok.pipeline.pools import run_pools

    _echo(run_pools(captions, output_dir, encoder=encoder, per_class=per_class, split=split,
                    pool_holdout_fraction=pool_holdout_fraction, seed=seed, batch_size=batch_size,
                    max_tokens=max_tokens, dtype=dtype, device=device, revision=revision,
                    beam_args=tuple(ctx.args)))
