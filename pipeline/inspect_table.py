"""`textok inspect PATH`: validate any textok table and describe what is in it.

    textok inspect runs/data/shards                 # a folder of shards
    textok inspect runs/data/pools/val.parquet --contact-sheet pools.png
    textok inspect runs/cap/captions --json
    textok inspect s3://bkt/data/shards --project-rows 1281167 --s3_endpoint_url http://127.0.0.1:9000

Checks the schema, metadata and dimensions (schemas.validate + text_len == rows of text_emb,
every embedding finite,
one D across files), then prints row / class counts, text histograms of caption words and
token lengths, the embedding storage dtype, the stored bytes per example split into image /
embedding (with its int8 scales) / other (compressed, from the Parquet footers, so nothing is
decoded for it) and, with `project_rows`, the size of a dataset of that many rows; and writes
a contact sheet PNG of a few images with their captions. PATH may be local, gs:// or s3://.
"""
from __future__ import annotations

import json
import textwrap
from collections import Counter
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from textok.schemas.common import SchemaError, parquet_source, validate
from textok.schemas.shards import SCALE_COLUMN, is_blob, text_emb_arrays

TEXT_TABLES = ("shards", "pools")


def text_histogram(values: Sequence[float], bins: int = 10, width: int = 40) -> list[str]:
    """Lines of a text histogram: `[lo, hi)  count  ####`."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return ["(no values)"]
    counts, edges = np.histogram(values, bins=min(bins, max(1, len(np.unique(values)))))
    top = max(int(counts.max()), 1)
    return [f"{edges[i]:7.1f} - {edges[i + 1]:7.1f} | {int(c):7d} {'#' * max(int(c) > 0, round(width * c / top))}"
            for i, c in enumerate(counts)]


def _column_bytes(files: list[str]) -> dict[str, int]:
    """Compressed bytes per top-level column, summed over row groups and files."""
    out: Counter = Counter()
    for f in files:
        md = pq.ParquetFile(parquet_source(f)).metadata
        for rg in range(md.num_row_groups):
            group = md.row_group(rg)
            for c in range(group.num_columns):
                col = group.column(c)
                out[col.path_in_schema.split(".")[0]] += col.total_compressed_size
    return dict(out)


def _check_text_dims(path: str, table: pa.Table, dim: int, itemsize: int) -> None:
    col = table["text_emb"]
    if is_blob(col.type):  # version 3: raw bytes of [text_len, D]
        rows = pc.binary_length(col).to_numpy(zero_copy_only=False) / (dim * itemsize)
    else:
        rows = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    lens = table["text_len"].to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(rows != lens)
    if len(bad):
        i = int(bad[0])
        raise SchemaError(f"{path}: row {i} (key {table['key'][i].as_py()!r}) has text_len {lens[i]} but "
                          f"text_emb holds {rows[i]:g} token rows of metadata D={dim} ({len(bad)} rows disagree)")
    if len(table) and (int(lens.min()) < 1):
        raise SchemaError(f"{path}: text_len must be >= 1, found {int(lens.min())}")
    bad_rows = [i for i, e in enumerate(text_emb_arrays(table, dim)) if not np.isfinite(e).all()]
    if bad_rows:  # NaN/inf would train into NaN losses naming no row (issue 19)
        keys = [table["key"][i].as_py() for i in bad_rows[:5]]
        raise SchemaError(f"{path}: {len(bad_rows)} row(s) hold NaN/inf in text_emb, first rows {bad_rows[:5]} "
                          f"(keys {keys}); re-encode them (`textok encode` dead-letters such rows) or drop the file")


def project_size(bytes_per_example: dict[str, float], rows: int) -> dict[str, Any]:
    """Bytes of a dataset of `rows` rows at the measured bytes/example (compressed, as stored)."""
    if rows <= 0:
        raise ValueError(f"--project-rows must be positive, got {rows}")
    parts = {k: v * rows for k, v in bytes_per_example.items()}
    return {"rows": rows, **{f"{k}_GB": round(v / 1e9, 3) for k, v in parts.items()},
            "total_GB": round(sum(parts.values()) / 1e9, 3)}


def inspect_table(path: str, contact_sheet: str | None = None, n_images: int = 8,
                  project_rows: int | None = None) -> dict[str, Any]:
    infos = validate(path)
    kinds = {i["table"] for i in infos}
    if len(kinds) != 1:
        raise SchemaError(f"{path}: mixes textok tables {sorted(kinds)}; inspect one table at a time")
    kind = kinds.pop()
    files = [i["path"] for i in infos]
    versions = sorted({i["schema_version"] for i in infos})
    report: dict[str, Any] = {"path": path, "table": kind, "version": ",".join(versions), "files": len(files),
                              "rows": sum(i["num_rows"] for i in infos), "meta": infos[0]["meta"]}
    if kind in TEXT_TABLES:
        dims = {int(i["meta"]["D"]) for i in infos}
        if len(dims) != 1:
            raise SchemaError(f"{path}: files disagree on the embedding width D: {sorted(dims)}")
        report["D"] = dims.pop()
        dtypes = {i["meta"].get("storage_dtype") for i in infos}
        if len(dtypes) != 1:
            raise SchemaError(f"{path}: files mix embedding storage dtypes {sorted(map(str, dtypes))}")
        report["storage_dtype"] = dtypes.pop()
    names = pq.read_schema(parquet_source(files[0])).names
    light = [c for c in ("key", "label", "class_name", "caption", "num_words", "text_len", "error_type")
             if c in names]
    parts = []
    for f in files:
        cols = light + (["text_emb"] if kind in TEXT_TABLES else [])
        if kind in TEXT_TABLES and SCALE_COLUMN in pq.read_schema(parquet_source(f)).names:
            cols.append(SCALE_COLUMN)  # int8 storage: the scales decode (and may hold inf/NaN)
        t = pq.read_table(parquet_source(f), columns=cols)
        if kind in TEXT_TABLES:
            _check_text_dims(f, t, report["D"], 1 if report["storage_dtype"] == "int8" else 2)
            t = t.drop_columns([c for c in ("text_emb", SCALE_COLUMN) if c in t.column_names])
        parts.append(t)
    table = pa.concat_tables(parts)
    if "label" in names:
        labels = [x for x in table["label"].to_pylist() if x is not None]
        report["classes"] = len(set(labels))
        report["unlabelled"] = table.num_rows - len(labels)
        report["rows_per_class"] = {"min": min(Counter(labels).values()) if labels else 0,
                                    "max": max(Counter(labels).values()) if labels else 0}
    if "error_type" in names:
        report["error_types"] = dict(Counter(table["error_type"].to_pylist()).most_common())
    if "caption" in names:
        words = (table["num_words"].to_numpy(zero_copy_only=False) if "num_words" in names
                 else np.array([len(c.split()) for c in table["caption"].to_pylist()]))
        report["caption_words"] = {"mean": float(np.mean(words)) if len(words) else 0.0,
                                   "max": int(np.max(words)) if len(words) else 0,
                                   "histogram": text_histogram(words)}
    if "text_len" in names:
        lens = table["text_len"].to_numpy(zero_copy_only=False)
        report["text_len"] = {"mean": float(np.mean(lens)) if len(lens) else 0.0,
                              "max": int(np.max(lens)) if len(lens) else 0,
                              "at_max_tokens": int(np.sum(lens >= int(report["meta"].get("max_tokens", 1 << 30)))),
                              "histogram": text_histogram(lens)}
    col_bytes = _column_bytes(files)
    n = max(report["rows"], 1)
    image, emb = col_bytes.pop("image", 0), col_bytes.pop("text_emb", 0) + col_bytes.pop(SCALE_COLUMN, 0)
    report["bytes_per_example"] = {"image": image / n, "embedding": emb / n, "other": sum(col_bytes.values()) / n}
    if project_rows is not None:
        report["projected"] = project_size(report["bytes_per_example"], project_rows)
    if contact_sheet:
        if "caption" not in names:
            raise SchemaError(f"{path}: a {kind!r} table has no captions or images for a contact sheet")
        report["contact_sheet"] = write_contact_sheet(files, kind, contact_sheet, n_images)
    return report


def _sheet_items(files: list[str], kind: str, n: int) -> list[tuple[bytes | None, str, str]]:
    cols = ["key", "caption"] + (["image"] if kind == "shards" else ["source_uri"] if kind == "captions" else [])
    items = []
    for f in files:
        for batch in pq.ParquetFile(parquet_source(f)).iter_batches(batch_size=n, columns=cols):
            for row in batch.to_pylist():
                if "image" in row:
                    data = row["image"]["bytes"]  # datasets' Image() storage: {bytes, path}
                elif "source_uri" in row:
                    from textok.schemas.images import ImageDecodeError
                    from textok.pipeline.sources.records import read_image_bytes

                    try:
                        data = read_image_bytes(row["source_uri"])
                    except ImageDecodeError:
                        data = None  # drawn as "unreadable", never as a fake image
                else:
                    data = None
                items.append((data, row["key"], row["caption"]))
                if len(items) == n:
                    return items
    return items


def write_contact_sheet(files: list[str], kind: str, out_png: str, n: int = 8, thumb: int = 160,
                        cols: int = 4) -> str:
    """A grid of thumbnails with key + wrapped caption under each (tables without images: text only)."""
    from PIL import Image, ImageDraw, ImageFont

    items = _sheet_items(files, kind, n)
    if not items:
        raise SchemaError(f"{files[0]}: no rows to draw")
    # Pillow's bitmap font: monospaced, with a full-width space. load_default() is a FreeType font
    # at 10 px whose space is 2 px wide, so wrapped captions read "a photoofa tench".
    font = ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") \
        else ImageFont.load_default()
    chars = max(8, int(thumb // max(1.0, font.getlength("m"))))  # what fits under one thumbnail
    text_h = 14 * 9
    cols = min(cols, len(items))
    rows = -(-len(items) // cols)
    sheet = Image.new("RGB", (cols * (thumb + 10) + 10, rows * (thumb + text_h + 10) + 10), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (data, key, caption) in enumerate(items):
        x, y = 10 + (i % cols) * (thumb + 10), 10 + (i // cols) * (thumb + text_h + 10)
        if data is not None:
            try:
                from textok.schemas.images import decode_image

                img = decode_image(data)
                scale = thumb / max(img.size)  # small images are scaled up too, pixels kept sharp
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                 Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC)
                sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
            except Exception as e:  # noqa: BLE001 - show why, in place of the picture
                draw.text((x, y), f"unreadable:\n{type(e).__name__}", fill="red", font=font)
        else:
            draw.rectangle((x, y, x + thumb, y + thumb), outline="grey")
        lines = [key[:chars]] + textwrap.wrap(caption, width=chars)[:7]
        draw.multiline_text((x, y + thumb + 2), "\n".join(lines), fill="black", font=font, spacing=2)
    sheet.save(out_png)
    return out_png


def format_report(r: dict[str, Any]) -> str:
    out = [f"{r['path']}: textok table {r['table']!r} version {r['version']}, {r['files']} file(s), {r['rows']} rows "
           f"— valid"]
    m = r["meta"]
    if "D" in r:
        out.append(f"  encoder {m.get('encoder')} (D={r['D']}, max_tokens {m.get('max_tokens')}, compute "
                   f"{m.get('compute_dtype')}, stored {m.get('storage_dtype')}, hash {m.get('encoder_hash')})")
    for k in ("captioner", "prompt_version", "image_mode", "per_class", "seed", "source_split", "pool_holdout_fraction"):
        if k in m:
            out.append(f"  {k}: {m[k]}")
    if "classes" in r:
        out.append(f"  classes: {r['classes']} (rows per class {r['rows_per_class']['min']}-{r['rows_per_class']['max']}"
                   f", unlabelled rows {r['unlabelled']})")
    if "error_types" in r:
        out.append(f"  error types: {r['error_types']}")
    if "caption_words" in r:
        cw = r["caption_words"]
        out += [f"  caption words: mean {cw['mean']:.1f}, max {cw['max']}"] + ["    " + s for s in cw["histogram"]]
    if "text_len" in r:
        tl = r["text_len"]
        out += [f"  token length: mean {tl['mean']:.1f}, max {tl['max']}, truncated at max_tokens {tl['at_max_tokens']}"]
        out += ["    " + s for s in tl["histogram"]]
    b = r["bytes_per_example"]
    out.append(f"  bytes/example (compressed): image {b['image']:.0f}, embedding {b['embedding']:.0f}"
               + (f" ({r['storage_dtype']})" if "storage_dtype" in r else "")
               + f", other {b['other']:.0f}, total {sum(b.values()):.0f}")
    if "projected" in r:
        p = r["projected"]
        out.append(f"  projected for {p['rows']} rows: image {p['image_GB']} GB, embedding {p['embedding_GB']} GB, "
                   f"other {p['other_GB']} GB, total {p['total_GB']} GB")
    if r.get("contact_sheet"):
        out.append(f"  contact sheet: {r['contact_sheet']}")
    return "\n".join(out)


def report_json(r: dict[str, Any]) -> str:
    return json.dumps(r, indent=1, sort_keys=True, default=str)
