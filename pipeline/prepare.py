"""`textok prepare`'s orchestration: images -> captions -> shards + pools, as consecutive Beam
pipelines, each resumable on its own.

    from textok.pipeline.prepare import run_prepare
    run_prepare("demo/data/manifest.jsonl", "runs/demo", captioner="provided", encoder="/models/t5-v1_1-xl")

Captions go to OUTPUT/caption/{split}/ (their own artifact: rerunning with another encoder
re-encodes without re-captioning anything). The encoder is checked before any caption is paid for.
"""
from __future__ import annotations

from typing import Any, Sequence


def run_prepare(input_path: str, output_dir: str, *, captioner: str, encoder: str, source: str = "auto",
                train_split: str = "train", pool_split: str = "val", per_class: int = 50, no_pools: bool = False,
                max_tokens: int = 128, revision: str | None = None, encoder_batch_size: int | None = None,
                encoder_dtype: str = "auto", encoder_device: str = "auto", pool_holdout_fraction: float = 0.0,
                seed: int = 0, image_size: int | None = None, rows_per_shard: int | None = None,
                shard_mb: float | None = None, captioner_options: dict[str, Any] | None = None,
                max_words: int = 75, caption_batch_size: int | None = None, emb_dtype: str = "float16",
                source_options: dict[str, Any] | None = None, beam_args: Sequence[str] = ()) -> dict[str, Any]:
    from textok.atomic import require_output_dir
    from textok.pipeline.captioning.pipeline import run_caption
    from textok import storage as rio
    from textok.pipeline.encode.pipeline import run_encode
    from textok.pipeline.pools import run_pools
    from textok.lease import hold_lease
    from textok.text_encoder import describe_encoder

    beam_args = tuple(beam_args)
    rio.set_filesystem_options(beam_args)
    rio.check_destination(output_dir)  # a missing bucket fails here, before an encoder loads or a caption is paid
    enc = dict(encoder=encoder, max_tokens=max_tokens, revision=revision, batch_size=encoder_batch_size,
               dtype=encoder_dtype, device=encoder_device)
    # fail on an output that is a file or a missing encoder before paying for any caption
    require_output_dir(output_dir)
    describe_encoder(encoder, max_tokens=max_tokens, device=encoder_device, dtype=encoder_dtype, revision=revision,
                     fingerprint=False)
    with hold_lease(output_dir, "prepare"):  # its caption stages take OUTPUT/caption/<split> too
        splits = [train_split] + ([] if no_pools or pool_holdout_fraction else [pool_split])
        summary: dict[str, Any] = {}
        for split in splits:
            summary[f"caption_{split}"] = run_caption(
                input_path, rio.join(output_dir, "caption", split), source=source, split=split, captioner=captioner,
                captioner_options=dict(captioner_options or {}), max_words=max_words, batch_size=caption_batch_size,
                beam_args=beam_args, source_options=dict(source_options or {}))
        summary["encode"] = run_encode(
            rio.join(output_dir, "caption", train_split), output_dir, split=train_split, image_size=image_size,
            rows_per_shard=rows_per_shard, shard_mb=shard_mb, pool_holdout_fraction=pool_holdout_fraction, seed=seed,
            emb_dtype=emb_dtype, beam_args=beam_args, **enc)
        if not no_pools:
            pool_source = train_split if pool_holdout_fraction else pool_split
            summary["pools"] = run_pools(
                rio.join(output_dir, "caption", pool_source), output_dir, per_class=per_class, split=pool_source,
                pool_holdout_fraction=pool_holdout_fraction, seed=seed, train_split=train_split, beam_args=beam_args, **enc)
        return summary
