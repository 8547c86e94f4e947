"""PNG image grids and loss-curve plots for the trainers and evaluators.

    from textok.trainer.evaluation.grid import save_grid, save_pairs, plot_metrics
    save_pairs(images, recon, "runs/tok/samples/step-001000.png")   # originals | reconstructions
    save_grid(samples, "samples.png", nrow=8)                        # any [B,3,H,W] in [-1,1]
    plot_metrics("runs/tok/metrics.jsonl", "runs/tok/loss.png")
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [-1,1] -> [B,H,W,3] uint8 (the rounding a saved PNG applies)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid_array(images: torch.Tensor, nrow: int, pad: int = 2) -> np.ndarray:
    imgs = to_uint8(images)
    b, h, w, _ = imgs.shape
    rows = math.ceil(b / nrow)
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return out


def save_grid(images: torch.Tensor, path: str, nrow: int = 8) -> str:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"save_grid({path}): expected [B,3,H,W] images, got {tuple(images.shape)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid_array(images, min(nrow, len(images)))).save(path)
    return path


def save_pairs(originals: torch.Tensor, *recons: torch.Tensor, path: str | None = None, max_rows: int = 8) -> str:
    """One row per image: original | reconstruction(s) (several when comparing models)."""
    if path is None:
        raise ValueError("save_pairs: path= is required")
    n = min(max_rows, len(originals))
    cols = [originals[:n]] + [r[:n].to(originals.device) for r in recons]
    for c in cols[1:]:
        if c.shape != cols[0].shape:
            raise ValueError(f"save_pairs({path}): reconstruction shape {tuple(c.shape)} != {tuple(cols[0].shape)}")
    stacked = torch.stack(cols, dim=1).flatten(0, 1)  # row-major: orig, recon, orig, recon ...
    return save_grid(stacked, path, nrow=len(cols))


def plot_metrics(jsonl_path: str, png_path: str, keys: Sequence[str] | None = None) -> str | None:
    """Plot every numeric column (or `keys`) of a metrics JSONL against step; None when empty."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(jsonl_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        return None
    keys = list(keys or sorted({k for r in rows for k in r if k not in ("step", "time", "epoch")}))
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            ax.plot(*zip(*pts), lw=1)
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    partial = png_path + ".partial.png"  # an image viewer watching png_path never sees half a file
    fig.savefig(partial, dpi=100)
    plt.close(fig)
    os.replace(partial, png_path)
    return png_path
