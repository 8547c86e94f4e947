"""Image–text agreement: the cosine between a CLIP/SigLIP image embedding and its caption's.

    from textok.pipeline.captioning.clip_agreement import ClipScorer
    scorer = ClipScorer("openai/clip-vit-base-patch32").load()     # or a local folder
    scorer.score([pil_image, ...], ["a red fox in snow", ...])      # -> float32 [n], in [-1, 1]

Any `transformers` model whose forward takes `input_ids` + `pixel_values` and returns
`image_embeds` and `text_embeds` works: CLIPModel, SiglipModel, Siglip2 with fixed-size
inputs, ... Loading goes through AutoModel, AutoTokenizer and AutoImageProcessor, never
torchvision: without it transformers picks the PIL image processors.

Why a cosine and not CLIPScore's 2.5·max(cos, 0) (Hessel et al. 2021): the report ranks rows
and flags the lowest percentile, which a monotone rescale does not change, and the raw value
keeps negative scores apart. The score compares a caption with *its own* image, so a caption
attached to another image (a shuffled join, a key mix-up) scores low; hallucinated details
lower it less, and a threshold is only meaningful within one model (the model id is recorded).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("textok.caption_report")


class ClipConfigError(ValueError):
    """--clip names a model that cannot score image–text pairs (the message says why and the fix)."""


@dataclass
class ClipScorer:
    model_id: str
    device: str | None = None
    batch_size: int = 32
    max_text_tokens: int | None = None  # default: the model's text position limit

    def load(self) -> ClipScorer:
        import torch
        from textok.devices import resolve_device
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        try:
            self.model = AutoModel.from_pretrained(self.model_id)
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_id)
            self.image_processor = AutoImageProcessor.from_pretrained(self.model_id)
        except (OSError, ValueError, KeyError) as e:
            raise ClipConfigError(f"--clip {self.model_id}: cannot load a model, tokenizer and image processor "
                                  f"({' '.join(str(e).split())[:300]}); give a local folder or hub id of a "
                                  "CLIP or SigLIP model") from e
        if not (hasattr(self.model, "get_image_features") and hasattr(self.model, "get_text_features")):
            raise ClipConfigError(f"--clip {self.model_id}: {type(self.model).__name__} is not a dual image–text "
                                  "encoder (expected CLIPModel, SiglipModel or alike)")
        self.device = resolve_device(self.device)
        self.model.to(self.device).eval()
        text_cfg = getattr(self.model.config, "text_config", None)
        limit = getattr(text_cfg, "max_position_embeddings", None) or 77
        self.max_text_tokens = self.max_text_tokens or int(limit)
        # SigLIP was trained on texts padded to max_length; CLIP pools at the EOS token, either works padded.
        self._padding = "max_length" if "siglip" in type(self.model).__name__.lower() else True
        self._torch = torch
        return self

    def describe(self) -> dict[str, Any]:
        """What the report records: the model that made the scores (a threshold means nothing without it)."""
        cfg = self.model.config
        return {"model": self.model_id, "class": type(self.model).__name__,
                "name_or_path": getattr(cfg, "_name_or_path", self.model_id),
                "commit_hash": getattr(cfg, "_commit_hash", None), "device": str(self.device)}

    def score(self, images: Sequence[Any], captions: Sequence[str]) -> np.ndarray:
        """Cosine of each (image, caption) pair, float32 `[n]`."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images for {len(captions)} captions")
        out = []
        torch = self._torch
        for i in range(0, len(images), self.batch_size):
            imgs, texts = list(images[i:i + self.batch_size]), list(captions[i:i + self.batch_size])
            pixels = self.image_processor(images=imgs, return_tensors="pt")["pixel_values"].to(self.device)
            tok = self.tokenizer(texts, padding=self._padding, truncation=True, max_length=self.max_text_tokens,
                                 return_tensors="pt")
            with torch.inference_mode():
                result = self.model(input_ids=tok["input_ids"].to(self.device), pixel_values=pixels,
                                    **({"attention_mask": tok["attention_mask"].to(self.device)}
                                       if "attention_mask" in tok and self._padding is True else {}))
            img = torch.nn.functional.normalize(result.image_embeds.float(), dim=-1)
            txt = torch.nn.functional.normalize(result.text_embeds.float(), dim=-1)
            out.append((img * txt).sum(-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
