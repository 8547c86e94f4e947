"""`textok compact DIR`: merge caption part files into sorted files, one row per key.

    textok compact out/val_caps
"""
from __future__ import annotations

import json

import click


@click.command("compact")
@click.argument("output_dir")
@click.option("--rows-per-file", type=int, default=200_000, show_default=True)
def compact_cmd(output_dir: str, rows_per_file: int) -> None:
    """Merge caption part files in DIR into sorted files, one row per key."""
    from textok.pipeline.caption_store import compact

    stats = compact(output_dir, rows_per_file)
    click.echo(json.dumps(stats, indent=2, sort_keys=True))
