"""The captioning prompt, versioned. Both VLM backends (gemini, local) ask with this text.

TexTok conditions the tokenizer on a caption of at most 75 words (paper §4: T5 reads ≤128
tokens); a factual, content-first description is what carries information the image tokens
then need not store. The wording is ours. Changing it changes the captions, so any edit
must bump PROMPT_VERSION: the version and the full text are recorded in the captions
table metadata, and every caption row carries `prompt_version`.

    python -m textok.pipeline.captioning.captioners.prompt                 # print the prompt
    python -m textok.pipeline.captioning.captioners.prompt --class tench   # with the class-name hint
"""
from __future__ import annotations

import sys
from typing import Optional

PROMPT_VERSION = "v1"
MAX_CAPTION_WORDS = 75

_BASE = (
    "Write one factual caption for this image. Describe the main subject first, then its "
    "notable attributes (colours, shapes, materials, count, pose or action), then the "
    "setting and background. Mention only what is visible; do not guess names, places or "
    "intentions. Use at most {max_words} words in plain sentences. Reply with the caption "
    "alone: no preamble such as 'This image shows', no lists, no quotation marks."
)
# Only with class_hint: ImageNet-style labels help the model name the object correctly.
_HINT = " The image is from the class '{class_name}'."


def build_prompt(class_name: Optional[str] = None, class_hint: bool = False,
                 max_words: int = MAX_CAPTION_WORDS) -> str:
    """The prompt text for one image. The hint is added only when class_hint is on and a
    class name is known: a hint without a name would be noise, not information."""
    if max_words <= 0:
        raise ValueError(f"max_words must be positive, got {max_words}")
    text = _BASE.format(max_words=int(max_words))
    if class_hint and class_name:
        text += _HINT.format(class_name=class_name.replace("'", "’"))
    return text


def prompt_template(class_hint: bool = False, max_words: int = MAX_CAPTION_WORDS) -> str:
    """The recorded prompt text: the template with `{class_name}` left as a placeholder."""
    text = _BASE.format(max_words=int(max_words))
    return text + _HINT if class_hint else text


if __name__ == "__main__":
    args = sys.argv[1:]
    name = args[args.index("--class") + 1] if "--class" in args else None
    print(f"[{PROMPT_VERSION}] " + build_prompt(name, class_hint=name is not None))
