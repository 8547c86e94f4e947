"""Tokenizer training-step benchmark -> JSON: images/s, forward+backward FLOPs, and MFU on GPU.

    python bench/train_step.py                       # CPU: tiny and S at 256 px (about a minute)
    python bench/train_step.py --out bench/results/train_step.json
    python bench/train_step.py --presets B --batch-size 32 --steps 10     # on a GPU: bf16, MFU

What is timed is the real `trainer.training.train_tokenizer.train_step` (tokenizer forward + losses +
backward + AdamW, and the discriminator step when --with-disc). FLOPs come from
torch.utils.flop_counter.FlopCounterMode over one such step (matmuls/convs/attention; it does
not count elementwise ops, so MFU is slightly understated). On CPU the default measures the
tokenizer step alone (L2 loss, no discriminator, no perceptual net): that is what dominates at
the paper's settings before step 80k; on GPU the full step (StyleGAN D active, Inception
perceptual) of the B preset runs in bf16 autocast.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from textok.trainer.training.distributed import Dist
from textok.trainer.training.optim import build_optimizer, warmup_cosine
from textok.trainer.training.train_tokenizer import build_model, load_config, train_step  # noqa: E402

# Dense bf16 peak (no sparsity), for MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def synthetic_batch(batch: int, image_size: int, text_dim: int, max_tokens: int) -> dict:
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(8, max_tokens + 1, (batch,), generator=g)
    mask = torch.arange(max_tokens)[None] < lens[:, None]
    return {"images": torch.rand(batch, 3, image_size, image_size, generator=g) * 2 - 1,
            "text_emb": (torch.randn(batch, max_tokens, text_dim, generator=g) * mask[..., None]).half(),
            "text_mask": mask}


def bench(preset: str, batch: int, steps: int, device: torch.device, with_disc: bool, perceptual: str,
          image_size: int = 256, text_dim: int = 2048, max_tokens: int = 128, num_tokens: int | None = None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    # load_config fills the sizes left unset (num_tokens, token_dim) from the preset, as the trainer does
    cfg = load_config(None, shards="-", output="-", preset=preset, image_size=image_size, patch_size=8,
                      num_tokens=num_tokens,
                      steps=10_000, batch_size=batch, warmup=0, perceptual=perceptual,
                      disc_start=0 if with_disc else 10**9)
    model, loss_fn = build_model(cfg, text_dim, max_tokens)
    model.to(device).train()
    loss_fn.to(device)
    opt_g = build_optimizer(model, cfg.lr)
    # the trainer creates D at disc_start (train_tokenizer.start_discriminator); here only when it is timed
    opt_d = build_optimizer(loss_fn.start_discriminator(0), cfg.lr) if with_disc else None
    sched = warmup_cosine(opt_g, 0, cfg.steps)
    data = {k: v.to(device) for k, v in synthetic_batch(batch, image_size, text_dim, max_tokens).items()}
    dist = Dist(device=device)
    step = lambda i: train_step(data, i, model, model, loss_fn, opt_g, opt_d, sched, cfg, dist)  # noqa: E731

    with FlopCounterMode(display=False) as counter:  # doubles as the warm-up step
        step(0)
    flops = counter.get_total_flops()
    if device.type == "cuda":
        step(1)
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(2 + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    out = {"preset": preset, "image_size": image_size, "patch_size": 8, "num_tokens": model.cfg.num_tokens,
           "batch_size": batch, "timed_steps": steps, "with_discriminator": with_disc, "perceptual": perceptual,
           "dtype": "bf16-autocast" if device.type == "cuda" else "fp32",
           "tokenizer_params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
           "step_seconds": round(dt, 4), "images_per_second": round(batch / dt, 3),
           "flops_per_step": flops, "flops_per_image": flops // batch,
           "achieved_tflops": round(flops / dt / 1e12, 4)}
    peak = peak_flops(device)
    if peak:
        out["mfu"] = round(flops / dt / peak, 4)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    gpu = torch.cuda.is_available()
    ap.add_argument("--presets", nargs="+", default=["B"] if gpu else ["tiny", "S"])
    ap.add_argument("--batch-size", type=int, default=None, help="default: 32 on GPU; tiny 8 / S 1 on CPU")
    ap.add_argument("--steps", type=int, default=10 if gpu else 2)
    ap.add_argument("--with-disc", action=argparse.BooleanOptionalAction, default=gpu)
    ap.add_argument("--perceptual", default="inception" if gpu else "none")
    ap.add_argument("--out", default="bench/results/train_step.json")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results = []
    for preset in args.presets:
        batch = args.batch_size or (32 if gpu else {"tiny": 8}.get(preset, 1))
        steps = args.steps if gpu or preset == "tiny" else 1  # big presets on CPU: one timed step
        results.append(bench(preset, batch, steps, device, args.with_disc, args.perceptual))
        print(json.dumps(results[-1]), flush=True)
    report = {"benchmark": "tokenizer train step", "device": torch.cuda.get_device_name() if gpu else platform.processor()
              or "cpu", "torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
