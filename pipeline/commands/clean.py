"""`textok clean OUTPUT`: remove what killed runs left in an output folder, and say what.

    textok clean out/val_caps                       # temp files, to-do files, orphaned batch request files
    textok clean out/val_caps --dry-run             # list only
    textok clean s3://bkt/run --s3_endpoint_url http://minio:9000
    textok clean out/val_caps --force-unlock        # the run that held it was killed: clear its stale lease

It takes OUTPUT's writer lease first (refused while another run writes there) and removes only
files older than that lease (see pipeline/cleanup.py for what counts as a leftover).
"""
from __future__ import annotations

import json

import click

from textok.pipeline.commands.options import BeamCommand, lease_flag


@click.command("clean", cls=BeamCommand)
@click.argument("output_dir")
@click.option("--dry-run", is_flag=True, help="List the leftovers without removing them.")
@lease_flag
def clean_cmd(output_dir: str, dry_run: bool) -> None:
    """Remove temp files, caption to-do files and orphaned batch request files that killed runs left in
    OUTPUT (only while no other run writes there); prints what was removed."""
    from textok import storage as rio
    from textok.lease import hold_lease
    from textok.pipeline.cleanup import clean_output

    if not rio.is_dir(output_dir):
        raise click.ClickException(f"{output_dir}: no such folder")
    with hold_lease(output_dir, "clean") as lease:
        report = clean_output(output_dir, lease, dry_run=dry_run)
    click.echo(json.dumps(report, indent=2, sort_keys=True))
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(report['removed'])} leftover file(s), {report['bytes'] / 1e6:.1f} MB", err=True)
