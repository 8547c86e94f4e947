"""textok — one CLI for the data pipeline and the trainers.

    textok --help
    textok caption --input DIR --output OUT --captioner template
    textok train-tokenizer --shards OUT/shards --output runs/tok --preset tiny

Commands live beside the code they drive (pipeline/cli_*.py, trainer/cli_*.py); each such
module has `register(group)`. Heavy imports (torch, beam, transformers) happen inside the
commands so `textok --help` stays fast.
"""
from __future__ import annotations

import importlib
import logging

import click

COMMAND_MODULES = (
    "pipeline.cli_caption",
    "pipeline.cli_encode",
    "trainer.cli_tokenizer",
    "trainer.cli_dit",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """textok: caption images, encode captions with T5, train TexTok and a DiT on its tokens."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _mod in COMMAND_MODULES:
    try:
        importlib.import_module(_mod).register(main)
    except ModuleNotFoundError as _e:  # a command module not written yet
        if _e.name != _mod:
            raise

if __name__ == "__main__":
    main()
