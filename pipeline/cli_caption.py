"""`textok caption`: caption images into DIR (resumable; unknown options go to Beam).

    textok caption --input demo/data/manifest.jsonl --output demo/captions --captioner provided
    textok caption --input /data/imagenet --split val --output out/val_caps --captioner gemini \
        --model gemini-2.5-flash-lite --rpm 1000 --max-cost-usd 20
    textok caption --input folder/ --output out --captioner template --template "a photo of a {class_name}" \
        --direct_running_mode multi_processing --direct_num_workers 4     # any Beam option passes through
"""
from __future__ import annotations

import json
from typing import Any

import click

from textok.pipeline.cli_options import BeamCommand, caption_flags, captioner_options, check_captioner, source_options


@click.command("caption", cls=BeamCommand)
@click.option("--input", "input_path", required=True, help="Image folder, ImageNet root, manifest or hf://...")
@click.option("--source", type=click.Choice(["auto", "imagenet", "folder", "manifest", "hf"]), default="auto",
              show_default=True)
@click.option("--split", default="train", show_default=True)
@click.option("--output", "output_dir", required=True, help="Output DIR (captions/, dead_letter/, summary).")
@caption_flags
@click.option("--retry-dead-letters", is_flag=True, help="Caption keys that are in the dead letter again.")
@click.option("--commit-every", type=int, default=256, show_default=True, help="Rows per committed part file.")
@click.option("--commit-seconds", type=float, default=60.0, show_default=True,
              help="Commit buffered rows at least this often.")
@click.pass_context
def caption_cmd(ctx: click.Context, input_path: str, source: str, split: str, output_dir: str,
                retry_dead_letters: bool, commit_every: int, commit_seconds: float, **kwargs: Any) -> None:
    """Caption images into DIR (resumable; unknown options go to Beam, e.g. --runner)."""
    from textok.pipeline.caption_pipeline import run_caption

    options = captioner_options(kwargs)
    check_captioner(kwargs["captioner"], options, kwargs["max_words"], ctx.args)
    summary = run_caption(
        input_path, output_dir, source=source, split=split, captioner=kwargs["captioner"],
        captioner_options=options, max_words=kwargs["max_words"],
        retry_dead_letters=retry_dead_letters, commit_every=commit_every, commit_seconds=commit_seconds,
        batch_size=kwargs["batch_size"], beam_args=tuple(ctx.args), source_options=source_options(kwargs))
    click.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
