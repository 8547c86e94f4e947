"""`textok caption-report` on synthetic captions folders of growing size -> JSON: time and peak RSS.

    python bench/caption_report_rows.py                               # 10k and 100k rows, ~2-4 min on 2 cores
    python bench/caption_report_rows.py --rows 10000 100000 1000000 --out bench/results/caption_report.json

Each size gets its own folder of compacted caption files (100k rows per file, as `textok compact`
writes them; ImageNet-like labels and class names, captions of 8-30 words drawn from a 400-word
vocabulary, 2 % exact duplicates, 1 % near duplicates, 1 % short captions, 1 % openers), and
the report runs in a fresh process (`python -m textok caption-report`), whose own report.json
records its wall time and peak RSS (getrusage). Bounded memory means the RSS barely moves
between sizes: the streamed passes hold one batch; what grows is ~40 B per row for the
duplicate index (see pipeline/captioning/report.py). No --clip: image reading and a model would
dominate and are bounded by the batch anyway.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_folder(root: str, rows: int, seed: int = 0, rows_per_file: int = 100_000) -> str:
    from textok.schemas.captions import CAPTIONS_SCHEMA
    from textok.schemas.common import with_metadata, write_table_atomic

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(400)] + "a the of in on with near and red green blue".split(), dtype=object)
    schema = with_metadata(CAPTIONS_SCHEMA, "captions", "caption", {"captioner": "bench", "prompt_version": "v1"})
    names = [f"class{i}" for i in range(1000)]
    for f, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        labels = rng.integers(0, 1000, n)
        lengths = rng.integers(8, 31, n)
        caps = []
        for i in range(n):
            words = rng.choice(vocab, lengths[i])
            if rng.random() < 0.7:
                words[1] = names[labels[i]]
            caps.append(" ".join(words) + ".")
        for i in range(n):
            u = rng.random()
            if u < 0.02 and i:
                caps[i] = caps[int(rng.integers(0, i))]
            elif u < 0.03 and i:
                caps[i] = caps[int(rng.integers(0, i))][:-1] + " today."
            elif u < 0.04:
                caps[i] = "a thing."
            elif u < 0.05:
                caps[i] = "The image shows " + caps[i]
        keys = [f"k{start + i:09d}" for i in range(n)]
        table = pa.table({
            "key": keys, "split": ["train"] * n, "label": labels.astype(np.int32),
            "class_name": [names[x] for x in labels], "source_uri": [f"/nonexistent/{k}.jpg" for k in keys],
            "caption": caps, "num_words": np.array([len(c.split()) for c in caps], np.int32),
            "captioner": ["bench:model"] * n, "prompt_version": ["v1" if i % 2 else "v2" for i in range(n)],
            "input_tokens": pa.nulls(n, pa.int64()), "output_tokens": pa.nulls(n, pa.int64()),
            "attempts": np.ones(n, np.int32), "width": np.full(n, 256, np.int32), "height": np.full(n, 256, np.int32),
        }).cast(schema)
        write_table_atomic(table, os.path.join(root, "captions", f"captions-bench-{f:05d}.parquet"))
    return root


def run_report(captions: str, output: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "textok", "caption-report", "--captions", captions, "--output", output,
                    "--contact-sheet", "8"], check=True, env=env, stdout=subprocess.DEVNULL)
    with open(os.path.join(output, "report.json")) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from _report import emit

    results = []
    with tempfile.TemporaryDirectory(prefix="textok-bench-caption-report-") as tmp:
        for n in args.rows:
            folder = make_folder(os.path.join(tmp, f"cap{n}"), n)
            r = run_report(folder, os.path.join(tmp, f"report{n}"))
            results.append({"rows": n, "wall_s": r["wall_s"], "rows_per_s": round(n / r["wall_s"], 1),
                            "peak_rss_mb": r["peak_rss_mb"], "flagged": r["flags"]["flagged"],
                            "exact_dup_rate": r["duplicates"]["exact_rate"],
                            "near_dup_rate": r["duplicates"]["near_rate"], "short": r["flags"]["short"],
                            "boilerplate": r["flags"]["boilerplate"]})
    emit({"bench": "caption_report_rows", "python": sys.version.split()[0], "results": results,
          "rss_growth_mb_per_100k_rows": round((results[-1]["peak_rss_mb"] - results[0]["peak_rss_mb"])
                                               / max(results[-1]["rows"] - results[0]["rows"], 1) * 1e5, 1)
          if len(results) > 1 else None}, args.out)


if __name__ == "__main__":
    main()
