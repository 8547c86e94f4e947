"""Captions written, compacted and resumed on a writable remote filesystem (issue 10).

`memfs://` is a Beam `FileSystem` registered by subclassing (Beam finds every subclass), backed
by a dict with object-store semantics: no folders, a `create` is one upload that appears whole
on close, and `rename` is copy + delete (as Beam's GCS and S3 filesystems do it: not atomic, so a
writer renames only from a name no reader globs). `textok caption` must write, resume and compact through Beam's
FileSystems alone: no local path, no os.* call may touch these uris.
"""
from __future__ import annotations

import io
import json
import os

import pyarrow.parquet as pq
import pytest
from PIL import Image

from textok.pipeline.captioning.pipeline import run_caption
from textok.pipeline.captioning.store import CAPTIONS, DEAD_LETTER, compact, list_table_files, open_parquet
from textok.schemas.common import validate_file

STORE: dict[str, bytes] = {}


def _install():
    from apache_beam.io.filesystem import FileMetadata
    from apache_beam.io.localfilesystem import LocalFileSystem

    class _Upload(io.BytesIO):
        def __init__(self, path):
            super().__init__()
            self.path = path

        def close(self):
            if not self.closed:
                STORE[self.path] = self.getvalue()  # visible only once complete, like an object store
            super().close()

    class MemFileSystem(LocalFileSystem):
        @classmethod
        def scheme(cls):
            return "memfs"

        def has_dirs(self):
            return False

        def join(self, base, *parts):
            return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])

        def split(self, path):
            head, _, tail = path.rstrip("/").rpartition("/")
            return head, tail

        def mkdirs(self, path):
            pass

        def exists(self, path):
            return path in STORE

        def size(self, path):
            return len(STORE[path])

        def metadata(self, path):
            if path not in STORE:
                raise FileNotFoundError(path)
            return FileMetadata(path, len(STORE[path]), 0.0)

        def checksum(self, path):
            return str(hash(STORE[path]))

        def _list(self, prefix):
            for k in sorted(STORE):
                if k.startswith(prefix):
                    yield FileMetadata(k, len(STORE[k]))

        def create(self, path, mime_type="application/octet-stream", compression_type=None):
            return _Upload(path)

        def open(self, path, mime_type="application/octet-stream", compression_type=None):
            if path not in STORE:
                raise FileNotFoundError(path)
            return io.BytesIO(STORE[path])

        def rename(self, sources, destinations):
            for src, dst in zip(sources, destinations):  # copy, then delete: never a move
                STORE[dst] = STORE[src]
                STORE.pop(src)

        def delete(self, paths):
            for p in paths:
                STORE.pop(p, None)

    return MemFileSystem


_MEMFS = _install()


@pytest.fixture
def manifest(tmp_path):
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "a.png")

    def write(n: int, name: str = "m.jsonl") -> str:
        rows = [{"uri": "a.png", "key": f"k{i:02d}", "caption": f"a tiny square number {i}"} for i in range(n)]
        rows.append({"uri": "a.png", "key": "nocap"})  # a dead letter
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    STORE.clear()
    return write


def _keys(out: str, table: str) -> list[str]:
    return [k for p in list_table_files(out, table) for k in open_parquet(p).read(columns=["key"])["key"].to_pylist()]


def _validate_all(out: str, tmp_path) -> None:
    for table in (CAPTIONS, DEAD_LETTER):
        for i, p in enumerate(list_table_files(out, table)):
            local = tmp_path / f"{table}-{i}.parquet"
            local.write_bytes(STORE[p])
            assert validate_file(str(local), expect_table=table)["num_rows"] > 0


def test_caption_writes_resumes_and_compacts_on_a_remote_filesystem(manifest, tmp_path):
    out = "memfs://bucket/run"
    s = run_caption(manifest(10), out, captioner="provided", commit_every=3, batch_size=2)
    assert (s["captioned"], s["dead_letter"]) == (10, 1)
    assert sorted(_keys(out, CAPTIONS)) == [f"k{i:02d}" for i in range(10)] and _keys(out, DEAD_LETTER) == ["nocap"]
    names = sorted(STORE)
    assert f"{out}/caption_summary.json" in names and not [n for n in names if "/_todo-" in n or "part-" in n]
    _validate_all(out, tmp_path)
    # resume with more input: only the new keys are captioned, every key once after compaction
    s2 = run_caption(manifest(16, "m2.jsonl"), out, captioner="provided", commit_every=3, batch_size=2)
    assert (s2["skipped_existing"], s2["captioned"], s2["dead_letter"]) == (11, 6, 0)
    assert sorted(_keys(out, CAPTIONS)) == [f"k{i:02d}" for i in range(16)]
    # what a killed run leaves: a stray upload temp and a part repeating committed keys
    cap_files = list_table_files(out, CAPTIONS)
    STORE[f"{out}/captions/part-00000000000000000001-deadbeef0000.parquet"] = STORE[cap_files[0]]
    STORE[f"{out}/captions/.tmp-0123-captions.parquet.partial"] = b"half an upload"
    stats = compact(out)
    assert stats[CAPTIONS]["duplicates_dropped"] == 16 and stats[CAPTIONS]["rows"] == 16
    keys = _keys(out, CAPTIONS)
    assert sorted(keys) == [f"k{i:02d}" for i in range(16)] and len(keys) == len(set(keys))
    assert not [n for n in STORE if "/.tmp-" in n or "/part-" in n]
    _validate_all(out, tmp_path)
    summary = json.loads(STORE[f"{out}/caption_summary.json"])
    assert summary["on_disk"] == {"captions": 16, "dead_letter": 1}
    assert pq.ParquetFile(io.BytesIO(STORE[list_table_files(out, CAPTIONS)[0]])).metadata.num_rows == 16
    assert not os.path.exists("memfs:")  # nothing was written to a local folder named after the scheme
