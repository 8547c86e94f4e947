"""Atomic outputs: temp names no reader can mistake for data, their cleanup, atomic folders.

A file is written under a temp name beside its final path, then renamed; a kill in between
leaves only the temp file. Temp names start with `.tmp-` AND end in `.partial`, so no
`*.parquet` glob (DuckDB `read_parquet('dir/*.parquet')`, `datasets.load_dataset('parquet')`,
a pyarrow dataset) can count their rows, hidden-file rules or not. Each writer calls
`clean_temps(folder)` on the folders it owns when a run starts (in the launcher, never in a
worker: another worker's temp file of the same run may be in flight), so leftovers of a killed
run disappear on the next one.

    tmp = temp_path("out/shards/train-00000-of-00004.parquet")   # out/shards/.tmp-<uuid>-train-...parquet.partial
    with atomic_dir("runs/tok/tokenizer") as d:                    # files written into d appear all at once
        model.save_pretrained(d)
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid

from textok.faults import maybe_fail

TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".partial"


def temp_name(final_name: str) -> str:
    return f"{TEMP_PREFIX}{uuid.uuid4().hex}-{final_name}{TEMP_SUFFIX}"


def temp_path(final_path: str) -> str:
    d, name = os.path.split(final_path)
    return os.path.join(d, temp_name(name))


def is_temp(name: str) -> bool:
    return os.path.basename(name.rstrip("/")).startswith(TEMP_PREFIX)


def final_name_of(temp: str) -> str:
    """The final file name a temp name stands for ("" when `temp` is not one of ours)."""
    name = os.path.basename(temp.rstrip("/"))
    if not name.startswith(TEMP_PREFIX):
        return ""
    body = name[len(TEMP_PREFIX) + 33:]  # uuid hex (32) + "-"
    return body[:-len(TEMP_SUFFIX)] if body.endswith(TEMP_SUFFIX) else body


def clean_temps(folder: str, final_prefix: str = "") -> list[str]:
    """Remove temp files and temp folders a killed writer left in `folder` (local paths; a missing
    folder is fine), only those standing for a final name that starts with `final_prefix` (a writer
    sharing a folder with others, e.g. one split's encode, removes only its own). Returns them."""
    if "://" in folder or not os.path.isdir(folder):
        return []
    removed = []
    for entry in os.scandir(folder):
        if entry.name.startswith(TEMP_PREFIX) and final_name_of(entry.name).startswith(final_prefix):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)
            removed.append(entry.path)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str, fault_point: str = "export.temp_written"):
    """Yield a temp folder beside `final`; on success it replaces `final` (an old `final` is moved
    aside first and removed after, so a kill leaves either the old or the new folder complete,
    plus temp names that `clean_temps` removes)."""
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    clean_temps(parent)
    tmp = os.path.join(parent, temp_name(os.path.basename(final)))
    os.makedirs(tmp)
    try:
        yield tmp
        maybe_fail(fault_point)
        old = None
        if os.path.exists(final):
            old = os.path.join(parent, temp_name(os.path.basename(final) + "-old"))
            os.replace(final, old)
        os.replace(tmp, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def require_output_dir(path: str, flag: str = "--output") -> None:
    """An output folder must be a folder (or not exist yet): a file there is a clear error."""
    if "://" not in str(path) and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path}: this is an existing file, not a folder; pass a folder path "
                         f"(it is created if missing)")


def write_json_atomic(obj, path: str) -> None:
    """JSON to `path` (local: temp + rename; other Beam filesystems: one upload, atomic on object stores)."""
    import json

    data = (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
