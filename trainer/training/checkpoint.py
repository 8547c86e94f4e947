"""Checkpoints and exact resume for the trainers: weights, state, every rank's RNG, run config.

    ckpt = Checkpointer(out_dir, keep_last=3, is_main=dist.is_main)
    step = start_or_resume(out_dir, resolved_config, resume, ckpt, restore, dist)  # restore(path) -> step
    save_run_checkpoint(ckpt, step, {"model": model.state_dict(), "ema": ema.state_dict()},
                        {"opt": opt.state_dict(), "loader": loader.state_dict()}, dist)   # every rank calls it
    weights, state = load_run_checkpoint(ckpt.latest(), dist)  # also restores this rank's RNG

Checkpoint layout (atomic: written to a hidden temp dir, then renamed; `latest` is a text
file holding the directory name, replaced atomically):
    out/checkpoints/step-000100/{model,ema,<other>}.safetensors   weights (safetensors)
    out/checkpoints/step-000100/state.pt    optimisers, schedulers, step, RNG, loader position
    out/checkpoints/latest                  "step-000100"
`state.pt` holds only tensors, dicts, lists, strings and numbers, so it loads with
`torch.load(weights_only=True)`; the RNG states are converted to that form.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as tdist

from textok.atomic import clean_temps, require_output_dir, temp_name, write_json_atomic
from textok.faults import maybe_fail
from textok.trainer.training.distributed import Dist

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- RNG state

def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) RNG states as plain tensors/lists/numbers (weights_only-safe)."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng(dist: Dist) -> list[dict]:
    """Every rank's RNG state (dropout and augmentation differ per rank), collected on all ranks."""
    mine = rng_state()
    if not dist.enabled:
        return [mine]
    out: list = [None] * dist.world_size
    tdist.all_gather_object(out, mine)
    return out


# ----------------------------------------------------------------------------- checkpoints

def plain(obj):
    """Numpy scalars/arrays -> Python numbers/tensors, recursively: what weights_only loading accepts."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    return obj


class Checkpointer:
    def __init__(self, output_dir: str, keep_last: int = 3, is_main: bool = True):
        self.root = os.path.join(output_dir, "checkpoints")
        self.keep_last, self.is_main = keep_last, is_main

    def latest(self) -> str | None:
        pointer = os.path.join(self.root, "latest")
        if not os.path.isfile(pointer):
            return None
        with open(pointer) as f:
            path = os.path.join(self.root, f.read().strip())
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{pointer} names {path}, which does not exist")
        return path

    def save(self, step: int, weights: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> str | None:
        """weights: {"model": state_dict, "ema": ..., "discriminator": ...} -> <name>.safetensors."""
        from safetensors.torch import save_file

        if not self.is_main:
            return None
        name = f"step-{step:06d}"
        final = os.path.join(self.root, name)
        clean_temps(self.root)  # what a save killed earlier left (only rank 0 writes here)
        tmp = os.path.join(self.root, temp_name(name))
        os.makedirs(tmp)
        try:
            for wname, sd in weights.items():
                save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()},
                          os.path.join(tmp, f"{wname}.safetensors"))
            torch.save(plain({"step": step, **state}), os.path.join(tmp, "state.pt"))
            maybe_fail("checkpoint.temp_written")
            if os.path.exists(final):  # re-saving the same step (e.g. final == last periodic)
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
        maybe_fail("checkpoint.before_latest")
        pointer_tmp = os.path.join(self.root, temp_name("latest"))
        with open(pointer_tmp, "w") as f:
            f.write(name)
        os.replace(pointer_tmp, os.path.join(self.root, "latest"))
        self._prune(keep=name)
        return final

    def _prune(self, keep: str) -> None:
        # by step number, not by name: "step-1000000" sorts before "step-999999" as text
        steps = sorted((d for d in os.listdir(self.root) if d.startswith("step-")), key=lambda d: int(d[5:]))
        for d in steps[:-self.keep_last] if self.keep_last > 0 else []:
            if d != keep:
                shutil.rmtree(os.path.join(self.root, d))

    @staticmethod
    def load(path: str, map_location="cpu") -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """-> ({weights name: state_dict}, state)."""
        from safetensors.torch import load_file

        state_file = os.path.join(path, "state.pt")
        if not os.path.isfile(state_file):
            raise FileNotFoundError(f"{path}: not a textok checkpoint (no state.pt)")
        weights = {f[:-len(".safetensors")]: load_file(os.path.join(path, f), device=str(map_location))
                   for f in sorted(os.listdir(path)) if f.endswith(".safetensors")}
        state = torch.load(state_file, map_location=map_location, weights_only=True)
        return weights, state


def save_run_checkpoint(ckpt: Checkpointer, step: int, weights: dict[str, dict[str, torch.Tensor]],
                        state: dict[str, Any], dist: Dist) -> str | None:
    """Every rank calls this (the RNG gather is a collective); rank 0 writes weights + state + RNGs."""
    rngs = gather_rng(dist)
    return ckpt.save(step, weights, {**state, "rng": rngs}) if dist.is_main else None


def load_run_checkpoint(path: str, dist: Dist) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Load a checkpoint on CPU and restore this rank's RNG state; -> (weights, state) for the rest."""
    weights, state = Checkpointer.load(path, map_location="cpu")
    if len(state["rng"]) != dist.world_size:
        raise ValueError(f"{path}: saved with {len(state['rng'])} ranks, resumed with {dist.world_size}; "
                         f"resume with the same number of processes")
    set_rng_state(state["rng"][dist.rank])
    return weights, state


# ----------------------------------------------------------------------------- resume

def check_same_run(path: str, resolved: dict) -> None:
    """A resume must rebuild the same model and loss; anything else would not continue the run."""
    with open(path) as f:
        saved = json.load(f)
    for part in ("model", "loss"):
        old, new = saved.get(part, {}), json.loads(json.dumps(resolved[part]))
        diff = {k: (old.get(k), new.get(k)) for k in set(old) | set(new) if old.get(k) != new.get(k)}
        if diff:
            raise ValueError(f"{path}: --resume with a different {part} config {diff} (saved, now); "
                             f"use the saved settings or a new --output")


def start_or_resume(output: str, resolved: dict, resume: bool, ckpt: Checkpointer,
                    restore: Callable[[str], int], dist: Dist) -> int:
    """With `resume`, continue from the latest checkpoint (`restore(path)` -> its step) after checking
    OUTPUT/config.json describes the same model and loss; then (rank 0) write `resolved` there,
    with the run's environment (world size, global and per-rank batch, torch/CUDA, git revision).
    Returns the step to start from."""
    require_output_dir(output)
    config_path = os.path.join(output, "config.json")
    step, latest = 0, ckpt.latest() if resume else None
    if latest:
        check_same_run(config_path, resolved)
        step = restore(latest)
        log.info("resumed from %s at step %d", latest, step)
    elif resume:
        log.warning("--resume: no checkpoint under %s yet; starting from step 0", ckpt.root)
    if dist.is_main:
        from textok.trainer.training.run_config import run_environment

        batch = (resolved.get("train") or {}).get("batch_size")
        write_json_atomic({**resolved, "environment": run_environment(dist.world_size, batch, dist.device)},
                          config_path)
    return step


def run_settings(output: str) -> dict:
    """The run's config.json (settings + environment), as exported models carry it (training.json)."""
    path = os.path.join(output, "config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
