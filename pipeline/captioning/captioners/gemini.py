"""Gemini captioner: many requests in flight through the real google-genai client.

    export GEMINI_API_KEY=...            # or GOOGLE_API_KEY, or --vertex-project/--vertex-location
    textok caption --input imgs/ --output out/ --captioner gemini --rpm 1000 --max-cost-usd 5

    python -m textok.pipeline.captioning.captioners.gemini cat.jpg dog.png [--model gemini-2.5-flash] [--base-url URL]

How a batch is captioned (the machinery is `remote.RemoteCaptioner`, shared with the
OpenAI-compatible backend): images are downscaled to ≤384 px (Gemini 2.x bills such an image
as 258 tokens instead of tiling a large one) and JPEG-encoded on the calling thread, then
every request of the batch is scheduled on one process-wide asyncio loop running in a
background thread. On that loop all captioner instances of the process (Beam makes one per
DoFn thread) share, per model and limits: a semaphore (`max_in_flight`), a `RateLimiter`
(requests/min and tokens/min) and a `CostBudget` (`max_cost_usd`). Retries use exponential
backoff with full jitter on 429/5xx/timeouts/connection errors, never shorter than the
server's `google.rpc.RetryInfo.retryDelay` or `Retry-After`. google-genai's own retries are
off (no `retry_options`), so every attempt passes through our limiter and is counted.

Limits are per worker process: on a runner with N worker processes (Dataflow workers,
`--direct_num_workers N`) divide --rpm, --tpm and --max-cost-usd by N; quota 429s are still
retried, and a budget stop defers the rest to a rerun, which starts a fresh budget.

The API key is read from the environment in `setup()` only: it is never an attribute of a
pickled captioner, never in `settings()`, and every error message is scrubbed of it.
Authentication / unknown-model errors are configuration errors and raise `GeminiConfigError`
(the run stops); everything else becomes a failed `CaptionResult`.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
from typing import Any, Optional

from textok.pipeline.captioning.captioners.base import CaptionRequest, check_options
from textok.pipeline.captioning.captioners.prompt import MAX_CAPTION_WORDS, PROMPT_VERSION, prompt_template
from textok.pipeline.captioning.captioners.ratelimit import retry_hint_s
from textok.pipeline.captioning.captioners.remote import Attempt as _Attempt
from textok.pipeline.captioning.captioners.remote import LoopThread as _LoopThread
from textok.pipeline.captioning.captioners.remote import RemoteCaptioner, request_jpeg, reset_process_state, transport_errors

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemini-2.5-flash"
API_KEY_ENV_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
IMAGE_MAX_SIDE = 384
IMAGE_TOKENS = 258  # Gemini 2.x: one image with both sides <= 384 px
_SAFETY_REASONS = {"SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                   "IMAGE_PROHIBITED_CONTENT", "MODEL_ARMOR", "JAILBREAK"}
_AUTH_REASONS = {"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED",
                 "CONSUMER_SUSPENDED", "SERVICE_DISABLED"}


class GeminiConfigError(RuntimeError):
    """Missing/invalid credentials, unknown model or bad settings: stop the run, fix the setting."""


__all__ = ["GeminiCaptioner", "GeminiConfigError", "estimate_input_tokens", "from_options", "parse_response", "request_jpeg",
           "reset_process_state"]


def _close_client(client) -> None:
    """Close a shared client's async HTTP pool on the loop that used it (best effort, no wait:
    this runs when the last holder lets go, possibly on that loop's own thread)."""
    try:
        asyncio.run_coroutine_threadsafe(client.aio.aclose(), _LoopThread.get())
    except Exception as e:  # the process may be ending anyway
        log.debug("closing the Gemini client failed: %s", type(e).__name__)


# --------------------------------------------------------------------------- pure helpers


def api_key_from_env() -> Optional[str]:
    """The Developer API key from GEMINI_API_KEY / GOOGLE_API_KEY (None when neither is set)."""
    return next((os.environ[k].strip() for k in API_KEY_ENV_VARS if os.environ.get(k, "").strip()), None)


def generation_settings(max_output_tokens: int, temperature: Optional[float],
                        thinking_budget: Optional[int]) -> dict[str, Any]:
    """GenerateContentConfig fields (snake_case) shared by the sync and batch request builders."""
    cfg: dict[str, Any] = {"max_output_tokens": int(max_output_tokens)}
    if temperature is not None:
        cfg["temperature"] = temperature
    if thinking_budget is not None:
        cfg["thinking_config"] = {"thinking_budget": int(thinking_budget)}
    return cfg


def estimate_input_tokens(prompt: str, n_images: int = 1) -> int:
    """Before sending: 258 tokens per ≤384 px image + ~4 characters per text token."""
    return IMAGE_TOKENS * n_images + math.ceil(len(prompt) / 4) + 4


def parse_response(resp: Any) -> _Attempt:
    """GenerateContentResponse -> caption text or a classified failure (pure; unit-testable)."""
    usage = getattr(resp, "usage_metadata", None)
    in_tok = getattr(usage, "prompt_token_count", None)
    # Thinking tokens are billed as output (Gemini 2.5 pricing), so they count here.
    out_tok = None
    if usage is not None and (usage.candidates_token_count is not None or usage.thoughts_token_count is not None):
        out_tok = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
    a = _Attempt(input_tokens=in_tok, output_tokens=out_tok, maybe_billed=usage is None)
    feedback = getattr(resp, "prompt_feedback", None)
    block = getattr(getattr(feedback, "block_reason", None), "name", None)
    if block:
        a.error_type, a.message = "safety_blocked", f"prompt blocked: blockReason={block}"
        return a
    if not resp.candidates:
        a.error_type, a.message = "empty_response", "response has no candidates"
        return a
    cand = resp.candidates[0]
    fr = cand.finish_reason
    reason = getattr(fr, "name", None) or (fr if isinstance(fr, str) else "UNSPECIFIED")
    if reason in _SAFETY_REASONS:
        a.error_type, a.message = "safety_blocked", f"finishReason={reason}"
        return a
    if reason in ("RECITATION", "IMAGE_RECITATION"):
        a.error_type, a.message = "recitation_blocked", f"finishReason={reason}"
        return a
    parts = (cand.content.parts if cand.content and cand.content.parts else [])
    text = "".join(p.text for p in parts if p.text and not p.thought).strip()
    if not text:
        a.error_type, a.message = "empty_response", f"no text in the answer (finishReason={reason})"
        return a
    a.text = text  # MAX_TOKENS keeps its text: the caption rules cut it at a sentence boundary
    return a


# --------------------------------------------------------------------------- captioner


class GeminiCaptioner(RemoteCaptioner):
    backend = "gemini"
    prompt_version = PROMPT_VERSION

    def __init__(self, model_id: str = DEFAULT_MODEL, *, max_words: int = MAX_CAPTION_WORDS,
                 class_hint: bool = False, rpm: Optional[float] = 1000, tpm: Optional[float] = 1_000_000,
                 max_in_flight: int = 32, timeout_s: float = 60.0, max_retries: int = 5,
                 max_cost_usd: Optional[float] = None, base_url: Optional[str] = None,
                 vertex_project: Optional[str] = None, vertex_location: Optional[str] = None,
                 price_table: Optional[str] = None, max_output_tokens: int = 256,
                 temperature: Optional[float] = None, thinking_budget: Optional[int] = None,
                 image_max_side: int = IMAGE_MAX_SIDE, jpeg_quality: int = 90,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 60.0):
        if bool(vertex_project) != bool(vertex_location):
            raise GeminiConfigError("Vertex AI needs both --vertex-project and --vertex-location")
        self.model_id = model_id
        self.max_words, self.class_hint = int(max_words), bool(class_hint)
        self.max_output_tokens = int(max_output_tokens)
        self._init_remote(rpm=rpm, tpm=tpm, max_in_flight=max_in_flight, timeout_s=timeout_s,
                          max_retries=max_retries, max_cost_usd=max_cost_usd, price_table=price_table,
                          backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s, error_cls=GeminiConfigError)
        # GOOGLE_GEMINI_BASE_URL is what google-genai itself honours; resolve it now so
        # settings() records where requests really go.
        self.base_url = base_url or (None if vertex_project else os.environ.get("GOOGLE_GEMINI_BASE_URL"))
        self.vertex_project, self.vertex_location = vertex_project, vertex_location
        self.temperature = temperature
        # Captioning needs no reasoning, and 2.5 Flash models think by default and bill it as
        # output; they accept a budget of 0. Pro models reject 0, so they keep their default.
        self.thinking_budget = thinking_budget if thinking_budget is not None else (
            0 if "flash" in model_id else None)
        self.image_max_side, self.jpeg_quality = int(image_max_side), int(jpeg_quality)
        self.prompt_text = prompt_template(self.class_hint, self.max_words)
        self._client = None
        self._held = None   # worker_shared.Held(client): one client per process and credentials
        self._api_key: Optional[str] = None

    # -- pickling (Beam ships the captioner to workers before setup) ----------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_client=None, _held=None, _api_key=None, **self._transient_state())
        return state

    def __repr__(self) -> str:
        return f"GeminiCaptioner(model_id={self.model_id!r}, endpoint={self._endpoint()!r})"

    def _endpoint(self) -> str:
        return "vertex" if self.vertex_project else "developer"

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self) -> None:
        from google import genai
        from google.genai import types

        from textok.pipeline.worker_shared import per_process

        if self._client is not None:
            return
        if not self.vertex_project:
            self._api_key = api_key_from_env()
            if not self._api_key:
                raise GeminiConfigError(
                    "the gemini captioner needs credentials: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the "
                    "environment, or use Vertex AI with --vertex-project and --vertex-location")
        self._secret = self._api_key
        http = types.HttpOptions(base_url=self.base_url, timeout=int(self.timeout_s * 1000))

        def make_client():
            if self.vertex_project:
                return genai.Client(vertexai=True, project=self.vertex_project, location=self.vertex_location,
                                    http_options=http)
            return genai.Client(api_key=self._api_key, http_options=http)

        # One client (one HTTP connection pool) per worker process and credentials, shared by
        # every DoFn thread; the key holds a digest of the API key, never the key.
        key_digest = hashlib.sha256((self._api_key or "").encode()).hexdigest()[:16]
        self._held = per_process(("gemini-client", self._endpoint(), self.base_url, self.vertex_project,
                                  self.vertex_location, self.timeout_s, key_digest), make_client,
                                 on_release=_close_client)
        self._client = self._held.value
        self._start()

    def _limits_key(self) -> tuple:
        return ("gemini", self._endpoint(), self.base_url, self.model_id, self.rpm, self.tpm, self.max_in_flight,
                self.max_cost_usd)

    def _ready(self) -> bool:
        return self._client is not None

    def teardown(self) -> None:
        # The client is shared: dropping our reference lets Beam's Shared close it once no
        # instance of the process holds it (see _close_client).
        self._client = self._held = None
        self._api_key = self._secret = None

    # -- public API ----------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id, "endpoint": self._endpoint(), "base_url": self.base_url,
            "vertex_project": self.vertex_project, "vertex_location": self.vertex_location,
            "max_words": self.max_words, "class_hint": self.class_hint,
            "max_output_tokens": self.max_output_tokens, "temperature": self.temperature,
            "thinking_budget": self.thinking_budget, "image_max_side": self.image_max_side,
            "image_format": "jpeg", "jpeg_quality": self.jpeg_quality, "rpm": self.rpm, "tpm": self.tpm,
            "max_in_flight": self.max_in_flight, "timeout_s": self.timeout_s, "max_retries": self.max_retries,
            "max_cost_usd": self.max_cost_usd, "prices_per_1m_usd_estimate": self.prices,
        }

    # -- internals -----------------------------------------------------------------------
    def _estimate_input_tokens(self, prompt: str) -> int:
        return estimate_input_tokens(prompt)

    def _generation_config(self):
        from google.genai import types

        return types.GenerateContentConfig(
            **generation_settings(self.max_output_tokens, self.temperature, self.thinking_budget))

    async def _attempt(self, jpeg: bytes, prompt: str) -> _Attempt:
        from google.auth import exceptions as auth_errors
        from google.genai import errors, types

        timeouts, transports = transport_errors()
        try:
            resp = await asyncio.wait_for(
                self._client.aio.models.generate_content(
                    model=self.model_id,
                    contents=[types.Part.from_bytes(data=jpeg, mime_type="image/jpeg"), prompt],
                    config=self._generation_config()),
                timeout=self.timeout_s)
        except errors.APIError as e:
            return self._api_error(e)
        except timeouts:
            return _Attempt(error_type="timeout", message=f"no response within {self.timeout_s:g} s", retry=True)
        except (*transports, auth_errors.TransportError) as e:
            return _Attempt(error_type="connection_error", message=f"{type(e).__name__}: {e}", retry=True,
                            maybe_billed=False)
        except auth_errors.GoogleAuthError as e:  # Vertex AI: no or unusable application-default credentials
            raise GeminiConfigError(self._redact(
                f"Vertex AI credentials for project {self.vertex_project!r} are missing or invalid "
                f"({type(e).__name__}: {e}); run `gcloud auth application-default login` or set "
                "GOOGLE_APPLICATION_CREDENTIALS, or use the Developer API with GEMINI_API_KEY")) from None
        except ValueError as e:  # json.JSONDecodeError, pydantic ValidationError: a garbled body
            return _Attempt(error_type="malformed_response", message=f"{type(e).__name__}: {str(e)[:300]}",
                            retry=True)
        return parse_response(resp)

    def _api_error(self, e) -> _Attempt:
        code = int(e.code or 0)
        status = e.status or ""
        reasons = {d.get("reason") for d in ((e.details or {}).get("error", {}).get("details") or [])
                   if isinstance(d, dict)} if isinstance(e.details, dict) else set()
        msg = self._redact(f"HTTP {code} {status}: {e.message or ''}".strip())
        if code in (401, 403) or reasons & _AUTH_REASONS:
            where = "Vertex AI project/location" if self.vertex_project else "GEMINI_API_KEY / GOOGLE_API_KEY"
            # `from None`: this runs inside `except APIError`, whose text (the raw body, which a
            # server or proxy may fill with the key) would otherwise print as the chained context
            raise GeminiConfigError(f"Gemini rejected the credentials ({msg}); check {where}") from None
        if code == 404:
            raise GeminiConfigError(f"Gemini does not know model {self.model_id!r} ({msg}); check --model") from None
        retry = code in (408, 429) or code >= 500
        return _Attempt(error_type=f"http_{code}", message=msg, retry=retry, maybe_billed=False,
                        hint_s=retry_hint_s(e) if retry else None)

_OPTION_KEYS = {"model_id", "max_words", "class_hint", "rpm", "tpm", "max_in_flight", "timeout_s", "max_retries",
                "max_cost_usd", "base_url", "vertex_project", "vertex_location", "price_table", "temperature",
                "thinking_budget", "image_max_side", "jpeg_quality", "backoff_base_s", "backoff_max_s"}


def from_options(options: dict) -> GeminiCaptioner:
    """Build from the registry's option dict (CLI flags; only non-None keys are present).

    `max_new_tokens` is Gemini's `max_output_tokens`; `batch_size` only sizes the pipeline's
    batches (in-flight requests are bounded by `max_in_flight`)."""
    opts = {k: v for k, v in options.items() if v is not None}
    check_options("gemini", opts, _OPTION_KEYS | {"max_new_tokens"})
    kwargs = {k: v for k, v in opts.items() if k in _OPTION_KEYS}
    if "max_new_tokens" in opts:
        kwargs["max_output_tokens"] = opts["max_new_tokens"]
    return GeminiCaptioner(**kwargs)


if __name__ == "__main__":
    import argparse

    from PIL import Image

    p = argparse.ArgumentParser(description="Caption image files with Gemini and print JSON lines.")
    p.add_argument("images", nargs="+")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--base-url", default=None)
    p.add_argument("--class-name", default=None)
    a = p.parse_args()
    cap = GeminiCaptioner(a.model, base_url=a.base_url, class_hint=a.class_name is not None)
    cap.setup()
    reqs = [CaptionRequest(key=path, image=Image.open(path).convert("RGB"), class_name=a.class_name) for path in a.images]
    for r in cap.caption_batch(reqs):
        print(json.dumps(r.__dict__))
    print(json.dumps(cap.usage_summary()))
