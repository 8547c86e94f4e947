"""Caption rules applied to every captioning backend's raw answer.

TexTok feeds a caption of at most 75 words (128 T5 tokens) to the tokenizer, so every
backend's answer goes through the same pure function before it is stored:

    from textok.pipeline.captioning.rules import clean_caption
    clean_caption('**Caption:** "The image shows a red fox in snow."')
    # -> ('A red fox in snow.', None, '')
    clean_caption("I'm sorry, but I can't help with that.")
    # -> (None, 'refusal', "answer is a refusal: I'm sorry, but I can't help with that.")

Rules, in order: markdown and labels ("Caption:") and wrapping quotes removed, whitespace
collapsed, refusals and empty answers rejected (they would teach the tokenizer that a
refusal describes an image), boilerplate openers ("The image shows ...", "In this picture,
...") removed, then the word limit: cut at the last sentence end inside the limit when that
keeps at least half of it, else at the limit itself.
"""
from __future__ import annotations

import re

DEFAULT_MAX_WORDS = 75

_MARKDOWN = re.compile(r"\*\*|__|`+")
_HEADING_OR_BULLET = re.compile(r"^\s*(?:#{1,6}\s+|[-*•]\s+|\d+[.)]\s+)")
_LABEL = re.compile(r"^(?:image\s+)?(?:caption|description|answer|output)\s*[:\-–—]\s*", re.I)
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»"}

# Openers that say nothing about the image. Each pattern removes a prefix; the rest of the
# sentence is the caption. "A photo of ..." is kept on purpose: it is what the `template`
# backend writes, and "photo" vs "painting" is information.
_SUBJECT = r"(?:image|picture|photo|photograph|scene|illustration|artwork|frame)"
_OPENERS = [
    re.compile(rf"^(?:the|this)\s+{_SUBJECT}\s+(?:shows|depicts|features|displays|captures|portrays|"
               rf"illustrates|presents|contains|showcases|is\s+of)(?:\s+that)?\s*[:,]?\s+", re.I),
    re.compile(rf"^(?:in|within)\s+(?:the|this)\s+{_SUBJECT},?\s+(?:we\s+(?:can\s+)?see\s+|there\s+(?:is|are)\s+)?",
               re.I),
    re.compile(rf"^(?:this|it)\s+is\s+(?:a|an)\s+{_SUBJECT}\s+(?:of|showing|depicting)\s+", re.I),
    re.compile(rf"^(?:here\s+is|here's)\s+(?:a|an|the)\s+(?:caption|description|{_SUBJECT})"
               rf"(?:\s+(?:of|for)\s+(?:the|this)\s+{_SUBJECT})?\s*[:,.]?\s*", re.I),
    re.compile(r"^(?:sure|certainly|of course)[!,.]\s*", re.I),
]

# Refusals open the answer; matching only the opening keeps a caption such as
# "A sign reading 'I cannot stop'" safe.
_REFUSAL_OPENERS = re.compile(
    r"^(?:i'm\s+sorry|i\s+am\s+sorry|sorry,|unfortunately,?\s+i|i\s+apologi[sz]e|"
    r"i\s+(?:can(?:'|no)?t|can\s+not|am\s+unable|'m\s+unable|am\s+not\s+able|'m\s+not\s+able|"
    r"won't|will\s+not|do\s+not\s+feel|don't\s+feel)\b|"
    r"as\s+an?\s+(?:ai|language\s+model|large\s+language\s+model)\b|"
    r"i'm\s+(?:unable|not\s+able)\b)",
    re.I,
)
_REFUSAL_ANYWHERE = re.compile(r"\bas\s+an?\s+ai\s+(?:language\s+)?model\b", re.I)
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*$")
_HAS_WORD_CHAR = re.compile(r"\w")


def count_words(text: str | None) -> int:
    """Words as whitespace-separated tokens (what the ≤75-word rule counts)."""
    return len(text.split()) if text else 0


def _unquote(text: str) -> str:
    while len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


def _strip_wrappers(text: str) -> str:
    text = _MARKDOWN.sub("", text)
    text = " ".join(text.split())
    for _ in range(3):  # "Caption: 'The image shows ...'" nests a label, quotes and an opener
        before = text
        text = _HEADING_OR_BULLET.sub("", text)
        text = _LABEL.sub("", text)
        text = _unquote(text)
        if text == before:
            break
    return text


def _strip_openers(text: str) -> str:
    original = text
    for _ in range(3):
        before = text
        for pattern in _OPENERS:
            text = pattern.sub("", text, count=1)
        text = _unquote(text.strip())
        if text == before:
            break
    # Only a stripped opener leaves a lower-case start behind ("shows a dog" -> "a dog");
    # text that had no opener keeps its case (the template's "a photo of a tench").
    return text[:1].upper() + text[1:] if text != original else text


def _cut_to_words(text: str, max_words: int) -> str:
    words = text.split()
    if len(words) <= max_words:
        return text
    head = words[:max_words]
    # Last sentence end inside the limit, if it keeps at least half of the allowed words:
    # a complete sentence reads better than a cut one, but not at the price of most detail.
    for i in range(len(head) - 1, max_words // 2 - 1, -1):
        if _SENTENCE_END.search(head[i]):
            return " ".join(head[: i + 1])
    return " ".join(head).rstrip(",;:-–—")


def clean_caption(text: str | None, max_words: int = DEFAULT_MAX_WORDS) -> tuple[str | None, str | None, str]:
    """Apply the caption rules to one raw answer.

    Returns (caption, None, note) on success, where note says what was cut (or is ""),
    and (None, error_type, message) on failure, error_type in {"empty", "refusal", "invalid_utf8"}.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words} (setting --max-words)")
    if text is None or not text.strip():
        return None, "empty", "answer is empty"
    try:  # Parquet stores UTF-8: a lone surrogate would fail the whole commit, not this row
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return None, "invalid_utf8", f"caption is not valid UTF-8 (lone surrogate or undecodable byte at character {e.start})"
    raw_words = count_words(text)
    cleaned = _strip_wrappers(text.strip())
    if _REFUSAL_OPENERS.match(cleaned) or _REFUSAL_ANYWHERE.search(cleaned):
        return None, "refusal", f"answer is a refusal: {_shorten(cleaned)}"
    cleaned = _strip_openers(cleaned)
    if not _HAS_WORD_CHAR.search(cleaned):
        return None, "empty", f"answer has no words after cleaning (raw: {_shorten(text)!r})"
    cut = _cut_to_words(cleaned, max_words)
    note = ""
    if cut != cleaned:
        note = f"cut from {count_words(cleaned)} to {count_words(cut)} words (limit {max_words})"
    elif count_words(cut) != raw_words:
        note = f"boilerplate removed ({raw_words} -> {count_words(cut)} words)"
    return cut, None, note


def _shorten(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def boilerplate_reason(text: str | None) -> str | None:
    """Why a *stored* caption still reads like an unclean model answer, or None.

    The same rules `clean_caption` applies, used as a check (`textok caption-report`): captions
    written by an older prompt version, by the `provided` backend or by another tool never went
    through them. Returns "refusal: ...", "opener: ..." or "wrapper: ..." naming the text found.
    """
    if not text or not text.strip():
        return "empty"
    stripped = " ".join(text.split())
    if _REFUSAL_OPENERS.match(stripped) or _REFUSAL_ANYWHERE.search(stripped):
        return f"refusal: {_shorten(stripped, 60)}"
    for pattern in _OPENERS:
        m = pattern.match(stripped)
        if m:
            return f"opener: {m.group(0).strip()!r}"
    unwrapped = _strip_wrappers(stripped)
    if unwrapped != stripped:
        return f"wrapper: markdown, label or quotes around {_shorten(unwrapped, 40)!r}"
    return None
