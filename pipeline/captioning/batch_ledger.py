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
n-th pass through `fault_point(<point>)` (points: request_file, after_upload,
before_create, after_create, poll, write).

Only the holder of DIR's writer lease (textok.lease) writes entries (`save` checks); `update`
is the read-modify-write a second command (`textok batch-status`) uses.
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
    # What the job was submitted with (caption_meta: captioner, model, prompt, generation settings,
    # max_words): its rows carry this, never the flags of the run that happens to collect it.
    caption_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def in_flight(self) -> bool:
        return self.phase != COLLECTED


def ledger_dir(output_dir: str) -> str:
    return FileSystems.join(output_dir, "batch", "jobs")


def requests_dir(output_dir: str) -> str:
    return FileSystems.join(output_dir, "batch", "requests")


def new_entry_id() -> str:
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"  # sorts by creation


def entry_path(output_dir: str, entry_id: str) -> str:
    return FileSystems.join(ledger_dir(output_dir), f"{entry_id}.json")


def save(entry: JobEntry, output_dir: str) -> None:
    """Write one entry. Only the holder of DIR's writer lease writes the ledger (textok.lease): two
    processes saving their in-memory copies would write stale phases back over each other."""
    from textok.lease import held

    lease = held(output_dir)
    if lease is None:
        raise RuntimeError(f"{output_dir}: batch ledger written without the folder's writer lease (a bug)")
    lease.check()
    write_json_atomic(asdict(entry), entry_path(output_dir, entry.id))


def update(output_dir: str, entry_id: str, change) -> JobEntry:
    """Read-modify-write of one entry under the lease: `change(entry)` edits the entry as it is on disk
    now (not a copy read earlier), then it is saved. Returns the saved entry."""
    entry = _load(entry_path(output_dir, entry_id))
    change(entry)
    save(entry, output_dir)
    return entry


_TYPES = {"id": str, "display_name": str, "model": str, "prompt_version": str, "keys": list, "sizes": dict,
          "request_file": str, "request_bytes": int, "est_cost_usd": (int, float), "phase": str, "outcome": dict,
          "retry": dict, "caption_meta": dict}


def _load(path: str) -> JobEntry:
    try:
        with FileSystems.open(path) as f:
            obj = json.loads(f.read())
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        for name, kind in _TYPES.items():
            if name in obj and not isinstance(obj[name], kind):
                raise ValueError(f"field {name!r} is {type(obj[name]).__name__}, expected "
                                 f"{getattr(kind, '__name__', 'a number')}")
        if obj.get("phase") not in (PREPARED, CREATING, SUBMITTED, COLLECTED):
            raise ValueError(f"phase {obj.get('phase')!r} is not one of {PREPARED}/{CREATING}/{SUBMITTED}/{COLLECTED}")
        if not all(isinstance(k, str) for k in obj.get("keys", [])):
            raise ValueError("field 'keys' holds a value that is not a string")
        return JobEntry(**obj)
    except (ValueError, TypeError) as e:  # JSONDecodeError, UnicodeDecodeError, a missing/unknown field
        raise ValueError(f"{path}: not a readable batch ledger entry ({' '.join(str(e).split())[:300]}); it may "
                         "stand for a job already paid for: restore it from a backup, or, if no job was created "
                         "from it, move it aside") from e


def load_all(output_dir: str, errors: list[str] | None = None) -> list[JobEntry]:
    """Every ledger entry under DIR, oldest first. A corrupt entry raises ValueError naming its file,
    or, when `errors` is given, is appended there (one line each) and skipped (read-only listing)."""
    found = FileSystems.match([FileSystems.join(ledger_dir(output_dir), "*.json")])[0].metadata_list
    entries = []
    for m in sorted(found, key=lambda m: os.path.basename(m.path)):
        try:
            entries.append(_load(m.path))
        except ValueError as e:
            if errors is None:
                raise
            errors.append(str(e))
    return entries
