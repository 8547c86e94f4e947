"""Train a DiT (class-conditional, or DiT-T2I with --t2i) on TexTok latent tokens.

    textok train-dit --latents out/latents --output runs/dit --preset XL --steps 400000 --batch-size 256
    textok train-dit --latents out/latents --output runs/dit_t2i --t2i --preset B --steps ... \
        --tokenizer runs/tok                                   # + periodic sample grids through the detokenizer
    torchrun --nproc_per_node 8 -m textok train-dit --latents ... --output ...   # multi-GPU
    textok train-dit ... --resume                              # continues exactly from checkpoints/latest

As DiT (Peebles & Xie 2023): AdamW lr 1e-4 constant, no weight decay, EMA 0.9999 (warmed up), 1000-step
linear DDPM with learned variance (eps-MSE + VLB), labels (or captions) dropped to the null
condition with p = 0.1 for classifier-free guidance. Z is normalised per channel with the
latent set's mean/std (extract-latents) before diffusion; the stats travel with the model.

Writes into --output: config.json, metrics.jsonl, tb/ (TensorBoard), loss.png (refreshed every
--sample-every steps), checkpoints/step-*/ (trainer/training/ and
trainer/training/checkpoint.py, shared with the tokenizer trainer), samples/step-*.png when --tokenizer
is given (left: the real latents decoded, right: DiT samples for the same labels/captions), and
at the end dit/ (EMA weights via DiT.save_pretrained + latent_stats.json: what `sample` loads).
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import torch

from textok.atomic import atomic_dir
from textok.trainer.evaluation.grid import save_pairs
from textok.trainer.data.latents import LatentLoader, max_label
from textok.trainer.models.hub import TEXT_ENCODER_FILE, TRAINING_FILE
from textok.trainer.training.checkpoint import (Checkpointer, load_run_checkpoint, run_settings, save_run_checkpoint,
                                                start_or_resume)
from textok.trainer.training.optim import EMA, build_optimizer, clip_grad, warmup_cosine
from textok.trainer.training.distributed import Dist, distributed, local_batch, seed_everything, wrap_ddp
from textok.trainer.training.speed import maybe_compile
from textok.trainer.training.metrics_log import MetricsLogger
from textok.devices import autocast
from textok.trainer.training.guards import check_finite_weights, reduce_and_check
from textok.trainer.training.run_config import due, resolve_config
from textok.trainer.evaluation.sample import decode_latents, generate_latents
from textok.trainer.run_dir import STATS_NAME, latent_stats, text_encoder_record

log = logging.getLogger(__name__)

# latent-set metadata a sampler needs beside the weights (stats + where Z and its text came from)
@dataclass
class TrainDiTConfig:
    latents: str = ""
    output: str = ""
    t2i: bool = False
    preset: str = "XL"
    steps: int = 0
    batch_size: int = 256  # global, split evenly over ranks
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup: int = 0
    min_lr_ratio: float = 1.0  # 1.0 = constant lr after warmup (DiT)
    grad_clip: float = 0.0  # 0 = no clipping (DiT); the norm is still logged
    ema: float = 0.9999
    # decay min(ema, (1+t)/(10+t)), as the tokenizer trainer: a short (demo) run would otherwise
    # export ~the adaLN-Zero init (0.9999^1500 = 0.86 of it); after ~100k steps it is plain `ema`
    ema_warmup: bool = True
    cfg_dropout: float = 0.1
    num_classes: int | None = None  # None: largest label in the latents + 1
    diffusion_steps: int = 1000
    tokenizer: str | None = None  # for sample grids
    sample_every: int = 10_000
    sample_steps: int = 50
    sample_cfg: float = 4.0
    save_every: int = 10_000
    log_every: int = 100
    keep_last: int = 3
    num_workers: int = 2
    shuffle_buffer: int = 10_000
    seed: int = 0
    resume: bool = False
    allow_config_change: bool = False  # --resume may change experiment settings (recorded)
    device: str = "auto"
    compile: bool = False  # torch.compile the model step (training/speed.py)
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager": graph capture only)
    model: dict = field(default_factory=dict)  # extra DiTConfig overrides (pos_embed, learn_sigma, ...)


# Training settings a size preset changes (flag > --config file > this table > the dataclass's DiT
# paper values, which S/B/L/XL keep): a tiny CPU DiT learns in thousands of steps, not 400k.
TRAINING_PRESETS: dict[str, dict] = {
    "tiny": dict(lr=1e-3, batch_size=64, save_every=500, sample_every=500, log_every=25, num_workers=1),
}


def preset_defaults(field: str) -> dict:
    """{preset: the value `field` takes when no flag or --config sets it} (what --help shows)."""
    from dataclasses import fields

    from textok.trainer.models.dit import DIT_PRESETS

    default = {f.name: f.default for f in fields(TrainDiTConfig)}[field]
    return {preset: TRAINING_PRESETS.get(preset, {}).get(field, default) for preset in DIT_PRESETS}


def load_config(path: str | None, **overrides) -> TrainDiTConfig:
    """Defaults <- the preset's TRAINING_PRESETS <- JSON/YAML file <- explicit overrides (None
    values are 'not given')."""
    cfg = resolve_config(TrainDiTConfig, path, overrides, "train-dit", required=("latents", "output"),
                         preset_defaults=TRAINING_PRESETS)
    if not 0.0 <= cfg.cfg_dropout < 1.0:
        raise ValueError(f"train-dit: --cfg-dropout must be in [0, 1), got {cfg.cfg_dropout}")
    return cfg


# ----------------------------------------------------------------------------- builders

def build_loader(cfg: TrainDiTConfig, dist: Dist) -> LatentLoader:
    return LatentLoader(cfg.latents, local_batch(cfg.batch_size, dist), with_text=cfg.t2i, train=True,
                        seed=cfg.seed, rank=dist.rank, world_size=dist.world_size, num_workers=cfg.num_workers,
                        shuffle_buffer=cfg.shuffle_buffer)


def build_model(cfg: TrainDiTConfig, meta: dict, files: list[str]):
    from textok.trainer.models.dit import DiT, dit_config

    cond: dict = {"t2i": True, "text_dim": int(meta["D"]), "max_text_tokens": int(meta["max_tokens"]),
                  "text_dropout": cfg.cfg_dropout} if cfg.t2i else {}
    if not cfg.t2i:
        largest = max_label(files)  # also refuses unlabelled rows
        num_classes = cfg.num_classes or largest + 1
        if num_classes < 1:
            raise ValueError(f"{cfg.latents}: no labelled rows; train with --t2i")
        if largest >= num_classes:  # label == num_classes would silently be the null (CFG) class
            raise ValueError(f"{cfg.latents}: label {largest} >= --num-classes {num_classes}")
        cond = {"num_classes": num_classes, "class_dropout": cfg.cfg_dropout}
    # the diffusion settings travel in the DiT's config.json: `sample` rebuilds the chain from them
    return DiT(dit_config(cfg.preset, num_tokens=int(meta["num_tokens"]), token_dim=int(meta["token_dim"]),
                          **cond, **{"diffusion_steps": cfg.diffusion_steps, **cfg.model}))


# ----------------------------------------------------------------------------- one step

def train_step(batch, ddp_model, model, diffusion, norm, opt, sched, cfg, dist) -> dict:
    device = dist.device
    mean, std = norm
    z0 = (batch["z"].to(device, non_blocking=True) - mean) / std  # [B,N,d], ~unit variance per channel
    if cfg.t2i:
        cond = {"text_emb": batch["text_emb"].to(device).float(), "text_mask": batch["text_mask"].to(device)}
    else:
        labels = batch["label"].to(device)
        if (labels < 0).any():
            raise ValueError(f"latent rows without a label in a class-conditional run: "
                             f"{[k for k, y in zip(batch['key'], labels.tolist()) if y < 0][:3]}")
        cond = {"y": labels}
    with autocast(device):
        terms = diffusion.training_losses(lambda x, t, **kw: ddp_model(x, t, **kw).float(), z0, cond)
    loss = terms["loss"].mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    logs = {"loss": loss.detach(), "mse": terms["mse"].mean().detach(),
            "grad_norm": clip_grad(model.parameters(), cfg.grad_clip), "lr": sched.get_last_lr()[0]}
    if "vb" in terms:
        logs["vb"] = terms["vb"].mean().detach()
    opt.step()
    sched.step()
    return logs


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(ckpt, step, model, ema, opt, sched, loader, dist) -> str | None:
    return save_run_checkpoint(ckpt, step, {"model": model.state_dict(), "ema": ema.state_dict()},
                               {"opt": opt.state_dict(), "sched": sched.state_dict(), "ema_updates": ema.num_updates,
                                "loader": loader.state_dict()}, dist)


def load_checkpoint(path, model, ema, opt, sched, loader, dist) -> int:
    weights, state = load_run_checkpoint(path, dist)
    model.load_state_dict(weights["model"])
    ema.load_state_dict(weights["ema"], state["ema_updates"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    loader.load_state_dict(state["loader"])
    return int(state["step"])


# ----------------------------------------------------------------------------- the loop

def train(cfg: TrainDiTConfig) -> str:
    """Run (or resume) training; returns the exported dit/ directory."""
    with distributed(cfg.device) as dist:
        return _train(cfg, dist)


def _train(cfg: TrainDiTConfig, dist: Dist) -> str:
    from textok.trainer.models.diffusion import diffusion_for

    seed_everything(cfg.seed, dist.rank)
    loader = build_loader(cfg, dist)
    model = build_model(cfg, loader.meta, loader.files).to(dist.device)
    ema = EMA(model, cfg.ema, warmup=cfg.ema_warmup)
    ddp_model = maybe_compile(wrap_ddp(model, dist), cfg.compile, cfg.compile_backend)  # checkpoints save `model`
    opt = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
    sched = warmup_cosine(opt, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
    diffusion = diffusion_for(model.cfg)
    stats = latent_stats(loader.meta)
    norm = (torch.tensor(stats["mean"], device=dist.device), torch.tensor(stats["std"], device=dist.device))
    ckpt = Checkpointer(cfg.output, cfg.keep_last, dist.is_main)

    resolved = {"train": asdict(cfg), "model": asdict(model.cfg),
                "loss": {"diffusion_steps": model.cfg.diffusion_steps, "latent_mean": stats["mean"],
                         "latent_std": stats["std"], "tokenizer_sha256": stats["tokenizer_sha256"]}}
    # a resume must rebuild the same model on the same latent set ("loss" holds its statistics)
    step = start_or_resume(cfg.output, resolved, cfg.resume, ckpt,
                           lambda path: load_checkpoint(path, model, ema, opt, sched, loader, dist), dist,
                           allow_change=cfg.allow_config_change)
    preview = None
    if dist.is_main:
        log.info("DiT-%s %.1fM params on %d tokens x %d", cfg.preset, model.num_params() / 1e6,
                 model.cfg.num_tokens, model.cfg.token_dim)
        if cfg.tokenizer:
            with torch.random.fork_rng(devices=[]):  # building TexTok draws init weights: keep the run's RNG
                preview = Preview.build(cfg, stats, dist.device)
    logger = MetricsLogger(cfg.output, cfg.steps, step, dist.is_main, desc="train-dit")

    model.train()
    for batch in loader:
        if step >= cfg.steps:
            break
        logs = train_step(batch, ddp_model, model, diffusion, norm, opt, sched, cfg, dist)
        ema.update(model)
        logs = reduce_and_check(logs, step + 1, ckpt, dist, keys=batch.get("key") or ())
        step += 1
        logger.advance()
        if due(step, cfg.log_every, cfg.steps):
            logger.log(step, logs | {"epoch": batch["epoch"]})
        if due(step, cfg.save_every, cfg.steps):
            check_finite_weights(model, step, ckpt)
            save_checkpoint(ckpt, step, model, ema, opt, sched, loader, dist)
        if dist.is_main and due(step, cfg.sample_every, cfg.steps):  # watchable while the run goes on
            if preview is not None:
                with ema.swapped(model), torch.random.fork_rng(devices=[]):
                    grid = preview.save(model, os.path.join(cfg.output, "samples", f"step-{step:06d}.png"))
                logger.image("samples", grid, step)
            logger.plot(os.path.join(cfg.output, "loss.png"))
    logger.close()

    out = os.path.join(cfg.output, "dit")
    if dist.is_main:
        # the side files travel with the weights (hub.HubModel.side_files): `sample` needs the stats
        model.side_files.update({STATS_NAME: stats, TRAINING_FILE: {**run_settings(cfg.output), "steps_done": step}})
        if stats.get("encoder"):
            model.side_files[TEXT_ENCODER_FILE] = text_encoder_record(stats)
        with atomic_dir(out) as tmp, ema.swapped(model):  # readers never see a half-written dit/
            model.save_pretrained(tmp, card={"data": cfg.latents, "tokenizer": stats.get("tokenizer"), "steps": step,
                                             "batch size": cfg.batch_size, "metrics": logger.last})
        logger.plot(os.path.join(cfg.output, "loss.png"))
    return out


class Preview:
    """A fixed batch of real latents (+ labels/captions) and fixed noise: grids comparable over steps."""

    def __init__(self, tokenizer, batch: dict, stats: dict, cfg: TrainDiTConfig, device):
        self.tokenizer, self.batch, self.stats, self.cfg, self.device = tokenizer, batch, stats, cfg, device

    @classmethod
    def build(cls, cfg: TrainDiTConfig, stats: dict, device) -> "Preview":
        from textok.trainer.run_dir import tokenizer_dir
        from textok.trainer.evaluation.sample import check_tokenizer
        from textok.trainer.models.textok import TexTok

        tok_dir = tokenizer_dir(cfg.tokenizer, "--tokenizer")
        tokenizer = TexTok.from_pretrained(tok_dir).eval().to(device)
        check_tokenizer(tokenizer, tok_dir, stats)
        needs_text = cfg.t2i or tokenizer.cfg.text_in_decoder
        batch = next(iter(LatentLoader(cfg.latents, 8, with_text=needs_text, train=False)))
        return cls(tokenizer, batch, stats, cfg, device)

    @torch.no_grad()
    def save(self, model, path: str) -> str:
        model.eval()
        b, n = self.batch, len(self.batch["key"])
        gen = torch.Generator(self.device).manual_seed(self.cfg.seed)
        text, mask = b.get("text_emb"), b.get("text_mask")
        cond = {"text_emb": text, "text_mask": mask} if self.cfg.t2i else {"y": b["label"]}
        with autocast(self.device):
            z = generate_latents(model, self.stats, n, self.cfg.sample_cfg, self.cfg.sample_steps, "ddpm", gen,
                                 **cond)
            fake = decode_latents(self.tokenizer, z.float(), text, mask)
            real = decode_latents(self.tokenizer, b["z"], text, mask)
        model.train()
        return save_pairs(real.cpu(), fake.cpu(), path=path)
