"""textok — one CLI for the data pipeline and the trainers.

    textok --help
    textok caption --input DIR --output OUT --captioner template
    textok train-tokenizer --shards OUT/shards --output runs/tok --preset tiny

Commands live beside the code they drive (textok.pipeline.cli_<command>, textok.trainer.cli_<command>); each
such module defines one click command. Heavy imports (torch, beam, transformers) happen inside the
commands so `textok --help` stays fast.
"""
from __future__ import annotations

import importlib
import logging

import click

# (module, click command object) -- one module per command, named after it.
COMMANDS = (
    ("textok.pipeline.cli_make_demo_data", "make_demo_data_cmd"),
    ("textok.pipeline.cli_caption", "caption_cmd"),
    ("textok.pipeline.cli_compact", "compact_cmd"),
    ("textok.pipeline.cli_batch_status", "batch_status_cmd"),
    ("textok.pipeline.cli_encode", "encode_cmd"),
    ("textok.pipeline.cli_pools", "pools_cmd"),
    ("textok.pipeline.cli_prepare", "prepare_cmd"),
    ("textok.pipeline.cli_inspect", "inspect_cmd"),
    ("textok.trainer.cli_train_tokenizer", "train_tokenizer_cmd"),
    ("textok.trainer.cli_eval_tokenizer", "eval_tokenizer_cmd"),
    ("textok.trainer.cli_extract_latents", "extract_latents_cmd"),
    ("textok.trainer.cli_train_dit", "train_dit_cmd"),
    ("textok.trainer.cli_sample", "sample_cmd"),
    ("textok.trainer.cli_eval_gen", "eval_gen_cmd"),
    ("textok.trainer.cli_efficiency", "efficiency_cmd"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """textok: caption images, encode captions with T5, train TexTok and a DiT on its tokens."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _mod, _name in COMMANDS:
    main.add_command(getattr(importlib.import_module(_mod), _name))

if __name__ == "__main__":
    main()
