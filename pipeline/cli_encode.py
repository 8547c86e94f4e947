"""CLI: `textok encode`, `textok pools`, `textok prepare`, `textok inspect`.

    textok encode --captions runs/cap --output runs/data --encoder /models/t5-v1_1-xl --image-size 256
    textok pools --captions runs/cap --output runs/data --encoder /models/t5-v1_1-xl --per-class 50
    textok prepare --input demo/data/manifest.jsonl --output runs/demo --captioner provided \
        --encoder /models/t5-v1_1-xl
    textok inspect runs/data/shards --contact-sheet sheet.png

Unknown options pass through to Beam (`--runner DataflowRunner --project ...`,
`--direct_running_mode multi_processing --direct_num_workers 4`).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import click

_ENCODER_HELP = ("Text encoder: Hugging Face id or local folder (default google/t5-v1_1-xl, the paper's choice at "
                 "256 px; google/t5-v1_1-xxl at 512 px). T5 configs load as T5EncoderModel, others with AutoModel.")


def _encoder_flags(prefix: str = "") -> Callable:
    """--encoder, --max-tokens, --revision, --seed, --pool-holdout-fraction and the device/dtype/batch flags.

    `textok prepare` shares flag names with `textok caption` (--device, --dtype, --batch-size
    mean the captioner there), so its encoder flags carry the `encoder-` prefix.
    """
    def deco(f: Callable) -> Callable:
        for args, kwargs in reversed([
            (("--encoder",), dict(default="google/t5-v1_1-xl", show_default=True, help=_ENCODER_HELP)),
            (("--max-tokens",), dict(type=int, default=128, show_default=True, help="Token cut-off (paper: 128).")),
            (("--revision",), dict(default=None, help="Hub revision of the encoder.")),
            ((f"--{prefix}batch-size", f"{prefix.replace('-', '_')}batch_size"),
             dict(type=int, default=None, help="Captions per encoder forward pass (default 64 on GPU, 8 on CPU).")),
            ((f"--{prefix}dtype", f"{prefix.replace('-', '_')}dtype"),
             dict(default="auto", show_default=True,
                  help="Encoder compute dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16; float16 is "
                       "refused for T5.")),
            ((f"--{prefix}device", f"{prefix.replace('-', '_')}device"),
             dict(default="auto", show_default=True, help="Encoder device (cuda, cpu, ...).")),
            (("--pool-holdout-fraction",), dict(type=float, default=0.0, show_default=True,
                                                help="Hold this fraction of train out of the shards for the pools.")),
            (("--seed",), dict(type=int, default=0, show_default=True, help="Seed of the hold-out and pool draws.")),
        ]):
            f = click.option(*args, **kwargs)(f)
        return f
    return deco


def _shard_flags(f: Callable) -> Callable:
    f = click.option("--shard-mb", type=float, default=None, help="Target shard size in MiB (instead of rows).")(f)
    f = click.option("--rows-per-shard", type=int, default=None,
                     help="Rows per shard (default 2048, or from --shard-mb).")(f)
    f = click.option("--image-size", type=int, default=None,
                     help="Resize shorter side + centre crop to S px (JPEG q95; PNG stays PNG). "
                          "Default: keep the original bytes.")(f)
    return f


def _fail_clearly(fn: Callable, *args, **kwargs) -> dict[str, Any]:
    from pipeline.text_encoder import EncoderError
    from schemas.common import SchemaError

    try:
        return fn(*args, **kwargs)
    except (EncoderError, SchemaError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e


def _echo(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


_BEAM = dict(ignore_unknown_options=True, allow_extra_args=True)


def register(group: click.Group) -> None:
    @group.command("encode", context_settings=_BEAM)
    @click.option("--captions", required=True, help="Caption DIR (output of `textok caption`) or captions files.")
    @click.option("--output", "output_dir", required=True, help="Output DIR (shards/, dead_letter/, summary).")
    @click.option("--split", default="train", show_default=True)
    @_encoder_flags()
    @_shard_flags
    @click.pass_context
    def encode_cmd(ctx, captions, output_dir, split, encoder, max_tokens, revision, batch_size, dtype, device,
                   pool_holdout_fraction, seed, image_size, rows_per_shard, shard_mb):
        """Encode captions with a frozen text encoder into training shards (resumable per shard)."""
        from pipeline.encode_pipeline import run_encode

        _echo(_fail_clearly(run_encode, captions, output_dir, encoder=encoder, split=split, batch_size=batch_size,
                            max_tokens=max_tokens, image_size=image_size, rows_per_shard=rows_per_shard,
                            shard_mb=shard_mb, dtype=dtype, device=device, revision=revision,
                            pool_holdout_fraction=pool_holdout_fraction, seed=seed, beam_args=tuple(ctx.args)))

    @group.command("pools", context_settings=_BEAM)
    @click.option("--captions", required=True, help="Caption DIR (output of `textok caption`) or captions files.")
    @click.option("--output", "output_dir", required=True, help="Output DIR (pools/{split}.parquet + summary).")
    @click.option("--split", default="val", show_default=True, help="Source split of unseen images.")
    @click.option("--per-class", type=int, default=50, show_default=True, help="Captions per class (K).")
    @_encoder_flags()
    @click.pass_context
    def pools_cmd(ctx, captions, output_dir, split, per_class, encoder, max_tokens, revision, batch_size, dtype,
                  device, pool_holdout_fraction, seed):
        """Per-class caption pools (with embeddings) from images never used for training."""
        from pipeline.pools import run_pools

        _echo(_fail_clearly(run_pools, captions, output_dir, encoder=encoder, per_class=per_class, split=split,
                            pool_holdout_fraction=pool_holdout_fraction, seed=seed, batch_size=batch_size,
                            max_tokens=max_tokens, dtype=dtype, device=device, revision=revision,
                            beam_args=tuple(ctx.args)))

    try:
        from pipeline.cli_caption import caption_flags, captioner_options, source_options
    except ImportError:  # the caption commands are not installed: no `prepare`
        caption_flags = None

    if caption_flags is not None:
        @group.command("prepare", context_settings=_BEAM)
        @click.option("--input", "input_path", required=True, help="Image folder, ImageNet root, manifest or hf://.")
        @click.option("--source", type=click.Choice(["auto", "imagenet", "folder", "manifest", "hf"]), default="auto",
                      show_default=True)
        @click.option("--output", "output_dir", required=True,
                      help="Output DIR: caption/{split}/, shards/, pools/, dead_letter/.")
        @click.option("--train-split", default="train", show_default=True)
        @click.option("--pool-split", default="val", show_default=True,
                      help="Split captioned for the pools (ignored with --pool-holdout-fraction).")
        @click.option("--per-class", type=int, default=50, show_default=True)
        @click.option("--no-pools", is_flag=True, help="Only captions + shards.")
        @caption_flags
        @_encoder_flags("encoder-")
        @_shard_flags
        @click.pass_context
        def prepare_cmd(ctx, input_path, source, output_dir, train_split, pool_split, per_class, no_pools,
                        encoder, max_tokens, revision, encoder_batch_size, encoder_dtype, encoder_device,
                        pool_holdout_fraction, seed, image_size, rows_per_shard, shard_mb, **kwargs):
            """Images -> captions -> shards + pools, as consecutive Beam pipelines, each resumable.

            Captions go to DIR/caption/{split}/ (their own artifact: rerunning with another
            --encoder re-encodes without re-captioning anything).
            """
            from pipeline.caption_pipeline import run_caption
            from pipeline.encode_pipeline import require_local, run_encode
            from pipeline.pools import run_pools
            from pipeline.text_encoder import describe_encoder

            beam_args = tuple(ctx.args)
            enc = dict(encoder=encoder, max_tokens=max_tokens, revision=revision, batch_size=encoder_batch_size,
                       dtype=encoder_dtype, device=encoder_device)
            # fail on a remote output or a missing encoder before paying for any caption
            _fail_clearly(require_local, output=output_dir)
            _fail_clearly(describe_encoder, encoder, max_tokens=max_tokens, device=encoder_device,
                          dtype=encoder_dtype, revision=revision, fingerprint=False)
            splits = [train_split] + ([] if no_pools or pool_holdout_fraction else [pool_split])
            summary: dict[str, Any] = {}
            for split in splits:
                summary[f"caption_{split}"] = _fail_clearly(
                    run_caption, input_path, os.path.join(output_dir, "caption", split), source=source, split=split,
                    captioner=kwargs["captioner"], captioner_options=captioner_options(kwargs),
                    max_words=kwargs["max_words"], batch_size=kwargs["batch_size"], beam_args=beam_args,
                    source_options=source_options(kwargs))
            summary["encode"] = _fail_clearly(
                run_encode, os.path.join(output_dir, "caption", train_split), output_dir, split=train_split,
                image_size=image_size, rows_per_shard=rows_per_shard, shard_mb=shard_mb,
                pool_holdout_fraction=pool_holdout_fraction, seed=seed, beam_args=beam_args, **enc)
            if not no_pools:
                pool_source = train_split if pool_holdout_fraction else pool_split
                summary["pools"] = _fail_clearly(
                    run_pools, os.path.join(output_dir, "caption", pool_source), output_dir, per_class=per_class,
                    split=pool_source, pool_holdout_fraction=pool_holdout_fraction, seed=seed,
                    train_split=train_split, beam_args=beam_args,
                    **enc)
            _echo(summary)

    @group.command("inspect")
    @click.argument("path")
    @click.option("--contact-sheet", default=None, help="Write a PNG of a few images with their captions here.")
    @click.option("--n-images", type=int, default=8, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    def inspect_cmd(path, contact_sheet, n_images, as_json):
        """Validate a textok table (file or folder) and describe it: counts, histograms, bytes/example."""
        from pipeline.inspect_table import format_report, inspect_table, report_json

        report = _fail_clearly(inspect_table, path, contact_sheet=contact_sheet, n_images=n_images)
        click.echo(report_json(report) if as_json else format_report(report))
