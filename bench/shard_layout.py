"""How should shards store `text_emb`? Read cost, bytes and what each reader shows, per layout -> JSON.

    python bench/shard_layout.py                          # D=2048, 128 rows: ~20 s on 2 CPU cores
    python bench/shard_layout.py --dim 4096 --rows 64     # T5-XXL width
    python bench/shard_layout.py --tiny                   # the test's seconds-long run

The same unpadded float16 `[text_len, D]` matrices (text_len 20-90, as T5 captions of <= 75 words)
are written in each layout, with and without zstd, and read back the way the loader reads them:
`read_row_group` of the column (one thread) + decode to a numpy `[text_len, D]` array per row.

- `nested`: `list<fixed_size_list<float16, D>>`, shards version 2;
- `flat`: `list<halffloat>` of text_len * D values (the shape kept in `text_len`);
- `fixed`: `fixed_size_list<halffloat, max_tokens * D>`, padded to max_tokens (no offsets at all);
- `blob`: `binary`, the raw little-endian bytes (shards version 3).

Per layout: `read_decode_ms_per_row` (best of --repeats), `bytes_per_row` (the file's size),
`pyarrow` (the Arrow type), `datasets` (the feature `datasets` infers) and `duckdb` (the SQL type
DuckDB reports). `choice` names the layout schemas/shards.py writes and the goal it is held to.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import emit  # noqa: E402

GOAL_MS_PER_ROW = 0.25  # at D = 2048 (issue 20)


def embeddings(rows: int, dim: int, max_tokens: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lens = rng.integers(min(20, max_tokens), min(90, max_tokens) + 1, rows)
    # T5 outputs are roughly Gaussian per channel: the compressibility of float16 N(0,1) values (~8 %)
    # matches what zstd saves on real T5-XL embeddings (~7 %, issue 20)
    return [rng.standard_normal((int(n), dim)).astype(np.float16) for n in lens]


def build(layout: str, embs: list[np.ndarray], dim: int, max_tokens: int) -> pa.Array:
    from textok.schemas.shards import text_emb_blob_columns, text_emb_column

    lens = np.array([len(e) for e in embs])
    if layout == "nested":
        return text_emb_column(embs, dim)
    if layout == "blob":
        return text_emb_blob_columns(embs, dim)["text_emb"]
    flat = np.concatenate([e.reshape(-1) for e in embs])
    if layout == "flat":
        return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lens * dim)]).astype(np.int32)),
                                        pa.array(flat))
    pad = np.zeros((len(embs), max_tokens, dim), np.float16)
    for i, e in enumerate(embs):
        pad[i, :len(e)] = e
    return pa.FixedSizeListArray.from_arrays(pa.array(pad.reshape(-1)), max_tokens * dim)


def decode(layout: str, column: pa.ChunkedArray, lens: np.ndarray, dim: int) -> list[np.ndarray]:
    """Numpy [text_len, D] per row, as cheaply as each layout allows (zero-copy where it can be)."""
    from textok.schemas.shards import text_emb_views

    if layout in ("nested", "blob"):
        return text_emb_views(column, dim)
    out = []
    for chunk in column.chunks:
        flat = chunk.values.to_numpy(zero_copy_only=True)
        if layout == "flat":
            offs = chunk.offsets.to_numpy()
            out += [flat[offs[i]:offs[i + 1]].reshape(-1, dim) for i in range(len(chunk))]
        else:
            mat = flat.reshape(len(chunk), -1, dim)
            out += [mat[i] for i in range(len(chunk))]
    return [o[:n] for o, n in zip(out, lens)]  # fixed: drop the padding


def readers(path: str) -> dict:
    """What pyarrow, datasets and DuckDB make of the column, without custom code."""
    out = {"pyarrow": str(pq.read_schema(path).field("text_emb").type)}
    try:
        import datasets

        out["datasets"] = repr(datasets.Features.from_arrow_schema(pq.read_schema(path))["text_emb"])
    except ImportError:
        out["datasets"] = "not installed"
    try:
        import duckdb

        out["duckdb"] = duckdb.sql(f"DESCRIBE SELECT text_emb FROM read_parquet('{path}')").fetchall()[0][1]
    except ImportError:
        out["duckdb"] = "not installed"
    return out


def measure(layout: str, compression: str, embs: list[np.ndarray], dim: int, max_tokens: int, tmp: str,
            repeats: int) -> dict:
    path = os.path.join(tmp, f"{layout}-{compression}.parquet")
    pq.write_table(pa.table({"text_emb": build(layout, embs, dim, max_tokens)}), path, compression=compression,
                   use_dictionary=False, row_group_size=len(embs))
    lens = np.array([len(e) for e in embs])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        pf = pq.ParquetFile(path)
        got = decode(layout, pf.read_row_group(0, use_threads=False).column("text_emb"), lens, dim)
        best = min(best, time.perf_counter() - t0)
    assert all(np.array_equal(a, b) for a, b in zip(got, embs)), f"{layout}: decode does not round-trip"
    return {"read_decode_ms_per_row": round(best / len(embs) * 1e3, 4),
            "bytes_per_row": round(os.path.getsize(path) / len(embs)), **readers(path)}


def run(rows: int, dim: int, max_tokens: int, repeats: int) -> dict:
    from textok.schemas.shards import SHARDS_VERSION

    embs = embeddings(rows, dim, max_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        table = {f"{layout}/{c}": measure(layout, c, embs, dim, max_tokens, tmp, repeats)
                 for layout in ("nested", "flat", "fixed", "blob") for c in ("none", "zstd")}
    blob = table["blob/none"]["read_decode_ms_per_row"]
    return {"rows": rows, "D": dim, "max_tokens": max_tokens, "mean_text_len": round(float(np.mean([len(e) for e in embs])), 1),
            "layouts": table,
            "choice": {"layout": "blob/none", "shards_version": SHARDS_VERSION, "goal_ms_per_row_at_D2048": GOAL_MS_PER_ROW,
                       "blob_vs_nested_v2": round(table["nested/none"]["read_decode_ms_per_row"] / blob, 1),
                       "blob_vs_flat_typed": round(table["flat/none"]["read_decode_ms_per_row"] / blob, 1),
                       "zstd_saves": round(1 - table["blob/zstd"]["bytes_per_row"] / table["blob/none"]["bytes_per_row"], 3),
                       "zstd_read_cost": round(table["blob/zstd"]["read_decode_ms_per_row"] / blob, 1)}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="best of this many reads per figure (shared machine)")
    p.add_argument("--tiny", action="store_true", help="seconds: 8 rows of D=64 (the test's run)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.tiny:
        args.rows, args.dim, args.repeats = 8, 64, 1
    emit({"bench": "shard_layout", **run(args.rows, args.dim, args.max_tokens, args.repeats)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
