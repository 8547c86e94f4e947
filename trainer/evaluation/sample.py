"""Generate images: DiT -> latent tokens Z -> TexTok detokenizer (with a caption) -> pixels.

    textok sample --dit runs/dit --tokenizer runs/tok --pools out/pools --classes 207,360,387 --n 4 \
        --cfg 4.0 --steps 250 --seed 0 --output runs/dit/samples          # class-conditional
    textok sample --dit runs/dit_t2i --tokenizer runs/tok --caption "a red circle on blue" --n 4 --output ...
    textok sample ... --classes all --n 50 --batch-size 125     # 50 per class: the 50k set for gFID (cfg 1.5)
    textok sample ... --classes all --n 50 --cfg 1.0,1.5,2.0     # a guidance sweep: OUTPUT/cfg-1.5/... each

Guidance: DiT uses scale 4.0 for pictures and 1.5 for its FID-50K numbers, and FID is sensitive to
it; so a gFID set (`--classes all`) defaults to 1.5 and every other call to 4.0. The scale used is
stored in samples.npz (`cfg_scale`), and eval-gen reports it beside the gFID. Several scales
(comma-separated) write one folder each from the same seed (same noise, same pool captions) plus
OUTPUT/sweep.json; `textok eval-gen --samples OUTPUT/cfg-*/samples.npz` then reports the best.

Class-conditional (TexTok Sec. 3.3): the DiT generates Z from the label; the detokenizer needs
a caption, drawn (seeded) for each sample from the pool of captions of *unseen* images of that
class (`textok pools`). Text-to-image: each caption is encoded with the same text encoder the
shards used (`text_encoder.TextEncoder`; a different one is refused), DiT-T2I
generates Z from it, and the detokenizer decodes Z with the same caption.

Writes OUTPUT/samples.png (a grid), OUTPUT/samples.npz (images uint8 [n,H,W,3], labels,
captions, caption_keys) and OUTPUT/samples.json (the settings). Same seed, same images.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow.parquet as pq
import torch

from textok.progress import Progress
from textok.trainer.run_dir import STATS_NAME, dit_dir
from textok.schemas.common import SchemaError, list_parquet, read_meta, validate
from textok.schemas.shards import text_emb_views

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- shared pieces

def load_dit(path: str, device: str | torch.device = "cpu"):
    """-> (DiT in eval mode, latent stats dict with mean/std/encoder/... of its latent set)."""
    from textok.trainer.models.dit import DiT

    directory = dit_dir(path)
    with open(os.path.join(directory, STATS_NAME)) as f:
        stats = json.load(f)
    return DiT.from_pretrained(directory, map_location=device), stats


def same_encoder(a: dict, b: dict) -> str | None:
    """None when two metadata dicts describe the same text encoder output, else the reason.

    Weight hashes decide when both sides have one (a Hub id and a local copy then agree);
    otherwise the encoder names must match. D and max_tokens must always match.
    """
    for k in ("D", "max_tokens"):
        if int(a[k]) != int(b[k]):
            return f"{k} {a[k]} vs {b[k]}"
    ha, hb = a.get("encoder_hash"), b.get("encoder_hash")
    if ha and hb:
        return None if ha == hb else f"weights {ha[:19]}... vs {hb[:19]}..."
    return None if a["encoder"] == b["encoder"] else f"encoder {a['encoder']!r} vs {b['encoder']!r}"


@torch.no_grad()
def generate_latents(model, stats: dict, n: int, cfg_scale: float, steps: int, sampler: str,
                     generator: torch.Generator, y: torch.Tensor | None = None, text_emb: torch.Tensor | None = None,
                     text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """n samples of Z [n,N,d], unnormalised (the DiT works on (Z - mean) / std per channel), from
    `steps` respaced steps of the chain the DiT was trained on (its config's diffusion settings)."""
    from textok.trainer.models.diffusion import diffusion_for, sample

    device = generator.device
    cond = {"y": y.to(device)} if y is not None else {"text_emb": text_emb.to(device).float(),
                                                      "text_mask": text_mask.to(device)}
    shape = (n, model.cfg.num_tokens, model.cfg.token_dim)
    chain = diffusion_for(model.cfg)
    if steps > chain.num_timesteps:
        raise ValueError(f"--steps {steps} > the {chain.num_timesteps} diffusion steps this DiT was trained with")
    z = sample(model.guided(cfg_scale, **cond), shape, steps=steps, sampler=sampler, generator=generator,
               diffusion=chain)
    mean = torch.tensor(stats["mean"], dtype=z.dtype, device=device)
    std = torch.tensor(stats["std"], dtype=z.dtype, device=device)
    return z * std + mean


@torch.no_grad()
def decode_latents(tokenizer, z: torch.Tensor, text_emb: torch.Tensor | None,
                   text_mask: torch.Tensor | None) -> torch.Tensor:
    """Z [n,N,d] + caption embeddings -> images [n,3,H,W] clamped to [-1,1]."""
    device = next(tokenizer.parameters()).device
    if tokenizer.cfg.text_in_decoder and text_emb is None:
        raise ValueError(f"the tokenizer (text_mode={tokenizer.cfg.text_mode!r}) decodes with a caption; "
                         f"none was given")
    text = text_emb.to(device).float() if text_emb is not None else None
    mask = text_mask.to(device) if text_mask is not None else None
    return tokenizer.decode(z.to(device), text, mask).float().clamp(-1, 1)


def check_tokenizer(tokenizer, tok_dir: str, stats: dict) -> None:
    """The tokenizer must be the one whose latents the DiT learned (same weights, same shape)."""
    from textok.trainer.data.latents import file_sha256

    sha = file_sha256(os.path.join(tok_dir, "model.safetensors"))
    if sha != stats["tokenizer_sha256"]:
        raise ValueError(f"--tokenizer {tok_dir} ({sha[:19]}...) is not the tokenizer the DiT's latents came from "
                         f"({stats['tokenizer']}, {stats['tokenizer_sha256'][:19]}...)")


# ----------------------------------------------------------------------------- caption pools

class CaptionPools:
    """label -> pooled captions of `textok pools` output; seeded draws.

    Only key/caption are read up front; the embeddings of drawn rows are read per row group
    when a batch needs them (a T5-XL pool of 1000 classes x 50 captions holds ~8 GB of them).
    """

    def __init__(self, path: str):
        validate(path, expect_table="pools")
        self.by_label: dict[int, list[tuple[str, str, tuple[str, int, int]]]] = {}
        self.meta = None
        for f in list_parquet(path):
            meta = read_meta(f)["meta"]
            if self.meta is not None and same_encoder(self.meta, meta):
                raise SchemaError(f"{f}: pools of another text encoder than the other files "
                                  f"({same_encoder(self.meta, meta)})")
            self.meta = self.meta or meta
            pf = pq.ParquetFile(f)
            for rg in range(pf.num_row_groups):
                t = pf.read_row_group(rg, columns=["label", "key", "caption"])
                cols = (t.column(c).to_pylist() for c in ("label", "key", "caption"))
                for i, (lab, key, cap) in enumerate(zip(*cols)):
                    self.by_label.setdefault(int(lab), []).append((key, cap, (f, rg, i)))
        self.source = path

    def draw(self, labels: list[int], rng: np.random.Generator) -> list[tuple[str, str, tuple[str, int, int]]]:
        """One (key, caption, where) per label, uniformly from that class's pool."""
        out = []
        for lab in labels:
            pool = self.by_label.get(int(lab))
            if not pool:
                raise KeyError(f"{self.source}: no pool captions for class {lab}; build pools covering it "
                               f"(textok pools) or drop it from --classes")
            out.append(pool[int(rng.integers(len(pool)))])
        return out

    @staticmethod
    def embeddings(rows: list[tuple[str, str, tuple[str, int, int]]]) -> list[np.ndarray]:
        """The float16 [text_len, D] embeddings of drawn rows (each needed row group read once)."""
        groups: dict[tuple[str, int], list[np.ndarray]] = {}
        for _, _, (f, rg, _) in rows:
            if (f, rg) not in groups:
                groups[(f, rg)] = text_emb_views(pq.ParquetFile(f).read_row_group(rg, columns=["text_emb"])
                                                 .column("text_emb"))
        return [groups[(f, rg)][i] for _, _, (f, rg, i) in rows]


# ----------------------------------------------------------------------------- the command

@dataclass
class SampleConfig:
    dit: str
    tokenizer: str
    output: str
    pools: str | None = None
    classes: list[int] | None = None  # class-conditional; [] with all_classes=True means every pooled class
    all_classes: bool = False
    captions: list[str] = field(default_factory=list)  # text-to-image
    n: int = 4  # per class / per caption
    cfg: float | None = None  # None: 1.5 for a gFID set (all_classes), else 4.0 (see the module docstring)
    steps: int = 250
    sampler: str = "ddpm"
    encoder: str | None = None
    seed: int = 0
    batch_size: int = 32
    device: str = "auto"
    grid_max: int = 64  # images in samples.png (the npz holds them all)


GRID_CFG, FID_CFG = 4.0, 1.5  # DiT's guidance scales for pictures and for its FID-50K


def guidance_scale(cfg: SampleConfig) -> float:
    if cfg.cfg is not None:
        return float(cfg.cfg)
    return FID_CFG if cfg.all_classes else GRID_CFG


def run_sweep(cfg: SampleConfig, scales: list[float]) -> dict:
    """run_sample once per guidance scale into OUTPUT/cfg-<scale>/, same seed; OUTPUT/sweep.json lists them."""
    from dataclasses import replace

    if len(set(scales)) != len(scales):
        raise ValueError(f"--cfg {scales}: a scale repeats")
    runs = [run_sample(replace(cfg, cfg=float(s), output=os.path.join(cfg.output, f"cfg-{s:g}"))) for s in scales]
    summary = {"scales": [float(s) for s in scales], "npz": [r["npz"] for r in runs],
               "next": "textok eval-gen --samples " + " --samples ".join(r["npz"] for r in runs) + " --reference ..."}
    os.makedirs(cfg.output, exist_ok=True)
    with open(os.path.join(cfg.output, "sweep.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _encode_captions(captions: list[str], stats: dict, encoder: str | None, device: str) -> list[np.ndarray]:
    from textok.text_encoder import TextEncoder, encoder_fingerprint

    name = encoder or stats["encoder"]
    enc = TextEncoder(name, max_tokens=int(stats["max_tokens"]), device=device).load()
    have = {**enc.metadata(), **encoder_fingerprint(name)}
    reason = same_encoder(have, stats)
    if reason:
        raise ValueError(f"text encoder {name} does not match the one the DiT's latents/shards used "
                         f"({stats['encoder']}): {reason}. Pass --encoder with that encoder's weights")
    return enc.encode(captions)


def run_sample(cfg: SampleConfig) -> dict:
    from textok.devices import resolve_device
    from textok.trainer.evaluation.grid import save_grid, to_uint8
    from textok.trainer.data.latents import pad_text
    from textok.trainer.run_dir import tokenizer_dir
    from textok.trainer.models.textok import TexTok

    if cfg.sampler not in ("ddpm", "ddim"):
        raise ValueError(f"--sampler must be ddpm or ddim, got {cfg.sampler!r}")
    device = torch.device(resolve_device(cfg.device))
    model, stats = load_dit(cfg.dit, device)
    tok_dir = tokenizer_dir(cfg.tokenizer, "--tokenizer")
    tokenizer = TexTok.from_pretrained(tok_dir).eval().to(device)
    check_tokenizer(tokenizer, tok_dir, stats)
    rng = np.random.default_rng(cfg.seed)  # caption draws; the diffusion noise has its own generator

    if model.cfg.t2i:
        if not cfg.captions or cfg.classes or cfg.all_classes:
            raise ValueError("this DiT is text-to-image: give --caption TEXT (repeatable) or --captions FILE")
        captions = [c for c in cfg.captions for _ in range(cfg.n)]
        embs = _encode_captions(list(dict.fromkeys(cfg.captions)), stats, cfg.encoder, str(device))
        by_caption = dict(zip(dict.fromkeys(cfg.captions), embs))
        rows = [("", cap, None) for cap in captions]
        labels = [-1] * len(rows)
    else:
        if cfg.captions:
            raise ValueError("this DiT is class-conditional: give --classes, not captions")
        if not cfg.pools:
            raise ValueError("class-conditional sampling draws captions from the pools: give --pools DIR "
                             "(textok pools output)")
        pools = CaptionPools(cfg.pools)
        reason = same_encoder(pools.meta, stats)
        if reason:
            raise ValueError(f"--pools {cfg.pools} was encoded with another text encoder than the DiT's "
                             f"latents ({reason}); build pools with the shards' encoder")
        classes = sorted(pools.by_label) if cfg.all_classes else list(cfg.classes or [])
        if not classes:
            raise ValueError("give --classes 1,2,3 (or all)")
        bad = [c for c in classes if not 0 <= c < model.cfg.num_classes]
        if bad:
            raise ValueError(f"--classes {bad} outside the DiT's [0, {model.cfg.num_classes})")
        labels = [c for c in classes for _ in range(cfg.n)]
        rows = pools.draw(labels, rng)

    scale = guidance_scale(cfg)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    images = []
    bar = Progress("sample", total=len(rows), unit="images", output=cfg.output)
    for s in range(0, len(rows), cfg.batch_size):
        part = rows[s:s + cfg.batch_size]
        embs = [by_caption[r[1]] for r in part] if model.cfg.t2i else CaptionPools.embeddings(part)
        text, mask = pad_text(embs, int(stats["max_tokens"]), [r[0] or r[1] for r in part])
        if model.cfg.t2i:
            z = generate_latents(model, stats, len(part), scale, cfg.steps, cfg.sampler, gen,
                                 text_emb=text, text_mask=mask)
        else:
            z = generate_latents(model, stats, len(part), scale, cfg.steps, cfg.sampler, gen,
                                 y=torch.tensor(labels[s:s + len(part)]))
        images.append(to_uint8(decode_latents(tokenizer, z, text, mask)))
        bar.update(len(part))
    bar.close()
    images = np.concatenate(images)

    os.makedirs(cfg.output, exist_ok=True)
    npz = os.path.join(cfg.output, "samples.npz")
    np.savez(npz, images=images, labels=np.asarray(labels, np.int64), captions=np.asarray([r[1] for r in rows]),
             caption_keys=np.asarray([r[0] for r in rows]), cfg_scale=np.float64(scale))
    grid = torch.from_numpy(images[:cfg.grid_max]).permute(0, 3, 1, 2).float() / 127.5 - 1
    png = save_grid(grid, os.path.join(cfg.output, "samples.png"), nrow=max(cfg.n, 1) if cfg.n <= 16 else 8)
    summary = {"npz": npz, "grid": png, "num_images": int(len(images)), "image_size": int(images.shape[1]),
               "cfg_scale": scale,
               "dit": dit_dir(cfg.dit), "tokenizer": tok_dir, "config": asdict(cfg)}
    with open(os.path.join(cfg.output, "samples.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
