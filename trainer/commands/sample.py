"""`textok sample`: DiT -> latent tokens -> detokenizer, with a pool caption (class) or the prompt (T2I).

    textok sample --dit runs/dit --tokenizer runs/tok --pools out/pools --classes 1,2 --n 4 --output runs/s
"""
from __future__ import annotations

import json

import click

from textok.trainer.commands.options import _int_list


@click.command("sample")
@click.option("--dit", required=True, help="DiT dir (train-dit's dit/) or its run dir.")
@click.option("--tokenizer", required=True, help="Tokenizer dir the latents came from.")
@click.option("--output", required=True, help="Output dir: samples.png, samples.npz, samples.json.")
@click.option("--pools", help="Caption pools (textok pools output) for class-conditional sampling.")
@click.option("--classes", callback=_int_list, help="Comma-separated class ids, or 'all' (every pooled class).")
@click.option("--captions", "captions_file", type=click.Path(exists=True, dir_okay=False),
              help="Text file, one caption per line (T2I).")
@click.option("--caption", "caption_list", multiple=True, help="A caption (T2I); repeatable.")
@click.option("--n", type=int, default=4, show_default=True, help="Samples per class / per caption.")
@click.option("--cfg", "cfg_scales", help="Classifier-free guidance scale (1 = off); default 1.5 with --classes all "
              "(a gFID set, as DiT's FID-50K), else 4.0. Comma-separated values = a sweep, one folder each.")
@click.option("--steps", type=int, default=250, show_default=True, help="Sampling steps (respaced from 1000).")
@click.option("--sampler", type=click.Choice(["ddpm", "ddim"]), default="ddpm", show_default=True)
@click.option("--encoder", help="Text encoder id/path (T2I; default: the one in the latents' metadata).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="auto", show_default=True)
def sample_cmd(classes, captions_file, caption_list, cfg_scales, **kw):
    """Generate images: DiT -> Z -> detokenizer with a pool caption (class) or the prompt (T2I)."""
    from textok.trainer.evaluation.sample import SampleConfig, run_sample, run_sweep

    try:
        scales = [float(v) for v in cfg_scales.split(",")] if cfg_scales else []
    except ValueError:
        raise click.BadParameter(f"{cfg_scales!r}: expected a number or comma-separated numbers", param_hint="--cfg")

    captions = list(caption_list)
    if captions_file:
        with open(captions_file) as f:
            captions += [line.strip() for line in f if line.strip()]
    cfg = SampleConfig(classes=None if classes == "all" else classes, all_classes=classes == "all",
                       captions=captions, cfg=scales[0] if len(scales) == 1 else None, **kw)
    result = run_sweep(cfg, scales) if len(scales) > 1 else run_sample(cfg)
    click.echo(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
