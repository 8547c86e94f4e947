"""Progress of long work: a tqdm bar on a terminal, otherwise a log line every few seconds.

    with Progress("extract-latents", total=len(rows), unit="images") as bar:
        for batch in loader:
            ...
            bar.update(len(batch))            # bar.set_postfix(loss=0.12) adds values to bar / line
    for batch in progress(loader, "eval-tokenizer", total=n_batches, unit="batches"): ...

Without a terminal (a log file, CI, a job scheduler) a bar's carriage returns turn into
megabytes of noise, so the same counter becomes an INFO line on the `textok.progress` logger
at most every TEXTOK_PROGRESS_SECONDS (default 30) with count, rate and ETA:

    encode: 2048/10000 captions (20%), 41.3 captions/s, ETA 3m13s

Beam stages (`caption`, `encode`, `pools`) count inside their DoFns with `stage_progress`:
the launcher opens the stage with its total (`with open_stage(...)`), and DoFns running
in the launcher's process (the default in-process runner) add to that one counter. Workers
in other processes (multi-processing, remote runners) keep a log-only counter each, beside
the Beam counters a runner's UI shows.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any, Iterable, Iterator

log = logging.getLogger("textok.progress")


def _every_s() -> float:
    return float(os.environ.get("TEXTOK_PROGRESS_SECONDS", "30"))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Counts work done toward an optional total; see the module docstring. Thread-safe."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", initial: int = 0,
                 enabled: bool = True, terminal: bool | None = None):
        self.desc, self.total, self.unit, self.enabled = desc, total, unit, enabled
        self.count, self._start_count = initial, initial
        self._postfix: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._t0 = self._last_log = time.monotonic()
        # Rates count from the first update on: model loading and pipeline start-up before it
        # would otherwise make the first ETAs far too long.
        self._origin: tuple[float, int] | None = None
        self._bar = None
        if enabled and (sys.stderr.isatty() if terminal is None else terminal):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=f" {unit}", dynamic_ncols=True,
                             file=sys.stderr)

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.count += n
            if self._origin is None:
                self._origin = (time.monotonic(), self.count)
            if self._bar is not None:
                self._bar.update(n)
            elif time.monotonic() - self._last_log >= _every_s():
                self._log_line()

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the counter (losses, lr); numbers are shortened to 4 digits."""
        if not self.enabled:
            return
        self._postfix = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(self._postfix, refresh=False)

    def line(self) -> str:
        """"desc: count/total unit (pct), rate unit/s, ETA ..." -- what the log shows."""
        now = time.monotonic()
        t_origin, c_origin = self._origin or (self._t0, self._start_count)
        if self.count <= c_origin or now <= t_origin:  # one update so far: the rate since the start
            t_origin, c_origin = self._t0, self._start_count
        rate = (self.count - c_origin) / max(now - t_origin, 1e-9)
        done = f"{self.count}/{self.total}" if self.total else f"{self.count}"
        parts = [f"{self.desc}: {done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.count / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0 and self.count < self.total:
            parts.append(f"ETA {_duration((self.total - self.count) / rate)}")
        parts += [f"{k}={v}" for k, v in self._postfix.items()]
        return ", ".join(parts)

    def _log_line(self) -> None:
        self._last_log = time.monotonic()
        log.info(self.line())

    def close(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            elif self.count > self._start_count:
                log.info("%s in %s", self.line(), _duration(time.monotonic() - self._t0))
            self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable, desc: str, total: int | None = None, unit: str = "it",
             enabled: bool = True) -> Iterator:
    """Iterate `iterable`, counting one per item."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(desc, total=total, unit=unit, enabled=enabled) as bar:
        for item in iterable:
            yield item
            bar.update(1)


# ----------------------------------------------------------------------------- Beam stages

_stages: dict[str, Progress] = {}
_stages_lock = threading.Lock()


@contextlib.contextmanager
def open_stage(desc: str, total: int | None, unit: str) -> Iterator[Progress]:
    """The launcher's side: DoFns of this process calling `stage_progress(desc)` count here."""
    bar = Progress(desc, total=total, unit=unit)
    with _stages_lock:
        _stages[desc] = bar
    try:
        yield bar
    finally:
        with _stages_lock:
            _stages.pop(desc, None)
        bar.close()


def stage_progress(desc: str, unit: str = "it") -> Progress:
    """The worker's side: the launcher's counter when in its process, else one log-only counter
    per process (tqdm bars of several worker processes would overwrite each other)."""
    with _stages_lock:
        if desc not in _stages:
            _stages[desc] = Progress(f"{desc} (worker {os.getpid()})", unit=unit, terminal=False)
        return _stages[desc]
