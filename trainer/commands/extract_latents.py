"""`textok extract-latents`: run a trained tokenizer over shards into latent files for the DiT.

    textok extract-latents --tokenizer runs/tok --shards out/shards --output out/latents
"""
from __future__ import annotations

import json

import click


@click.command("extract-latents")
@click.option("--tokenizer", required=True, help="Tokenizer dir (train-tokenizer's tokenizer/, EMA) or its run dir.")
@click.option("--shards", required=True, help="Shard dir, glob or file (one split).")
@click.option("--split", default="train", show_default=True, help="Split to read from a shards dir.")
@click.option("--output", required=True, help="Latent dir: one latent file per shard file + stats.json.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option("--text/--no-text", "with_text", default=True, show_default=True,
              help="Keep the caption embeddings (DiT-T2I and text-decoded preview grids need them).")
@click.option("--num-workers", type=int, default=2, show_default=True, help="Image-decoding workers.")
@click.option("--hflip/--no-hflip", default=False, show_default=True,
              help="Also extract each image mirrored (key#hflip), as fast-DiT does. Off by default: with a "
                   "text-conditioned tokenizer the kept caption then names the wrong side.")
def extract_latents_cmd(**kw):
    """Run the tokenizer over the shards (centre crop; + mirrored with --hflip); write latent shards + Z stats."""
    from textok.trainer.data.latents import ExtractConfig, extract_latents

    try:
        summary = extract_latents(ExtractConfig(**kw))
    except (ValueError, FileNotFoundError) as e:  # SchemaError is a ValueError: bad input, one clear line
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps(summary, indent=2))
