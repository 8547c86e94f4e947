"""Gemini captioner: many requests in flight through the real google-genai client.

    export GEMINI_API_KEY=...            # or GOOGLE_API_KEY, or --vertex-project/--vertex-location
    textok caption --input imgs/ --output out/ --captioner gemini --rpm 1000 --max-cost-usd 5

    python -m pipeline.captioners.gemini cat.jpg dog.png [--model gemini-2.5-flash] [--base-url URL]

How a batch is captioned: images are downscaled to ≤384 px (Gemini 2.x bills such an image
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
import concurrent.futures
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from textok.pipeline.captioners.base import Captioner, CaptionRequest, CaptionResult
from textok.pipeline.captioners.prompt import MAX_CAPTION_WORDS, PROMPT_VERSION, build_prompt, prompt_template
from textok.pipeline.captioners.ratelimit import (DEFAULT_PRICES, CostBudget, RateLimiter, backoff_s, load_price_table,
                                          retry_hint_s)
from textok.pipeline.images import downscale_max_side, encode_image

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


# --------------------------------------------------------------------------- shared loop


class _LoopThread:
    """One asyncio loop per process, in a daemon thread. Recreated after a fork."""

    _lock = threading.Lock()
    _loop: Optional[asyncio.AbstractEventLoop] = None
    _pid: Optional[int] = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="gemini-captioner-loop", daemon=True).start()
                cls._loop, cls._pid = loop, os.getpid()
            return cls._loop


@dataclass
class _Shared:
    """Per-process state shared by every captioner instance with the same model and limits."""

    limiter: RateLimiter
    budget: CostBudget
    max_in_flight: int
    semaphore: Optional[asyncio.Semaphore] = None  # created on the loop on first use

    def sem(self) -> asyncio.Semaphore:
        if self.semaphore is None:
            self.semaphore = asyncio.Semaphore(self.max_in_flight)
        return self.semaphore


_SHARED: dict[tuple, _Shared] = {}
_SHARED_LOCK = threading.Lock()


def _shared_state(key: tuple, rpm, tpm, max_cost_usd, max_in_flight) -> _Shared:
    key = (os.getpid(), *key)  # a forked child has its own loop, so its own limiter and semaphore
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = _Shared(RateLimiter(rpm, tpm), CostBudget(max_cost_usd), max_in_flight)
        return _SHARED[key]


def reset_process_state() -> None:
    """Forget the process-wide limiters and budgets (tests, or a notebook starting a new run)."""
    with _SHARED_LOCK:
        _SHARED.clear()


# --------------------------------------------------------------------------- pure helpers


def api_key_from_env() -> Optional[str]:
    """The Developer API key from GEMINI_API_KEY / GOOGLE_API_KEY (None when neither is set)."""
    return next((os.environ[k].strip() for k in API_KEY_ENV_VARS if os.environ.get(k, "").strip()), None)


def request_jpeg(image, max_side: int = IMAGE_MAX_SIDE, quality: int = 90) -> bytes:
    """The image as sent: RGB, downscaled to <= max_side, JPEG (sync and batch requests alike)."""
    return encode_image(downscale_max_side(image.convert("RGB"), max_side), "jpeg", quality)


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


def _transport_errors() -> tuple[tuple, tuple]:
    """(timeout, transport) exception classes of whichever httpx flavour google-genai uses."""
    timeouts, transports = [asyncio.TimeoutError], []
    for mod in ("httpx", "httpx2"):
        try:
            m = __import__(mod)
        except ImportError:
            continue
        timeouts.append(m.TimeoutException)
        transports.append(m.TransportError)
    return tuple(timeouts), tuple(transports)


@dataclass
class _Attempt:
    """What one request came back with."""

    text: Optional[str] = None
    error_type: Optional[str] = None
    message: str = ""
    retry: bool = False
    hint_s: Optional[float] = None
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    maybe_billed: bool = True   # without usage, assume the worst case was billed


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


class GeminiCaptioner(Captioner):
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
        if max_in_flight < 1:
            raise GeminiConfigError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if timeout_s <= 0 or max_retries < 0 or max_output_tokens < 1:
            raise GeminiConfigError(f"need timeout_s > 0, max_retries >= 0, max_new_tokens >= 1; got "
                                    f"{timeout_s}, {max_retries}, {max_output_tokens}")
        if bool(vertex_project) != bool(vertex_location):
            raise GeminiConfigError("Vertex AI needs both --vertex-project and --vertex-location")
        self.model_id = model_id
        self.max_words, self.class_hint = int(max_words), bool(class_hint)
        self.rpm, self.tpm, self.max_in_flight = rpm, tpm, int(max_in_flight)
        self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
        self.max_cost_usd = max_cost_usd
        # GOOGLE_GEMINI_BASE_URL is what google-genai itself honours; resolve it now so
        # settings() records where requests really go.
        self.base_url = base_url or (None if vertex_project else os.environ.get("GOOGLE_GEMINI_BASE_URL"))
        self.vertex_project, self.vertex_location = vertex_project, vertex_location
        self.max_output_tokens, self.temperature = int(max_output_tokens), temperature
        # Captioning needs no reasoning, and 2.5 Flash models think by default and bill it as
        # output; they accept a budget of 0. Pro models reject 0, so they keep their default.
        self.thinking_budget = thinking_budget if thinking_budget is not None else (
            0 if "flash" in model_id else None)
        self.image_max_side, self.jpeg_quality = int(image_max_side), int(jpeg_quality)
        self.backoff_base_s, self.backoff_max_s = float(backoff_base_s), float(backoff_max_s)
        self.price_table_path = price_table
        self.prices = load_price_table(price_table).get(model_id)
        if max_cost_usd is not None and self.prices is None:
            raise GeminiConfigError(
                f"--max-cost-usd needs a price for model {model_id!r}; known: {sorted(DEFAULT_PRICES)}. "
                "Pass --price-table prices.json with {\"" + model_id + "\": {\"input_per_1m\": ..., "
                "\"output_per_1m\": ...}}")
        self.prompt_text = prompt_template(self.class_hint, self.max_words)
        self._client = None
        self._api_key: Optional[str] = None
        self._stats: dict[str, Any] = {}
        self._stats_lock: Optional[threading.Lock] = None
        self._shared: Optional[_Shared] = None

    # -- pickling (Beam ships the captioner to workers before setup) ----------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_client=None, _api_key=None, _stats={}, _stats_lock=None, _shared=None)
        return state

    def __repr__(self) -> str:
        return f"GeminiCaptioner(model_id={self.model_id!r}, endpoint={self._endpoint()!r})"

    def _endpoint(self) -> str:
        return "vertex" if self.vertex_project else "developer"

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self) -> None:
        from google import genai
        from google.genai import types

        if self._client is not None:
            return
        http = types.HttpOptions(base_url=self.base_url, timeout=int(self.timeout_s * 1000))
        if self.vertex_project:
            self._client = genai.Client(vertexai=True, project=self.vertex_project,
                                        location=self.vertex_location, http_options=http)
        else:
            self._api_key = api_key_from_env()
            if not self._api_key:
                raise GeminiConfigError(
                    "the gemini captioner needs credentials: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the "
                    "environment, or use Vertex AI with --vertex-project and --vertex-location")
            self._client = genai.Client(api_key=self._api_key, http_options=http)
        self._stats_lock = threading.Lock()
        self._stats = {"requests": 0, "ok": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0,
                       "errors": {}}
        key = (self._endpoint(), self.base_url, self.model_id, self.rpm, self.tpm, self.max_in_flight,
               self.max_cost_usd)
        self._shared = _shared_state(key, self.rpm, self.tpm, self.max_cost_usd, self.max_in_flight)

    def teardown(self) -> None:
        client, self._client = self._client, None
        if client is not None:  # close the async HTTP pool on the loop that used it
            try:
                asyncio.run_coroutine_threadsafe(client.aio.aclose(), _LoopThread.get()).result(timeout=10)
            except Exception as e:  # closing is best effort; the process may be ending anyway
                log.debug("closing the Gemini client failed: %s", self._redact(str(e)))
        self._api_key = None

    # -- public API ----------------------------------------------------------------------
    def caption_batch(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        return self.submit_batch(requests).result()

    def submit_batch(self, requests: list[CaptionRequest]) -> "concurrent.futures.Future[list[CaptionResult]]":
        """Start captioning and return at once. A caller that keeps several batches pending
        (a DoFn emitting finished batches as they complete) avoids waiting on each batch's
        slowest request before the next batch starts."""
        if self._client is None:
            raise RuntimeError("GeminiCaptioner.setup() must run before caption_batch()")
        prepared = [self._prepare(r) for r in requests]  # CPU work on the caller's thread
        return asyncio.run_coroutine_threadsafe(self._caption_all(prepared), _LoopThread.get())

    def estimate_cost_usd(self, input_tokens: int, output_tokens: int) -> Optional[float]:
        if self.prices is None:
            return None
        return (input_tokens * self.prices["input_per_1m"] + output_tokens * self.prices["output_per_1m"]) / 1e6

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

    def usage_summary(self) -> dict[str, Any]:
        if self._stats_lock is None:
            return {}
        with self._stats_lock:
            return json.loads(json.dumps(self._stats))

    # -- internals -----------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "[REDACTED]") if self._api_key else text

    def _prepare(self, req: CaptionRequest) -> tuple[CaptionRequest, Optional[bytes], str]:
        prompt = build_prompt(req.class_name, self.class_hint, self.max_words)
        if req.image is None:
            return req, None, prompt
        return req, request_jpeg(req.image, self.image_max_side, self.jpeg_quality), prompt

    async def _caption_all(self, prepared) -> list[CaptionResult]:
        tasks = [asyncio.ensure_future(self._caption_one(*p)) for p in prepared]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:  # a config error stops the batch: do not leave requests running
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def _generation_config(self):
        from google.genai import types

        return types.GenerateContentConfig(
            **generation_settings(self.max_output_tokens, self.temperature, self.thinking_budget))

    async def _caption_one(self, req: CaptionRequest, jpeg: Optional[bytes], prompt: str) -> CaptionResult:
        if jpeg is None:
            return CaptionResult(req.key, error_type="missing_image", attempts=0,
                                 message="the gemini captioner needs pixels; the request has no image")
        est_in = estimate_input_tokens(prompt)
        est_tokens = est_in + self.max_output_tokens
        worst_usd = self.estimate_cost_usd(est_in, self.max_output_tokens) or 0.0
        shared = self._shared
        attempts, last = 0, _Attempt()
        # The in-flight slot stays held through backoff sleeps: under a 429 storm, fewer
        # concurrent requests is what the server is asking for.
        async with shared.sem():
            while True:
                if not shared.budget.try_reserve(worst_usd):
                    self._count("budget_exhausted")
                    return CaptionResult(
                        req.key, error_type="budget_exhausted", attempts=attempts, retryable=True,
                        message=f"stopped before exceeding --max-cost-usd {self.max_cost_usd}: estimated spend "
                                f"${shared.budget.spent_usd:.4f} + in flight ${shared.budget.reserved_usd:.4f} "
                                f"+ this request up to ${worst_usd:.6f}; rerun with a larger budget to continue")
                await shared.limiter.acquire(est_tokens)
                attempts += 1
                last = await self._attempt(jpeg, prompt)
                billed = self.estimate_cost_usd(last.input_tokens or 0, last.output_tokens or 0) or 0.0
                if last.maybe_billed and last.error_type in ("timeout", "malformed_response"):
                    billed = worst_usd  # the server may have done (and billed) the work
                shared.budget.settle(worst_usd, billed)
                if last.input_tokens is not None:
                    shared.limiter.reconcile(est_tokens, last.input_tokens + (last.output_tokens or 0))
                self._record(last, billed)
                if not last.retry or attempts > self.max_retries:
                    break
                if last.hint_s is not None:
                    shared.limiter.pause_until(time.monotonic() + last.hint_s)
                await asyncio.sleep(backoff_s(attempts, self.backoff_base_s, self.backoff_max_s, last.hint_s))
        return CaptionResult(req.key, text=last.text, error_type=last.error_type, message=self._redact(last.message),
                             attempts=attempts, input_tokens=last.input_tokens, output_tokens=last.output_tokens,
                             # quota or an unreachable endpoint, not the item: defer to a rerun instead of
                             # dead-lettering (a wrong --gemini-base-url must not dead-letter a dataset)
                             retryable=last.error_type in ("http_429", "connection_error"))

    async def _attempt(self, jpeg: bytes, prompt: str) -> _Attempt:
        from google.auth import exceptions as auth_errors
        from google.genai import errors, types

        timeouts, transports = _transport_errors()
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
            raise GeminiConfigError(
                f"Vertex AI credentials for project {self.vertex_project!r} are missing or invalid "
                f"({type(e).__name__}: {e}); run `gcloud auth application-default login` or set "
                "GOOGLE_APPLICATION_CREDENTIALS, or use the Developer API with GEMINI_API_KEY") from e
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
            raise GeminiConfigError(f"Gemini rejected the credentials ({msg}); check {where}")
        if code == 404:
            raise GeminiConfigError(f"Gemini does not know model {self.model_id!r} ({msg}); check --model")
        retry = code in (408, 429) or code >= 500
        return _Attempt(error_type=f"http_{code}", message=msg, retry=retry, maybe_billed=False,
                        hint_s=retry_hint_s(e) if retry else None)

    def _record(self, a: _Attempt, cost: float) -> None:
        with self._stats_lock:
            s = self._stats
            s["requests"] += 1
            s["ok"] += a.error_type is None
            s["input_tokens"] += a.input_tokens or 0
            s["output_tokens"] += a.output_tokens or 0
            s["cost_usd"] += cost
            if a.error_type:
                s["errors"][a.error_type] = s["errors"].get(a.error_type, 0) + 1

    def _count(self, error_type: str) -> None:
        with self._stats_lock:
            self._stats["errors"][error_type] = self._stats["errors"].get(error_type, 0) + 1


_OPTION_KEYS = {"model_id", "max_words", "class_hint", "rpm", "tpm", "max_in_flight", "timeout_s", "max_retries",
                "max_cost_usd", "base_url", "vertex_project", "vertex_location", "price_table", "temperature",
                "thinking_budget", "image_max_side", "jpeg_quality", "backoff_base_s", "backoff_max_s"}


def from_options(options: dict) -> GeminiCaptioner:
    """Build from the registry's option dict (CLI flags; only non-None keys are present).

    `max_new_tokens` is Gemini's `max_output_tokens`; `batch_size` only sizes the pipeline's
    batches (in-flight requests are bounded by `max_in_flight`)."""
    from textok.pipeline.captioners import check_options

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
