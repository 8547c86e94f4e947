"""`textok prepare`'s orchestration: images -> captions -> train and val shards + pools, as
consecutive Beam pipelines, each resumable on its own.

    from textok.pipeline.prepare import run_prepare
    run_prepare("demo/data/manifest.jsonl", "runs/demo", captioner="provided", encoder="/models/t5-v1_1-xl")

Every input row lands in exactly one split (pipeline/sources/splits.py): its own split when it has one,
else train or val by a hash of its key (`val_fraction`, stated in the summary). Captions go to
OUTPUT/caption/{split}/ (their own artifact: rerunning with another encoder re-encodes without
re-captioning anything); shards of both splits to OUTPUT/shards/ (`train-*`, `val-*`: the val
shards are what `eval-tokenizer --split val` reads); pools from the val captions (or a hold-out
of train). The encoder is checked before any caption is paid for. After each stage its summary
is on disk; a stage whose inputs mostly ended in the dead letter stops the run
(run_outcome.TooManyDeadLetters), and OUTPUT/prepare_summary.json records how far it got.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from textok.pipeline.run_outcome import DEFAULT_MAX_DEAD_LETTER_FRACTION
from textok.pipeline.sources.splits import DEFAULT_VAL_FRACTION

SUMMARY_FILE = "prepare_summary.json"


def run_prepare(input_path: str, output_dir: str, *, captioner: str, encoder: str, source: str = "auto",
                train_split: str = "train", pool_split: str = "val", per_class: int = 50, no_pools: bool = False,
                max_tokens: int = 128, revision: str | None = None, encoder_batch_size: int | None = None,
                encoder_dtype: str = "auto", encoder_device: str = "auto", pool_holdout_fraction: float = 0.0,
                seed: int = 0, image_size: int | None = None, rows_per_shard: int | None = None,
                shard_mb: float | None = None, captioner_options: dict[str, Any] | None = None,
                max_words: int = 75, caption_batch_size: int | None = None, emb_dtype: str = "float16",
                source_options: dict[str, Any] | None = None, beam_args: Sequence[str] = (),
                val_fraction: float = DEFAULT_VAL_FRACTION,
                max_dead_letter_fraction: float = DEFAULT_MAX_DEAD_LETTER_FRACTION) -> dict[str, Any]:
    from textok.atomic import require_output_dir
    from textok import storage as rio
    from textok.pipeline.captioning.pipeline import run_caption
    from textok.pipeline.encode.pipeline import run_encode
    from textok.pipeline.pools import run_pools
    from textok.lease import hold_lease
    from textok.pipeline.run_outcome import check_caption_run, check_encode_run
    from textok.pipeline.sources.splits import assign_splits
    from textok.text_encoder import describe_encoder

    t0 = time.monotonic()
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
        train, val, split_info = assign_splits(input_path, source, train_split=train_split, val_split=pool_split,
                                               val_fraction=val_fraction, seed=seed, source_options=source_options)
        if not val and not no_pools and not pool_holdout_fraction:
            raise ValueError(f"{input_path}: no {pool_split!r} images for the pools and val shards "
                             f"({split_info.get('input_has_no_val', 'the input has none')}); pass --val-fraction F "
                             f"(hold out a hashed share of train), --pool-holdout-fraction F, or --no-pools")
        summary: dict[str, Any] = {"input": input_path, "output": output_dir, "splits": split_info, "finished": False}
        summary_path = rio.join(output_dir, SUMMARY_FILE)
        try:
            for split, records in ((train_split, train), (pool_split, val)):
                if not records:
                    continue
                cap_dir = rio.join(output_dir, "caption", split)
                summary[f"caption_{split}"] = run_caption(
                    input_path, cap_dir, source=source, split=split, captioner=captioner,
                    captioner_options=dict(captioner_options or {}), max_words=max_words, batch_size=caption_batch_size,
                    beam_args=beam_args, source_options=dict(source_options or {}), records=records)
                check_caption_run(summary[f"caption_{split}"], cap_dir, max_dead_letter_fraction)
            for split in (train_split, pool_split):
                if f"caption_{split}" not in summary:
                    continue
                holdout = pool_holdout_fraction if split == train_split else 0.0
                key = "encode" if split == train_split else f"encode_{split}"
                summary[key] = run_encode(
                    rio.join(output_dir, "caption", split), output_dir, split=split, image_size=image_size,
                    rows_per_shard=rows_per_shard, shard_mb=shard_mb, pool_holdout_fraction=holdout, seed=seed,
                    emb_dtype=emb_dtype, beam_args=beam_args, **enc)
                check_encode_run(summary[key], output_dir, max_dead_letter_fraction)
            if not no_pools:
                pool_source = train_split if pool_holdout_fraction else pool_split
                summary["pools"] = run_pools(
                    rio.join(output_dir, "caption", pool_source), output_dir, per_class=per_class, split=pool_source,
                    pool_holdout_fraction=pool_holdout_fraction, seed=seed, train_split=train_split,
                    beam_args=beam_args, **enc)
            summary["finished"] = True
            return summary
        finally:
            summary["wall_s"] = round(time.monotonic() - t0, 2)
            rio.write_json_atomic(summary, summary_path)
