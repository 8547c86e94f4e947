"""`textok class-accuracy`: accuracy of class-conditional samples under a classifier trained on the real images.

    textok class-accuracy --train out/shards --val out/shards --samples runs/s/samples.npz --output acc.json
"""
from __future__ import annotations

import json

import click


@click.command("class-accuracy")
@click.option("--train", required=True, help="Real training shards (labelled): the probe trains on their train split.")
@click.option("--val", required=True, help="Held-out real shards: the probe's own accuracy (val split).")
@click.option("--samples", multiple=True, help="samples.npz of textok sample --classes; repeatable.")
@click.option("--output", help="Write the JSON here.")
@click.option("--steps", type=int, default=400, show_default=True, help="Probe training steps.")
@click.option("--seed", type=int, default=0, show_default=True)
def class_accuracy_cmd(samples, **kw):
    """Train a small CNN on the real images; report its held-out accuracy and the samples' accuracy vs chance."""
    from textok.trainer.evaluation.class_accuracy import ClassAccuracyConfig, evaluate_class_accuracy

    result = evaluate_class_accuracy(ClassAccuracyConfig(samples=list(samples), **kw))
    click.echo(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
