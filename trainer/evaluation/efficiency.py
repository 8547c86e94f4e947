"""Generation cost of a DiT on TexTok tokens vs DiT-XL/2 on SD-VAE patches (TexTok Fig. 4).

    from textok.trainer.evaluation.efficiency import efficiency_report, write_efficiency_plot
    report = efficiency_report("XL", [32, 64, 128, 256], image_size=256)
    write_efficiency_plot(report, "efficiency.png")

FLOPs: torch.utils.flop_counter.FlopCounterMode on the real DiT module, built on the meta
device (no memory, no arithmetic, and scaled_dot_product_attention decomposes into bmm's
there, so attention is counted; the CPU fused kernel is not). FlopCounterMode counts two
FLOPs per multiply-add; DiT (Peebles & Xie 2023, Table 4: DiT-XL/2 = 118.6 Gflops at 256 px)
counts one. We report `gflops_*` in DiT's convention (torch count / 2) and keep the raw
count as `torch_flops_per_forward`. Norms, activations and softmax are not counted (as in DiT).

The baseline DiT-XL/2 is our own DiT class with the token count and input width of DiT on a
Stable Diffusion VAE latent: 256 px -> 32x32x4 latent -> 16x16 = 256 tokens of 2x2x4 = 16
values; 512 px -> 1024 tokens. Patch embedding and final layer then have exactly DiT's
shapes, so the count is FLOP-equivalent. Decoder costs (SD-VAE for DiT, TexTok detokenizer
for ours) are excluded for both: this compares the generator only.

Per sample = per forward x sampling steps x 2 with classifier-free guidance (the cond and
uncond halves are one doubled batch). Time per sample is measured, not modelled: a few
forwards (guided, i.e. batch 2, when cfg) are timed after a warm-up, and the fastest is
multiplied by the step count; the JSON says so in `timing.method`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from textok.trainer.models.dit import DiT, DiTConfig, dit_config

DIT_PAPER_XL2_256PX_GFLOPS = 118.6  # DiT Table 4, multiply-adds
SD_VAE_DOWNSAMPLE, SD_VAE_CHANNELS, DIT_PATCH = 8, 4, 2


def baseline_config(image_size: int, preset: str = "XL", **overrides) -> DiTConfig:
    """DiT-{preset}/2 on an SD-VAE latent of an image_size image, as a 1D-token DiTConfig."""
    if image_size % (SD_VAE_DOWNSAMPLE * DIT_PATCH):
        raise ValueError(f"image_size={image_size} must be a multiple of {SD_VAE_DOWNSAMPLE * DIT_PATCH} "
                         "(SD-VAE downsampling x DiT patch size)")
    side = image_size // (SD_VAE_DOWNSAMPLE * DIT_PATCH)
    return dit_config(preset, num_tokens=side * side, token_dim=DIT_PATCH * DIT_PATCH * SD_VAE_CHANNELS, **overrides)


def _inputs(cfg: DiTConfig, batch: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, cfg.num_tokens, cfg.token_dim, device=device)
    t = torch.full((batch,), 500, dtype=torch.long, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    return x, t, y


def count_forward_flops(cfg: DiTConfig) -> tuple[int, int]:
    """(torch FLOPs (2 per multiply-add) of one class-conditional forward at batch 1, params)."""
    if cfg.t2i:
        raise ValueError("count_forward_flops covers the class-conditional DiT (t2i=False), as TexTok Fig. 4")
    with torch.device("meta"):
        model = DiT(cfg).eval()
    x, t, y = _inputs(cfg, 1, "meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, t, y=y)
    return int(counter.get_total_flops()), model.num_params()


def time_forward(cfg: DiTConfig, cfg_scale: float | None, device: str = "cpu", repeats: int = 3) -> list[float]:
    """Seconds of `repeats` single-sample sampling-step forwards (guided = batch 2 inside), sorted.

    Callers report the minimum: on a shared machine other processes only ever add time, so
    the fastest repeat is the least contaminated estimate (the `timeit` module's advice).
    """
    torch.manual_seed(0)
    model = DiT(cfg).to(device).eval()
    x, t, y = _inputs(cfg, 1, device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def step():
        if cfg_scale is None:
            model(x, t, y=y)
        else:
            model.forward_with_cfg(x, t, cfg_scale, y=y)

    times = []
    with torch.inference_mode():
        step()  # warm-up: allocator, kernel selection
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
    del model
    return sorted(times)


def _entry(name: str, kind: str, cfg: DiTConfig, steps: int, cfg_guidance: bool, timing: dict | None) -> dict:
    torch_flops, params = count_forward_flops(cfg)
    gflops = torch_flops / 2 / 1e9
    entry = {
        "name": name, "kind": kind, "tokens": cfg.num_tokens, "token_dim": cfg.token_dim,
        "width": cfg.width, "depth": cfg.depth, "heads": cfg.heads,
        "params_m": round(params / 1e6, 2),
        "torch_flops_per_forward": torch_flops,
        "gflops_per_forward": gflops,
        "gflops_per_sample": gflops * steps * (2 if cfg_guidance else 1),
    }
    if timing is not None:
        per_step = time_forward(cfg, 4.0 if cfg_guidance else None, timing["device"], timing["repeats"])[0]
        entry["time_per_step_s"] = per_step
        entry["time_per_sample_s"] = per_step * steps
    return entry


def efficiency_report(preset: str, tokens: list[int], image_size: int = 256, measure_time: bool = True,
                      device: str = "cpu", steps: int = 250, cfg: bool = True, baseline_preset: str = "XL",
                      time_baselines: bool = True, repeats: int = 3, token_dim: int = 8,
                      num_classes: int = 1000) -> dict:
    """GFLOPs (and measured time) per sample for DiT-{preset} at each TexTok token count,
    beside DiT-{baseline_preset}/2 at 256 px (256 tokens), 512 px (1024 tokens) and image_size.

    Returns a JSON-serialisable dict; `speedup` compares each TexTok entry with the baseline
    at the same image_size.
    """
    if not tokens or any(n < 1 for n in tokens):
        raise ValueError(f"tokens must be a non-empty list of positive token counts, got {tokens}")
    timing = {"device": str(device), "repeats": repeats} if measure_time else None
    models = [
        _entry(f"DiT-{preset} on TexTok-{n}", "textok",
               dit_config(preset, num_tokens=n, token_dim=token_dim, num_classes=num_classes), steps, cfg, timing)
        for n in tokens
    ]
    baselines = {}
    for size in sorted({256, 512, image_size}):
        b_cfg = baseline_config(size, baseline_preset, num_classes=num_classes)
        entry = _entry(f"DiT-{baseline_preset}/2 at {size}px (SD-VAE)", "baseline", b_cfg, steps, cfg,
                       timing if time_baselines else None)
        entry["image_size"] = size
        baselines[size] = entry
        models.append(entry)
    reference = baselines[image_size]
    speedup = {}
    for entry in models:
        if entry["kind"] != "textok":
            continue
        s = {"vs": reference["name"], "gflops_ratio": reference["gflops_per_sample"] / entry["gflops_per_sample"]}
        if "time_per_sample_s" in entry and "time_per_sample_s" in reference:
            s["time_ratio"] = reference["time_per_sample_s"] / entry["time_per_sample_s"]
        speedup[entry["name"]] = s
    report = {
        "preset": preset, "baseline_preset": baseline_preset, "image_size": image_size,
        "sampling_steps": steps, "classifier_free_guidance": cfg,
        "flops_convention": "gflops_* count one multiply-add as one FLOP, as DiT Table 4 "
                            "(torch FlopCounterMode counts two; torch_flops_per_forward is that raw count)",
        "per_sample": f"gflops_per_forward x {steps} steps" + (" x 2 (CFG doubles the batch)" if cfg else ""),
        "excluded": "decoders: SD-VAE decoder for the DiT-XL/2 baselines, TexTok detokenizer for ours",
        "models": models,
        "speedup": speedup,
    }
    if timing is not None:
        report["timing"] = {
            "device": str(device), "torch_threads": torch.get_num_threads(), "repeats": repeats,
            "baselines_timed": time_baselines,
            "method": "fastest of the timed single-sample sampling steps"
                      + (" (guided: one batch-2 forward)" if cfg else "")
                      + f" after one warm-up, extrapolated x {steps} steps; random-init weights",
        }
    return report


def write_efficiency_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path


def write_efficiency_plot(report: dict, path: str | Path) -> Path:
    """PNG: GFLOPs per sample (and measured time, when present) vs token count, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = [m for m in report["models"] if m["kind"] == "textok"]
    base = [m for m in report["models"] if m["kind"] == "baseline"]
    panels = [("gflops_per_sample", "GFLOPs per sample")]
    if all("time_per_sample_s" in m for m in ours):
        panels.append(("time_per_sample_s", f"seconds per sample ({report['timing']['device']})"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        ax.plot([m["tokens"] for m in ours], [m[key] for m in ours], "o-", color="tab:blue",
                label=f"DiT-{report['preset']} on TexTok tokens (d={ours[0]['token_dim']})")
        for m in base:
            if key in m:
                ax.plot(m["tokens"], m[key], "s", color="tab:red")
                ax.annotate(f"DiT-{report['baseline_preset']}/2 {m['image_size']}px", (m["tokens"], m[key]),
                            textcoords="offset points", xytext=(-10, 6), ha="right", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens per image")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Generator cost, {report['sampling_steps']} steps"
                 + (", CFG" if report["classifier_free_guidance"] else "") + " (decoders excluded)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
