"""One process or many under torchrun: the process group, per-rank seeds and the DDP helpers.

    with distributed(cfg.device) as dist:      # torchrun env -> nccl (GPU) / gloo (CPU); else one process
        seed_everything(cfg.seed, dist.rank)
        ddp_model = wrap_ddp(model, dist)

Models know nothing of this module (torchtitan's split of model.py and parallelize.py).
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn as nn



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
    from textok.devices import resolve_device

    device = resolve_device(device)  # "--device cuda" without CUDA: a DeviceError naming the flag
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



def seed_everything(seed: int, rank: int = 0) -> None:
    s = seed + rank  # different dropout/noise per rank, reproducible per run
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
