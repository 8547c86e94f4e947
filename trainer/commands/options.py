"""Flags shared by the trainer commands (one module per command: cli_<command>.py).

`--help` shows the default each preset resolves to (`--patch-size ... (default by preset: tiny 4;
S/B/L 8)`), read from the tables the trainers use (`preset_defaults(field)` in
train_tokenizer.py / train_dit.py), so help cannot drift from what a run does. Those modules import
torch, so the text is built only when help is shown (`PresetDefaultOption`).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import click


def by_preset(values: dict[str, Any]) -> str:
    """{"tiny": 4, "S": 8, "B": 8, "L": 8} -> "default by preset: tiny 4; S/B/L 8"."""
    groups: dict[str, list[str]] = {}
    for preset, value in values.items():
        groups.setdefault(f"{value:g}" if isinstance(value, float) else str(value), []).append(preset)
    if len(groups) == 1:
        return f"default {next(iter(groups))}"
    return "default by preset: " + "; ".join(f"{'/'.join(p)} {v}" for v, p in groups.items())


class PresetDefaultOption(click.Option):
    """An option whose --help ends with its per-preset default, computed when help is shown."""

    def __init__(self, *args: Any, table: str, field: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._table, self._field, self._base_help = table, field, self.help or ""

    def get_help_record(self, ctx: click.Context):
        module, func = self._table.split(":")
        self.help = f"{self._base_help} ({by_preset(getattr(importlib.import_module(module), func)(self._field))})."
        return super().get_help_record(ctx)


def preset_option(table: str, *decls: str, field: str | None = None, **kwargs: Any) -> Callable:
    """click.option whose help gains the per-preset default of `field` (default: the flag's name)."""
    name = field or decls[0].lstrip("-").replace("-", "_")
    return click.option(*decls, cls=PresetDefaultOption, table=table, field=name, **kwargs)


def apply_options(options: list, f):
    for opt in reversed(options):  # listed top to bottom as --help shows them
        f = opt(f)
    return f


def training_options(config_name: str, table: str):
    """The flags every trainer takes (train-tokenizer, train-dit), one per field of its config
    dataclass `config_name`; a flag left out (None) falls back to --config, then to the preset's
    training default, then to the field's default. `table` ("module:function") gives a field's
    default per preset, for --help."""
    def decorate(f):
        return apply_options([
            click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                         help=f"JSON/YAML file of {config_name} overrides."),
            click.option("--steps", type=int, help="Training steps (required unless in --config)."),
            preset_option(table, "--batch-size", type=int, help="Global batch size, over all ranks"),
            preset_option(table, "--lr", type=float, help="Peak learning rate"),
            preset_option(table, "--ema", type=float, help="EMA decay"),
            preset_option(table, "--save-every", type=int, help="Checkpoint every K steps"),
            preset_option(table, "--sample-every", type=int, help="Preview grid every M steps"),
            preset_option(table, "--log-every", type=int, help="Metrics (and a progress line) every L steps"),
            preset_option(table, "--num-workers", type=int, help="DataLoader workers per rank"),
            preset_option(table, "--seed", type=int, help="Seed"),
            preset_option(table, "--device", help="auto | cpu | cuda"),
            click.option("--resume", is_flag=True, default=None,
                         help="Continue from OUTPUT/checkpoints/latest; stops, naming each one, if a setting that "
                              "changes the experiment differs from OUTPUT/config.json."),
            click.option("--allow-config-change", is_flag=True, default=None,
                         help="With --resume: continue although settings changed; the change is recorded in "
                              "OUTPUT/config_history.jsonl."),
            click.option("--compile/--no-compile", "compile", default=None,
                         help="torch.compile the model step (default off; for GPUs: the first steps compile)."),
        ], f)
    return decorate


def _int_list(ctx, param, value):
    if value is None or value == "all":
        return value
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError as e:
        raise click.BadParameter(f"expected comma-separated class ids or 'all', got {value!r}") from e
