"""A trainer's settings: dataclass defaults <- JSON/YAML file <- CLI flags."""
from __future__ import annotations

import json
import os
from dataclasses import fields
from typing import TypeVar

from textok.errors import FlagError


Config = TypeVar("Config")


def resolve_config(cls: type[Config], path: str | None, overrides: dict, command: str,
                required: tuple[str, ...] = (), preset_defaults: dict[str, dict] | None = None) -> Config:
    """Dataclass defaults <- the preset's training defaults <- JSON/YAML file <- explicit overrides
    (None values are 'not given').

    `preset_defaults[preset]` holds the settings a size preset changes (a tiny CPU run needs no
    5,000-step warm-up); the preset is the one the file or the flags name, else the dataclass's.
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
    if preset_defaults:
        values = {**preset_defaults.get(values.get("preset", known["preset"].default), {}), **values}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{path or 'overrides'}: unknown {command} setting(s) {unknown}; known: {sorted(known)}")
    cfg = cls(**values)
    for name, f in known.items():
        if isinstance(f.default, tuple) and isinstance(getattr(cfg, name), list):
            setattr(cfg, name, tuple(getattr(cfg, name)))
    for name in required:
        if not getattr(cfg, name):
            raise FlagError(f"{command}: --{name.replace('_', '-')} is required (or {name!r} in --config)")
    if "steps" in known and not cfg.steps:
        raise FlagError(f"{command}: --steps is required: give --steps N (or 'steps' in --config)")
    if "steps" in known and cfg.steps < 0:
        raise FlagError(f"{command}: --steps must be positive, got {cfg.steps}")
    return cfg


def due(step: int, every: int, total: int) -> bool:
    """Periodic work (logging, checkpoints, grids) runs every `every` steps and at the last step."""
    return step % every == 0 or step == total


def code_revision() -> dict:
    """The git revision of the textok code that runs (and whether it has uncommitted changes), or
    the installed package version when the code is not a git checkout (a wheel)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            return {"git_revision": rev.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib import metadata

    try:
        return {"git_revision": None, "package_version": metadata.version("textok")}
    except metadata.PackageNotFoundError:
        return {"git_revision": None, "package_version": None}


def run_environment(world_size: int, global_batch: int | None, device: str) -> dict:
    """What config.json records beside the settings, so a run can be reproduced and read: the
    world size and the global/per-rank batch, torch/CUDA versions and the code's revision."""
    import platform

    import torch

    env = {"world_size": world_size, "global_batch": global_batch,
           "batch_per_rank": global_batch // world_size if global_batch else None,
           "device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "python": platform.python_version(), **code_revision()}
    return env
