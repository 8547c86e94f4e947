"""Every input row in exactly one split: `textok prepare`'s train / val assignment.

    from textok.pipeline.sources.splits import assign_splits
    train, val, info = assign_splits("data/manifest.jsonl", val_fraction=0.05)

A source lists the records of one requested split. Rows that carry no split of their own (a
manifest without a `split` value, a class-folder tree without train/ and val/ folders, an hf
dataset read through one --hf-split) are listed under *every* requested split: captioned for train
and again for val, they would leak the same images into both. Here such rows (the keys both
listings return) are given one split by a hash of the key: `hash(seed, key) < val_fraction` ->
val, else train. When the input has no val split at all, the same rule holds out `val_fraction`
of train. The assignment is deterministic (same key, seed and fraction -> same split, on every
machine and rerun) and stated in `prepare_summary.json` (`splits`). Rows with an explicit split
keep it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the sources module imports Beam: `textok --help` reads DEFAULT_VAL_FRACTION from here
    from textok.pipeline.sources.records import ImageRecord

log = logging.getLogger(__name__)

DEFAULT_VAL_FRACTION = 0.05


def in_val(key: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic: hash(seed, key) < fraction. Salted apart from the pool hold-out's hash
    (encode/pipeline.in_holdout), so the two hold-outs of one key set are independent."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"textok-val-split:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < fraction


def assign_splits(input_path: str, source: str = "auto", *, train_split: str = "train", val_split: str = "val",
                  val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0,
                  source_options: dict[str, Any] | None = None
                  ) -> tuple[list[ImageRecord], list[ImageRecord], dict[str, Any]]:
    """(train records, val records, what was done): disjoint key sets, every listed row in one."""
    from textok.pipeline.sources.records import list_records

    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    opts = dict(source_options or {})
    train = list_records(input_path, source, train_split, **opts)
    try:
        val = list_records(input_path, source, val_split, **opts)
        no_val_reason = None
    except (ValueError, FileNotFoundError, KeyError) as e:  # the input has no such split
        val, no_val_reason = [], " ".join(str(e).split())
    val_keys = {r.key for r in val}
    unsplit = {r.key for r in train} & val_keys
    if no_val_reason is not None:  # no val in the input: hold out val_fraction of train
        unsplit = {r.key for r in train}
    explicit_train = [r for r in train if r.key not in unsplit]
    explicit_val = [r for r in val if r.key not in unsplit]
    hashed_val = [dataclasses.replace(r, split=val_split) for r in train
                  if r.key in unsplit and in_val(r.key, val_fraction, seed)]
    hashed_train = [dataclasses.replace(r, split=train_split) for r in train
                    if r.key in unsplit and not in_val(r.key, val_fraction, seed)]
    out_train = sorted(explicit_train + hashed_train, key=lambda r: r.key)
    out_val = sorted(explicit_val + hashed_val, key=lambda r: r.key)
    info = {"train": len(out_train), "val": len(out_val), "rows_without_split": len(unsplit),
            "val_fraction": val_fraction, "seed": seed, "val_split": val_split,
            "rule": f"rows without a split of their own: {val_split} when sha256(seed, key) < {val_fraction}, "
                    f"else {train_split}"}
    if no_val_reason is not None:
        info["input_has_no_val"] = no_val_reason
    if unsplit:
        log.info("prepare: %d rows have no split of their own; %d -> %s (--val-fraction %g), %d -> %s",
                 len(unsplit), len(hashed_val), val_split, val_fraction, len(hashed_train), train_split)
    if not out_train:
        raise ValueError(f"{input_path}: no {train_split!r} rows left (--val-fraction {val_fraction} took them all)")
    return out_train, out_val, info
