"""The batch-job ledger: one small JSON file per job under DIR/batch/jobs/, written atomically.

A job entry moves through local phases, and each phase is on disk before the step that
follows it, which is what makes a killed run recoverable without paying twice:

    prepared   request file DIR/batch/requests/<id>.jsonl written; nothing sent yet.
               Rerun: upload it (again: an upload that was not recorded costs nothing,
               the Files API deletes it after 48 h).
    creating   uploaded as `uploaded_file`; `batches.create` may or may not have happened.
               Rerun: look the job up by its unique display name (`batches.list`) and
               create it only when the server has none: never two jobs for one entry.
    submitted  `job_name` known; a rerun polls it.
    collected  results written (captions / dead letters committed) or the job's end
               state recorded; `retry` lists keys whose lines failed retryably (a later
               run resubmits them in a new job, up to --batch-max-attempts).

Fault injection for tests: TEXTOK_BATCH_FAULT=<point>[:<n>] SIGKILLs the process at the
n-th pass through `fault_point(<point>)` (points: after_upload, before_create,
after_create, poll, write).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from apache_beam.io.filesystems import FileSystems

from textok.atomic import write_json_atomic

PREPARED, CREATING, SUBMITTED, COLLECTED = "prepared", "creating", "submitted", "collected"
FAULT_ENV = "TEXTOK_BATCH_FAULT"
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process here when TEXTOK_BATCH_FAULT names this point (tests only)."""
    spec = os.environ.get(FAULT_ENV, "")
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class JobEntry:
    id: str
    display_name: str
    model: str
    prompt_version: str
    keys: list[str]                       # request keys, in file order
    sizes: dict[str, list[int]]           # key -> [width, height] of the decoded image (caption rows keep it)
    request_file: str
    request_bytes: int
    est_cost_usd: float                   # worst case at batch prices, before submission
    phase: str = PREPARED
    created_at: str = field(default_factory=now_iso)
    uploaded_file: Optional[str] = None
    job_name: Optional[str] = None
    submitted_at: Optional[str] = None
    remote_state: Optional[str] = None
    polled_at: Optional[str] = None
    ended_at: Optional[str] = None
    result_file: Optional[str] = None
    outcome: dict[str, Any] = field(default_factory=dict)   # captioned / dead_letter / tokens / cost / reason
    retry: dict[str, str] = field(default_factory=dict)     # key -> why it failed retryably

    @property
    def in_flight(self) -> bool:
        return self.phase != COLLECTED


def ledger_dir(output_dir: str) -> str:
    return FileSystems.join(output_dir, "batch", "jobs")


def requests_dir(output_dir: str) -> str:
    return FileSystems.join(output_dir, "batch", "requests")


def new_entry_id() -> str:
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"  # sorts by creation


def save(entry: JobEntry, output_dir: str) -> None:
    write_json_atomic(asdict(entry), FileSystems.join(ledger_dir(output_dir), f"{entry.id}.json"))


def load_all(output_dir: str) -> list[JobEntry]:
    """Every ledger entry under DIR, oldest first."""
    found = FileSystems.match([FileSystems.join(ledger_dir(output_dir), "*.json")])[0].metadata_list
    entries = []
    for m in sorted(found, key=lambda m: os.path.basename(m.path)):
        with FileSystems.open(m.path) as f:
            try:
                entries.append(JobEntry(**json.loads(f.read())))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{m.path}: not a batch ledger entry ({e}); move it aside only if no job "
                                 "was created from it (see `textok batch-status`)") from e
    return entries
