"""Client-side pacing for remote captioners: requests/min + tokens/min, and a cost budget.

Both live on one asyncio event loop (the Gemini backend's background loop), so their state
changes happen on one thread and need no locks; every captioner instance in the process
that talks to the same model with the same limits shares one `RateLimiter` and one
`CostBudget` (see `gemini._shared_state`), because the provider's quota is per project and
model, not per Beam DoFn thread.

Pacing is virtual scheduling (GCRA without burst): each request reserves the earliest slot
that is at least 60/rpm s after the previous request's slot and at least
tokens·60/tpm s after the previous slot's token cost, then sleeps until its slot. Slots are
absolute times, so a late wake-up of one coroutine does not shift the others and the
achieved rate converges to the configured one; and requests never burst, so any half-open
60 s window holds at most `rpm` requests. A server `retryDelay` pauses the whole limiter,
since a 429 means the shared quota, not one request, is exhausted.

    python -m pipeline.captioners.ratelimit --rpm 600 --n 50   # prints achieved req/s
"""
from __future__ import annotations

import asyncio
import time
from typing import Optional


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
