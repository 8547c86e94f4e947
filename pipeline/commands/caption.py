"""`textok caption`: caption images into DIR (resumable; unknown options go to Beam).

    textok caption --input demo/data/manifest.jsonl --output demo/captions --captioner provided
    textok caption --input /data/imagenet --split val --output out/val_caps --captioner gemini \
        --model gemini-2.5-flash-lite --rpm 1000 --max-cost-usd 20
    textok caption --input /data/imagenet --split train --output out/train_caps --captioner gemini \
        --gemini-mode batch [--wait]          # Batch Mode: half price, see pipeline/captioning/batch.py
    textok caption --input /data/imagenet --split train --output out/train_caps_v2 --captioner gemini \
        --model gemini-2.5-flash --recaption-flagged out/report/flags.parquet --flags short,boilerplate
    textok caption --input folder/ --output out --captioner template --template "a photo of a {class_name}" \
        --direct_running_mode multi_processing --direct_num_workers 4     # any Beam option passes through
"""
from __future__ import annotations

import json
from typing import Any

import click

from textok.pipeline.commands.options import (BeamCommand, caption_flags, captioner_options, check_captioner,
                                              dead_letter_flag, lease_flag, source_options)

_BATCH_DEFAULTS = dict(wait=False, max_requests_per_job=20_000, max_file_mb=1900.0, poll_s=30.0, poll_max_s=600.0,
                       max_attempts=3)


def batch_flags(f):
    """--gemini-mode and the Batch Mode flags (pipeline/captioning/batch.py)."""
    for args, kw in reversed([
        (("--gemini-mode",), dict(type=click.Choice(["sync", "batch"]), default="sync", show_default=True,
                                  help="gemini: sync requests, or Batch Mode (half price, results within 24 h).")),
        (("--wait",), dict(is_flag=True, default=None, help="batch: block until every job has ended.")),
        (("--batch-max-requests", "max_requests_per_job"),
         dict(type=int, default=None, help="batch: requests per job (default 20000).")),
        (("--batch-max-file-mb", "max_file_mb"),
         dict(type=float, default=None, help="batch: request file size per job (default 1900; API limit 2 GB).")),
        (("--batch-poll-seconds", "poll_s"), dict(type=float, default=None, help="batch: first poll interval (30).")),
        (("--batch-poll-max-seconds", "poll_max_s"),
         dict(type=float, default=None, help="batch: longest poll interval with --wait (600).")),
        (("--batch-max-attempts", "max_attempts"),
         dict(type=int, default=None, help="batch: jobs a key may be sent in before its retryable failure is "
                                           "dead-lettered (3).")),
    ]):
        f = click.option(*args, **kw)(f)
    return f


def batch_options(kwargs: dict[str, Any]):
    """BatchOptions for --gemini-mode batch, None for sync (which refuses batch-only flags)."""
    from textok.pipeline.captioning.batch import BatchOptions

    mode = kwargs.pop("gemini_mode")
    given = {k: kwargs.pop(k) for k in list(_BATCH_DEFAULTS) if k in kwargs}
    given = {k: v for k, v in given.items() if v is not None}
    if mode == "sync":
        if given:
            raise click.ClickException(f"{sorted(given)} apply only with --gemini-mode batch")
        return None
    if kwargs["captioner"] != "gemini":
        raise click.ClickException("--gemini-mode batch needs --captioner gemini")
    try:
        return BatchOptions(**{**_BATCH_DEFAULTS, **given})
    except ValueError as e:
        raise click.ClickException(str(e)) from e


def _run_batch(input_path, output_dir, source, split, options, kwargs, retry_dead_letters, commit_every,
               commit_seconds, batch, beam_args=()):
    from textok.pipeline.captioning.batch import run_batch_caption
    from textok.pipeline.captioning.captioners.gemini import GeminiConfigError
    from textok.pipeline.captioning.captioners.gemini_batch import BatchAPIError
    from textok.schemas.common import SchemaError

    try:
        return run_batch_caption(input_path, output_dir, source=source, split=split, captioner_options=options,
                                 max_words=kwargs["max_words"], retry_dead_letters=retry_dead_letters,
                                 commit_every=commit_every, commit_seconds=commit_seconds, batch=batch,
                                 source_options=source_options(kwargs), beam_args=beam_args)
    except (ValueError, KeyError, FileNotFoundError, SchemaError, GeminiConfigError, BatchAPIError) as e:
        raise click.ClickException(str(e)) from e


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
@dead_letter_flag
@batch_flags
@click.option("--recaption-flagged", default=None,
              help="flags.parquet of `textok caption-report`: caption only its flagged keys, into a new --output "
                   "(the old captions stay untouched).")
@click.option("--flags", "recaption_checks", default=None,
              help="With --recaption-flagged: the checks that select a key, e.g. short,boilerplate (default: its "
                   "`flagged` column).")
@lease_flag
@click.pass_context
def caption_cmd(ctx: click.Context, input_path: str, source: str, split: str, output_dir: str,
                retry_dead_letters: bool, commit_every: int, commit_seconds: float, recaption_flagged: str | None,
                recaption_checks: str | None, max_dead_letter_fraction: float, **kwargs: Any) -> None:
    """Caption images into DIR (resumable; unknown options go to Beam, e.g. --runner)."""
    from textok.pipeline.captioning.pipeline import run_caption
    from textok.pipeline.run_outcome import check_caption_run

    options = captioner_options(kwargs)
    check_captioner(kwargs["captioner"], options, kwargs["max_words"], ctx.args)
    batch = batch_options(kwargs)
    if recaption_checks and not recaption_flagged:
        raise click.UsageError("--flags chooses checks of --recaption-flagged FLAGS.parquet; give that file too")
    if batch is not None and recaption_flagged:
        raise click.UsageError("--recaption-flagged runs with --gemini-mode sync (Batch Mode plans its own keys)")
    if batch is not None:
        from textok.storage import filesystem_args

        pipeline_only = [a for a in ctx.args if a not in filesystem_args(ctx.args)]
        if pipeline_only:  # storage options (--s3_endpoint_url ...) are used; pipeline ones would be ignored
            raise click.UsageError(f"--gemini-mode batch runs no Beam pipeline; unknown options {pipeline_only}")
        summary = _run_batch(input_path, output_dir, source, split, options, kwargs, retry_dead_letters,
                             commit_every, commit_seconds, batch, tuple(ctx.args))
        click.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
        if not summary["batch"]["requests_in_flight"]:  # keys of running jobs are neither done nor dead yet
            check_caption_run(summary, output_dir, max_dead_letter_fraction)
        return
    summary = run_caption(
        input_path, output_dir, source=source, split=split, captioner=kwargs["captioner"],
        captioner_options=options, max_words=kwargs["max_words"],
        retry_dead_letters=retry_dead_letters, commit_every=commit_every, commit_seconds=commit_seconds,
        batch_size=kwargs["batch_size"], beam_args=tuple(ctx.args), source_options=source_options(kwargs),
        recaption_flagged=recaption_flagged, recaption_checks=recaption_checks)
    click.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
    check_caption_run(summary, output_dir, max_dead_letter_fraction)  # after the summary: it exists on failure
