"""What every image source shares: the `ImageRecord`, path helpers that treat local paths and
object-store uris (gs://, s3://, through Beam's FileSystems) alike, and split-folder lookup.

`pipeline.sources.records` (the source dispatcher) and the source modules it uses (`pipeline.sources.imagenet`)
import from here, so the dependency runs one way: records -> imagenet -> files.
"""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
SPLIT_DIR_NAMES = frozenset({"train", "val", "valid", "validation", "test"})
WNID_RE = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ImageRecord:
    key: str                        # stable id, e.g. "n01440764/n01440764_10026"
    split: str
    source_uri: str                 # path / gs:// / s3:// uri, or "hf://<path>?split=<s>&column=<c>#<index>"
    label: int | None = None
    class_name: str | None = None
    caption: str | None = None      # provided caption (manifest / dataset column)
    # A row the source could list but not accept (unknown split value, caption that is not
    # UTF-8): the caption stage dead-letters it with this reason instead of dropping it.
    error_type: str | None = None
    error_message: str | None = None


# ---------------------------------------------------------------- file system helpers
def is_remote(path: str) -> bool:
    return "://" in path


def join_path(base: str, *parts: str) -> str:
    if is_remote(base):
        return FileSystems.join(base, *parts)
    return os.path.join(base, *parts)


def parent_dir(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(os.path.abspath(path))


def path_exists(path: str) -> bool:
    """A file, or a folder; object stores (gs://, s3://) have no folders, only key prefixes."""
    if is_remote(path):
        if FileSystems.exists(path):
            return True
        return bool(FileSystems.match([path.rstrip("/") + "/**"], limits=[1])[0].metadata_list)
    return os.path.exists(path)


def list_files(root: str) -> list[str]:
    """Relative paths ("a/b.jpg", always with '/') of all files under `root`, sorted;
    hidden files and folders (a name starting with '.') are skipped."""
    rels: list[str] = []
    if is_remote(root):
        prefix = root.rstrip("/") + "/"
        for m in FileSystems.match([prefix + "**"]):
            for meta in m.metadata_list:
                rel = meta.path[len(prefix):]
                if rel and not any(p.startswith(".") for p in rel.split("/")):
                    rels.append(rel)
    else:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: no such directory")
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
            for f in files:
                if not f.startswith("."):
                    rels.append(f if rel_dir == "." else f"{rel_dir}/{f}")
    return sorted(rels)


def is_image_path(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def strip_ext(path: str) -> str:
    return posixpath.splitext(path)[0]


def read_bytes(path: str) -> bytes:
    """Bytes of a local or remote file, never transparently decompressed (`storage.read_bytes`)."""
    from textok.storage import read_bytes as read_any

    return read_any(path)


# ---------------------------------------------------------------- split folders
def split_subtree(root: str, rel_files: list[str], split: str, kind: str) -> tuple[str, list[str]]:
    """(folder, files relative to it) for the requested split.

    `root` may hold split folders (ROOT/train, ROOT/val) or be one itself (ROOT/train)."""
    tops = {rel.split("/")[0] for rel in rel_files if "/" in rel}
    if split in tops:
        prefix = split + "/"
        return join_path(root, split), [r[len(prefix):] for r in rel_files if r.startswith(prefix)]
    split_dirs = tops & SPLIT_DIR_NAMES
    if split_dirs and split_dirs == tops:
        raise FileNotFoundError(f"{root}: {kind} tree has split folders {sorted(split_dirs)} but no {split!r}; "
                                f"choose --split from those")
    base = posixpath.basename(root.rstrip("/")) if is_remote(root) else os.path.basename(os.path.abspath(root))
    if base in SPLIT_DIR_NAMES and base != split:
        raise ValueError(f"{root}: this is the {base!r} folder but split={split!r} was requested; pass the parent "
                         f"folder or --split {base}")
    return root, rel_files
