"""A synthetic captioned image set where the caption carries real information.

Two styles. `tiles` (what `make demo` uses): a 3x3 quilt of coloured tiles (8 colours) with one
large black or white shape over its centre; the class is the shape, and the caption names the
shape, its colour and all nine tile colours row by row, left to right. The tiles hold ~27 bits
that a handful of latent tokens of a small tokenizer trained for minutes cannot store, while the
caption states them exactly: the regime of the paper's gain (DESIGN §6), made plain. Flipping
such an image would contradict its caption (train without --hflip).

`shapes`: each image holds 2-4 shapes (circle, square, triangle, star, ring, cross, diamond) with a
named colour, a size (small / medium / large) and a place on a 3x3 grid, over a solid,
gradient or striped background. The caption names all of it, so a tokenizer that reads
the caption can spend its few tokens on what the text leaves out — the regime where
TexTok beats a no-text tokenizer. The class is the kind of the largest shape.

    textok make-demo-data --out demo_out --n 2000 --size 64 --seed 0 [--style tiles]
    # -> demo_out/images/{train,val}/<class>/<id>.png and demo_out/manifest.jsonl

Both layouts feed `pipeline.sources.records.list_records`: the manifest (with provided captions)
or the class-folder tree. Image i depends only on (seed, i), never on n.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "cross", "diamond", "ring", "square", "star", "triangle")  # sorted: index == label
PALETTE = {
    "red": (215, 38, 45), "orange": (245, 140, 30), "yellow": (242, 215, 40), "green": (45, 165, 70),
    "blue": (40, 85, 215), "purple": (135, 60, 185), "pink": (240, 135, 185), "cyan": (45, 200, 215),
    "brown": (125, 78, 40), "white": (246, 246, 246), "black": (22, 22, 22), "grey": (128, 128, 128),
}
COLOURS = tuple(PALETTE)
# Radius as a fraction of the image side; large shapes may spill into neighbouring cells.
SIZES = {"small": 0.09, "medium": 0.15, "large": 0.22}
ROWS, COLS = ("top", "middle", "bottom"), ("left", "centre", "right")
SUPERSAMPLE = 4  # drawn at 4x and box-downsampled: PIL's ImageDraw does not antialias


def place_name(row: int, col: int, rng: np.random.Generator) -> str:
    if (row, col) == (1, 1):
        return str(rng.choice(["in the centre", "in the middle"]))
    if row == 1:
        return f"on the {COLS[col]}" if rng.random() < 0.5 else f"in the middle {COLS[col]}"
    if col == 1:
        return f"at the {ROWS[row]}" if rng.random() < 0.5 else f"at the {ROWS[row]} centre"
    corner = f"{ROWS[row]} {COLS[col]}"
    return f"in the {corner}" if rng.random() < 0.5 else f"in the {corner} corner"


TILE_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "cyan")
INKS = ("black", "white")
TILE_SHAPE_RADIUS = 0.36  # of the side: large enough that a tokenizer trained for minutes renders the kind (measured)
STYLES = ("shapes", "tiles")


def sample_tiles_scene(seed: int, index: int) -> dict:
    """A `tiles` scene: row-major colours of the 3x3 tiles + the class shape over the centre."""
    rng = np.random.default_rng([seed, index, len(STYLES)])  # its own stream: not a `shapes` scene
    label = int(rng.integers(len(SHAPES)))
    tiles = [str(c) for c in rng.choice(TILE_COLOURS, size=9)]
    shape = {"shape": SHAPES[label], "colour": str(rng.choice(INKS)), "jitter": rng.uniform(-0.04, 0.04, 2).tolist(),
             "angle": float(rng.uniform(-0.3, 0.3))}
    rows = [_and_list(tiles[3 * r:3 * r + 3]) for r in range(3)]
    what = f"a large {shape['colour']} {shape['shape']}"
    quilt = f"top row {rows[0]}; middle row {rows[1]}; bottom row {rows[2]}"
    if rng.random() < 0.5:
        text = f"{what} over nine coloured tiles: {quilt}."
    else:
        text = f"nine coloured tiles, {quilt}, with {what} in the middle."
    return {"index": index, "style": "tiles", "label": label, "class_name": SHAPES[label], "tiles": tiles,
            "shape": shape, "caption": text[0].upper() + text[1:]}


def sample_scene(seed: int, index: int, style: str = "shapes") -> dict:
    """The scene description of image `index`: background + shapes (largest first), or tiles."""
    if style == "tiles":
        return sample_tiles_scene(seed, index)
    if style != "shapes":
        raise ValueError(f"demo data style {style!r}: expected one of {STYLES}")
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(SHAPES)))
    n_shapes = int(rng.integers(2, 5))
    kind = str(rng.choice(["solid", "gradient", "stripes"], p=[0.4, 0.3, 0.3]))
    bg_colours = [str(c) for c in rng.choice(COLOURS, size=1 if kind == "solid" else 2, replace=False)]
    background = {"kind": kind, "colours": bg_colours,
                  "direction": str(rng.choice(["horizontal", "vertical"])),
                  "stripes": int(rng.integers(3, 7))}
    free = [str(c) for c in COLOURS if c not in bg_colours]  # a shape never vanishes into its background
    cells = rng.permutation(9)[:n_shapes]
    # The class shape is strictly the largest, so "kind of the largest shape" is well defined.
    top_size = "large" if n_shapes <= 3 or rng.random() < 0.7 else "medium"
    smaller = ["small", "medium"] if top_size == "large" else ["small"]
    shapes = []
    for j in range(n_shapes):
        shapes.append({
            "shape": SHAPES[label] if j == 0 else str(rng.choice(SHAPES)),
            "colour": str(rng.choice(free)),
            "size": top_size if j == 0 else str(rng.choice(smaller)),
            "row": int(cells[j] // 3), "col": int(cells[j] % 3),
            "jitter": rng.uniform(-0.04, 0.04, size=2).tolist(),
            "angle": float(rng.uniform(-0.3, 0.3)),
        })
    return {"index": index, "label": label, "class_name": SHAPES[label], "background": background, "shapes": shapes,
            "caption": caption_for(shapes, background, rng)}


def _and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption_for(shapes: list[dict], background: dict, rng: np.random.Generator) -> str:
    phrases = [f"a {s['size']} {s['colour']} {s['shape']} {place_name(s['row'], s['col'], rng)}" for s in shapes]
    listed, others = _and_list(phrases), _and_list(phrases[1:])
    c = background["colours"]
    if background["kind"] == "solid":
        bg = f"a {rng.choice(['plain', 'solid'])} {c[0]} background"
    elif background["kind"] == "gradient":
        vertical = background["direction"] == "vertical"
        ends = ("at the top", "at the bottom") if vertical else ("on the left", "on the right")
        bg = f"a background fading from {c[0]} {ends[0]} to {c[1]} {ends[1]}"
    else:
        bg = f"a background of {c[0]} and {c[1]} {background['direction']} stripes"
    style = int(rng.integers(3))
    if style == 0:
        text = f"{listed} on {bg}."
    elif style == 1:
        text = f"{bg}, with {listed}."
    else:
        text = f"{phrases[0]} dominates {bg}; there is also {others}."
    return text[0].upper() + text[1:]


def _background(bg: dict, side: int) -> Image.Image:
    c = [np.array(PALETTE[name], dtype=np.float32) for name in bg["colours"]]
    if bg["kind"] == "solid":
        return Image.new("RGB", (side, side), tuple(int(v) for v in c[0]))
    t = (np.arange(side, dtype=np.float32) + 0.5) / side
    if bg["kind"] == "gradient":
        line = c[0][None, :] * (1 - t[:, None]) + c[1][None, :] * t[:, None]
    else:  # stripes: alternate the two colours, bg["stripes"] bands across the image
        line = np.where((np.floor(t * bg["stripes"]) % 2 == 0)[:, None], c[0][None, :], c[1][None, :])
    # A top-to-bottom ("vertical") gradient and "horizontal" stripes both change colour down the rows.
    along_rows = (bg["kind"] == "gradient") == (bg["direction"] == "vertical")
    arr = np.broadcast_to(line[:, None, :] if along_rows else line[None, :, :], (side, side, 3))
    return Image.fromarray(arr.round().astype(np.uint8), "RGB")


def _polygon(cx: float, cy: float, r: float, points: int, angle: float, inner: float = 1.0) -> list[tuple]:
    n = points * (2 if inner != 1.0 else 1)
    out = []
    for k in range(n):
        rad = r if (inner == 1.0 or k % 2 == 0) else r * inner
        a = angle - math.pi / 2 + 2 * math.pi * k / n
        out.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return out


def shape_geometry(s: dict, side: float) -> tuple[float, float, float]:
    """(centre x, centre y, radius) in pixels of a shape on a side x side canvas."""
    cell, r = side / 3, SIZES[s["size"]] * side
    # Clamped so every shape lies whole inside the image: the caption names all of it.
    cx = min(max((s["col"] + 0.5) * cell + s["jitter"][0] * side, 1.2 * r), side - 1.2 * r)
    cy = min(max((s["row"] + 0.5) * cell + s["jitter"][1] * side, 1.2 * r), side - 1.2 * r)
    return cx, cy, r


def _draw_shape(draw: ImageDraw.ImageDraw, s: dict, side: int) -> None:
    cx, cy, r = shape_geometry(s, side)
    _draw_at(draw, s["shape"], cx, cy, r, PALETTE[s["colour"]], s["angle"])


def _draw_at(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill: tuple, a: float) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(1, round(r * 0.4)))
    elif kind == "square":
        draw.polygon(_polygon(cx, cy, r * 1.15, 4, a + math.pi / 4), fill=fill)
    elif kind == "diamond":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, 0.0), fill=fill)
    elif kind == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, r * 1.2, 3, a), fill=fill)
    elif kind == "star":
        draw.polygon(_polygon(cx, cy, r * 1.2, 5, a, inner=0.45), fill=fill)
    elif kind == "cross":
        w = r * 0.38
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}; known: {SHAPES}")


def tile_shape_geometry(scene: dict, side: float) -> tuple[float, float, float]:
    """(centre x, centre y, radius) in pixels of a `tiles` scene's shape."""
    jx, jy = scene["shape"]["jitter"]
    return (0.5 + jx) * side, (0.5 + jy) * side, TILE_SHAPE_RADIUS * side


def _render_tiles(scene: dict, side: int) -> Image.Image:
    img = Image.new("RGB", (side, side))
    draw = ImageDraw.Draw(img)
    edges = [round(side * k / 3) for k in range(4)]
    for i, colour in enumerate(scene["tiles"]):
        r, c = divmod(i, 3)
        draw.rectangle([edges[c], edges[r], edges[c + 1] - 1, edges[r + 1] - 1], fill=PALETTE[colour])
    cx, cy, r = tile_shape_geometry(scene, side)
    _draw_at(draw, scene["shape"]["shape"], cx, cy, r, PALETTE[scene["shape"]["colour"]], scene["shape"]["angle"])
    return img


def render_scene(scene: dict, size: int) -> Image.Image:
    """Draw a scene at `size` x `size` pixels (RGB), antialiased by 4x supersampling."""
    side = size * SUPERSAMPLE
    if scene.get("style") == "tiles":
        return _render_tiles(scene, side).reduce(SUPERSAMPLE)
    img = _background(scene["background"], side)
    draw = ImageDraw.Draw(img)
    for s in scene["shapes"]:  # largest first, so smaller shapes stay visible on top
        _draw_shape(draw, s, side)
    return img.reduce(SUPERSAMPLE)


def make_demo_data(out_dir: str, n: int = 2000, size: int = 64, seed: int = 0, val_fraction: float = 0.1,
                   style: str = "shapes") -> dict:
    """Write out_dir/images/<split>/<class>/<id>.png and out_dir/manifest.jsonl; return a summary."""
    if n < 1 or size < 8 or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"need n >= 1, size >= 8 and 0 <= val_fraction < 1 (got n={n}, size={size}, "
                         f"val_fraction={val_fraction})")
    n_val = round(n * val_fraction)
    val_ids = set(np.random.default_rng([seed, n]).permutation(n)[:n_val].tolist())
    # The manifest carries the labels (index in SHAPES). The class-folder tree gives the same
    # labels whenever every class occurs, which at 7 balanced classes means n >= ~50.
    counts = {"train": 0, "val": 0}
    rows = []
    for i in range(n):
        scene = sample_scene(seed, i, style)
        split = "val" if i in val_ids else "train"
        rel = f"images/{split}/{scene['class_name']}/{i:06d}.png"
        os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
        render_scene(scene, size).save(os.path.join(out_dir, rel), format="PNG", compress_level=1)
        counts[split] += 1
        rows.append({"uri": rel, "key": f"{scene['class_name']}/{i:06d}", "split": split, "label": scene["label"],
                     "class_name": scene["class_name"], "caption": scene["caption"]})
    manifest = os.path.join(out_dir, "manifest.jsonl")
    tmp = manifest + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, manifest)
    words = [len(r["caption"].split()) for r in rows]
    return {"out_dir": out_dir, "style": style, "manifest": manifest, "images_dir": os.path.join(out_dir, "images"), "n": n,
            "size": size, "seed": seed, "splits": counts, "classes": list(SHAPES),
            "caption_words": {"min": min(words), "mean": round(sum(words) / n, 1), "max": max(words)}}

