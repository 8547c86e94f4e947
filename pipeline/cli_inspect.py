"""`textok inspect PATH`: validate a textok table and describe it (counts, histograms, bytes/example).

    textok inspect runs/data/shards --contact-sheet sheet.png
"""
from __future__ import annotations

import click


@click.command("inspect")
@click.argument("path")
@click.option("--contact-sheet", default=None, help="Write a PNG of a few images with their captions here.")
@click.option("--n-images", type=int, default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_cmd(path, contact_sheet, n_images, as_json):
    """Validate a textok table (file or folder) and describe it: counts, histograms, bytes/example."""
    from textok.pipeline.inspect_table import format_report, inspect_table, report_json

    report = inspect_table(path, contact_sheet=contact_sheet, n_images=n_images)
    click.echo(report_json(report) if as_json else format_report(report))
