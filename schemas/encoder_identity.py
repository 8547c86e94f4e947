"""Which text encoder made an embedding table, and whether two tables may be mixed.

Identity is the weights, not the path: `describe_encoder` records `encoder_hash` (a hash of the
weight files), so the same T5 reached through another folder, a symlink or a Hub id is the
same encoder, and two different checkpoints under one path are not. Only when one side lacks
a hash (tables written before hashes existed, `fingerprint=False`) do the encoder id and
revision decide. The embedding width `D` must always agree.

    from textok.schemas.encoder_identity import encoder_differences, check_output_encoder
    encoder_differences({"encoder": "/a/t5", "encoder_hash": "sha256:1", "D": 32},
                        {"encoder": "/b/t5", "encoder_hash": "sha256:1", "D": 32})   # -> []
"""
from __future__ import annotations

from typing import Any

from textok.schemas.common import list_parquet, read_meta


def encoder_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The keys on which two encoder records disagree (empty: the same encoder)."""
    diffs = []
    if a.get("encoder_hash") and b.get("encoder_hash"):
        if a["encoder_hash"] != b["encoder_hash"]:
            diffs.append("encoder_hash")
    else:
        diffs += [k for k in ("encoder", "encoder_revision")
                  if a.get(k) is not None and b.get(k) is not None and a[k] != b[k]]
    if a.get("D") is not None and b.get("D") is not None and int(a["D"]) != int(b["D"]):
        diffs.append("D")
    return diffs


def describe_difference(ours: dict[str, Any], theirs: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={ours.get(k)!r} vs {k}={theirs.get(k)!r}" for k in keys)


def check_output_encoder(output_dir: str, meta: dict[str, Any], folder: str, command: str) -> None:
    """Refuse to write `command`'s embeddings (encoder `meta`) into an output whose `folder`
    (shards/ or pools/) holds embeddings of another encoder: tokenizer, DiT and sampler would mix
    two embedding spaces. Checked before any work, from the files' metadata only."""
    from textok import storage as rio

    where = rio.join(output_dir, folder)
    if not rio.is_dir(where):  # local folder, or any object under gs://.../folder/ (object stores)
        return
    for path in list_parquet(where):
        theirs = read_meta(path)["meta"]
        diffs = encoder_differences(meta, theirs)
        if diffs:
            raise ValueError(
                f"{path}: these {folder} were encoded with {theirs.get('encoder')!r} (D={theirs.get('D')}), but "
                f"`textok {command}` was asked for {meta.get('encoder')!r} (D={meta.get('D')}): "
                f"{describe_difference(meta, theirs, diffs)}. Use --encoder {theirs.get('encoder')!r} "
                f"(the same weights) or another --output")
