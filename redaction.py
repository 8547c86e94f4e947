"""Credentials out of URLs and log lines, before anything is printed or written.

    redact_url("https://bob:s3cret@gpu-box:8000/v1?key=abc&api-version=2024")
    -> "https://***@gpu-box:8000/v1?key=***&api-version=2024"
    url_secrets("https://bob:s3cret@h/v1?token=abc")  -> ["bob", "s3cret", "abc"]   # what scrub() hides
    scrub(text, secrets)                               # every URL in text redacted, then each secret

A server URL may carry a credential (`user:pass@`, `?key=`, `?token=`, a signed `X-Amz-Signature`):
settings are written to the captions' `textok.meta`, error messages to dead-letter rows and
logs, and HTTP libraries log request URLs at DEBUG (`-vv`). Everything that shows a URL goes
through `redact_url`; `RedactingFilter` on the CLI's log handlers catches what libraries log.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlsplit

MASK = "***"
# Query parameter names that carry a credential (case-insensitive, anywhere in the name).
_SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|auth|sig|credential|session|access|bearer", re.I)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """`url` with its userinfo and secret-looking query values replaced by ***."""
    if not isinstance(url, str) or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    authority, tail = _split_authority(rest)
    if "@" in authority:
        authority = MASK + "@" + authority.rsplit("@", 1)[1]
    if "?" in tail:
        path, query = tail.split("?", 1)
        frag = ""
        if "#" in query:
            query, frag = query.split("#", 1)
            frag = "#" + frag
        parts = []
        for item in query.split("&"):
            name, eq, value = item.partition("=")
            parts.append(f"{name}={MASK}" if eq and value and _SECRET_PARAM.search(name) else item)
        tail = path + "?" + "&".join(parts) + frag
    return f"{scheme}://{authority}{tail}"


def _split_authority(rest: str) -> tuple[str, str]:
    """(authority, path+query+fragment) of what follows "scheme://" (the authority ends at / ? or #)."""
    m = re.search(r"[/?#]", rest)
    return (rest, "") if m is None else (rest[:m.start()], rest[m.start():])


def url_secrets(url: str) -> list[str]:
    """The credential strings inside `url` (userinfo parts, secret query values), longest first."""
    if not isinstance(url, str) or "://" not in url:
        return []
    found = []
    try:
        parts = urlsplit(url)
        if parts.username:
            found.append(parts.username)
        if parts.password:
            found.append(parts.password)
        found += [v for k, v in parse_qsl(parts.query, keep_blank_values=False) if _SECRET_PARAM.search(k)]
    except ValueError:
        pass
    authority = _split_authority(url.split("://", 1)[1])[0]
    if "@" in authority:  # the raw (still percent-encoded) userinfo, as it may be echoed
        found += [p for p in authority.rsplit("@", 1)[0].split(":") if p]
    found += [item.partition("=")[2] for item in url.partition("?")[2].split("#")[0].split("&")
              if _SECRET_PARAM.search(item.partition("=")[0]) and item.partition("=")[2]]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def scrub(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """`text` with every URL in it redacted and every given secret replaced by ***."""
    if not text:
        return text
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    for s in secrets:
        if s:
            text = text.replace(s, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Redacts URL credentials in every record a handler emits (message, args and traceback text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string: leave it to the handler to report
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True
