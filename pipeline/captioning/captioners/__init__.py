"""Captioner registry: a backend name (or a `module:factory` plugin) -> a Captioner.

    from textok.pipeline.captioning.captioners import build_captioner
    cap = build_captioner("template", {"template": "a photo of a {class_name}"})
    cap = build_captioner("gemini", {"model_id": "gemini-2.5-flash-lite", "rpm": 1000})
    cap = build_captioner("openai", {"openai_base_url": ["http://gpu-box:8000/v1"], "model_id": "Qwen/Qwen2.5-VL-7B-Instruct"})
    cap = build_captioner("my_pkg.captioners:from_options", {...})   # a plugin

Each backend module exposes `from_options(options: dict) -> Captioner`; modules are imported
only when asked for, so `provided` never imports google-genai or transformers. Building a
captioner is cheap (no model load, no client): `setup()` does the heavy work on the worker.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

# Backends import what they share from `base`, never from this registry, so importing a
# backend never imports the registry back (no import cycle).
from textok.pipeline.captioning.captioners.base import (PIPELINE_KEYS, Captioner, CaptionRequest, CaptionResult,
                                             check_options)

# name -> (module, factory attribute)
BACKENDS: dict[str, tuple[str, str]] = {
    "provided": ("textok.pipeline.captioning.captioners.simple", "provided_from_options"),
    "template": ("textok.pipeline.captioning.captioners.simple", "template_from_options"),
    "gemini": ("textok.pipeline.captioning.captioners.gemini", "from_options"),
    "local": ("textok.pipeline.captioning.captioners.local", "from_options"),
    "openai": ("textok.pipeline.captioning.captioners.openai_compat", "from_options"),
}

# Every option key the CLI may set (`textok caption --help` documents them). A backend
# rejects keys it does not use, so `--rpm` given to `template` is an error, not a no-op.
OPTION_KEYS = (
    "model_id", "template", "max_words", "class_hint", "rpm", "tpm", "max_in_flight", "timeout_s",
    "max_retries", "max_cost_usd", "base_url", "vertex_project", "vertex_location", "price_table",
    "batch_size", "device", "max_new_tokens", "task_prompt", "dtype", "openai_base_url", "api_key_env",
)

__all__ = ["BACKENDS", "OPTION_KEYS", "PIPELINE_KEYS", "Captioner", "CaptionRequest", "CaptionResult", "build_captioner",
           "check_options"]


def _resolve_factory(name: str) -> Callable[[dict[str, Any]], Captioner]:
    if name in BACKENDS:
        module_name, attr = BACKENDS[name]
    elif ":" in name:
        module_name, attr = name.split(":", 1)
    else:
        raise ValueError(f"unknown captioner {name!r}; choose one of {sorted(BACKENDS)} "
                         "or a plugin given as 'package.module:factory' (setting --captioner)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"captioner {name!r}: cannot import module {module_name!r} ({e})") from e
    try:
        factory = getattr(module, attr)
    except AttributeError as e:
        raise ValueError(f"captioner {name!r}: module {module_name!r} has no attribute {attr!r}") from e
    # A Captioner class exposes the factory as a classmethod; a plain function is the factory.
    factory = getattr(factory, "from_options", factory)
    if not callable(factory):
        raise ValueError(f"captioner {name!r}: {module_name}:{attr} is not callable")
    return factory


def build_captioner(name: str, options: dict[str, Any] | None = None) -> Captioner:
    """Build (not set up) the captioner `name` from an options dict (None values dropped)."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    captioner = _resolve_factory(name)(options)
    if not isinstance(captioner, Captioner):
        raise TypeError(f"captioner {name!r}: factory returned {type(captioner).__name__}, "
                        "expected a pipeline.captioning.captioners.base.Captioner")
    return captioner
