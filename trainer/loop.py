"""Training-loop machinery shared by the tokenizer and DiT trainers (no model math here).

    dist = init_distributed()                       # torchrun env -> nccl (GPU) / gloo (CPU); else one process
    seed_everything(cfg.seed, dist.rank)
    model = build(...).to(dist.device); ema = EMA(model, decay=0.999)
    ddp_model = wrap_ddp(model, dist)
    opt = build_optimizer(model, lr=1e-4); sched = warmup_cosine(opt, warmup=1000, total=steps)
    with autocast(dist.device): loss = ...
    check_finite({"loss": loss.item()}, step, ckpt)  # NaN/inf -> NonFiniteLossError naming the last good ckpt
    clip_grad(model.parameters(), 1.0); opt.step(); sched.step(); ema.update(model)

Checkpoints, RNG state and resume live in trainer/checkpoint.py. trainer/train_tokenizer.py
is the worked example (DDP, a second optimiser, per-rank RNG); trainer/train_dit.py the plain
one. Both resolve their config with `load_config` (dataclass defaults <- JSON/YAML file <- CLI
flags), start with `checkpoint.start_or_resume` and save/restore through
`checkpoint.save_run_checkpoint` / `load_run_checkpoint` (every rank's RNG state travels in
the checkpoint).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Iterable, TypeVar

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn as nn

if TYPE_CHECKING:
    from trainer.checkpoint import Checkpointer


# ----------------------------------------------------------------------------- distribution

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> Dist:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK), else run alone."""
    want_cuda = torch.cuda.is_available() if device in (None, "auto") else device.startswith("cuda")
    if want_cuda:  # TF32 matmuls outside autocast regions (as DiT's train.py); bf16 autocast does the rest
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        dev = torch.device("cuda" if want_cuda else "cpu") if device in (None, "auto") else torch.device(device)
        return Dist(device=dev)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if want_cuda else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local, dev)


def cleanup_distributed() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str | None = None):
    """`with distributed(cfg.device) as dist:` -- init_distributed, and always leave the group."""
    dist = init_distributed(device)
    try:
        yield dist
    finally:
        cleanup_distributed()


def local_batch(global_batch: int, dist: Dist) -> int:
    """--batch-size is global: this rank's share."""
    if global_batch % dist.world_size:
        raise ValueError(f"--batch-size {global_batch} does not split over {dist.world_size} ranks")
    return global_batch // dist.world_size


def wrap_ddp(model: nn.Module, dist: Dist) -> nn.Module:
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)


def all_reduce_grads(params: Iterable[torch.Tensor], dist: Dist) -> None:
    """Average gradients across ranks by hand, for modules that run outside DDP (the
    discriminator is called inside the loss, in both the G and D steps, so a DDP wrapper
    would sync it at the wrong backward)."""
    if not dist.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat)
    flat /= dist.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_params(module: nn.Module, dist: Dist) -> None:
    """Start every rank from rank 0's weights (DDP does this for the module it wraps)."""
    if dist.enabled:
        for t in list(module.parameters()) + list(module.buffers()):
            tdist.broadcast(t.data, 0)


def average_buffers(buffers: Iterable[torch.Tensor], dist: Dist) -> None:
    """Average floating-point running statistics (e.g. LeCAM's EMAs) so every rank holds the same
    state: then rank 0's checkpoint resumes every rank exactly."""
    if dist.enabled:
        for b in buffers:
            if b.dtype.is_floating_point:
                tdist.all_reduce(b)
                b /= dist.world_size


def reduce_mean(values: dict[str, float], dist: Dist) -> dict[str, float]:
    if not dist.enabled or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t)
    return dict(zip(values, (t / dist.world_size).tolist()))


# ----------------------------------------------------------------------------- seeding

def seed_everything(seed: int, rank: int = 0) -> None:
    s = seed + rank  # different dropout/noise per rank, reproducible per run
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


# ----------------------------------------------------------------------------- optimisation

def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 1e-4,
                    betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrix/conv weights. Biases, norm gains, embedding tables and
    bare learnable tokens/positions are not decayed (GPT-2/MAE habit: decaying them only pulls
    positions and scales towards zero)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:  # tied weights appear in two modules
                continue
            seen.add(id(p))
            is_matrix = name == "weight" and p.ndim >= 2 and not isinstance(module, nn.Embedding)
            (decay if is_matrix else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int,
                  min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup` steps, then cosine decay to `min_ratio` x lr at `total`."""
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_grad(params: Iterable[torch.Tensor], max_norm: float | None) -> float:
    params = [p for p in params if p.grad is not None]
    if not max_norm or max_norm <= 0:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))) if params else 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def autocast(device: torch.device):
    """bf16 autocast on GPU; full fp32 on CPU (CPU bf16 is slow and makes the resume test inexact)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class EMA:
    """Exponential moving average of a model's parameters (integer buffers copied as they are).

    With `warmup`, update t uses decay min(decay, (1 + t) / (10 + t)) (TensorFlow's
    ExponentialMovingAverage with num_updates): early averages are not dominated by the random
    init, so short runs (demo, CPU) export a usable EMA model, while long runs get `decay`.
    A resume must then restore `num_updates` too (load_state_dict(..., num_updates=step)).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.float(), 1 - decay)
            else:
                self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def swapped(self, model: nn.Module):
        """Run `model` with EMA weights inside the block, then restore the live weights."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(live)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (saved as safetensors); `num_updates` travels in state.pt."""
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int | None = None) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise KeyError(f"EMA state does not match the model: differing keys {sorted(missing)[:5]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[k])
        if num_updates is not None:
            self.num_updates = int(num_updates)


class NonFiniteLossError(RuntimeError):
    pass


def check_finite(losses: dict[str, torch.Tensor | float], step: int, ckpt: "Checkpointer") -> None:
    bad = {k: float(v) for k, v in losses.items() if not np.isfinite(float(v))}
    if bad:
        last = ckpt.latest()
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
        raise NonFiniteLossError(f"non-finite loss at step {step}: {bad}; {where}. Lower the learning rate or "
                                 f"check the data, then resume with --resume")


def reduce_and_check(logs: dict[str, torch.Tensor | float], step: int, ckpt: "Checkpointer",
                     dist: Dist) -> dict[str, float]:
    """A step's logged scalars averaged over ranks, after a NaN/inf check (the learning rate is
    not checked). Reduced first, so every rank sees a NaN on any rank and they stop together."""
    logs = reduce_mean({k: float(v) for k, v in logs.items()}, dist)
    check_finite({k: v for k, v in logs.items() if k != "lr"}, step, ckpt)
    return logs


def check_finite_weights(model: nn.Module, step: int, ckpt: "Checkpointer") -> None:
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteLossError(f"non-finite weights after step {step} in {bad[:3]}; refusing to checkpoint them. "
                                 f"Last good checkpoint: {ckpt.latest() or 'none saved yet'}")


# ----------------------------------------------------------------------------- run config

Config = TypeVar("Config")


def load_config(cls: type[Config], path: str | None, overrides: dict, command: str,
                required: tuple[str, ...] = ()) -> Config:
    """Dataclass defaults <- JSON/YAML file <- explicit overrides (None values are 'not given').

    `required` fields must end up non-empty and `steps` positive; lists become tuples where the
    default is a tuple (YAML/JSON have no tuples: betas).
    """
    values: dict = {}
    if path:
        with open(path) as f:
            if path.endswith((".yaml", ".yml")):
                import yaml

                values = yaml.safe_load(f) or {}
            else:
                values = json.load(f)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{path or 'overrides'}: unknown {command} setting(s) {unknown}; known: {sorted(known)}")
    cfg = cls(**values)
    for name, f in known.items():
        if isinstance(f.default, tuple) and isinstance(getattr(cfg, name), list):
            setattr(cfg, name, tuple(getattr(cfg, name)))
    for name in required:
        if not getattr(cfg, name):
            raise ValueError(f"{command}: --{name.replace('_', '-')} is required")
    if "steps" in known and cfg.steps <= 0:
        raise ValueError(f"{command}: --steps must be positive, got {cfg.steps}")
    return cfg


def due(step: int, every: int, total: int) -> bool:
    """Periodic work (logging, checkpoints, grids) runs every `every` steps and at the last step."""
    return step % every == 0 or step == total


# ----------------------------------------------------------------------------- logging

class MetricsLogger:
    """JSONL (always), TensorBoard (when installed) and a tqdm bar, all on rank 0 only."""

    def __init__(self, output_dir: str, total_steps: int, start_step: int = 0, is_main: bool = True,
                 desc: str = "train"):
        self.is_main = is_main
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.tb = self.bar = None
        if not is_main:
            return
        os.makedirs(output_dir, exist_ok=True)
        if start_step == 0 and os.path.exists(self.path):
            os.remove(self.path)  # a fresh run; a resumed one appends
        elif start_step > 0:
            self._truncate_after(start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(output_dir, "tb"))
        except ImportError:  # tensorboard is optional
            pass
        from tqdm import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)
        self.t0 = time.time()

    def _truncate_after(self, step: int) -> None:
        # Steps logged after the checkpoint we resume from will be logged again.
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            rows = [line for line in f if json.loads(line).get("step", 0) <= step]
        with open(self.path, "w") as f:
            f.writelines(rows)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.is_main:
            return
        row = {"step": step, "time": round(time.time() - self.t0, 3), **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, float(v), step)
        if self.bar is not None:
            self.bar.set_postfix({k: f"{float(v):.4g}" for k, v in list(values.items())[:4]})

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
