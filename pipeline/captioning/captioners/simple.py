"""Captioners that need no model: `provided` (captions already in the data) and `template`.

    textok caption --input data/manifest.jsonl --output out --captioner provided
    textok caption --input imagenet/ --output out --captioner template \
        --template "a photo of a {class_name}"

`provided` serves text-to-image sets whose manifest or dataset column already holds a
caption; a record without one is a dead letter ("missing_caption"). `template` fills a
format string from the record's `class_name` / `label`; it is chosen explicitly, never as a
fallback for a failed backend, and a record without the field is a dead letter.
Neither reads pixels (`needs_pixels = False`), so the pipeline skips decoding for them.
"""
from __future__ import annotations

import hashlib
import string
from typing import Any

from textok.pipeline.captioning.captioners.base import Captioner, CaptionRequest, CaptionResult, check_options

DEFAULT_TEMPLATE = "a photo of a {class_name}"
TEMPLATE_FIELDS = ("class_name", "label")


class ProvidedCaptioner(Captioner):
    backend = "provided"
    prompt_version = "provided"
    prompt_text = "captions taken from the input data (manifest field or dataset column)"
    needs_pixels = False

    def caption_batch(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        out = []
        for r in requests:
            if r.provided_caption is None or not r.provided_caption.strip():
                out.append(CaptionResult(r.key, error_type="missing_caption",
                                         message="record has no caption in the input data "
                                                 "(check --caption-column / the manifest's caption field)"))
            else:
                out.append(CaptionResult(r.key, text=r.provided_caption))
        return out


class TemplateCaptioner(Captioner):
    backend = "template"
    needs_pixels = False

    def __init__(self, template: str = DEFAULT_TEMPLATE):
        self.template = template
        self.fields = _template_fields(template)
        self.prompt_text = template
        # The version changes when the template does, so captions made with two templates
        # can be told apart in the table.
        self.prompt_version = "template-" + hashlib.sha256(template.encode()).hexdigest()[:8]

    def settings(self) -> dict[str, Any]:
        return {"template": self.template}

    def caption_batch(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        out = []
        for r in requests:
            values = {"class_name": r.class_name, "label": r.label}
            missing = [f for f in self.fields if values[f] is None or (f == "class_name" and not str(values[f]).strip())]
            if missing:
                out.append(CaptionResult(r.key, error_type=f"missing_{missing[0]}",
                                         message=f"template {self.template!r} needs {missing} but the record "
                                                 "has none (give class names: --source imagenet, or a "
                                                 "class_name field in the manifest)"))
            else:
                out.append(CaptionResult(r.key, text=self.template.format(**values)))
        return out


def _template_fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"--template {template!r} is not a valid format string: {e}") from e
    fields = [f for _, f, _, _ in parsed if f is not None]
    unknown = [f for f in fields if f not in TEMPLATE_FIELDS]
    if unknown or not fields:
        raise ValueError(f"--template {template!r} must use only the fields "
                         f"{{{'}, {'.join(TEMPLATE_FIELDS)}}} and at least one of them; got {fields}")
    return list(dict.fromkeys(fields))


def provided_from_options(options: dict[str, Any]) -> ProvidedCaptioner:
    check_options("provided", options, set())
    return ProvidedCaptioner()


def template_from_options(options: dict[str, Any]) -> TemplateCaptioner:
    check_options("template", options, {"template"})
    return TemplateCaptioner(options.get("template", DEFAULT_TEMPLATE))
