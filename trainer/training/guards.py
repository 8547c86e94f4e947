"""Stop on NaN/inf before it reaches a checkpoint, and say where the last good one is."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn as nn

from textok.trainer.training.distributed import Dist, reduce_mean

if TYPE_CHECKING:
    from textok.trainer.training.checkpoint import Checkpointer


class NonFiniteLossError(RuntimeError):
    pass


def check_finite(losses: dict[str, torch.Tensor | float], step: int, ckpt: "Checkpointer",
                 keys: Sequence[str] = ()) -> None:
    """Raise NonFiniteLossError naming the step, the losses, this rank's batch keys (the rows to look
    at: `textok inspect` the shards holding them) and the last good checkpoint."""
    bad = {k: float(v) for k, v in losses.items() if not np.isfinite(float(v))}
    if bad:
        last = ckpt.latest()
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
        shown = list(keys)[:8]
        batch = (f"; this rank's batch held keys {shown}{' ...' if len(keys) > len(shown) else ''}"
                 if shown else "")
        raise NonFiniteLossError(f"non-finite loss at step {step}: {bad}{batch}; {where}. Check those rows "
                                 f"(textok inspect SHARDS checks every embedding), or lower the learning rate, "
                                 f"then resume with --resume")


def reduce_and_check(logs: dict[str, torch.Tensor | float], step: int, ckpt: "Checkpointer",
                     dist: Dist, keys: Sequence[str] = ()) -> dict[str, float]:
    """A step's logged scalars averaged over ranks, after a NaN/inf check (the learning rate is
    not checked). Reduced first, so every rank sees a NaN on any rank and they stop together."""
    logs = reduce_mean({k: float(v) for k, v in logs.items()}, dist)
    check_finite({k: v for k, v in logs.items() if k != "lr"}, step, ckpt, keys)
    return logs


def check_finite_weights(model: nn.Module, step: int, ckpt: "Checkpointer") -> None:
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteLossError(f"non-finite weights after step {step} in {bad[:3]}; refusing to checkpoint them. "
                                 f"Last good checkpoint: {ckpt.latest() or 'none saved yet'}")
