"""Optimiser, learning-rate schedule, gradient clipping and the EMA of the weights.

    opt = build_optimizer(model, lr=1e-4); sched = warmup_cosine(opt, warmup=1000, total=steps)
    clip_grad(model.parameters(), 1.0); opt.step(); sched.step(); ema.update(model)
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable

import torch
import torch.nn as nn



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
