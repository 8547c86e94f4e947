"""Where images come from: ImageNet trees, class folders, manifests, Hugging Face datasets.

Every source becomes a sorted, deterministic list of `ImageRecord`s (key, split, uri, label,
class name, provided caption); the pixels are read later, per record, by `read_image_bytes`
inside the Beam workers. Paths go through Beam's `FileSystems`, so gs:// and s3:// inputs
work once their Beam filesystem is installed; local trees are walked with os.walk (faster).

    from textok.pipeline.sources.records import list_records, read_image_bytes
    recs = list_records("/data/imagenet", split="val", val_labels="/data/LOC_val_solution.csv")
    data = read_image_bytes(recs[0].source_uri)

    python -m textok.pipeline.sources.records /data/imagenet --split val      # prints a count and 3 records

Sources (`detect_source` picks one when source="auto"):
  imagenet  ROOT/{train,val}/<wnid>/*.JPEG, or val/ flat with a labels file; see
            `pipeline.sources.imagenet`.
  folder    <class>/<image> (optionally under <split>/); classes sorted -> labels; a flat
            folder of images gives unlabelled records.
  manifest  .csv / .jsonl / .parquet with `uri` and optional key, split, label, class_name, caption.
  hf        a `save_to_disk` directory, or hf://<name-or-path> for `load_dataset`.
"""
from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
import sys
from functools import lru_cache

from textok.pipeline.sources.imagenet import imagenet_records
from textok.schemas.images import ImageDecodeError
from textok.pipeline.sources.files import (IMAGE_EXTENSIONS, SPLIT_DIR_NAMES, WNID_RE, ImageRecord, is_image_path,
                                          is_remote, join_path, list_files, parent_dir, path_exists, read_bytes,
                                          split_subtree, strip_ext)

MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".json", ".parquet")
HF_DISK_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")


# ---------------------------------------------------------------- detection
def _is_hf_disk_dir(path: str) -> bool:
    return any(path_exists(join_path(path, m)) for m in HF_DISK_MARKERS)


def _is_imagenet_name(name: str, is_dir: bool) -> bool:
    return bool(WNID_RE.match(name)) if is_dir else name.startswith("ILSVRC2012_val_") and is_image_path(name)


def _looks_like_imagenet(root: str) -> bool:
    """wnid folders or ILSVRC2012_val_* files at depth 1 or 2 (ROOT/<wnid>, ROOT/train/<wnid>).
    Locally only two levels are scanned: a full walk of ImageNet train is 1.28 M files."""
    if is_remote(root):
        for rel in list_files(root):
            parts = rel.split("/")
            if any(_is_imagenet_name(name, depth < len(parts) - 1) for depth, name in enumerate(parts[:2])):
                return True
        return False
    with os.scandir(root) as top:
        for entry in top:
            if _is_imagenet_name(entry.name, entry.is_dir()):
                return True
            if entry.is_dir() and not entry.name.startswith("."):
                with os.scandir(entry.path) as sub:
                    if any(_is_imagenet_name(e.name, e.is_dir()) for e in sub):
                        return True
    return False


def detect_source(input_path: str) -> str:
    """"imagenet" | "folder" | "manifest" | "hf" for a path or uri."""
    if input_path.startswith("hf://"):
        return "hf"
    if input_path.lower().endswith(MANIFEST_EXTENSIONS):
        return "manifest"
    if not path_exists(input_path):
        raise FileNotFoundError(
            f"{input_path}: no such file or directory (for a Hugging Face Hub dataset name use "
            f"hf://{input_path} or --source hf)")
    if _is_hf_disk_dir(input_path):
        return "hf"
    return "imagenet" if _looks_like_imagenet(input_path) else "folder"


# ---------------------------------------------------------------- class folders
def _sibling_split_classes(split_root: str) -> set[str]:
    """Class folders of the split folders beside `split_root` when it is one itself (ROOT/val given
    directly): the labels must not depend on whether ROOT or ROOT/val was passed."""
    base = posixpath.basename(split_root.rstrip("/")) if is_remote(split_root) else os.path.basename(split_root)
    if base not in SPLIT_DIR_NAMES:
        return set()
    classes: set[str] = set()
    for name in sorted(SPLIT_DIR_NAMES - {base}):
        sibling = join_path(parent_dir(split_root), name)
        if os.path.isdir(sibling) or (is_remote(sibling) and path_exists(sibling)):
            classes |= {r.split("/")[0] for r in list_files(sibling) if "/" in r and is_image_path(r)}
    return classes


def _folder_records(root: str, split: str, class_names: list[str] | None) -> list[ImageRecord]:
    all_rels = list_files(root)
    split_root, rels = split_subtree(root, all_rels, split, "class-folder")
    rels = [r for r in rels if is_image_path(r)]
    if not rels:
        raise FileNotFoundError(f"{split_root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    nested = [r for r in rels if "/" in r]
    if nested and len(nested) != len(rels):
        loose = next(r for r in rels if "/" not in r)
        raise ValueError(f"{join_path(split_root, loose)}: image outside any class folder in a class-folder tree; "
                         f"move it into a class folder or list images in a manifest")
    if not nested:  # a flat folder: unlabelled images (e.g. for provided/generated captions)
        return [ImageRecord(strip_ext(r), split, join_path(split_root, r)) for r in rels]
    if class_names is None:
        # Classes from every split folder, so a split missing a class keeps the same labels.
        in_split = split_root != root
        classes = sorted({r.split("/")[1] for r in all_rels if in_split and r.count("/") >= 2 and is_image_path(r)}
                         | {r.split("/")[0] for r in rels} | (set() if in_split else _sibling_split_classes(root)))
        index = {c: i for i, c in enumerate(classes)}
    else:
        index = {c: i for i, c in enumerate(class_names)}
        index.update({c.replace(" ", "_"): i for i, c in enumerate(class_names)})
    records = []
    for rel in rels:
        cls = rel.split("/")[0]
        if cls not in index:
            raise ValueError(f"{join_path(split_root, rel)}: class folder {cls!r} is not in the given class names")
        records.append(ImageRecord(strip_ext(rel), split, join_path(split_root, rel), index[cls], cls.replace("_", " ")))
    return records


# ---------------------------------------------------------------- manifests
def _decode_manifest(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column}); "
                         f"re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {posixpath.basename(path)}`") from None


def _check_caption_column(path: str, table) -> None:
    """Captions must be text: string, or binary holding UTF-8 (decoded per row). Anything else
    (a list, a number) would be stored as its Python repr, so it is refused."""
    import pyarrow as pa

    if "caption" not in table.column_names:
        return
    t = table.schema.field("caption").type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or pa.types.is_null(t)):
        raise ValueError(f"{path}: column 'caption' has type {t}; captions must be strings (or binary holding "
                         f"UTF-8): convert the column, e.g. join a list of sentences into one string")


def _read_manifest_rows(path: str) -> list[tuple[int, dict]]:
    """(row number for messages, row dict). CSV rows count from 2 (line 1 is the header)."""
    lower = path.lower()
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(read_bytes(path)))
        _check_caption_column(path, table)
        return list(enumerate(table.to_pylist(), start=1))
    text = _decode_manifest(path, read_bytes(path))
    if lower.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        return [(i, {k: (v if v != "" else None) for k, v in row.items()}) for i, row in enumerate(reader, start=2)]
    if lower.endswith(".json"):  # one JSON array of objects
        rows = json.loads(text)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: a .json manifest must be an array of objects (or use .jsonl)")
        return list(enumerate(rows, start=1))
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i}: expected a JSON object per line, got {type(row).__name__}")
            rows.append((i, row))
    return rows


def _to_label(value, where: str) -> int | None:
    if value is None:
        return None
    try:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label {value!r} is not an integer") from None


def _utf8_text(value, where: str, column: str) -> str:
    """A text field that must be stored as-is (key, uri, class name): valid UTF-8 or a clear error."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where}: column {column!r} is not valid UTF-8 (character {e.start}: "
                         f"{text[e.start]!r}); fix the manifest") from None
    return text


def caption_text(value, where: str) -> str | None:
    """A provided caption as text. Binary is decoded as UTF-8; bytes that are not UTF-8 are kept as
    surrogate escapes, which `caption_problem` reports, so the row is dead-lettered, not mangled."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "surrogateescape")
    raise ValueError(f"{where}: column 'caption' holds {type(value).__name__} ({str(value)[:40]!r}); captions must "
                     f"be strings: fix this row of the manifest")


def caption_problem(caption: str | None) -> tuple[str, str] | None:
    """(error_type, message) when a caption cannot be stored as UTF-8, else None."""
    if caption is None:
        return None
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError as e:
        return "invalid_utf8", (f"caption is not valid UTF-8 (a lone surrogate or undecodable byte at character "
                                f"{e.start}); fix the caption in the input data")
    return None


def _split_of(row: dict, split: str) -> str:
    """The row's split compared with the requested one, case-insensitively: "match", "other" (a
    known split name; that run takes it), or "unknown". No split value: the requested split's."""
    value = row.get("split")
    if value is None or str(value).strip() == "":
        return "match"
    norm = str(value).strip().lower()
    if norm == split.lower():
        return "match"
    return "other" if norm in SPLIT_DIR_NAMES else "unknown"


def _manifest_records(path: str, split: str, class_names: list[str] | None) -> list[ImageRecord]:
    rows = _read_manifest_rows(path)
    if not rows:
        raise ValueError(f"{path}: manifest has no rows")
    if not any("uri" in row for _, row in rows):
        raise ValueError(f"{path}: manifest has no 'uri' column (columns: {sorted(rows[0][1])})")
    base = parent_dir(path)
    records, seen = [], {}
    for num, row in rows:
        where = f"{path} row {num}"
        belongs = _split_of(row, split)
        if belongs == "other":
            continue
        uri = row.get("uri")
        if not uri:
            raise ValueError(f"{where}: empty 'uri'")
        uri = _utf8_text(uri, where, "uri")
        full = uri if (is_remote(uri) or os.path.isabs(uri)) else join_path(base, uri)
        scheme, sep, rest = full.rpartition("://")
        full = scheme + sep + (posixpath.normpath(rest) if sep else os.path.normpath(rest))  # resolve "../"
        key = _utf8_text(row["key"], where, "key") if row.get("key") is not None else strip_ext(uri)
        if key in seen:
            raise ValueError(f"{path}: duplicate key {key!r} in row {seen[key]} and row {num}")
        seen[key] = num
        label = _to_label(row.get("label"), where)
        class_name = row.get("class_name")
        if class_name is None and label is not None and class_names is not None:
            if not 0 <= label < len(class_names):
                raise ValueError(f"{where}: label {label} outside the {len(class_names)} given class names")
            class_name = class_names[label]
        caption = caption_text(row.get("caption"), where)
        problem = caption_problem(caption)
        if belongs == "unknown":
            problem = ("unknown_split", f"split {row['split']!r} is neither the requested {split!r} nor a known "
                                        f"split name ({', '.join(sorted(SPLIT_DIR_NAMES))}); fix the manifest row")
        records.append(ImageRecord(key, split, full, label,
                                   None if class_name is None else _utf8_text(class_name, where, "class_name"),
                                   None if problem else caption, *(problem or (None, None))))
    if not records:
        raise ValueError(f"{path}: no rows with split={split!r}")
    return records


# ---------------------------------------------------------------- Hugging Face datasets
@lru_cache(maxsize=8)
def _load_hf(target: str, hf_split: str):
    """The dataset split (cached per process: workers read many rows of one dataset)."""
    import datasets

    if os.path.isdir(target) and _is_hf_disk_dir(target):
        ds = datasets.load_from_disk(target)
        if isinstance(ds, datasets.DatasetDict):
            if hf_split not in ds:
                raise KeyError(f"{target}: saved DatasetDict has splits {sorted(ds)}, not {hf_split!r} "
                               f"(choose with --hf-split)")
            ds = ds[hf_split]
        return ds
    return datasets.load_dataset(target, split=hf_split)


def _hf_records(input_path: str, split: str, image_column: str, label_column: str, caption_column: str | None,
                hf_split: str | None, class_names: list[str] | None, key_column: str | None) -> list[ImageRecord]:
    import datasets

    target = input_path[len("hf://"):] if input_path.startswith("hf://") else input_path
    if os.path.exists(target):
        target = os.path.abspath(target)
    hf_split = hf_split or split
    ds = _load_hf(target, hf_split)
    cols = ds.column_names
    if image_column not in cols:
        raise KeyError(f"{target} [{hf_split}]: no image column {image_column!r} (columns: {cols}); "
                       f"choose with --image-column")
    for name, col in (("--caption-column", caption_column), ("--key-column", key_column)):
        if col is not None and col not in cols:
            raise KeyError(f"{target} [{hf_split}]: no column {col!r} for {name} (columns: {cols})")
    feature = ds.features.get(label_column)
    names = class_names or (feature.names if isinstance(feature, datasets.ClassLabel) else None)
    wanted = [c for c in (label_column, caption_column, key_column) if c is not None and c in cols]
    meta = ds.select_columns(wanted).to_dict() if wanted else {}
    n = len(ds)
    labels = meta.get(label_column, [None] * n)
    captions = meta.get(caption_column, [None] * n) if caption_column else [None] * n
    keys = [str(k) for k in meta[key_column]] if key_column else [f"{hf_split}/{i:08d}" for i in range(n)]
    records, seen = [], {}
    for i in range(n):
        if keys[i] in seen:
            raise ValueError(f"{target} [{hf_split}]: duplicate key {keys[i]!r} in rows {seen[keys[i]]} and {i}")
        seen[keys[i]] = i
        label = _to_label(labels[i], f"{target} [{hf_split}] row {i}")
        if label == -1:  # the `datasets` convention for "no label" (e.g. hidden test splits)
            label = None
        if names is not None and label is not None and not 0 <= label < len(names):
            raise ValueError(f"{target} [{hf_split}] row {i}: label {label} outside the {len(names)} class names")
        cname = names[label] if names is not None and label is not None else None
        uri = f"hf://{target}?split={hf_split}&column={image_column}#{i}"
        caption = caption_text(captions[i], f"{target} [{hf_split}] row {i}")
        problem = caption_problem(caption)
        records.append(ImageRecord(keys[i], split, uri, label, cname, None if problem else caption,
                                   *(problem or (None, None))))
    return records


_HF_URI_RE = re.compile(r"^hf://(?P<target>.+)\?split=(?P<split>[^&#]+)(?:&column=(?P<column>[^#]+))?#(?P<index>\d+)$")


def _read_hf_image(uri: str) -> bytes:
    import datasets

    m = _HF_URI_RE.match(uri)
    if not m:
        raise ImageDecodeError("read_error", f"{uri}: not an hf:// record uri (hf://<path>?split=<s>#<index>)")
    column = m["column"] or "image"
    ds = _load_hf(m["target"], m["split"])
    feature = ds.features.get(column)
    if isinstance(feature, datasets.Image) and feature.decode:
        ds = _hf_undecoded(m["target"], m["split"], column)
    value = ds[int(m["index"])][column]
    if isinstance(value, dict):  # the Image feature's storage: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return read_bytes(value["path"])
        raise ImageDecodeError("empty_file", f"{uri}: image cell has neither bytes nor path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # a column of file paths / uris
        return read_bytes(value)
    raise ImageDecodeError("read_error", f"{uri}: column {column!r} holds {type(value).__name__}, not image bytes")


@lru_cache(maxsize=8)
def _hf_undecoded(target: str, hf_split: str, column: str):
    # decode=False hands back the stored encoded bytes: the pipeline decodes them itself,
    # with its own checks, instead of trusting a PIL object built by `datasets`.
    import datasets

    return _load_hf(target, hf_split).cast_column(column, datasets.Image(decode=False))


# ---------------------------------------------------------------- public entry points
def list_records(input_path: str, source: str = "auto", split: str = "train", *, val_labels: str | None = None,
                 image_column: str = "image", label_column: str = "label", caption_column: str | None = None,
                 hf_split: str | None = None, class_names: list[str] | None = None,
                 key_column: str | None = None) -> list[ImageRecord]:
    """All records of one split of a source, sorted by key (deterministic). Local paths in
    `source_uri` are absolute, so records stay valid on workers with another working dir."""
    if not is_remote(input_path) and os.path.exists(input_path):
        input_path = os.path.abspath(input_path)
    if source == "auto":
        source = detect_source(input_path)
    if source == "imagenet":
        records = imagenet_records(input_path, split, val_labels)
    elif source == "folder":
        records = _folder_records(input_path, split, class_names)
    elif source == "manifest":
        records = _manifest_records(input_path, split, class_names)
    elif source == "hf":
        records = _hf_records(input_path, split, image_column, label_column, caption_column, hf_split,
                              class_names, key_column)
    else:
        raise ValueError(f"unknown source {source!r}; choose auto, imagenet, folder, manifest or hf")
    records.sort(key=lambda r: r.key)
    for a, b in zip(records, records[1:]):
        if a.key == b.key:  # e.g. x.jpg and x.png in one folder
            raise ValueError(f"{input_path}: two images share key {a.key!r}: {a.source_uri} and {b.source_uri}")
    return records


def read_image_bytes(source_uri: str) -> bytes:
    """The encoded bytes of one record's image. I/O failures raise ImageDecodeError("read_error")."""
    if source_uri.startswith("hf://"):
        try:
            return _read_hf_image(source_uri)
        except ImageDecodeError:
            raise
        except (OSError, KeyError, IndexError, ValueError) as e:
            raise ImageDecodeError("read_error", f"{source_uri}: {type(e).__name__}: {e}") from e
    try:
        return read_bytes(source_uri)
    except (OSError, ValueError) as e:  # Beam wraps remote errors in BeamIOError (an IOError)
        raise ImageDecodeError("read_error", f"{source_uri}: {type(e).__name__}: {e}") from e


def _main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description="List the image records of a source.")
    p.add_argument("input_path")
    for flag, default in (("--source", "auto"), ("--split", "train"), ("--val-labels", None)):
        p.add_argument(flag, default=default)
    a = p.parse_args(argv)
    recs = list_records(a.input_path, a.source, a.split, val_labels=a.val_labels)
    print(f"{len(recs)} records", *recs[:3], sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
