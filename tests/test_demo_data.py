"""pipeline.sources.demo_data: deterministic scenes whose captions describe what is drawn."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from textok.pipeline.sources.demo_data import (PALETTE, SHAPES, SIZES, make_demo_data, render_scene, sample_scene,
                                shape_geometry)
from textok.pipeline.sources.records import list_records


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def test_deterministic_under_seed(tmp_path):
    a = make_demo_data(str(tmp_path / "a"), n=30, size=32, seed=3)
    b = make_demo_data(str(tmp_path / "b"), n=30, size=32, seed=3)
    c = make_demo_data(str(tmp_path / "c"), n=30, size=32, seed=4)
    assert _files(str(tmp_path / "a")) == _files(str(tmp_path / "b"))
    assert _files(str(tmp_path / "a"))["manifest.jsonl"] != _files(str(tmp_path / "c"))["manifest.jsonl"]
    assert a["splits"] == {"train": 27, "val": 3} and a["classes"] == sorted(SHAPES)
    assert {k: v for k, v in a.items() if k not in ("out_dir", "manifest", "images_dir")} == \
           {k: v for k, v in b.items() if k not in ("out_dir", "manifest", "images_dir")}
    # Image i depends on (seed, i) only, not on how many images are made.
    assert sample_scene(3, 7) == sample_scene(3, 7)
    assert np.array_equal(np.asarray(render_scene(sample_scene(3, 7), 32)), np.asarray(render_scene(
        sample_scene(3, 7), 32)))


def test_captions_describe_every_shape():
    for i in range(300):
        scene = sample_scene(0, i)
        words = scene["caption"].split()
        assert 0 < len(words) <= 75
        for s in scene["shapes"]:
            assert f"{s['size']} {s['colour']} {s['shape']}" in scene["caption"], (i, scene["caption"])
        for c in scene["background"]["colours"]:
            assert c in scene["caption"]
            assert all(s["colour"] != c for s in scene["shapes"])  # never the colour of the background
        sizes = [SIZES[s["size"]] for s in scene["shapes"]]
        assert sizes[0] > max(sizes[1:])  # the class shape is strictly the largest
        assert scene["class_name"] == scene["shapes"][0]["shape"] == SHAPES[scene["label"]]
        assert 2 <= len(scene["shapes"]) <= 4
        cells = [(s["row"], s["col"]) for s in scene["shapes"]]
        assert len(set(cells)) == len(cells)


def test_pixels_match_the_caption():
    size = 64
    for i in range(60):
        scene = sample_scene(1, i)
        arr = np.asarray(render_scene(scene, size), dtype=int)
        assert arr.shape == (size, size, 3)
        big = scene["shapes"][0]
        if big["shape"] != "ring":  # a ring's centre shows the background
            cx, cy, _ = shape_geometry(big, size)
            got = arr[int(cy), int(cx)]
            assert np.abs(got - PALETTE[big["colour"]]).max() <= 8, (i, big, got.tolist())
        for s in scene["shapes"]:  # every named colour is really drawn
            dist = np.abs(arr - np.array(PALETTE[s["colour"]])).max(axis=-1)
            assert (dist <= 8).sum() >= 3, (i, s)


def test_backgrounds_follow_their_description():
    size = 48
    found = set()
    for i in range(200):
        scene = sample_scene(2, i)
        bg = scene["background"]
        key = (bg["kind"], bg["direction"] if bg["kind"] != "solid" else "")
        if key in found:
            continue
        found.add(key)
        scene = dict(scene, shapes=[])
        arr = np.asarray(render_scene(scene, size), dtype=int)
        c0 = np.array(PALETTE[bg["colours"][0]])
        if bg["kind"] == "solid":
            assert np.abs(arr - c0).max() <= 1
            continue
        c1 = np.array(PALETTE[bg["colours"][1]])
        changes_down = bg["direction"] == ("vertical" if bg["kind"] == "gradient" else "horizontal")
        mid = size // 2
        first, last = (arr[0, mid], arr[-1, mid]) if changes_down else (arr[mid, 0], arr[mid, -1])
        constant_axis = arr[:, size // 2] if not changes_down else arr[size // 2, :]
        assert np.abs(constant_axis - constant_axis[0]).max() <= 1
        assert np.abs(first - c0).max() <= 8
        if bg["kind"] == "gradient":
            assert np.abs(last - c1).max() <= 8
    assert len(found) == 5


def test_written_dataset_reads_back_through_sources(tmp_path):
    summary = make_demo_data(str(tmp_path), n=40, size=16, seed=0, val_fraction=0.25)
    with open(summary["manifest"]) as fh:
        rows = [json.loads(line) for line in fh]
    assert len(rows) == 40 and summary["caption_words"]["max"] <= 75
    by_manifest = list_records(summary["manifest"], split="val")
    by_folder = list_records(summary["images_dir"], split="val")
    assert len(by_manifest) == 10
    assert [(r.key, r.label, r.class_name, r.source_uri) for r in by_manifest] == \
           [(r.key, r.label, r.class_name, r.source_uri) for r in by_folder]
    assert all(r.caption for r in by_manifest)
    with Image.open(by_manifest[0].source_uri) as img:
        assert img.size == (16, 16) and img.format == "PNG"


def test_bad_arguments():
    with pytest.raises(ValueError, match="n >= 1"):
        make_demo_data("/tmp/unused-textok-demo", n=0)


def test_tiles_captions_name_every_tile_in_order_and_the_pixels_agree():
    from textok.pipeline.sources.demo_data import TILE_COLOURS, tile_shape_geometry

    size = 48
    for i in range(60):
        scene = sample_scene(5, i, "tiles")
        cap = scene["caption"]
        assert scene["class_name"] == scene["shape"]["shape"] == SHAPES[scene["label"]]
        assert f"a large {scene['shape']['colour']} {scene['shape']['shape']}" in cap.lower()
        for r, row in enumerate(("top", "middle", "bottom")):
            t = scene["tiles"][3 * r:3 * r + 3]
            assert f"{row} row {t[0]}, {t[1]} and {t[2]}" in cap, (i, cap)
        assert len(cap.split()) <= 75 and all(c in TILE_COLOURS for c in scene["tiles"])
        arr = np.asarray(render_scene(scene, size), dtype=int)
        for k, colour in enumerate(scene["tiles"]):  # an outer pixel of each tile shows its colour
            if k == 4:  # the centre tile lies mostly under the shape
                continue
            r, c = divmod(k, 3)
            y, x = (1 if r == 0 else size - 2 if r == 2 else size // 3 + 1), (1 if c == 0 else size - 2 if c == 2
                                                                              else size // 3 + 1)
            assert np.abs(arr[y, x] - PALETTE[colour]).max() <= 8, (i, k, colour, arr[y, x])
        if scene["shape"]["shape"] not in ("ring", "cross", "star"):  # solid at the centre
            cx, cy, _ = tile_shape_geometry(scene, size)
            assert np.abs(arr[int(cy), int(cx)] - PALETTE[scene["shape"]["colour"]]).max() <= 8
    assert sample_scene(5, 3, "tiles") == sample_scene(5, 3, "tiles")
    with pytest.raises(ValueError, match="style"):
        sample_scene(0, 0, "stripes")
