"""`textok make-demo-data`: the synthetic captioned shapes set of the offline demo.

    textok make-demo-data --out demo/data --n 2000 --size 64
"""
from __future__ import annotations

import json

import click


@click.command("make-demo-data")
@click.option("--out", "out_dir", required=True, help="Output folder (manifest.jsonl + images/).")
@click.option("--n", type=int, default=2000, show_default=True, help="Number of images.")
@click.option("--size", type=int, default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True)
@click.option("--style", type=click.Choice(["shapes", "tiles"]), default="shapes", show_default=True,
              help="shapes: 2-4 shapes on varied backgrounds; tiles: a 3x3 quilt + one class shape (the demo's).")
def make_demo_data_cmd(out_dir: str, n: int, size: int, seed: int, val_fraction: float, style: str) -> None:
    """Write the synthetic captioned shapes set used by the offline demo."""
    from textok.pipeline.sources.demo_data import make_demo_data

    result = make_demo_data(out_dir, n=n, size=size, seed=seed, val_fraction=val_fraction, style=style)
    click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
