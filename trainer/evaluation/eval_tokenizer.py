"""Evaluate a trained TexTok tokenizer: PSNR, SSIM, rFID, precision/recall, LPIPS and IS when given.

    textok eval-tokenizer --ckpt runs/tok --shards out/shards_val --num-samples 50000 --output runs/tok/eval
    textok eval-tokenizer --compare runs/tok_n32 runs/base_n32 runs/tok_n64 --output runs/compare.md \
        --plot runs/rfid_vs_tokens.png      # rFID and PSNR against N, one line per text mode

--ckpt is a `tokenizer/` directory (TexTok.save_pretrained) or a run directory holding one.
Reconstructions use the caption of each image (what the text modes are about) and a centre
crop. rFID compares Inception features of the originals and of their reconstructions over the
same --num-samples images (the paper uses the 50k ImageNet val set). Writes eval.json and
recon.png (originals | reconstructions). --compare reads the eval.json of several runs and
writes one markdown table, with each text-conditioned run's rFID change against the no-text
baseline (text_mode "none") at the same N and image size.

eval.json also records how the tokenizer was trained, from its run's config.json (the folder
above tokenizer/): the perceptual backend and whether training flipped images. A tokenizer
whose perceptual loss used the FID Inception (`--perceptual inception`) was trained to match the
very features rFID compares, so its rFID is marked "trained on the FID network" (JSON and
table). A comparison whose TexTok and no-text runs differ in --hflip is refused: the flip
alone moves rFID on captioned data.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from textok.trainer.data.loader import ShardLoader
from textok.trainer.run_dir import check_text_encoder, tokenizer_dir
from textok.trainer.evaluation.eval_gen import set_metrics, write_result
from textok.trainer.evaluation.grid import save_pairs
from textok.devices import autocast, resolve_device
from textok.progress import Progress
from textok.schemas.common import count_rows
from textok.trainer.evaluation.metrics import InceptionFeatures, fid_from_features, psnr, ssim

log = logging.getLogger(__name__)


DEFAULT_NUM_SAMPLES = 50_000  # the paper's ImageNet val set


@dataclass
class EvalTokenizerConfig:
    ckpt: str
    shards: str
    output: str
    split: str | None = "val"  # in a shards dir, only {split}-*.parquet
    num_samples: int = DEFAULT_NUM_SAMPLES
    batch_size: int = 32
    lpips_weights: str | None = None
    vgg16_weights: str | None = None
    fid_inception_path: str | None = None
    inception_classifier: str | None = None
    num_workers: int = 2
    device: str = "auto"
    grid_rows: int = 8
    # an .npz of the originals' Inception features, shared by runs evaluated on the same images (a
    # sweep): written when missing, reused when its keys match the images evaluated, refused otherwise
    real_features: str | None = None


FID_NETWORK_NOTE = "trained on the FID network: its perceptual loss used the FID Inception, which flatters rFID"


def training_settings(tok_dir: str) -> dict:
    """{"perceptual", "trained_on_fid_network", "hflip"} of the run that wrote `tok_dir` (None: unknown)."""
    unknown = {"perceptual": None, "trained_on_fid_network": None, "hflip": None}
    path = os.path.join(os.path.dirname(os.path.abspath(tok_dir)), "config.json")
    if not os.path.isfile(path):
        return unknown
    with open(path) as f:
        run = json.load(f)
    if not isinstance(run, dict) or not isinstance(run.get("loss"), dict) or not isinstance(run.get("train"), dict):
        return unknown  # not a train-tokenizer run config
    loss, train = run["loss"], run["train"]
    kind = loss.get("perceptual")
    if kind == "auto":  # only runs from before the backend was recorded: their auto meant LPIPS or Inception
        kind = "lpips" if (loss.get("lpips_weights") or loss.get("vgg16_weights")) else "inception"
    if not loss.get("perceptual_weight", 0.0):
        kind = "none"
    # runs from before --hflip existed flipped every training image with p = 0.5
    return {"perceptual": kind, "trained_on_fid_network": kind == "inception", "hflip": train.get("hflip", True)}


@torch.no_grad()
def evaluate(cfg: EvalTokenizerConfig) -> dict:
    from textok.trainer.models.textok import TexTok

    device = torch.device(resolve_device(cfg.device))
    path = tokenizer_dir(cfg.ckpt, "--ckpt")
    model = TexTok.from_pretrained(path).eval().to(device)
    mc = model.cfg
    loader = ShardLoader(cfg.shards, mc.image_size, cfg.batch_size, text_dim=mc.text_dim,
                         max_tokens=mc.max_text_tokens, split=cfg.split, train=False, num_workers=cfg.num_workers)
    check_text_encoder(path, loader.meta, cfg.shards)  # same D, other encoder: captions would mean noise
    lpips = None
    if cfg.lpips_weights or cfg.vgg16_weights:
        from textok.trainer.training.perceptual import build_perceptual

        lpips = build_perceptual("lpips", lpips_weights=cfg.lpips_weights, vgg16_weights=cfg.vgg16_weights).to(device)
    inception = InceptionFeatures(cfg.fid_inception_path, device, classifier_path=cfg.inception_classifier)

    cached = _load_real_features(cfg.real_features)
    per_image = {"psnr": [], "ssim": [], "lpips": []}
    feats_real, feats_fake, probs, keys = [], [], [], []
    seen, grid = 0, None
    bar = Progress("eval-tokenizer", total=min(cfg.num_samples, count_rows(loader.files)), unit="images",
                   output=cfg.output)
    for batch in loader:
        take = min(len(batch["key"]), cfg.num_samples - seen)
        images = batch["images"][:take].to(device)
        with autocast(device):
            recon, _ = model(images, batch["text_emb"][:take].to(device).float(), batch["text_mask"][:take].to(device))
        recon = recon.float().clamp(-1, 1)
        per_image["psnr"].append(psnr(recon, images).cpu())
        per_image["ssim"].append(ssim(recon, images).cpu())
        if lpips is not None:
            per_image["lpips"].append(lpips(recon, images).float().cpu())
        keys += batch["key"][:take]
        if cached is None:
            feats_real.append(inception(images))
        feats_fake.append(inception(recon))
        if inception.classifier is not None:
            probs.append(inception.class_probs(recon))
        if grid is None:
            grid = save_pairs(images.cpu(), recon.cpu(), path=os.path.join(cfg.output, "recon.png"),
                              max_rows=cfg.grid_rows)
        seen += take
        bar.update(take)
        if seen >= cfg.num_samples:
            break
    bar.close()
    if seen < 2:
        raise ValueError(f"{cfg.shards}: only {seen} images to evaluate; rFID needs at least 2")
    if seen < cfg.num_samples:  # a warning only when the user asked for that many (eval.json records the count)
        (log.info if cfg.num_samples == DEFAULT_NUM_SAMPLES else log.warning)(
            "evaluated %d images, fewer than --num-samples %d (the shards hold no more)", seen, cfg.num_samples)

    real, fake = _real_features(cfg.real_features, cached, feats_real, keys), np.concatenate(feats_fake)
    result = {
        "ckpt": path, "shards": cfg.shards, "num_samples": seen, "image_size": mc.image_size,
        "num_tokens": mc.num_tokens, "text_mode": mc.text_mode,
        "psnr": float(torch.cat(per_image["psnr"]).clamp(max=100).mean()),
        "ssim": float(torch.cat(per_image["ssim"]).mean()),
        "lpips": float(torch.cat(per_image["lpips"]).mean()) if per_image["lpips"] else None,
        "rfid": fid_from_features(real, fake),
    }
    result.update(set_metrics(real, fake, probs))
    result.update(training_settings(path))
    if result["trained_on_fid_network"]:
        result["rfid_note"] = FID_NETWORK_NOTE
    result["config"] = asdict(cfg)
    write_result(result, os.path.join(cfg.output, "eval.json"))
    return result


def _load_real_features(path: str | None) -> dict | None:
    if not path or not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as data:
        return {"keys": data["keys"].tolist(), "feats": data["feats"]}


def _real_features(path: str | None, cached: dict | None, computed: list, keys: list[str]) -> np.ndarray:
    """The originals' features: the cache (checked to hold exactly these images) or the computed ones."""
    if cached is not None:
        if cached["keys"] != keys:
            raise ValueError(f"--real-features {path} holds features of other images ({len(cached['keys'])} keys, "
                             f"first {cached['keys'][:2]}) than this evaluation ({len(keys)}, first {keys[:2]}); "
                             f"delete it or give another path")
        return cached["feats"]
    real = np.concatenate(computed)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, keys=np.asarray(keys), feats=real)
        os.replace(tmp, path)
    return real


# ----------------------------------------------------------------------------- comparison table

def _load_eval(path: str) -> dict:
    for cand in (path, os.path.join(path, "eval.json"), os.path.join(path, "eval", "eval.json")):
        if os.path.isfile(cand):
            with open(cand) as f:
                return {"run": path, **json.load(f)}
    raise FileNotFoundError(f"--compare {path}: no eval.json in it, or in {path}/eval; run eval-tokenizer first")


def _fmt(v, digits=3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def compare_table(paths: list[str]) -> str:
    rows = [_load_eval(p) for p in paths]
    baseline = {(r["image_size"], r["num_tokens"]): r for r in rows if r["text_mode"] == "none"}
    for r in rows:
        base = baseline.get((r["image_size"], r["num_tokens"]))
        if base is not None and None not in (r.get("hflip"), base.get("hflip")) and r["hflip"] != base["hflip"]:
            raise ValueError(f"--compare: {r['run']} (hflip={r['hflip']}) and its no-text baseline {base['run']} "
                             f"(hflip={base['hflip']}) were trained with different flips; retrain one so both match")
    lines = ["| run | text | px | N | rFID | rFID vs no-text | PSNR | SSIM | LPIPS | IS | flip | samples |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    flagged = False
    for r in sorted(rows, key=lambda r: (r["image_size"], r["num_tokens"], r["text_mode"] != "none", r["run"])):
        base = baseline.get((r["image_size"], r["num_tokens"]))
        gain = "—" if base is None or base["rfid"] == 0 or r["text_mode"] == "none" \
            else f"{100 * (r['rfid'] - base['rfid']) / base['rfid']:+.1f} %"
        rfid = _fmt(r["rfid"]) + (" †" if r.get("trained_on_fid_network") else "")
        flagged = flagged or bool(r.get("trained_on_fid_network"))
        flip = {True: "yes", False: "no"}.get(r.get("hflip"), "?")
        lines.append(f"| {r['run']} | {r['text_mode']} | {r['image_size']} | {r['num_tokens']} | {rfid} | "
                     f"{gain} | {_fmt(r['psnr'], 2)} | {_fmt(r['ssim'])} | {_fmt(r.get('lpips'))} | "
                     f"{_fmt(r.get('inception_score'), 2)} | {flip} | {r['num_samples']} |")
    if flagged:
        lines.append(f"\n† {FID_NETWORK_NOTE}.")
    return "\n".join(lines) + "\n"


def plot_compare(paths: list[str], png_path: str) -> str:
    """rFID and PSNR against N (log2 axis), one line per (text mode, image size): the picture of the
    paper's Table 1, where TexTok at N should sit at or below the no-text baseline at 2N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [_load_eval(p) for p in paths]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for (mode, px) in sorted({(r["text_mode"], r["image_size"]) for r in rows}):
        pts = sorted((r["num_tokens"], r["rfid"], r["psnr"]) for r in rows
                     if (r["text_mode"], r["image_size"]) == (mode, px))
        label = f"{'no text (baseline)' if mode == 'none' else 'TexTok, text ' + mode} {px}px"
        style = dict(marker="o", ls="--" if mode == "none" else "-", label=label)
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], **style)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], **style)
    ns = sorted({r["num_tokens"] for r in rows})
    for ax, name in zip(axes, ("rFID (lower is better)", "PSNR dB (higher is better)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("N latent tokens")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
