"""Progress of long work: a tqdm bar on a terminal, otherwise a log line every few seconds.

    with Progress("extract-latents", total=len(rows), unit="images") as bar:
        for batch in loader:
            ...
            bar.update(len(batch))            # bar.set_postfix(loss=0.12) adds values to bar / line
    for batch in progress(loader, "eval-tokenizer", total=n_batches, unit="batches"): ...

Without a terminal (a log file, CI, a job scheduler) a bar's carriage returns turn into
megabytes of noise, so the same counter becomes INFO lines on the `textok.progress` logger: one
at the start (total and output), one at each 10 % of the total (`textok --log-every 5%`, or a
count: `--log-every 1000`; env TEXTOK_PROGRESS_EVERY), one at least every
TEXTOK_PROGRESS_SECONDS (default 30) when the work is slow, and a summary at the end:

    encode: start, 10000 captions -> runs/in1k-data
    encode: 2000/10000 captions (20%), 41.3 captions/s, ETA 3m13s
    encode: done, 10000/10000 captions (100%), 40.9 captions/s in 4m04s

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


def parse_every(value: str) -> tuple[float, bool]:
    """"10%" -> (10.0, True); "500" -> (500.0, False). Raises ValueError naming the setting."""
    text = str(value).strip()
    try:
        number = float(text[:-1] if text.endswith("%") else text)
    except ValueError:
        number = -1.0
    if number <= 0 or (text.endswith("%") and number > 100):
        raise ValueError(f"--log-every {value!r}: give a count (500) or a percentage of the total (10%)")
    return number, text.endswith("%")


def _every_count(total: int | None) -> int | None:
    """Units between milestone lines: TEXTOK_PROGRESS_EVERY (a count or N%), else 10 % of the total."""
    number, percent = parse_every(os.environ.get("TEXTOK_PROGRESS_EVERY", "10%"))
    if not percent:
        return max(1, int(number))
    return max(1, int(total * number / 100)) if total else None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Counts work done toward an optional total; see the module docstring. Thread-safe."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", initial: int = 0,
                 enabled: bool = True, terminal: bool | None = None, output: str | None = None,
                 announce: bool = True):
        self.desc, self.total, self.unit, self.enabled = desc, total, unit, enabled
        self.count, self._start_count = initial, initial
        self._every = _every_count(total)
        self._next_mark = self._mark_after(initial)
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
        elif enabled and announce:  # a log reader learns what is coming, and where it goes
            todo = f"{total - initial} of {total}" if total and initial else f"{total}" if total else "?"
            log.info("%s: start, %s %s%s", desc, todo, unit, f" -> {output}" if output else "")

    def _mark_after(self, count: int) -> int | None:
        """The next count at which a milestone line is due (a multiple of the interval)."""
        if not self._every:
            return None
        return (count // self._every + 1) * self._every

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.count += n
            if self._origin is None:
                self._origin = (time.monotonic(), self.count)
            if self._bar is not None:
                self._bar.update(n)
                return
            at_mark = self._next_mark is not None and self.count >= self._next_mark
            if at_mark:
                self._next_mark = self._mark_after(self.count)
            # the end has its own summary line (close); in between: milestones, or a slow stretch
            if (at_mark or time.monotonic() - self._last_log >= _every_s()) and self.count != self.total:
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

    def close(self, failed: bool = False) -> None:
        """The closing line: `done, ...`, or `stopped, ...` when the work ended in an error (a
        summary that said "done" above an `Error:` line would read as a finished run)."""
        if not self.enabled:
            return
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            else:
                word = "stopped" if failed else "done"
                done = self.line().replace(f"{self.desc}: ", f"{self.desc}: {word}, ", 1)
                log.info("%s in %s", done, _duration(time.monotonic() - self._t0))
            self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(failed=exc_type is not None)


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
def open_stage(desc: str, total: int | None, unit: str, output: str | None = None) -> Iterator[Progress]:
    """The launcher's side: DoFns of this process calling `stage_progress(desc)` count here."""
    bar = Progress(desc, total=total, unit=unit, output=output)
    with _stages_lock:
        _stages[desc] = bar
    failed = True
    try:
        yield bar
        failed = False
    finally:
        with _stages_lock:
            _stages.pop(desc, None)
        bar.close(failed=failed)


def stage_progress(desc: str, unit: str = "it") -> Progress:
    """The worker's side: the launcher's counter when in its process, else one log-only counter
    per process (tqdm bars of several worker processes would overwrite each other)."""
    with _stages_lock:
        if desc not in _stages:
            _stages[desc] = Progress(f"{desc} (worker {os.getpid()})", unit=unit, terminal=False, announce=False)
        return _stages[desc]
