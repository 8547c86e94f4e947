"""One answer to "which device?" for every command (pipeline encoders, local VLMs, trainers).

    resolve_device("auto")   # "cuda" when torch sees a GPU, else "cpu"
    resolve_device("cuda:1") # checked: a clear error when torch sees no CUDA device
    with autocast(torch.device("cuda")): ...   # bf16 on GPU, fp32 on CPU
"""
from __future__ import annotations

import contextlib


class DeviceError(ValueError):
    """A --device setting this machine cannot honour."""


def resolve_device(device: str | None) -> str:
    """"auto"/None -> "cuda" when available else "cpu"; anything else is checked, not guessed."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: torch sees no CUDA device on this machine; use --device cpu or auto")
    try:
        torch.device(device)
    except RuntimeError as e:
        raise DeviceError(f"--device {device!r} is not a torch device ({e}); use auto, cpu, cuda or cuda:N") from None
    return device


def autocast(device):
    """bf16 autocast on GPU; full fp32 on CPU (CPU bf16 is slow and makes the resume test inexact)."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
