"""Client-side pacing for remote captioners: requests/min + tokens/min, retry timing, prices, budget.

Both live on one asyncio event loop (remote.LoopThread, the remote backends' background loop), so their state
changes happen on one thread and need no locks; every captioner instance in the process
that talks to the same model with the same limits shares one `RateLimiter` and one
`CostBudget` (see `remote.shared_limits`), because the provider's quota is per project and
model, not per Beam DoFn thread.

Pacing is virtual scheduling (GCRA without burst): each request reserves the earliest slot
that is at least 60/rpm s after the previous request's slot and at least
tokens·60/tpm s after the previous slot's token cost, then sleeps until its slot. Slots are
absolute times, so a late wake-up of one coroutine does not shift the others and the
achieved rate converges to the configured one; and requests never burst, so any half-open
60 s window holds at most `rpm` requests. A server `retryDelay` pauses the whole limiter,
since a 429 means the shared quota, not one request, is exhausted.

    python -m textok.pipeline.captioning.captioners.ratelimit --rpm 600 --n 50   # prints achieved req/s
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from email.utils import parsedate_to_datetime
from typing import Optional


# USD per 1M tokens, Gemini Developer API paid tier, text/image input and output (thinking
# included), as published by Google for these models in 2025. An ESTIMATE for budgeting:
# check https://ai.google.dev/gemini-api/docs/pricing and override with --price-table.
DEFAULT_PRICES = {
    "gemini-2.5-flash": {"input_per_1m": 0.30, "output_per_1m": 2.50},
    "gemini-2.5-flash-lite": {"input_per_1m": 0.10, "output_per_1m": 0.40},
    "gemini-2.0-flash": {"input_per_1m": 0.10, "output_per_1m": 0.40},
    "gemini-2.0-flash-lite": {"input_per_1m": 0.075, "output_per_1m": 0.30},
    "gemini-2.5-pro": {"input_per_1m": 1.25, "output_per_1m": 10.00},
}


class RateLimiter:
    """Paces request starts to `rpm` requests and `tpm` tokens per minute (either may be None)."""

    def __init__(self, rpm: Optional[float] = None, tpm: Optional[float] = None,
                 clock=time.monotonic):
        for name, v in (("rpm", rpm), ("tpm", tpm)):
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be positive (or unset for no limit), got {v}")
        self.rpm, self.tpm = rpm, tpm
        self._clock = clock
        self._next_request_at = 0.0   # earliest start of the next request (request pacing)
        self._next_tokens_at = 0.0    # earliest start given the token cost already scheduled

    def reserve(self, tokens: int) -> float:
        """Book the next slot for a request of `tokens` (estimated) tokens; return its start time."""
        now = self._clock()
        slot = max(now, self._next_request_at, self._next_tokens_at)
        if self.rpm:
            self._next_request_at = slot + 60.0 / self.rpm
        if self.tpm:
            self._next_tokens_at = slot + max(0, tokens) * 60.0 / self.tpm
        return slot

    async def acquire(self, tokens: int) -> None:
        delay = self.reserve(tokens) - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)

    def reconcile(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Correct the token schedule once the response reports real usage: an underestimate
        pushes later requests back, an overestimate gives the time back."""
        if self.tpm:
            self._next_tokens_at += (actual_tokens - estimated_tokens) * 60.0 / self.tpm

    def pause_until(self, when: float) -> None:
        """No request starts before `when` (monotonic seconds): the server asked us to wait."""
        self._next_request_at = max(self._next_request_at, when)
        self._next_tokens_at = max(self._next_tokens_at, when)


class CostBudget:
    """Stops new requests before estimated spend could pass `max_usd`.

    A request reserves its worst-case cost before it is sent (estimated input + the maximum
    output tokens); the reservation is settled to the real cost from the response's usage.
    A request that may have been billed without telling us its usage (a timeout, a garbled
    response) is settled at its worst case, so the estimate never undercounts.
    """

    def __init__(self, max_usd: Optional[float]):
        if max_usd is not None and max_usd < 0:
            raise ValueError(f"max_cost_usd must be >= 0, got {max_usd}")
        self.max_usd = max_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0

    def try_reserve(self, worst_usd: float) -> bool:
        if self.max_usd is None:
            return True
        if self.spent_usd + self.reserved_usd + worst_usd > self.max_usd:
            return False
        self.reserved_usd += worst_usd
        return True

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        if self.max_usd is not None:
            self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)
        self.spent_usd += actual_usd


def retry_hint_s(exc: Exception) -> Optional[float]:
    """The server's requested wait: google.rpc.RetryInfo.retryDelay ("1.5s") or Retry-After."""
    hints = []
    details = getattr(exc, "details", None)
    err = details.get("error", details) if isinstance(details, dict) else {}
    for d in (err.get("details") or []) if isinstance(err, dict) else []:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = d.get("retryDelay")
            if isinstance(delay, dict):  # proto-JSON variants: {"seconds": 3, "nanos": 0}
                hints.append(float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9)
            elif isinstance(delay, str) and delay.endswith("s"):
                try:
                    hints.append(float(delay[:-1]))
                except ValueError:
                    pass
    headers = getattr(getattr(exc, "response", None), "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    if value:
        try:
            hints.append(float(value))
        except ValueError:
            try:
                hints.append(parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    hints = [h for h in hints if h >= 0]
    return max(hints) if hints else None


def backoff_s(attempt: int, base_s: float, max_s: float, hint_s: Optional[float]) -> float:
    """Full jitter (uniform in [0, base·2^(attempt-1)], capped), never below the server's hint."""
    jitter = random.uniform(0.0, min(max_s, base_s * 2 ** (attempt - 1)))
    return max(jitter, hint_s) if hint_s is not None else jitter


def load_price_table(path: Optional[str]) -> dict[str, dict[str, float]]:
    """DEFAULT_PRICES updated with a JSON file {model_id: {input_per_1m, output_per_1m}}."""
    table = {k: dict(v) for k, v in DEFAULT_PRICES.items()}
    if not path:
        return table
    try:
        with open(path) as f:
            extra = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"price table {path}: cannot read JSON ({e})") from e
    for model, p in (extra.items() if isinstance(extra, dict) else [(None, None)]):
        if not (isinstance(p, dict) and {"input_per_1m", "output_per_1m"} <= set(p)
                and all(isinstance(p[k], (int, float)) and p[k] >= 0 for k in ("input_per_1m", "output_per_1m"))):
            raise ValueError(
                f"price table {path}: entry {model!r} must be {{\"input_per_1m\": USD, \"output_per_1m\": USD}}")
        table[model] = {"input_per_1m": float(p["input_per_1m"]), "output_per_1m": float(p["output_per_1m"])}
    return table


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rpm", type=float, default=600)
    p.add_argument("--tpm", type=float, default=None)
    p.add_argument("--n", type=int, default=50)
    a = p.parse_args()

    async def _demo() -> float:
        lim = RateLimiter(a.rpm, a.tpm)
        t0 = time.monotonic()
        await asyncio.gather(*(lim.acquire(300) for _ in range(a.n)))
        return (a.n - 1) / (time.monotonic() - t0)

    print(f"achieved {asyncio.run(_demo()):.2f} req/s, configured {a.rpm / 60:.2f} req/s")
