"""One way to save, load and share the project's models (TexTok, DiT): a directory holding
config.json + model.safetensors + a model card (README.md), locally or as a Hugging Face Hub
repository, through huggingface_hub's PyTorchModelHubMixin.

    model.save_pretrained("runs/tok/tokenizer", card={"data": "runs/in1k-data/shards", "steps": 500_000})
    TexTok.from_pretrained("runs/tok/tokenizer")                      # a local directory
    TexTok.from_pretrained("user/textok-b128", revision="v1.0")       # a Hub repo (cached by huggingface_hub)
    model.push_to_hub("user/textok-b128", card={...})                 # needs `hf auth login`

Side files travel with the weights: `model.side_files` ({name: JSON object}) is written beside
config.json by save_pretrained / push_to_hub and read back by from_pretrained, for the names the
class lists in SIDE_FILES -- TexTok: text_encoder.json (which T5 its text tokens come from) and
training.json (the run's settings); DiT: latent_stats.json (the latent mean/std `sample` needs),
text_encoder.json and training.json. So a model loaded, saved elsewhere or pushed, then given
to `extract-latents` / `sample`, needs no other file.

config.json is {"model_type": ..., **the config dataclass}; loading refuses another model type,
unknown config keys and weights that do not match the config (the mixin's own loader would
ignore them silently). Every failure to find or read a model is one exception naming the
directory or hub id and the fix: `ModelNotFoundError` (a FileNotFoundError) or
`ModelFormatError` (a ValueError).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
TEXT_ENCODER_FILE = "text_encoder.json"  # which text encoder's embeddings the model reads (schemas/encoder_identity)
LATENT_STATS_FILE = "latent_stats.json"  # a DiT's latent set: per-channel mean/std, tokenizer hash, encoder
TRAINING_FILE = "training.json"          # the run's resolved settings and environment (its config.json)
PAPER_URL = "https://arxiv.org/abs/2412.05796"  # Zha et al., Language-Guided Image Tokenization for Generation


class ModelNotFoundError(FileNotFoundError):
    """No model at this path or hub id (missing directory or file, unreachable or unknown repo)."""


class ModelFormatError(ValueError):
    """A model directory whose files are not what save_pretrained writes (corrupt or foreign)."""


def resolve_model_dir(path_or_hub_id, kind: str, *, revision: str | None = None, cache_dir=None, token=None,
                      local_files_only: bool = False, force_download: bool = False, flag: str | None = None) -> Path:
    """A local directory holding `kind`'s config.json + model.safetensors: the path itself, or the
    cached snapshot of a Hub repo at `revision` (its *.json side files, e.g. latent_stats.json,
    come along). `flag` (e.g. "--dit") names the option the user typed in the error."""
    try:
        return _resolve_model_dir(path_or_hub_id, kind, revision=revision, cache_dir=cache_dir, token=token,
                                  local_files_only=local_files_only, force_download=force_download)
    except ModelNotFoundError as e:
        if flag:
            raise ModelNotFoundError(f"{flag}: {e}") from None
        raise


def _resolve_model_dir(path_or_hub_id, kind: str, *, revision, cache_dir, token, local_files_only,
                       force_download) -> Path:
    name = os.fspath(path_or_hub_id)
    if os.path.isdir(name):
        directory = Path(name)
    elif os.path.exists(name):
        raise ModelNotFoundError(f"{kind} {name!r} is a file; pass the directory save_pretrained wrote "
                                 f"({CONFIG_NAME} + {WEIGHTS_NAME})")
    else:
        directory = _download(name, kind, revision=revision, cache_dir=cache_dir, token=token,
                              local_files_only=local_files_only, force_download=force_download)
    for f in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / f).is_file():
            raise ModelNotFoundError(f"{kind} {name!r} lacks {f}: expected a directory written by "
                                     f"{kind}.save_pretrained ({CONFIG_NAME} + {WEIGHTS_NAME})")
    return directory


def _download(hub_id: str, kind: str, **kwargs) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, LocalEntryNotFoundError

    where = f"{hub_id!r}" + (f" (revision {kwargs['revision']!r})" if kwargs.get("revision") else "")
    try:
        return Path(snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", CARD_NAME], **kwargs))
    except HFValidationError:  # not a repo id: it was meant as a path
        raise ModelNotFoundError(f"{kind} {hub_id!r}: no such directory (and not a Hugging Face Hub id); "
                                 f"pass the directory save_pretrained wrote") from None
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(f"{kind} {where} is neither a local directory nor in the Hugging Face cache, and "
                                 f"the Hub cannot be reached (offline, or HF_HUB_OFFLINE=1); check the path, or "
                                 f"download it while online: `hf download {hub_id}`") from None
    except (HfHubHTTPError, OSError) as e:  # unknown repo or revision, gated, server errors
        raise ModelNotFoundError(f"{kind} {where} could not be fetched from the Hugging Face Hub "
                                 f"({type(e).__name__}: {str(e).splitlines()[0]}); check the id, the revision and "
                                 f"your token (`hf auth login`)") from None


class HubModel(PyTorchModelHubMixin, library_name="textok", paper_url=PAPER_URL, license="apache-2.0",
               tags=["textok"]):
    """Mixin for a model with `self.cfg` (a dataclass of type `config_class`) and `__init__(cfg)`.
    Subclasses set `config_class`, `model_type` and `card_title()`."""

    config_class: type
    model_type: str
    SIDE_FILES: tuple[str, ...] = ()  # JSON files beside config.json that commands read

    def card_title(self) -> str:
        raise NotImplementedError

    @property
    def side_files(self) -> dict[str, dict]:
        """{file name: JSON object} saved beside the weights (see the module docstring)."""
        # kept in __dict__ directly: nn.Module's __setattr__ would do, but a property needs a store
        return self.__dict__.setdefault("_side_files", {})

    # -- save

    def _save_pretrained(self, save_directory: Path) -> None:  # called by the mixin's save_pretrained
        from safetensors.torch import save_file

        (save_directory / CONFIG_NAME).write_text(
            json.dumps({"model_type": self.model_type, **asdict(self.cfg)}, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(save_directory / WEIGHTS_NAME), metadata={"format": "pt", "model_type": self.model_type})
        for name, obj in self.side_files.items():
            if name not in self.SIDE_FILES:
                raise ValueError(f"{type(self).__name__}.side_files: {name!r} is not one of {self.SIDE_FILES}")
            (save_directory / name).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))

    def save_pretrained(self, save_directory, *, card: dict | None = None, **kwargs):
        """config.json + model.safetensors + README.md (the model card: config, and the `card`
        facts when given: data, steps, text encoder, metrics)."""
        (Path(save_directory) / CARD_NAME).unlink(missing_ok=True)  # the mixin never overwrites a card
        card_kwargs = dict(kwargs.pop("model_card_kwargs", None) or {})
        if card:
            card_kwargs["card"] = card
        return super().save_pretrained(save_directory, model_card_kwargs=card_kwargs, **kwargs)

    def push_to_hub(self, repo_id: str, *, card: dict | None = None, **kwargs) -> str:
        if card:
            kwargs["model_card_kwargs"] = {**(kwargs.get("model_card_kwargs") or {}), "card": card}
        return super().push_to_hub(repo_id, **kwargs)

    def generate_model_card(self, card: dict | None = None, **_) -> ModelCard:
        data = ModelCardData(library_name="textok", license="apache-2.0",
                             tags=sorted({"textok", self.model_type, "pytorch_model_hub_mixin"}))
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{model_card_body(self, card or {})}")

    # -- load

    @classmethod
    def from_pretrained(cls, path_or_hub_id, *, revision: str | None = None, map_location="cpu", cache_dir=None,
                        token=None, local_files_only: bool = False, force_download: bool = False):
        """A local directory (save_pretrained) or a Hub repo id (+ revision) -> the model, in eval mode."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = resolve_model_dir(path_or_hub_id, cls.__name__, revision=revision, cache_dir=cache_dir,
                                      token=token, local_files_only=local_files_only, force_download=force_download)
        cfg_file, weights_file = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        try:
            raw = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelFormatError(f"{cfg_file}: not JSON ({e}); save the model again with save_pretrained") from None
        if not isinstance(raw, dict) or raw.pop("model_type", None) != cls.model_type:
            raise ModelFormatError(f"{cfg_file}: model_type is not {cls.model_type!r}; not a {cls.__name__} "
                                   f"directory (written by {cls.__name__}.save_pretrained)")
        known = {f.name for f in fields(cls.config_class)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelFormatError(f"{cfg_file}: unknown {cls.config_class.__name__} field(s) {unknown}; "
                                   f"written by another textok version?")
        model = cls(cls.config_class(**raw))
        device = map_location if isinstance(map_location, str) else str(map_location)
        try:
            state = load_file(str(weights_file), device=device)
        except (SafetensorError, OSError) as e:
            raise ModelFormatError(f"{weights_file}: unreadable safetensors ({e}); the file is truncated or "
                                   f"corrupt, save or download it again") from None
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        mismatched = [k for k, v in expected.items() if k in state and state[k].shape != v.shape]
        if missing or unexpected or mismatched:
            raise ModelFormatError(f"{weights_file} does not match {cfg_file}: missing {missing[:5]}, "
                                   f"unexpected {unexpected[:5]}, wrong shapes {mismatched[:5]}")
        model.load_state_dict(state)
        for name in cls.SIDE_FILES:
            path = directory / name
            if path.is_file():
                try:
                    model.side_files[name] = json.loads(path.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise ModelFormatError(f"{path}: not JSON ({e}); save the model again with save_pretrained") \
                        from None
        return model.to(map_location).eval()


def model_card_body(model, card: dict) -> str:
    """The card's Markdown: what the model is, how to load it, its config and what is known of
    its training (data, steps, metrics)."""
    lines = [f"# {model.card_title()}", "",
             f"Trained with textok, an open implementation of TexTok "
             f"([Zha et al., CVPR 2025]({PAPER_URL})); {model.num_params() / 1e6:.1f}M parameters.", "",
             "```python", f"from {type(model).__module__} import {type(model).__name__}",
             f'model = {type(model).__name__}.from_pretrained("PATH_OR_HUB_ID")', "```", "",
             "## Config", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in asdict(model.cfg).items()]
    facts = {k: v for k, v in card.items() if k != "metrics" and v is not None}
    if facts:
        lines += ["", "## Training", ""] + [f"- {k}: {v}" for k, v in facts.items()]
    metrics = card.get("metrics") or {}
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"
