#!/usr/bin/env bash
# The offline demo: synthetic captioned shapes -> captions (provided) -> summary.
set -euo pipefail
OUT=${1:-demo_out}
mkdir -p "$OUT"
textok make-demo-data --out "$OUT/data" --n 2000 --size 64
textok caption --input "$OUT/data/manifest.jsonl" --source manifest --split train --output "$OUT/prepared" --captioner provided
cat "$OUT/prepared/caption_summary.json"
