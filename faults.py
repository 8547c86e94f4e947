"""Fault injection at named points, for the fault-matrix tests (tests/test_fault_matrix.py).

    TEXTOK_FAULT=shards.after_write_before_rename textok encode ...      # dies at the first hit
    TEXTOK_FAULT=caption.part_committed:3 textok caption ...              # dies at the third hit

    TEXTOK_FAULT=shards.after_rename TEXTOK_FAULT_ONCE=/tmp/m textok encode ... --runner dask ...
        # only the first process to reach the point dies (it creates /tmp/m): one Dask worker of
        # several, and the worker its nanny restarts carries on

Every writer calls `maybe_fail("<stage>.<point>")` at the moments a crash is most likely to
hurt: after a temp file is written but before its rename, between two renames, after a commit.
When the variable names that point, the process SIGKILLs itself there: no `finally`, no
`atexit`, no flush, exactly what an OOM kill or a pre-empted VM does. Unarmed, the call is one
dictionary lookup. `POINTS` lists every point a writer checks; the matrix test arms each one.
"""
from __future__ import annotations

import os
import signal
import threading

ENV = "TEXTOK_FAULT"
ONCE_ENV = "TEXTOK_FAULT_ONCE"

POINTS = (
    "caption.part_temp_written",        # a caption/dead-letter part written to its temp name, not renamed
    "caption.part_committed",           # a part renamed into place (the run dies mid-way)
    "compact.outputs_written",          # compacted files in place, inputs not yet deleted
    "compact.between_deletes",          # old compacted files deleted, parts not yet
    "shards.after_write_before_rename",  # a shard written to its temp name
    "shards.after_rename",              # a shard in place, the run not finished
    "encode.dead_letter_written",       # a shard's dead letters in place, the shard not yet
    "pools.part_written",               # one class's pool part in place
    "pools.merged_before_cleanup",      # pools/{split}.parquet in place, parts not yet removed
    "latents.after_write_before_rename",  # a latent file written to its temp name
    "latents.after_rename",             # one latent file in place, others not
    "checkpoint.temp_written",          # a checkpoint's temp dir written, not renamed
    "checkpoint.before_latest",         # the step dir renamed, `latest` not yet updated
    "export.temp_written",              # tokenizer/ or dit/ written to a temp dir, not renamed
)

_hits: dict[str, int] = {}
_lock = threading.Lock()


def armed() -> tuple[str, int] | None:
    """(point, the hit that fires) from TEXTOK_FAULT, or None."""
    raw = os.environ.get(ENV)
    if not raw:
        return None
    point, _, count = raw.partition(":")
    return point, int(count or 1)


def maybe_fail(point: str) -> None:
    """SIGKILL this process at the armed hit of `point`; otherwise do nothing."""
    spec = os.environ.get(ENV)
    if not spec or not spec.startswith(point):
        return
    name, count = armed()
    if name != point:
        return
    with _lock:
        _hits[point] = _hits.get(point, 0) + 1
        fire = _hits[point] >= count
    if fire and os.environ.get(ONCE_ENV):
        try:  # the marker is created by exactly one process of all that share the environment
            os.close(os.open(os.environ[ONCE_ENV], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    if fire:
        os.kill(os.getpid(), signal.SIGKILL)
