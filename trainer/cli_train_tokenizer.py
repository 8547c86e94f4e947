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

from textok.trainer.cli_options import apply_options, training_options


def _train_options(f):
    f = training_options("TrainTokenizerConfig", batch_size="256; tiny 32", lr="1e-4; tiny 1e-3", ema=0.999,
                         save_every="5000; tiny 500", sample_every="1000; tiny 250", log_every="50; tiny 25",
                         num_workers="4; tiny 1")(f)
    return apply_options([
        click.option("--shards", help="Shard dir, glob or file (textok encode output)."),
        click.option("--output", help="Run directory (checkpoints, config.json, samples, tokenizer/)."),
        click.option("--split", help="Split to read from a shards dir (default train)."),
        click.option("--preset", type=click.Choice(["tiny", "S", "B", "L"]), help="TexTok size (default B)."),
        click.option("--image-size", type=int, help="Training resolution (default: the preset's, 256 for S/B/L)."),
        click.option("--patch-size", type=int, help="ViT patch size (default: the preset's, 8; the paper uses 16 at 512 px)."),
        click.option("--num-tokens", type=int, help="N latent tokens (default: the preset's, 128)."),
        click.option("--text-mode", type=click.Choice(["both", "enc", "dec", "none"]),
                     help="Where the caption enters (default both; none = the no-text baseline)."),
        click.option("--hflip/--no-hflip", default=None,
                     help="Random horizontal flips (default off: a flip contradicts captions that say left/right; "
                          "use the same value for TexTok and its no-text baseline)."),
        click.option("--warmup", type=int, help="Linear warmup steps (default 5000; tiny 100)."),
        click.option("--disc-start", type=int, help="Step the discriminator starts (default 80000; tiny 5000)."),
        click.option("--perceptual", type=click.Choice(["auto", "efficientnet", "inception", "lpips", "none"]),
                     help="Perceptual loss (default auto; tiny none. auto: LPIPS when its files are given, else the "
                          "packaged EfficientNet-Lite0, else none; inception = the FID network, flags the run's rFID)."),
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
