"""Server health of a remote captioner: a circuit breaker per server, routing, and "all down".

    fleet = FleetHealth(["http://a:8000/v1", "http://b:8000/v1"], cooldown_s=1.0, max_cooldown_s=60.0,
                        give_up_after=5)
    i = await fleet.acquire()          # a usable server with the fewest requests in flight
    ...send the request to server i...
    fleet.release(i, "ok" | "fault" | "neutral", detail="HTTP 502 ...")

Why: least-in-flight routing alone keeps choosing a server that fails instantly (it never has
anything in flight), so one dead server in a fleet of eight drained a run (issue 19). Each
server's breaker is *closed* (requests flow) until `open_after` server faults in a row
(connection refused/reset, timeout, HTTP 5xx); it then *opens* for a cooldown that doubles on
each failed probe (`cooldown_s`, 2x, 4x ... capped at `max_cooldown_s`), and when the cooldown
ends it is *half-open*: exactly one request probes it; success closes it, failure reopens it.
Routing picks the closed (or probe-ready) server with the fewest requests in flight. A server
whose probes failed `give_up_after` times in a row counts as down; when every server is down
`acquire` raises `FleetDownError` (one line naming each server and its last fault), which stops
the run instead of deferring or dead-lettering the whole dataset. With the defaults (cooldown
1 s doubling to 60 s, 5 probes) a server gets about a minute to come back, the same patience
one request's retries have.

Item answers (4xx, safety blocks, 429 quota) say nothing about the server's health: "neutral",
though a neutral answer to a probe shows the server is up and closes its breaker. All state
lives on the process's one event loop (remote.LoopThread), so it needs no lock.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Optional

from textok.redaction import redact_url

OPEN_AFTER = 3          # server faults in a row that open a closed breaker
POLL_S = 0.05           # how often a request waiting for a usable server looks again


class FleetDownError(RuntimeError):
    """Every server of the captioner is down: stop the run (finished captions are kept)."""


@dataclass
class ServerState:
    url: str                       # redacted: safe to print
    in_flight: int = 0
    failures: int = 0              # server faults in a row
    opens: int = 0                 # consecutive openings (failed probes + 1)
    open_until: float = 0.0        # monotonic time the breaker may be probed again
    probing: bool = False          # a half-open probe is in flight
    last_fault: str = ""
    ok_total: int = 0
    fault_total: int = 0

    @property
    def closed(self) -> bool:
        return self.opens == 0


class FleetHealth:
    def __init__(self, urls: list[str], *, cooldown_s: float = 1.0, max_cooldown_s: float = 60.0,
                 give_up_after: int = 5, open_after: int = OPEN_AFTER, clock=time.monotonic):
        if not urls:
            raise ValueError("a fleet needs at least one server")
        self.servers = [ServerState(redact_url(u)) for u in urls]
        self.cooldown_s, self.max_cooldown_s = max(float(cooldown_s), 0.001), max(float(max_cooldown_s), 0.001)
        self.give_up_after, self.open_after = max(int(give_up_after), 0), max(int(open_after), 1)
        self._clock = clock
        self.down: Optional[FleetDownError] = None
        self._turn = 0

    # -- routing ---------------------------------------------------------------------------
    def _pick(self) -> Optional[int]:
        now = self._clock()
        # A breaker whose cooldown is over gets its one probe first, even while others are healthy:
        # otherwise a server that came back would never be tried again.
        ready = [i for i, s in enumerate(self.servers) if not s.closed and not s.probing and s.open_until <= now]
        if ready:
            i = min(ready, key=lambda j: self.servers[j].open_until)
            self.servers[i].probing = True
            return i
        closed = [i for i, s in enumerate(self.servers) if s.closed]
        if closed:  # ties in turn, so a sequential caller spreads its requests too
            n = len(self.servers)
            i = min(closed, key=lambda j: (self.servers[j].in_flight, (j - self._turn) % n))
            self._turn = i + 1
            return i
        return None

    async def acquire(self) -> int:
        """A server to send one request to (waits while every breaker is open; raises FleetDownError)."""
        while True:
            if self.down is not None:
                raise self.down
            i = self._pick()
            if i is not None:
                self.servers[i].in_flight += 1
                return i
            now = self._clock()
            waits = [s.open_until - now for s in self.servers if not s.probing]
            await asyncio.sleep(min([POLL_S] + [w for w in waits if w > 0]))

    def usable_elsewhere(self, i: int) -> bool:
        """Another server than `i` takes requests now (a fault on `i` then costs no retry)."""
        return any(s.closed for j, s in enumerate(self.servers) if j != i)

    # -- outcomes --------------------------------------------------------------------------
    def release(self, i: int, outcome: str, detail: str = "") -> None:
        """Record how a request to server `i` ended: "ok", "fault" (the server's) or "neutral"."""
        s = self.servers[i]
        s.in_flight -= 1
        was_probe, s.probing = s.probing, False
        if outcome == "ok" or (outcome == "neutral" and was_probe):
            s.ok_total += outcome == "ok"
            s.failures = s.opens = 0
            return
        if outcome != "fault":
            return
        s.fault_total += 1
        s.failures += 1
        s.last_fault = detail[:200]
        if s.closed and s.failures < self.open_after:
            return
        if not s.closed and not was_probe:
            return  # a request sent before the breaker opened: already counted
        s.opens += 1
        s.open_until = self._clock() + min(self.max_cooldown_s, self.cooldown_s * 2 ** (s.opens - 1))
        if all(x.opens > self.give_up_after for x in self.servers):
            self.down = FleetDownError(self._down_message())

    def cancel(self, i: int) -> None:
        """A request to server `i` was cancelled before it ended (the batch stopped)."""
        s = self.servers[i]
        s.in_flight -= 1
        s.probing = False

    def _down_message(self) -> str:
        what = "the server" if len(self.servers) == 1 else f"all {len(self.servers)} servers"
        each = "; ".join(f"{s.url}: {s.fault_total} faults, last: {s.last_fault or 'unknown'}" for s in self.servers)
        return (f"{what} stopped answering ({each}); the run stops here and keeps what it finished: "
                "bring the server(s) back or fix the URL, then rerun the same command")

    def summary(self) -> list[dict]:
        return [{"url": s.url, "ok": s.ok_total, "faults": s.fault_total, "breaker": "closed" if s.closed else "open"}
                for s in self.servers]
