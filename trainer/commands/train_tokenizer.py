"""`textok train-tokenizer`: train the TexTok tokenizer (DDP under torchrun).

    textok train-tokenizer --shards out/shards --output runs/tok --preset tiny --num-tokens 8 --steps 200
    torchrun --nproc_per_node 2 -m textok train-tokenizer --shards ... --output ...

Flags left out take the value from --config FILE (JSON or YAML, keys = TrainTokenizerConfig
fields, plus "model"/"loss" dicts of TexTokConfig/LossConfig overrides), else the preset's training
default (tiny: short warm-up, no perceptual net; TRAINING_PRESETS), else the paper's.
"""
from __future__ import annotations

import os

import click

from textok.trainer.commands.options import apply_options, preset_option, training_options

_TABLE = "textok.trainer.training.train_tokenizer:preset_defaults"


def _train_options(f):
    f = training_options("TrainTokenizerConfig", _TABLE)(f)
    return apply_options([
        click.option("--shards", help="Shard dir, glob or file (textok encode output)."),
        click.option("--output", help="Run directory (checkpoints, config.json, samples, tokenizer/)."),
        click.option("--split", help="Split to read from a shards dir (default train)."),
        click.option("--preset", type=click.Choice(["tiny", "S", "B", "L"]), help="TexTok size (default B)."),
        preset_option(_TABLE, "--image-size", type=int, help="Training resolution in px"),
        preset_option(_TABLE, "--patch-size", type=int, help="ViT patch size (the paper: 8 at 256 px, 16 at 512 px)"),
        preset_option(_TABLE, "--num-tokens", type=int, help="N latent tokens"),
        click.option("--text-mode", type=click.Choice(["both", "enc", "dec", "none"]),
                     help="Where the caption enters (default both; none = the no-text baseline)."),
        click.option("--hflip/--no-hflip", default=None,
                     help="Random horizontal flips (default off: a flip contradicts captions that say left/right; "
                          "use the same value for TexTok and its no-text baseline)."),
        preset_option(_TABLE, "--warmup", type=int, help="Linear warmup steps"),
        preset_option(_TABLE, "--disc-start", type=int, help="Step the discriminator starts"),
        preset_option(_TABLE, "--perceptual", type=click.Choice(["auto", "efficientnet", "inception", "lpips", "none"]),
                      help="Perceptual loss (auto: LPIPS when its files are given, else the packaged "
                           "EfficientNet-Lite0, else none; inception = the FID network, flags the run's rFID)"),
        click.option("--lpips-weights", help="LPIPS linear heads (lpips package vgg.pth)."),
        click.option("--vgg16-weights", help="torchvision vgg16-397923af.pth (LPIPS backbone)."),
        click.option("--channels-last/--no-channels-last", "channels_last", default=None,
                     help="NHWC images and discriminator (default off; helps convolutions on GPU under bf16)."),
    ], f)


@click.command("train-tokenizer")
@_train_options
def train_tokenizer_cmd(config_file, **flags):
    """Train the TexTok tokenizer (DDP under torchrun)."""
    from textok.trainer.training.train_tokenizer import load_config, train

    cfg = load_config(config_file, **flags)
    out = train(cfg)
    if os.environ.get("RANK", "0") == "0":
        click.echo(f"tokenizer saved to {out}")
