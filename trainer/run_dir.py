"""The layout of a run folder, in one room: what lives where, how it is found, how it is checked.

    from textok.trainer.run_dir import tokenizer_dir, dit_dir, check_text_encoder
    tok = tokenizer_dir("runs/tok")       # runs/tok/tokenizer, or runs/tok itself, or a Hub id
    check_text_encoder(tok, shard_meta, "runs/data/shards")

A train-tokenizer run (--output RUN):
    RUN/config.json            the resolved run config
    RUN/text_encoder.json      which text encoder made the training shards (TEXT_ENCODER_FILE)
    RUN/tokenizer/             the exported TexTok (EMA weights, config.json, model.safetensors,
                               its own text_encoder.json): what extract-latents / eval-tokenizer load
A train-dit run (--output RUN):
    RUN/dit/                   the exported DiT (config.json, model.safetensors, latent_stats.json)
    RUN/dit/latent_stats.json  mean/std/... of the latent set the DiT was trained on (STATS_NAME):
                               `sample` un-normalises with it
Every reader and writer of a run folder asks this module instead of joining names itself.
"""
from __future__ import annotations

import json
import os

from textok.atomic import write_json_atomic
from textok.schemas.common import SchemaError
# the side files an exported model carries (hub.HubModel.side_files): one name for each, there
from textok.trainer.models.hub import LATENT_STATS_FILE, TEXT_ENCODER_FILE


# ----------------------------------------------------------------------------- train-tokenizer runs

TEXT_ENCODER_KEYS = ("encoder", "encoder_hash", "encoder_revision", "D", "max_tokens")


def text_encoder_record(meta: dict) -> dict:
    """What TEXT_ENCODER_FILE holds: the shards' encoder id, weights hash, revision, D, max_tokens."""
    return {k: meta[k] for k in TEXT_ENCODER_KEYS if meta.get(k) is not None}


def write_text_encoder(shard_meta: dict, *dirs: str) -> dict:
    """Record which text encoder the training shards came from (TEXT_ENCODER_FILE in each dir):
    the tokenizer only understands embeddings of that encoder, so extract-latents checks it."""
    record = text_encoder_record(shard_meta)
    for d in dirs:
        write_json_atomic(record, os.path.join(d, TEXT_ENCODER_FILE))
    return record


def read_text_encoder(tok_dir: str) -> dict | None:
    """The record write_text_encoder left in a tokenizer dir; None for a tokenizer saved without one."""
    path = os.path.join(tok_dir, TEXT_ENCODER_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_text_encoder(tok_path: str, shard_meta: dict, shards: str, require_record: bool = False) -> None:
    """Refuse shards encoded by another text encoder than the tokenizer was trained on. Identity
    is the weights' hash when both sides record one (the same T5 through another path is the same
    encoder), else the encoder id (schemas.encoder_identity). A tokenizer without a record is
    refused when `require_record` (extract-latents and eval-tokenizer of a text-reading
    tokenizer: its text tokens would be read in a space it never saw) and unchecked otherwise."""
    from textok.schemas.encoder_identity import encoder_differences

    recorded = read_text_encoder(tok_path)
    if not recorded or not recorded.get("encoder"):
        if require_record:
            raise SchemaError(f"{tok_path}: no {TEXT_ENCODER_FILE}, so nothing says which text encoder this tokenizer "
                              f"was trained with; use the tokenizer/ folder train-tokenizer exports, or write "
                              f"{TEXT_ENCODER_FILE} (textok.trainer.run_dir.write_text_encoder) for it")
        return
    if not shard_meta.get("encoder"):
        return
    diffs = encoder_differences(shard_meta, recorded)
    if diffs:
        key = diffs[0]
        raise SchemaError(f"{shards}: the shards were encoded with text encoder {key}={shard_meta.get(key)!r}, but "
                          f"tokenizer {tok_path} was trained on shards of {key}={recorded.get(key)!r} (its "
                          f"{TEXT_ENCODER_FILE}); encode the shards with {recorded['encoder']!r} or use a tokenizer "
                          f"trained on {shard_meta['encoder']!r} embeddings")


def tokenizer_dir(ckpt: str, flag: str = "--tokenizer") -> str:
    """A TexTok dir, a train-tokenizer run dir holding tokenizer/, or a Hugging Face Hub id (its
    cached snapshot; offline and not cached: a ModelNotFoundError naming the id)."""
    for cand in (ckpt, os.path.join(ckpt, "tokenizer")):
        if os.path.isfile(os.path.join(cand, "config.json")) and os.path.isfile(os.path.join(cand, "model.safetensors")):
            return cand
    if not os.path.exists(ckpt):
        from textok.trainer.models.hub import resolve_model_dir

        return str(resolve_model_dir(ckpt, "TexTok", flag=flag))
    raise FileNotFoundError(f"{flag} {ckpt}: neither it nor {ckpt}/tokenizer holds a saved TexTok "
                            f"(config.json + model.safetensors); point it at a train-tokenizer output dir")


# ----------------------------------------------------------------------------- train-dit runs

STATS_NAME = LATENT_STATS_FILE


STATS_KEYS = ("mean", "std", "count", "tokenizer", "tokenizer_sha256", "num_tokens", "token_dim", "image_size",
              "text_mode", "encoder", "encoder_hash", "encoder_revision", "D", "max_tokens")


def latent_stats(meta: dict) -> dict:
    return {k: meta.get(k) for k in STATS_KEYS}


def dit_dir(path: str) -> str:
    """A DiT dir (DiT.save_pretrained + latent_stats.json), a train-dit run dir holding dit/, or a
    Hugging Face Hub id of such a dir (its cached snapshot)."""
    candidates = [path, os.path.join(path, "dit")]
    if not os.path.exists(path):
        from textok.trainer.models.hub import resolve_model_dir

        candidates = [str(resolve_model_dir(path, "DiT", flag="--dit"))]  # offline and not cached: ModelNotFoundError
    for cand in candidates:
        if all(os.path.isfile(os.path.join(cand, f)) for f in ("config.json", "model.safetensors", STATS_NAME)):
            return cand
    raise FileNotFoundError(f"--dit {path}: neither it nor {path}/dit holds a trained DiT (config.json, "
                            f"model.safetensors, {STATS_NAME}); point it at a train-dit output")
