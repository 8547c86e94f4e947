"""A trainer's settings: dataclass defaults <- JSON/YAML file <- CLI flags."""
from __future__ import annotations

import json
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
