"""`textok efficiency`: GFLOPs and time per sample of DiT on TexTok tokens vs DiT-XL/2 on SD-VAE patches.

    textok efficiency --preset XL --tokens 32 64 128 256 --output runs/eff
"""
from __future__ import annotations

import json

import click


@click.command("efficiency")
@click.option("--preset", type=click.Choice(["tiny", "S", "B", "L", "XL"]), default="XL", show_default=True)
@click.option("--tokens", type=int, multiple=True, help="TexTok token counts, e.g. --tokens 32 64 128 256.")
@click.argument("more_tokens", nargs=-1, type=int)
@click.option("--image-size", type=int, default=256, show_default=True)
@click.option("--steps", type=int, default=250, show_default=True, help="Sampling steps.")
@click.option("--no-time", is_flag=True, help="FLOPs only; skip the timed forwards.")
@click.option("--device", default="cpu", show_default=True, help="Where forwards are timed.")
@click.option("--output", help="Dir for efficiency.json and efficiency.png.")
def efficiency_cmd(preset, tokens, more_tokens, image_size, steps, no_time, device, output):
    """GFLOPs and time per sample of DiT on TexTok tokens vs DiT-XL/2 on SD-VAE patches."""
    import os

    from textok.trainer.evaluation.efficiency import efficiency_report, write_efficiency_json, write_efficiency_plot

    counts = list(tokens) + list(more_tokens)
    if not counts:
        raise click.UsageError("give token counts: --tokens 32 64 128 256")
    report = efficiency_report(preset, counts, image_size=image_size, measure_time=not no_time, device=device,
                               steps=steps)
    if output:
        write_efficiency_json(report, os.path.join(output, "efficiency.json"))
        write_efficiency_plot(report, os.path.join(output, "efficiency.png"))
    click.echo(json.dumps(report, indent=2))
