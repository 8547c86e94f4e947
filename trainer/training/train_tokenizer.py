"""Train the TexTok tokenizer on textok shards (one explicit loop; DDP via torchrun).

    textok train-tokenizer --shards out/shards --output runs/tok --preset B --steps 300000 --batch-size 256
    torchrun --nproc_per_node 8 -m textok train-tokenizer --shards ... --output ...   # multi-GPU
    textok train-tokenizer ... --resume        # continues exactly from runs/tok/checkpoints/latest

Writes into --output: config.json (the resolved run config), text_encoder.json (the shards'
encoder, encoder_hash/revision, D, max_tokens), metrics.jsonl, checkpoints/step-*/,
tb/ (TensorBoard), samples/step-*.png (originals | EMA reconstructions) and loss.png (both
refreshed every --sample-every steps) and, at the end, tokenizer/
(EMA weights via TexTok.save_pretrained + text_encoder.json: what `extract-latents` loads).
Defaults follow the paper (lr 1e-4, EMA 0.999, L2 1.0 / perceptual 0.1 / GAN 0.1 / LeCAM 1e-4,
discriminator from step 80k, patch 8 at 256 px, d = 8); --batch-size is the global batch.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import asdict, dataclass, field

import torch

from textok.atomic import atomic_dir
from textok.trainer.data.loader import ShardLoader
from textok.trainer.models.hub import TEXT_ENCODER_FILE, TRAINING_FILE
from textok.trainer.evaluation.grid import save_pairs
from textok.trainer.training.checkpoint import (Checkpointer, load_run_checkpoint, run_settings, save_run_checkpoint,
                                                start_or_resume)
from textok.trainer.training.optim import EMA, build_optimizer, clip_grad, warmup_cosine
from textok.trainer.training.distributed import Dist, all_reduce_grads, average_buffers, broadcast_params, distributed, local_batch, seed_everything, wrap_ddp
from textok.trainer.training.metrics_log import MetricsLogger
from textok.devices import autocast
from textok.trainer.training.guards import check_finite_weights, reduce_and_check
from textok.trainer.training.run_config import due, resolve_config
from textok.trainer.training.speed import maybe_compile, to_channels_last
from textok.trainer.run_dir import check_text_encoder, text_encoder_record, write_text_encoder

log = logging.getLogger(__name__)


@dataclass
class TrainTokenizerConfig:
    shards: str = ""
    output: str = ""
    split: str = "train"  # in a shards dir, only {split}-*.parquet
    preset: str = "B"
    # None: the preset's value (B/S/L: 256 px, patch 8, N 128, d 8 as in the paper; tiny: 32 px)
    image_size: int | None = None
    patch_size: int | None = None
    num_tokens: int | None = None
    token_dim: int | None = None
    text_mode: str = "both"
    # off unless asked: a flip contradicts captions that say where things are (loader.decode_crop); a
    # comparison must use the same value for TexTok and the no-text baseline (eval-tokenizer checks)
    hflip: bool = False
    steps: int = 0
    batch_size: int = 256  # global, split evenly over ranks
    lr: float = 1e-4
    disc_lr: float | None = None  # None: same as lr
    weight_decay: float = 1e-4
    betas: tuple = (0.9, 0.99)
    warmup: int = 5000
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema: float = 0.999
    ema_warmup: bool = True  # decay min(ema, (1+t)/(10+t)): short runs export a usable EMA model
    disc_start: int = 80_000
    perceptual: str = "auto"
    lpips_weights: str | None = None
    vgg16_weights: str | None = None
    fid_inception_path: str | None = None
    save_every: int = 5000
    sample_every: int = 1000
    log_every: int = 50
    keep_last: int = 3
    num_workers: int = 4
    shuffle_buffer: int = 1000
    seed: int = 0
    resume: bool = False
    allow_config_change: bool = False  # --resume may change experiment settings (recorded)
    device: str = "auto"
    compile: bool = False  # torch.compile the model step (training/speed.py)
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager": graph capture only)
    channels_last: bool = False  # NHWC images and discriminator (training/speed.py)
    model: dict = field(default_factory=dict)  # extra TexTokConfig overrides (width, depth, dropout, ...)
    loss: dict = field(default_factory=dict)  # extra LossConfig overrides (l2_weight, gan_weight, ...)


# Training settings a size preset changes (flag > --config file > this table > the dataclass's
# paper values). `tiny` is a CPU-minutes model on 32 px images: a 5,000-step warm-up would outlast
# the run, the 80k-step discriminator gate would never open (5k: only longer tiny runs get a GAN)
# and a 299 px perceptual network costs ~100x the model per step (issue 9 measured 34 s vs
# 0.2 s/step on 2 cores). S/B/L keep the paper's values (B is the paper's model).
TRAINING_PRESETS: dict[str, dict] = {
    "tiny": dict(lr=1e-3, batch_size=32, warmup=100, disc_start=5_000, perceptual="none",
                 save_every=500, sample_every=250, log_every=25, num_workers=1),
}


def preset_defaults(field: str) -> dict:
    """{preset: the value `field` takes when no flag or --config sets it} (what --help shows)."""
    from textok.trainer.models.textok import TEXTOK_PRESETS, textok_config

    default = {f.name: f.default for f in dataclasses.fields(TrainTokenizerConfig)}[field]
    out = {}
    for preset in TEXTOK_PRESETS:
        value = TRAINING_PRESETS.get(preset, {}).get(field, default)
        out[preset] = getattr(textok_config(preset), field) if value is None else value
    return out


def load_config(path: str | None, **overrides) -> TrainTokenizerConfig:
    """Defaults <- the preset's TRAINING_PRESETS <- JSON/YAML file <- explicit overrides (None
    values are 'not given'); unset sizes take the model preset's values."""
    from textok.trainer.models.textok import textok_config

    cfg = resolve_config(TrainTokenizerConfig, path, overrides, "train-tokenizer", required=("shards", "output"),
                         preset_defaults=TRAINING_PRESETS)
    preset = textok_config(cfg.preset)
    for name in ("image_size", "patch_size", "num_tokens", "token_dim"):
        if getattr(cfg, name) is None:
            setattr(cfg, name, getattr(preset, name))
    return cfg


# ----------------------------------------------------------------------------- text-encoder record

# ----------------------------------------------------------------------------- builders

def build_loader(cfg: TrainTokenizerConfig, dist: Dist, text_dim: int | None = None,
                 max_tokens: int | None = None) -> ShardLoader:
    return ShardLoader(cfg.shards, cfg.image_size, local_batch(cfg.batch_size, dist), text_dim=text_dim,
                       max_tokens=max_tokens, split=cfg.split, train=True, seed=cfg.seed, rank=dist.rank,
                       world_size=dist.world_size, num_workers=cfg.num_workers, shuffle_buffer=cfg.shuffle_buffer,
                       hflip=cfg.hflip)


def build_model(cfg: TrainTokenizerConfig, text_dim: int, max_tokens: int):
    from textok.trainer.models.discriminator import DiscriminatorConfig
    from textok.trainer.training.losses import LossConfig, TexTokLoss
    from textok.trainer.models.textok import TexTok, textok_config

    model_cfg = textok_config(cfg.preset, image_size=cfg.image_size, patch_size=cfg.patch_size,
                              num_tokens=cfg.num_tokens, token_dim=cfg.token_dim, text_mode=cfg.text_mode,
                              text_dim=text_dim, max_text_tokens=max_tokens, **cfg.model)
    loss_overrides = dict(cfg.loss)
    if isinstance(loss_overrides.get("disc"), dict):  # from JSON/YAML: {"disc": {"channel_base": ...}}
        loss_overrides["disc"] = DiscriminatorConfig(**{"image_size": cfg.image_size, **loss_overrides["disc"]})
    loss_cfg = LossConfig(**{"disc_start": cfg.disc_start, "perceptual": cfg.perceptual,
                             "lpips_weights": cfg.lpips_weights, "vgg16_weights": cfg.vgg16_weights,
                             "fid_inception_path": cfg.fid_inception_path, **loss_overrides})
    # no discriminator before disc_start: `start_discriminator` creates it (with its optimizer) then
    return TexTok(model_cfg), TexTokLoss(loss_cfg, cfg.image_size, build_discriminator=False)


def start_discriminator(loss_fn, cfg: TrainTokenizerConfig, dist: Dist):
    """The discriminator and its optimizer, created when the GAN term starts (or on resuming a run
    past that step); the same on every rank (seeded init + broadcast)."""
    disc = to_channels_last(loss_fn.start_discriminator(cfg.seed + 1_000_003), cfg.channels_last)
    broadcast_params(disc, dist)  # DDP syncs the tokenizer; D is synced by hand
    return build_optimizer(disc, cfg.disc_lr or cfg.lr, cfg.weight_decay, cfg.betas)


def resolved_config(cfg: TrainTokenizerConfig, model, loss_fn) -> dict:
    return {"train": asdict(cfg), "model": asdict(model.cfg),
            "loss": asdict(loss_fn.cfg) if dataclasses.is_dataclass(getattr(loss_fn, "cfg", None)) else {}}


# ----------------------------------------------------------------------------- one step

def train_step(batch, step, ddp_model, model, loss_fn, opt_g, opt_d, sched_g, cfg, dist) -> dict:
    """One generator update, then (once active) one discriminator update. Returns detached scalars."""
    device = dist.device
    images = to_channels_last(batch["images"].to(device, non_blocking=True), cfg.channels_last)
    text, mask = batch["text_emb"].to(device).float(), batch["text_mask"].to(device)
    disc = loss_fn.discriminator  # None before disc_start

    if disc is not None:
        disc.requires_grad_(False)  # the G step must not leave gradients on D
    with autocast(device):
        recon, _z = ddp_model(images, text, mask)
        g_loss, logs = loss_fn.generator_loss(images, recon.float(), step)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    logs = {**logs, "grad_norm": clip_grad(model.parameters(), cfg.grad_clip),
            "lr": sched_g.get_last_lr()[0]}
    opt_g.step()
    lr_scale = sched_g.get_last_lr()[0] / cfg.lr  # D follows G's warmup/cosine schedule
    sched_g.step()

    if loss_fn.disc_active(step):
        if opt_d is None:
            raise RuntimeError(f"step {step}: the GAN term is active but no discriminator optimizer was created")
        disc.requires_grad_(True)
        for group in opt_d.param_groups:
            group["lr"] = (cfg.disc_lr or cfg.lr) * lr_scale
        with autocast(device):
            d_loss, d_logs = loss_fn.discriminator_loss(images, recon.detach().float(), step)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        all_reduce_grads(disc.parameters(), dist)
        average_buffers(loss_fn.buffers(recurse=False), dist)  # the loss's own running means (LeCAM)
        logs.update({**d_logs, "d_grad_norm": clip_grad(disc.parameters(), cfg.grad_clip)})
        opt_d.step()
    return logs


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(ckpt, step, model, ema, loss_fn, opt_g, opt_d, sched_g, loader, dist) -> str | None:
    # the loss's state: the LeCAM running means, and the discriminator once it exists (opt_d with it)
    weights = {"model": model.state_dict(), "ema": ema.state_dict(), "discriminator": loss_fn.state_dict()}
    state = {"opt_g": opt_g.state_dict(), "sched_g": sched_g.state_dict(),
             "ema_updates": ema.num_updates, "loader": loader.state_dict(),
             **({"opt_d": opt_d.state_dict()} if opt_d is not None else {})}
    return save_run_checkpoint(ckpt, step, weights, state, dist)


def load_checkpoint(path, model, ema, loss_fn, opt_g, sched_g, loader, cfg, dist):
    """Restore a checkpoint; -> (step, the discriminator's optimizer or None when it had not started)."""
    weights, state = load_run_checkpoint(path, dist)
    model.load_state_dict(weights["model"])
    ema.load_state_dict(weights["ema"], state["ema_updates"])
    opt_d = None
    if any(k.startswith("discriminator.") for k in weights["discriminator"]):  # saved past disc_start
        opt_d = start_discriminator(loss_fn, cfg, dist)
        if "opt_d" not in state:
            raise ValueError(f"{path}: holds discriminator weights but no 'opt_d' state; the checkpoint is incomplete")
        opt_d.load_state_dict(state["opt_d"])
    loss_fn.load_state_dict(weights["discriminator"])
    opt_g.load_state_dict(state["opt_g"])
    sched_g.load_state_dict(state["sched_g"])
    loader.load_state_dict(state["loader"])
    return int(state["step"]), opt_d


# ----------------------------------------------------------------------------- the loop

def train(cfg: TrainTokenizerConfig) -> str:
    """Run (or resume) training; returns the exported tokenizer directory."""
    with distributed(cfg.device) as dist:
        return _train(cfg, dist)


def _train(cfg: TrainTokenizerConfig, dist: Dist) -> str:
    seed_everything(cfg.seed, dist.rank)
    loader = build_loader(cfg, dist)
    model, loss_fn = build_model(cfg, loader.text_dim, loader.max_tokens)
    model.to(dist.device)
    loss_fn.to(dist.device)
    ema = EMA(model, cfg.ema, warmup=cfg.ema_warmup)
    ddp_model = maybe_compile(wrap_ddp(model, dist), cfg.compile, cfg.compile_backend)  # checkpoints save `model`
    opt_g = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
    opt_d = None  # the discriminator's, from disc_start (start_discriminator)
    sched_g = warmup_cosine(opt_g, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
    ckpt = Checkpointer(cfg.output, cfg.keep_last, dist.is_main)
    if cfg.resume and ckpt.latest():  # the run's text_encoder.json is about to be rewritten
        check_text_encoder(cfg.output, loader.meta, cfg.shards)

    restored = {}

    def restore(path: str) -> int:
        restored["step"], restored["opt_d"] = load_checkpoint(path, model, ema, loss_fn, opt_g, sched_g, loader,
                                                              cfg, dist)
        return restored["step"]

    step = start_or_resume(cfg.output, resolved_config(cfg, model, loss_fn), cfg.resume, ckpt, restore, dist,
                           allow_change=cfg.allow_config_change)
    opt_d = restored.get("opt_d")
    if dist.is_main:
        write_text_encoder(loader.meta, cfg.output)
        log.info("TexTok %.1fM params; discriminator from step %d", sum(p.numel() for p in model.parameters()) / 1e6,
                 loss_fn.cfg.disc_start)
    preview = next(iter(ShardLoader(loader.files, cfg.image_size, 8, train=False))) if dist.is_main else None
    logger = MetricsLogger(cfg.output, cfg.steps, step, dist.is_main, desc="train-tokenizer")

    model.train()
    for batch in loader:
        if step >= cfg.steps:
            break
        if opt_d is None and loss_fn.disc_active(step):
            opt_d = start_discriminator(loss_fn, cfg, dist)
        logs = train_step(batch, step, ddp_model, model, loss_fn, opt_g, opt_d, sched_g, cfg, dist)
        ema.update(model)
        logs = reduce_and_check(logs, step + 1, ckpt, dist, keys=batch.get("key") or ())
        step += 1
        logger.advance()
        preview_due = dist.is_main and due(step, cfg.sample_every, cfg.steps)
        # after warm-up, every preview also measures whether the latent carries the image
        watch = watch_latent(model, preview, step) if preview_due and step > cfg.warmup else {}
        if due(step, cfg.log_every, cfg.steps) or watch:
            logger.log(step, logs | {"epoch": batch["epoch"]} | watch)
        if due(step, cfg.save_every, cfg.steps):
            check_finite_weights(model, step, ckpt)  # never let a "last good" checkpoint hold NaNs
            save_checkpoint(ckpt, step, model, ema, loss_fn, opt_g, opt_d, sched_g, loader, dist)
        if preview_due:  # watchable while the run goes on
            grid = save_samples(model, ema, preview, os.path.join(cfg.output, "samples", f"step-{step:06d}.png"), dist)
            logger.image("reconstructions", grid, step)
            logger.plot(os.path.join(cfg.output, "loss.png"))
    logger.close()

    out = os.path.join(cfg.output, "tokenizer")
    if dist.is_main:
        # the side files travel with the weights: a save_pretrained / push_to_hub of this model
        # anywhere keeps what extract-latents and eval-tokenizer check (hub.HubModel.side_files)
        model.side_files.update({TEXT_ENCODER_FILE: text_encoder_record(loader.meta),
                                 TRAINING_FILE: {**run_settings(cfg.output), "steps_done": step}})
        with atomic_dir(out) as tmp, ema.swapped(model):  # readers never see a half-written tokenizer/
            model.save_pretrained(tmp, card={"data": cfg.shards, "steps": step, "batch size": cfg.batch_size,
                                             "text encoder": loader.meta.get("encoder"), "metrics": logger.last})
        logger.plot(os.path.join(cfg.output, "loss.png"))
    return out


@torch.no_grad()
def watch_latent(model, batch, step: int) -> dict:
    """{"latent_gain_db"} on the held preview batch (own Z vs another image's Z, same captions:
    trainer/evaluation/controls.py), with a warning when the latent carries almost nothing: the
    degenerate optimum where the detokenizer decodes from the caption alone, or only the mean."""
    from textok.trainer.evaluation.controls import DEGENERATE_LATENT_GAIN_DB, latent_gain_db

    if len(batch["images"]) < 2:
        return {}
    device = next(model.parameters()).device
    model.eval()
    with autocast(device):
        gain = latent_gain_db(model, batch["images"].to(device), batch["text_emb"].to(device).float(),
                              batch["text_mask"].to(device))
    model.train()
    if gain < DEGENERATE_LATENT_GAIN_DB:
        log.warning("step %d: latent_gain_db = %.2f dB on the preview batch: decoding with another image's latent "
                    "is as good as with the image's own, so the latent carries almost nothing (the detokenizer "
                    "reads the caption alone, or predicts the mean). Runs of this tokenizer measure the caption, "
                    "not the tokens; check the init, lr and steps (README: 'Where a number comes from')",
                    step, gain)
    return {"latent_gain_db": gain}


@torch.no_grad()
def save_samples(model, ema, batch, path: str, dist: Dist) -> str:
    model.eval()
    with ema.swapped(model), autocast(dist.device):
        recon, _ = model(batch["images"].to(dist.device), batch["text_emb"].to(dist.device).float(),
                         batch["text_mask"].to(dist.device))
    model.train()
    return save_pairs(batch["images"], recon.float().cpu(), path=path)
