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
import os
import sys
import traceback

import click

# (module, click command object) -- one module per command, named after it.
COMMANDS = (
    ("textok.pipeline.commands.make_demo_data", "make_demo_data_cmd"),
    ("textok.pipeline.commands.caption", "caption_cmd"),
    ("textok.pipeline.commands.compact", "compact_cmd"),
    ("textok.pipeline.commands.clean", "clean_cmd"),
    ("textok.pipeline.commands.batch_status", "batch_status_cmd"),
    ("textok.pipeline.commands.encode", "encode_cmd"),
    ("textok.pipeline.commands.pools", "pools_cmd"),
    ("textok.pipeline.commands.prepare", "prepare_cmd"),
    ("textok.pipeline.commands.inspect", "inspect_cmd"),
    ("textok.pipeline.commands.caption_report", "caption_report_cmd"),
    ("textok.trainer.commands.train_tokenizer", "train_tokenizer_cmd"),
    ("textok.trainer.commands.eval_tokenizer", "eval_tokenizer_cmd"),
    ("textok.trainer.commands.extract_latents", "extract_latents_cmd"),
    ("textok.trainer.commands.train_dit", "train_dit_cmd"),
    ("textok.trainer.commands.sample", "sample_cmd"),
    ("textok.trainer.commands.eval_gen", "eval_gen_cmd"),
    ("textok.trainer.commands.class_accuracy", "class_accuracy_cmd"),
    ("textok.trainer.commands.efficiency", "efficiency_cmd"),
)


class _CliLogFilter(logging.Filter):
    """What the CLI keeps out of the log: Beam's "apitools not found" warning (logged when its
    BigQuery client is imported, i.e. on every pipeline command, about GCP extras textok does not
    use) and, below -vv, Beam's error records that carry a traceback: a failing pipeline raises
    the same error in this process, where it becomes the one `Error:` line (a bug: its traceback)."""

    def __init__(self, tracebacks: bool):
        super().__init__()
        self.tracebacks = tracebacks

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("apitools not found"):
            return False
        return (self.tracebacks or not record.name.startswith("apache_beam") or record.levelno < logging.ERROR
                or not (record.exc_info or "Traceback (most recent call last)" in message))


class TextokGroup(click.Group):
    """The `textok` group: a user's mistake raised anywhere below a command becomes one
    `Error: ...` line (exit 2 for usage errors, 1 otherwise); the traceback shows with -vv.
    Exceptions `textok.errors.user_error` does not recognise are bugs and keep theirs."""

    def invoke(self, ctx: click.Context):
        from textok.errors import FlagError, user_error

        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            message = user_error(e)
            if message is None:
                raise
            if ctx.params.get("verbose", 0) >= 2:
                traceback.print_exc()
            sub = ctx.invoked_subcommand and ctx.command.get_command(ctx, ctx.invoked_subcommand)
            if isinstance(e, FlagError):
                usage_ctx = click.Context(sub, info_name=ctx.invoked_subcommand, parent=ctx) if sub else ctx
                raise click.UsageError(message, usage_ctx) from e
            raise click.ClickException(message) from e


@click.group(cls=TextokGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True,
              help="More logging: -v all INFO, -vv DEBUG and tracebacks of errors. textok's own progress "
                   "lines (INFO) show by default.")
@click.option("--log-every", "log_every", default=None, metavar="N|P%",
              help="Without a terminal, a progress line every N units (images, captions, steps) or every P% of "
                   "the total, besides the start and end lines (default 10%; env TEXTOK_PROGRESS_EVERY).")
def main(verbose: int, log_every: str | None) -> None:
    """textok: caption images, encode captions with T5, train TexTok and a DiT on its tokens."""
    if log_every is not None:
        from textok.progress import parse_every

        try:
            parse_every(log_every)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--log-every") from None
        os.environ["TEXTOK_PROGRESS_EVERY"] = log_every  # in-process Beam workers and DataLoaders see it too
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # no-op if logging is set up
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:  # a handler's filters see records of every logger, not only root's
        for old in [f for f in handler.filters if isinstance(f, _CliLogFilter)]:
            handler.removeFilter(old)
        handler.addFilter(_CliLogFilter(tracebacks=verbose >= 2))
    # Third-party libraries stay at WARNING unless -v; textok's progress and stage lines are INFO.
    logging.getLogger("textok").setLevel(min(level, logging.INFO))
    if not sys.stderr.isatty():  # no download/loading bars of huggingface_hub and transformers in log files
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


for _mod, _name in COMMANDS:
    main.add_command(getattr(importlib.import_module(_mod), _name))

if __name__ == "__main__":
    main()
