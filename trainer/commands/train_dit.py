"""`textok train-dit`: a DiT on TexTok latents (class-conditional, or T2I with --t2i).

    textok train-dit --latents out/latents --output runs/dit --preset tiny --steps 200
    torchrun --nproc_per_node 8 -m textok train-dit --latents ... --output ...
"""
from __future__ import annotations

import click

from textok.trainer.commands.options import apply_options, training_options

_TABLE = "textok.trainer.training.train_dit:preset_defaults"


def _train_options(f):
    f = training_options("TrainDiTConfig", _TABLE)(f)
    return apply_options([
        click.option("--latents", help="Latent dir (extract-latents output)."),
        click.option("--output", help="Run dir (checkpoints, config.json, samples, dit/)."),
        click.option("--t2i", is_flag=True, default=None, help="Text-to-image DiT (cross-attention on the captions)."),
        click.option("--preset", type=click.Choice(["tiny", "S", "B", "L", "XL"]), help="DiT size (default XL)."),
        click.option("--cfg-dropout", type=float, help="Null-condition probability for CFG (default 0.1)."),
        click.option("--num-classes", type=int, help="Classes (default: largest label + 1)."),
        click.option("--tokenizer", help="Tokenizer dir: enables sample grids decoded through it."),
        click.option("--sample-steps", type=int, help="DDPM steps of the grid samples (default 50)."),
        click.option("--diffusion-steps", type=int,
                     help="Timesteps T of the training chain (default 1000, as DiT); saved in the DiT's config.json."),
    ], f)


@click.command("train-dit")
@_train_options
def train_dit_cmd(config_file, **flags):
    """Train a DiT on TexTok latents (DDP under torchrun)."""
    from textok.trainer.training.train_dit import load_config, train

    out = train(load_config(config_file, **flags))
    click.echo(f"DiT saved to {out}")
