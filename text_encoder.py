"""Frozen text encoder (T5 by default) that turns captions into unpadded float16 token embeddings.

TexTok feeds the tokenizer and detokenizer the *token-level* outputs of a frozen T5 encoder
(T5-XL, d_model 2048, at 256 px; T5-XXL, 4096, at 512 px; the v1.1 checkpoints), captions cut
at 128 tokens. We store only the `text_len` real tokens of each caption as float16.

    from textok.text_encoder import TextEncoder
    enc = TextEncoder("google/t5-v1_1-xl").load()          # or a local folder
    embs = enc.encode(["a red circle on a blue background", ...])   # list of [text_len, D] float16

Throughput: `encode` tokenizes everything once, sorts by token length and runs batches of
similar lengths, so almost no compute goes to padding (a naive loop padding every caption to
128 tokens wastes most of it: captions are typically 15-60 tokens).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from textok.devices import resolve_device

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "google/t5-v1_1-xl"      # paper, 256 px
DEFAULT_ENCODER_512 = "google/t5-v1_1-xxl"  # paper, 512 px
DEFAULT_MAX_TOKENS = 128
T5_MODEL_TYPES = ("t5", "mt5", "umt5")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
_FP16_MAX = float(np.finfo(np.float16).max)
# Measured (bench/encode_throughput.py, random T5 d_model 256, 1 thread): on CPU small
# length-sorted batches beat large ones (8: 230/s, 64: 150/s, 128: 120/s captions/s): each
# batch spans fewer lengths and its activations stay in cache. GPUs want large batches.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 64}


class EncoderError(RuntimeError):
    """Configuration error of the text encoder (missing weights, forbidden dtype, ...)."""


def _missing_weights_message(encoder: str, err: Exception) -> str:
    name = encoder.rstrip("/").split("/")[-1]
    if os.path.isabs(encoder) or encoder.startswith(".") or encoder.count("/") != 1:  # a folder that is not there
        fetch = f"`hf download google/{name} --local-dir {encoder}`" if name.startswith("t5") else \
            f"`hf download ORG/MODEL --local-dir {encoder}`"
        return (f"text encoder {encoder!r}: no such folder ({type(err).__name__}). Download it on a machine with "
                f"network access, e.g. {fetch}, and copy it there (see the README's \"Offline and clusters\").")
    return (f"text encoder {encoder!r} could not be loaded ({type(err).__name__}: {' '.join(str(err).split())}). "
            f"Download it first, e.g. `hf download {encoder} --local-dir /path/to/{name}`, "
            f"then pass the folder with `--encoder /path/to/{name}`.")


def load_encoder_config(encoder: str, revision: str | None = None):
    """The model config alone (no weights): cheap, used by the launcher to learn D and the model type."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(encoder, revision=revision)
    except (OSError, ValueError) as e:
        raise EncoderError(_missing_weights_message(encoder, e)) from e


def embedding_dim(config) -> int:
    """D of the stored embeddings: T5's d_model, `hidden_size` otherwise (CLIP's text part for CLIP)."""
    if getattr(config, "model_type", "") == "clip":
        config = config.text_config
    for attr in ("d_model", "hidden_size"):
        if getattr(config, attr, None):
            return int(getattr(config, attr))
    raise EncoderError(f"cannot tell the output width of a {type(config).__name__}: no d_model / hidden_size")


def resolve_dtype(dtype: str | None, device: str, model_type: str) -> str:
    """bf16 on GPU, fp32 on CPU; float16 is refused for T5 (its activations overflow fp16's range)."""
    if dtype in (None, "", "auto"):
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    dtype = aliases.get(dtype, dtype)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise EncoderError(f"--dtype {dtype!r} is not one of float32, bfloat16, float16")
    if dtype == "float16" and model_type in T5_MODEL_TYPES:
        raise EncoderError("--dtype float16 is refused for T5 encoders: T5 activations overflow float16 to inf/NaN "
                           "(a known T5 v1.1 issue). Use --dtype bfloat16 (GPU) or float32.")
    return dtype


def _local_dir(encoder: str, revision: str | None) -> str | None:
    if os.path.isdir(encoder):
        return encoder
    try:  # a Hub id already in the local cache: its snapshot folder holds the files
        from transformers.utils import cached_file

        path = cached_file(encoder, "config.json", revision=revision, _raise_exceptions_for_missing_entries=False)
    except Exception:  # noqa: BLE001 - not cached: no fingerprint, reported as None
        return None
    return os.path.dirname(path) if path else None


def encoder_fingerprint(encoder: str, revision: str | None = None) -> dict[str, Any]:
    """What identifies the weights: the Hub commit (when from the Hub cache) and a sha256 over the weight files.

    Hashing reads the files once (seconds for T5-XL); it runs in the launcher, not per worker.
    """
    folder = _local_dir(encoder, revision)
    out: dict[str, Any] = {"encoder_revision": revision, "encoder_hash": None}
    if folder is None:
        return out
    parts = os.path.normpath(folder).split(os.sep)
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
        out["encoder_revision"] = parts[parts.index("snapshots") + 1]
    files = sorted(f for f in os.listdir(folder) if f.endswith(_WEIGHT_SUFFIXES))
    if files:
        h = hashlib.sha256()
        for name in files:
            h.update(name.encode())
            with open(os.path.join(folder, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
        out["encoder_hash"] = "sha256:" + h.hexdigest()
    return out


@dataclass
class TextEncoder:
    """A frozen HF text encoder returning unpadded `[text_len, D]` float16 embeddings per caption.

    T5-family configs load with `T5EncoderModel` (AutoModel would build the unused decoder too);
    CLIP with `CLIPTextModel`; anything else with `AutoModel`. Output = `last_hidden_state`.
    """

    encoder: str = DEFAULT_ENCODER
    max_tokens: int = DEFAULT_MAX_TOKENS
    batch_size: int | None = None  # None: 64 on GPU, 8 on CPU (see DEFAULT_BATCH_SIZE)
    device: str | None = None
    dtype: str | None = None
    revision: str | None = None
    model_type: str = field(default="", init=False)
    dim: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise EncoderError(f"max_tokens must be positive, got {self.max_tokens}")
        self.device = resolve_device(self.device)
        if self.batch_size is None:
            self.batch_size = DEFAULT_BATCH_SIZE["cuda" if self.device.startswith("cuda") else "cpu"]
        if self.batch_size <= 0:
            raise EncoderError(f"batch_size must be positive, got {self.batch_size}")
        self._model = None
        self._tokenizer = None

    def load(self) -> "TextEncoder":
        import torch
        from transformers import AutoModel, AutoTokenizer

        config = load_encoder_config(self.encoder, self.revision)
        self.model_type = config.model_type
        self.dim = embedding_dim(config)
        self.dtype = resolve_dtype(self.dtype, self.device, self.model_type)
        if self.model_type in T5_MODEL_TYPES:
            from transformers import MT5EncoderModel, T5EncoderModel, UMT5EncoderModel

            cls = {"t5": T5EncoderModel, "mt5": MT5EncoderModel, "umt5": UMT5EncoderModel}[self.model_type]
        elif self.model_type == "clip":
            from transformers import CLIPTextModel as cls
        else:
            cls = AutoModel
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.encoder, revision=self.revision)
            model = cls.from_pretrained(self.encoder, revision=self.revision, dtype=getattr(torch, self.dtype))
        except OSError as e:
            raise EncoderError(_missing_weights_message(self.encoder, e)) from e
        self._model = model.to(self.device).eval().requires_grad_(False)
        log.info("loaded text encoder %s (%s, D=%d) on %s in %s", self.encoder, cls.__name__, self.dim,
                 self.device, self.dtype)
        return self

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each caption after truncation at max_tokens (special tokens included)."""
        ids = self._tokenizer(list(texts), truncation=True, max_length=self.max_tokens)["input_ids"]
        return [len(x) for x in ids]

    def encode(self, texts: Sequence[str], keys: Sequence[str] | None = None) -> list[np.ndarray]:
        """One float16 `[text_len, D]` array per caption, same order as `texts`.

        Sorted by length into batches of `batch_size`, each padded only to its own longest
        caption; padding positions are masked in attention and dropped from the output.
        Raises if any value would overflow float16 (names the caption's key).
        """
        import torch

        if not self.loaded:
            raise EncoderError("TextEncoder.encode called before load()")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                where = keys[i] if keys is not None else f"#{i}"
                raise ValueError(f"caption of key {where!r} is empty or not a string: {t!r}")
        ids = self._tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        pad_id = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        out: list[np.ndarray | None] = [None] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                width = max(len(ids[i]) for i in idx)
                input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                    mask[row, :len(ids[i])] = 1
                hidden = self._model(input_ids=input_ids.to(self.device),
                                     attention_mask=mask.to(self.device)).last_hidden_state
                hidden = hidden.float().cpu().numpy()
                for row, i in enumerate(idx):
                    out[i] = self._to_storage(hidden[row, :len(ids[i])], keys[i] if keys is not None else f"#{i}")
        return out  # type: ignore[return-value]

    def _to_storage(self, emb: np.ndarray, key: str) -> np.ndarray:
        peak = float(np.abs(emb).max()) if emb.size else 0.0
        if not np.isfinite(peak) or peak > _FP16_MAX:
            raise EncoderError(f"embedding of key {key!r} holds values of magnitude {peak} that do not fit float16 "
                               f"(encoder {self.encoder}, compute dtype {self.dtype}): refusing to store inf/NaN")
        return emb.astype(np.float16)

    def metadata(self) -> dict[str, Any]:
        """The shard/pool metadata describing these embeddings."""
        return {"encoder": self.encoder, "D": self.dim, "max_tokens": self.max_tokens,
                "compute_dtype": self.dtype, "storage_dtype": "float16", "encoder_model_type": self.model_type}


def describe_encoder(encoder: str, *, max_tokens: int = DEFAULT_MAX_TOKENS, device: str | None = None,
                     dtype: str | None = None, revision: str | None = None, fingerprint: bool = True) -> dict[str, Any]:
    """The launcher's view of an encoder (config only, no weights loaded): metadata for every output file.

    Fails here, before any pipeline starts, when the encoder is missing or the dtype is refused.
    """
    config = load_encoder_config(encoder, revision)
    device = resolve_device(device)
    meta = {"encoder": encoder, "D": embedding_dim(config), "max_tokens": int(max_tokens),
            "compute_dtype": resolve_dtype(dtype, device, config.model_type), "storage_dtype": "float16",
            "encoder_model_type": config.model_type, "device": device}
    meta.update(encoder_fingerprint(encoder, revision) if fingerprint else
                {"encoder_revision": revision, "encoder_hash": None})
    return meta
