"""`textok compact DIR`: merge caption part files into sorted files, one row per key.

    textok compact out/val_caps
"""
from __future__ import annotations

import json

import click

from textok.pipeline.commands.options import BeamCommand, lease_flag


@click.command("compact", cls=BeamCommand)
@click.argument("output_dir")
@click.option("--rows-per-file", type=int, default=200_000, show_default=True)
@lease_flag
@click.pass_context
def compact_cmd(ctx, output_dir: str, rows_per_file: int) -> None:
    """Merge caption part files in DIR into sorted files, one row per key (DIR may be gs:// or s3://;
    filesystem options such as --s3_endpoint_url pass through to Beam)."""
    from textok.pipeline.captioning.store import compact

    stats = compact(output_dir, rows_per_file)
    click.echo(json.dumps(stats, indent=2, sort_keys=True))
