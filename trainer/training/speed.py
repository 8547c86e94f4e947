"""Speed switches of the trainers for GPU users: torch.compile and channels-last.

    textok train-tokenizer ... --compile --channels-last
    textok train-dit ... --compile

`--compile` wraps the module the step calls (DDP-wrapped or not) in `torch.compile`: forward and,
through AOTAutograd, backward become fused kernels (Inductor: Triton on GPU, C++ on CPU). The
first steps pay the compilation (tens of seconds); checkpoints and the exported model use the
original module, so their keys do not change. `--channels-last` stores images and the
convolutional discriminator NHWC, the layout tensor cores' convolutions want under bf16 autocast
(the ViT itself only has its patch embedding as a convolution). `bench/gpu_check.py` measures
both on a lent GPU (sections `compile` and `channels_last`); the SDPA kernel taken with the text
mask is its section `sdpa_text_mask`.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def maybe_compile(module: nn.Module, enabled: bool, backend: str = "inductor") -> nn.Module:
    """`torch.compile(module, backend=backend)` when enabled (the step calls the result; save the
    original). `backend` "aot_eager" captures the same graphs (Dynamo + AOTAutograd) without
    Inductor's code generation: the CPU test's choice, minutes cheaper on 2 cores."""
    if not enabled:
        return module
    if not hasattr(torch, "compile"):
        raise RuntimeError(f"--compile needs torch >= 2.0 (installed: {torch.__version__})")
    return torch.compile(module, backend=backend)


def to_channels_last(x: torch.Tensor | nn.Module, enabled: bool):
    """NHWC memory layout for a 4-d image batch or a conv module (a no-op when disabled)."""
    if not enabled:
        return x
    return x.to(memory_format=torch.channels_last)
