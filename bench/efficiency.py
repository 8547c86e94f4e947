"""Benchmark of the generator cost (not a test): prints JSON.

    OMP_NUM_THREADS=2 .venv/bin/python bench/efficiency.py [--tokens 32] [--repeats 2] [--out DIR]

TexTok's claim (Fig. 4): a DiT-XL on N = 32 TexTok tokens needs far less compute than
DiT-XL/2 on a 512 px SD-VAE latent (1024 tokens).
1. GFLOPs per sample (DiT convention, 1 multiply-add = 1 FLOP; 250 steps, CFG) of DiT-XL on
   N tokens vs DiT-XL/2 at 512 px, from trainer.evaluation.efficiency. Goal: >= 35x fewer.
2. Measured CPU time of one forward at batch 1 (fastest of a few after one warm-up) of the
   same two models, and its ratio; the 1-minute load average is recorded because on a
   shared machine it dominates the noise. Decoders are excluded from both (see trainer/evaluation/efficiency.py).
With --out DIR, also writes DIR/efficiency.json and the full Fig. 4 style report/plot at
N = 32, 64, 128, 256 (FLOPs only) to DIR/efficiency_report.{json,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GOAL_GFLOPS_RATIO = 35.0


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2, help="timed forwards of the (slow) baseline")
    ap.add_argument("--ours-repeats", type=int, default=5, help="timed forwards of ours (cheap)")
    ap.add_argument("--no-time", action="store_true", help="FLOPs only (skips the slow XL timing)")
    ap.add_argument("--out", default=None, help="directory for efficiency.json and the report plot")
    args = ap.parse_args()

    import torch

    from textok.trainer.evaluation.efficiency import (baseline_config, efficiency_report, time_forward, write_efficiency_json,
                                    write_efficiency_plot)
    from textok.trainer.models.dit import dit_config

    start = time.perf_counter()
    report = efficiency_report("XL", [args.tokens], image_size=args.image_size, measure_time=False)
    ours = next(m for m in report["models"] if m["kind"] == "textok")
    base = next(m for m in report["models"] if m.get("image_size") == args.image_size)
    ratio = base["gflops_per_sample"] / ours["gflops_per_sample"]
    result = {
        "ours": {k: ours[k] for k in ("name", "tokens", "gflops_per_forward", "gflops_per_sample")},
        "baseline": {k: base[k] for k in ("name", "tokens", "gflops_per_forward", "gflops_per_sample")},
        "steps_cfg": report["per_sample"],
        "gflops_ratio": round(ratio, 2),
        "goal_gflops_ratio": GOAL_GFLOPS_RATIO,
        "goal_met": ratio >= GOAL_GFLOPS_RATIO,
        "flops_convention": report["flops_convention"],
        "excluded": report["excluded"],
    }
    if not args.no_time:
        ours_s = time_forward(dit_config("XL", num_tokens=args.tokens), None, "cpu", args.ours_repeats)
        base_s = time_forward(baseline_config(args.image_size), None, "cpu", args.repeats)
        result["cpu_time"] = {
            "method": f"single forwards at batch 1, no CFG, after one warm-up ({args.ours_repeats} timed for "
                      f"ours, {args.repeats} for the baseline); ratio of the fastest (min) of each",
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0],
            "ours_forward_s": [round(v, 4) for v in ours_s], "baseline_forward_s": [round(v, 4) for v in base_s],
            "time_ratio": round(base_s[0] / ours_s[0], 2),
        }
    result["bench_wall_s"] = round(time.perf_counter() - start, 1)
    if args.out:
        write_efficiency_json(result, os.path.join(args.out, "efficiency.json"))
        full = efficiency_report("XL", [32, 64, 128, 256], image_size=args.image_size, measure_time=False)
        write_efficiency_json(full, os.path.join(args.out, "efficiency_report.json"))
        write_efficiency_plot(full, os.path.join(args.out, "efficiency_report.png"))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
