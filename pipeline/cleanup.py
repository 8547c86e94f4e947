"""Leftovers of killed runs: what may be removed from an output folder, and removing it.

    textok clean OUTPUT                # takes OUTPUT's writer lease, removes, prints what it removed
    textok clean OUTPUT --dry-run      # only lists them

Only the lease holder cleans, and only what no live writer can still need:
- temp files and folders (`.tmp-*`, `.<name>.inflight-*`) and caption to-do files (`_todo-*.jsonl`)
  last modified BEFORE the cleaner's lease was taken: a writer of this run creates its temps after
  that moment, so those are a dead writer's (a kill between write and rename);
- batch request files (DIR/batch/requests/<id>.jsonl, up to ~1.9 GB each) that no ledger entry
  still needs: an entry in phase prepared/creating keeps its file (the recovery uploads it);
  a file without an entry (killed while it was being written) or of a submitted/collected job
  (the Batch API holds its own copy) is an orphan;
- never inside a subfolder another run holds (a live `_textok.lease` below OUTPUT: e.g.
  `textok caption --output OUTPUT/caption/train` running while OUTPUT is cleaned).

`textok caption` (sync and batch) runs the same cleanup when it starts.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from textok import storage as rio
from textok.atomic import TEMP_PREFIX
from textok.lease import LEASE_NAME, Lease, read_lease, staleness
from textok.storage import INFLIGHT

log = logging.getLogger("textok.clean")

TODO_PREFIX = "_todo-"


def _is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) or (name.startswith(".") and INFLIGHT in name) or (
        name.startswith(TODO_PREFIX) and name.endswith(".jsonl"))


def _rel(folder: str, path: str) -> str:
    return path[len(folder.rstrip("/")) + 1:] if path.startswith(folder.rstrip("/") + "/") else path


def _held_subfolders(folder: str, files: list[str]) -> list[str]:
    """Subfolders of `folder` whose own lease is live (another run writes there)."""
    out = []
    for p in files:
        if rio.basename(p) == LEASE_NAME and rio.dirname(p).rstrip("/") != folder.rstrip("/"):
            sub = rio.dirname(p)
            rec = read_lease(sub)
            if rec is not None and staleness(rec) is None:
                out.append(sub.rstrip("/") + "/")
    return out


def _needed_request_ids(folder: str) -> set[str] | None:
    """Ids of ledger entries whose request file a recovery still uploads (None: ledger unreadable)."""
    from textok.pipeline.captioning.batch_ledger import CREATING, PREPARED, load_all

    try:
        return {e.id for e in load_all(folder) if e.phase in (PREPARED, CREATING)}
    except ValueError as e:
        log.warning("%s; batch request files are kept until the ledger reads", e)
        return None


def find_leftovers(folder: str, lease: Lease) -> list[tuple[str, int, str]]:
    """(path, bytes, why) of everything under `folder` that `clean_output` would remove."""
    if not rio.is_remote(folder):
        folder = os.path.abspath(folder)
    entries = rio.list_with_mtime(folder)
    paths = [p for p, _ in entries]
    skip = tuple(_held_subfolders(folder, paths))
    out: list[tuple[str, int, str]] = []
    local_temp_dirs: set[str] = set()
    needed = None
    for path, mtime in entries:
        if skip and path.startswith(skip):
            continue
        rel = _rel(folder, path)
        parts = rel.split("/") if rio.is_remote(folder) else rel.split(os.sep)
        temp_dir = next((i for i, part in enumerate(parts[:-1]) if part.startswith(TEMP_PREFIX)), None)
        if temp_dir is not None and not rio.is_remote(folder):  # an atomic_dir temp folder: removed whole
            d = os.path.join(folder, *parts[:temp_dir + 1])
            if d not in local_temp_dirs and os.lstat(d).st_mtime < lease.started_unix:
                local_temp_dirs.add(d)
                out.append((d, _tree_bytes(d), "temp folder of an interrupted writer"))
            continue
        name = parts[-1]
        if name == LEASE_NAME:
            continue
        if _is_temp_name(name):
            if mtime < lease.started_unix:
                out.append((path, _size(path), "temp file of an interrupted writer"))
        elif len(parts) == 3 and parts[:2] == ["batch", "requests"] and name.endswith(".jsonl"):
            if needed is None:
                needed = _needed_request_ids(folder)
                if needed is None:
                    needed = {"*"}
            if "*" not in needed and name[:-len(".jsonl")] not in needed:
                out.append((path, _size(path), "batch request file no ledger entry needs (its job was "
                                               "submitted, or the run was killed while writing it)"))
    return out


def _size(path: str) -> int:
    try:
        if rio.is_remote(path):
            from apache_beam.io.filesystems import FileSystems

            return int(FileSystems.metadata(path).size_in_bytes)
        return os.lstat(path).st_size
    except Exception:
        return 0


def _tree_bytes(d: str) -> int:
    return sum(os.lstat(os.path.join(r, f)).st_size for r, _, fs in os.walk(d) for f in fs)


def clean_output(folder: str, lease: Lease, dry_run: bool = False) -> dict[str, Any]:
    """Remove (or with dry_run only list) the leftovers; returns {"removed": [...], "bytes": n}."""
    lease.check()
    found = find_leftovers(folder, lease)
    for path, _, _ in ([] if dry_run else found):
        if not rio.is_remote(path) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                rio.remove(path)
            except FileNotFoundError:
                pass
    total = sum(n for _, n, _ in found)
    if found and not dry_run:
        log.info("%s: removed %d leftover file(s) of interrupted runs (%.1f MB): %s", folder, len(found),
                 total / 1e6, ", ".join(_rel(folder, p) for p, _, _ in found[:10])
                 + (" ..." if len(found) > 10 else ""))
    return {"folder": folder, "dry_run": dry_run, "bytes": total,
            "removed": [{"path": p, "bytes": n, "why": why} for p, n, why in found]}
