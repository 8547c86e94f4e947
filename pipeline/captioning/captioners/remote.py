"""What every HTTP-API captioner shares: one event loop, pacing, retries, budget, usage.

    class MyApiCaptioner(RemoteCaptioner):        # gemini.py, openai_compat.py
        def _estimate_input_tokens(self, prompt): ...
        async def _attempt(self, payload, prompt) -> Attempt: ...   # one HTTP request, classified

How a batch is captioned: `_prepare` downscales and encodes each image on the calling thread,
then every request of the batch is scheduled on one process-wide asyncio loop running in a
background thread. On that loop all captioner instances of the process (Beam makes one per
DoFn thread) share, per backend, endpoint, model and limits: a semaphore (`max_in_flight`),
a `RateLimiter` (requests/min and tokens/min) and a `CostBudget` (`max_cost_usd`). Retries
use exponential backoff with full jitter on 429/5xx/timeouts/connection errors, never shorter
than the server's hint (`retryDelay`, `Retry-After`), which also pauses the shared limiter.
The client libraries' own retries stay off, so every attempt passes our limiter and is counted.

Limits are per worker process: on a runner with N worker processes divide --rpm, --tpm and
--max-cost-usd by N. The limiter state outlives captioner instances on purpose (a budget must
not restart when Beam recreates a DoFn); `reset_process_state()` forgets it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from textok.pipeline.captioning.captioners.base import Captioner, CaptionRequest, CaptionResult
from textok.pipeline.captioning.captioners.prompt import build_prompt
from textok.pipeline.captioning.captioners.ratelimit import CostBudget, RateLimiter, backoff_s, load_price_table
from textok.schemas.images import downscale_max_side, encode_image

# --------------------------------------------------------------------------- shared loop + limits


class LoopThread:
    """One asyncio loop per process, in a daemon thread. Recreated after a fork."""

    _lock = threading.Lock()
    _loop: Optional[asyncio.AbstractEventLoop] = None
    _pid: Optional[int] = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="remote-captioner-loop", daemon=True).start()
                cls._loop, cls._pid = loop, os.getpid()
            return cls._loop


@dataclass
class SharedLimits:
    """Per-process state shared by every captioner instance with the same endpoint, model and limits."""

    limiter: RateLimiter
    budget: CostBudget
    max_in_flight: int
    semaphore: Optional[asyncio.Semaphore] = None  # created on the loop on first use
    in_flight: dict = field(default_factory=dict)  # per server, for backends that spread over a fleet

    def sem(self) -> asyncio.Semaphore:
        if self.semaphore is None:
            self.semaphore = asyncio.Semaphore(self.max_in_flight)
        return self.semaphore


_LIMITS: dict[tuple, SharedLimits] = {}
_LIMITS_LOCK = threading.Lock()


def request_jpeg(image, max_side: int, quality: int = 90) -> bytes:
    """The image as sent: RGB, downscaled to <= max_side, JPEG (every remote backend, Gemini sync and
    batch requests alike: the ≤384-px default cuts image tokens and cost)."""
    return encode_image(downscale_max_side(image.convert("RGB"), max_side), "jpeg", quality)


def shared_limits(key: tuple, rpm, tpm, max_cost_usd, max_in_flight) -> SharedLimits:
    key = (os.getpid(), *key)  # a forked child has its own loop, so its own limiter and semaphore
    with _LIMITS_LOCK:
        if key not in _LIMITS:
            _LIMITS[key] = SharedLimits(RateLimiter(rpm, tpm), CostBudget(max_cost_usd), max_in_flight)
        return _LIMITS[key]


def reset_process_state() -> None:
    """Forget the process-wide limiters, budgets and clients (tests, or a notebook starting a new run)."""
    from textok.pipeline.worker_shared import forget_all

    with _LIMITS_LOCK:
        _LIMITS.clear()
    forget_all()


def transport_errors() -> tuple[tuple, tuple]:
    """(timeout, transport) exception classes of whichever httpx flavour the client library uses."""
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
class Attempt:
    """What one request came back with."""

    text: Optional[str] = None
    error_type: Optional[str] = None
    message: str = ""
    retry: bool = False
    hint_s: Optional[float] = None
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    maybe_billed: bool = True   # without usage, assume the worst case was billed


# --------------------------------------------------------------------------- base class


class RemoteCaptioner(Captioner):
    """Requests in flight on the shared loop, paced, retried, budgeted and counted.

    Subclasses set in `__init__` the limits (through `_init_remote`), `class_hint`, `max_words`,
    `image_max_side` and `jpeg_quality`, and define `_estimate_input_tokens`, `_attempt` and
    `_limits_key`; `setup()` ends with `_start()`."""

    max_output_tokens: int = 256
    class_hint: bool = False
    max_words: int = 75
    image_max_side: int = 384
    jpeg_quality: int = 90
    _secret: Optional[str] = None   # the API key, for scrubbing messages; never pickled

    def _init_remote(self, *, rpm, tpm, max_in_flight, timeout_s, max_retries, max_cost_usd, price_table,
                     backoff_base_s, backoff_max_s, error_cls: type[Exception]) -> None:
        if max_in_flight < 1:
            raise error_cls(f"max_in_flight must be >= 1, got {max_in_flight}")
        if timeout_s <= 0 or max_retries < 0 or self.max_output_tokens < 1:
            raise error_cls(f"need timeout_s > 0, max_retries >= 0, max_new_tokens >= 1; got "
                            f"{timeout_s}, {max_retries}, {self.max_output_tokens}")
        self.rpm, self.tpm, self.max_in_flight = rpm, tpm, int(max_in_flight)
        self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
        self.max_cost_usd = max_cost_usd
        self.backoff_base_s, self.backoff_max_s = float(backoff_base_s), float(backoff_max_s)
        self.price_table_path = price_table
        table = load_price_table(price_table)
        self.prices = table.get(self.model_id)
        if max_cost_usd is not None and self.prices is None:
            raise error_cls(
                f"--max-cost-usd needs a price for model {self.model_id!r}; known: {sorted(table)}. "
                "Pass --price-table prices.json with "
                "{\"" + self.model_id + "\": {\"input_per_1m\": ..., \"output_per_1m\": ...}}")
        self._stats: dict[str, Any] = {}
        self._stats_lock: Optional[threading.Lock] = None
        self._shared: Optional[SharedLimits] = None

    def _start(self) -> None:
        """End of setup(): fresh usage counters, and the process-wide limits for this endpoint."""
        self._stats_lock = threading.Lock()
        self._stats = {"requests": 0, "ok": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0,
                       "errors": {}}
        self._shared = shared_limits(self._limits_key(), self.rpm, self.tpm, self.max_cost_usd, self.max_in_flight)

    def _transient_state(self) -> dict:
        """Attributes a pickled captioner must not carry (workers set up their own)."""
        return dict(_stats={}, _stats_lock=None, _shared=None, _secret=None)

    # -- subclass hooks --------------------------------------------------------------------
    def _limits_key(self) -> tuple:
        raise NotImplementedError

    def _prepare(self, req: CaptionRequest) -> tuple[CaptionRequest, Optional[bytes], str]:
        """(request, JPEG of the image downscaled to `image_max_side`, prompt): CPU work, on the caller's thread."""
        prompt = build_prompt(req.class_name, self.class_hint, self.max_words)
        if req.image is None:
            return req, None, prompt
        return req, request_jpeg(req.image, self.image_max_side, self.jpeg_quality), prompt

    def _estimate_input_tokens(self, prompt: str) -> int:
        raise NotImplementedError

    async def _attempt(self, payload: Any, prompt: str) -> Attempt:
        raise NotImplementedError

    def _ready(self) -> bool:
        return self._shared is not None

    # -- public API ----------------------------------------------------------------------
    def caption_batch(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        return self.submit_batch(requests).result()

    def submit_batch(self, requests: list[CaptionRequest]) -> "concurrent.futures.Future[list[CaptionResult]]":
        """Start captioning and return at once. A caller that keeps several batches pending
        (a DoFn emitting finished batches as they complete) avoids waiting on each batch's
        slowest request before the next batch starts."""
        if not self._ready():
            raise RuntimeError(f"{type(self).__name__}.setup() must run before caption_batch()")
        prepared = [self._prepare(r) for r in requests]  # CPU work on the caller's thread
        return asyncio.run_coroutine_threadsafe(self._caption_all(prepared), LoopThread.get())

    def estimate_cost_usd(self, input_tokens: int, output_tokens: int) -> Optional[float]:
        if self.prices is None:
            return None
        return (input_tokens * self.prices["input_per_1m"] + output_tokens * self.prices["output_per_1m"]) / 1e6

    def usage_summary(self) -> dict[str, Any]:
        if self._stats_lock is None:
            return {}
        with self._stats_lock:
            return json.loads(json.dumps(self._stats))

    # -- internals -----------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "[REDACTED]") if self._secret else text

    async def _caption_all(self, prepared) -> list[CaptionResult]:
        tasks = [asyncio.ensure_future(self._caption_one(*p)) for p in prepared]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:  # a config error stops the batch: do not leave requests running
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _caption_one(self, req: CaptionRequest, payload: Optional[Any], prompt: str) -> CaptionResult:
        if payload is None:
            return CaptionResult(req.key, error_type="missing_image", attempts=0,
                                 message=f"the {self.backend} captioner needs pixels; the request has no image")
        est_in = self._estimate_input_tokens(prompt)
        est_tokens = est_in + self.max_output_tokens
        worst_usd = self.estimate_cost_usd(est_in, self.max_output_tokens) or 0.0
        shared = self._shared
        attempts, last = 0, Attempt()
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
                last = await self._attempt(payload, prompt)
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
                             # dead-lettering (a wrong base URL must not dead-letter a dataset)
                             retryable=last.error_type in ("http_429", "connection_error"))

    def _record(self, a: Attempt, cost: float) -> None:
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
