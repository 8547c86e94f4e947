"""The one interface every captioning backend implements.

A backend receives a batch of decoded images with their metadata and returns exactly one
`CaptionResult` per request, in the same order: a caption (+ usage) or a failure with a
machine-readable `error_type` and a human `message`. Backends never raise for a single bad
item; they raise only for configuration errors (missing weights, missing API key), which
must stop the run loudly.

Lifecycle (mirrors Beam's DoFn): `setup()` once per worker (load model / create client),
`caption_batch()` many times (may be called from several threads; backends that keep
requests in flight do so inside one call), `teardown()` at the end.

The raw text a backend returns goes through `pipeline.captioning.rules.clean_caption` in the
pipeline, not in the backend, so every backend obeys the same caption rules.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Optional

from PIL import Image


@dataclass
class CaptionRequest:
    key: str
    image: Optional[Image.Image]          # RGB, EXIF-transposed; None for backends that need no pixels
    class_name: Optional[str] = None
    label: Optional[int] = None
    provided_caption: Optional[str] = None  # from the manifest / dataset column
    source_uri: str = ""


@dataclass
class CaptionResult:
    key: str
    text: Optional[str] = None            # raw answer, before caption rules
    error_type: Optional[str] = None      # e.g. "refusal", "safety_blocked", "http_429", "timeout", "empty"
    message: str = ""
    attempts: int = 1
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    retryable: bool = False               # a transient failure (budget stop, rate limit exhausted)

    @property
    def ok(self) -> bool:
        return self.error_type is None and self.text is not None


class Captioner(abc.ABC):
    """Base class of captioning backends. Subclasses set `backend` and `model_id`."""

    backend: str = "base"
    model_id: str = ""
    prompt_version: str = "none"
    prompt_text: str = ""
    needs_pixels: bool = True

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load the model / create the client. Called once per worker before any batch."""

    @abc.abstractmethod
    def caption_batch(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        """Return one CaptionResult per request, same order."""

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Release clients / models."""

    @property
    def name(self) -> str:
        """The `captioner` column value: backend + model id."""
        return f"{self.backend}:{self.model_id}" if self.model_id else self.backend

    def settings(self) -> dict[str, Any]:
        """Generation settings recorded in the captions table metadata (never secrets)."""
        return {}

    def estimate_cost_usd(self, input_tokens: int, output_tokens: int) -> Optional[float]:
        """Estimated cost of this many tokens (None for backends with no per-token price)."""
        return None

    def usage_summary(self) -> dict[str, Any]:
        """Per-process totals (tokens, requests, cost...) for logs; the run summary uses Beam counters."""
        return {}


# Pipeline-level keys every backend may receive and ignore (the pipeline applies them).
PIPELINE_KEYS = frozenset({"max_words", "batch_size"})


def check_options(backend: str, options: dict[str, Any], accepted: set[str] | frozenset[str]) -> None:
    """Refuse options that `backend` would silently ignore (a typo or the wrong backend)."""
    unused = sorted(set(options) - set(accepted) - PIPELINE_KEYS)
    if unused:
        raise ValueError(f"captioner {backend!r} does not use option(s) {unused}; it accepts "
                         f"{sorted(set(accepted) | PIPELINE_KEYS)} (remove the matching --flags)")
