"""Flags shared by the trainer commands (one module per command: cli_<command>.py)."""
from __future__ import annotations

import click


def apply_options(options: list, f):
    for opt in reversed(options):  # listed top to bottom as --help shows them
        f = opt(f)
    return f


def training_options(config_name: str, **defaults):
    """The flags every trainer takes (train-tokenizer, train-dit), one per field of its config
    dataclass `config_name`; a flag left out (None) falls back to --config, then to the field's
    default. `defaults` are those fields' defaults, for --help only (the dataclass module imports
    torch, which `textok --help` should not)."""
    d = {"seed": 0, "device": "auto", **defaults}

    def decorate(f):
        return apply_options([
            click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                         help=f"JSON/YAML file of {config_name} overrides."),
            click.option("--steps", type=int, help="Training steps (required unless in --config)."),
            click.option("--batch-size", type=int, help=f"Global batch size (default {d['batch_size']})."),
            click.option("--lr", type=float, help=f"Peak learning rate (default {d['lr']})."),
            click.option("--ema", type=float, help=f"EMA decay (default {d['ema']})."),
            click.option("--save-every", type=int, help=f"Checkpoint every K steps (default {d['save_every']})."),
            click.option("--sample-every", type=int, help=f"Preview grid every M steps (default {d['sample_every']})."),
            click.option("--log-every", type=int, help=f"Log every L steps (default {d['log_every']})."),
            click.option("--num-workers", type=int, help=f"DataLoader workers per rank (default {d['num_workers']})."),
            click.option("--seed", type=int, help=f"Seed (default {d['seed']})."),
            click.option("--device", help=f"auto | cpu | cuda (default {d['device']})."),
            click.option("--resume", is_flag=True, default=None, help="Continue from OUTPUT/checkpoints/latest."),
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
