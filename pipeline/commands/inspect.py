"""`textok inspect PATH`: validate a textok table and describe it (counts, histograms, bytes/example).

    textok inspect runs/data/shards --contact-sheet sheet.png
"""
from __future__ import annotations

import click

from textok.pipeline.commands.options import BeamCommand


@click.command("inspect", cls=BeamCommand)
@click.argument("path")
@click.option("--contact-sheet", default=None, help="Write a PNG of a few images with their captions here.")
@click.option("--n-images", type=int, default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--project-rows", type=int, default=None,
              help="Also project the dataset size for this many rows (e.g. 1281167 for ImageNet-1k train).")
@click.pass_context
def inspect_cmd(ctx, path, contact_sheet, n_images, as_json, project_rows):
    """Validate a textok table (file or folder, local, gs:// or s3://) and describe it: counts,
    histograms, bytes/example. Filesystem options (--s3_endpoint_url ...) pass through to Beam."""
    from textok.pipeline.inspect_table import format_report, inspect_table, report_json
    report = inspect_table(path, contact_sheet=contact_sheet, n_images=n_images, project_rows=project_rows)
    click.echo(report_json(report) if as_json else format_report(report))
