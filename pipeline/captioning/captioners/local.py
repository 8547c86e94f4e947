"""Local captioner: any Hugging Face image-text-to-text model, batched `generate`, GPU if present.

    hf download Salesforce/blip-image-captioning-large --local-dir models/blip
    textok caption --input imgs/ --output out/ --captioner local --model models/blip --task-prompt "a picture of"

    python -m textok.pipeline.captioning.captioners.local --model PATH_OR_ID [--task-prompt TEXT] a.jpg b.png

Loading goes through `AutoProcessor` + `AutoModelForImageTextToText` (transformers 5 maps
BLIP, BLIP-2, Florence-2, GIT, Idefics3/SmolVLM, Kosmos-2, LLaVA, PaliGemma, Pix2Struct,
Qwen2-VL, ... there; `AutoModelForVision2Seq` is gone). Two ways to ask:

* chat (no `task_prompt`): our versioned prompt (prompt.py) through the processor's chat
  template — instruction-following VLMs (SmolVLM, Qwen2-VL, LLaVA, ...). The model must
  ship a chat template; otherwise setup() says to pass a task prompt.
* task (`task_prompt` given, the same for every image): the model's own captioning
  interface — a BLIP text prefix such as "a picture of" (continued by the model and
  stripped from the answer), a Florence-2 task token such as "<MORE_DETAILED_CAPTION>",
  or "" for BLIP's unconditional captioning. The prompt version recorded is then
  "task:<prompt>", since our v1 wording was not used.

Batches are padded on the left; chat prompts carry one image each, passed as one image list
per prompt, and are tokenized as `apply_chat_template(tokenize=True)` does (no second BOS).
Tested batched on tiny models of Florence-2 (the converted florence-community checkpoints),
BLIP, BLIP-2, LLaVA, PaliGemma, Idefics3, SmolVLM2, Gemma 3, Qwen2-VL and Qwen2.5-VL
(tests/tiny_vlms.py). Processors whose video part needs torchvision (Qwen2-VL, Qwen2.5-VL,
SmolVLM) load without it; a checkpoint that needs remote code, or a missing package, stops
setup() with one line saying what to do. The model loads once per worker process
(worker_shared.per_process, Beam's Shared).

GPU: cuda when available, in bf16; CPU in fp32 (both settings: `device`, `dtype`).
Greedy decoding, so a caption depends only on the image, the prompt and the weights.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Optional

from textok.pipeline.captioning.captioners.base import Captioner, CaptionRequest, CaptionResult, check_options
from textok.pipeline.captioning.captioners.prompt import MAX_CAPTION_WORDS, PROMPT_VERSION, build_prompt, prompt_template

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


class LocalVLMConfigError(RuntimeError):
    """Weights missing, model not an image-text-to-text model, or a bad setting."""


def _missing_weights(model_id: str, why: str) -> LocalVLMConfigError:
    looks_like_path = os.path.isabs(model_id) or model_id.startswith(".") or model_id.count("/") != 1
    fetch = (f"`hf download ORG/MODEL --local-dir {model_id}`" if looks_like_path
             else f"`hf download {model_id} --local-dir models/{model_id.split('/')[-1]}`")
    return LocalVLMConfigError(
        f"cannot load the local captioning model {model_id!r}: {' '.join(why.split())}. Download it on a machine "
        f"with network access with {fetch} and pass that directory with --model PATH (or point HF_HOME / "
        f"HF_HUB_CACHE at a cache that holds it; see the README's \"Offline and clusters\").")


def _missing_package(model_id: str, e: ImportError) -> LocalVLMConfigError:
    """One line naming the package the processor or model asked for."""
    text = str(e)
    m = (re.search(r"requires the (\w[\w.-]*) library", text, re.I) or re.search(r"`([\w.-]+)` is required", text)
         or re.search(r"No module named '([\w.-]+)'", text))
    package = (m.group(1) if m else getattr(e, "name", None) or "?").lower()
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return LocalVLMConfigError(f"{model_id!r} needs the Python package {package!r}, which is not installed "
                               f"({first[:200]}); install it (pip install {package}) or choose another model")


def _image_only(processor_cls: type) -> type:
    """`processor_cls` without its video sub-processor.

    Qwen2-VL, Qwen2.5-VL and SmolVLM ship a video processor that needs torchvision, whose PyPI
    wheel breaks beside a CPU build of torch; captioning sends images only. transformers builds
    a processor from the attributes `get_attributes()` lists, so a subclass that leaves the
    video one out loads the image processor and tokenizer alone (the class keeps its name, so
    its image-token logic and saved configs are unchanged)."""
    import inspect

    attrs = [a for a in processor_cls.get_attributes() if "video" not in a]
    video_params = [p for p in inspect.signature(processor_cls.__init__).parameters if "video" in p]
    namespace = {"get_attributes": classmethod(lambda cls: list(attrs)), "__module__": processor_cls.__module__}

    # SmolVLM's __init__ still requires its video argument, so loading hands it None
    # (ProcessorMixin keeps only the listed attributes). transformers < 5.2x builds the
    # processor with `from_args_and_dict(args, ...)` (one positional argument per attribute);
    # later releases with `from_dict(processor_dict)`, the sub-processors inside the dict.
    # Both are covered so one build of this class loads across the supported range.
    if hasattr(processor_cls, "from_args_and_dict"):
        def from_args_and_dict(cls, args, processor_dict, **kwargs):
            return processor_cls.from_args_and_dict.__func__(cls, [*args, *[None] * len(video_params)],
                                                             processor_dict, **kwargs)
        namespace["from_args_and_dict"] = classmethod(from_args_and_dict)
    if hasattr(processor_cls, "from_dict"):
        def from_dict(cls, processor_dict, **kwargs):
            processor_dict = {**processor_dict, **{p: None for p in video_params if p not in processor_dict}}
            return processor_cls.from_dict.__func__(cls, processor_dict, **kwargs)
        namespace["from_dict"] = classmethod(from_dict)
    return type(processor_cls.__name__, (processor_cls,), namespace)


def load_processor(model_id: str):
    """AutoProcessor, or the same processor without its video part when that part cannot load."""
    from transformers import AutoConfig, AutoProcessor
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    try:
        return AutoProcessor.from_pretrained(model_id)
    except (ImportError, OSError) as e:
        if not (isinstance(e, ImportError) or "video" in str(e).lower()):
            raise
        first_error = e
    model_type = AutoConfig.from_pretrained(model_id).model_type
    import transformers

    cls = getattr(transformers, PROCESSOR_MAPPING_NAMES.get(model_type) or "", None)
    if cls is None or not any("video" in a for a in cls.get_attributes()):
        if isinstance(first_error, ImportError):
            raise _missing_package(model_id, first_error) from None
        raise first_error
    log.info("%s: loading %s without its video processor (%s)", model_id, cls.__name__,
             str(first_error).splitlines()[0][:200])
    try:
        return _image_only(cls).from_pretrained(model_id)
    except ImportError as e:  # e.g. SmolVLM's processor wants num2words even for images
        raise _missing_package(model_id, e) from None


def _needs_remote_code(model_id: str) -> bool:
    """True when the checkpoint's config maps its classes to code shipped in the repository."""
    from transformers import PretrainedConfig

    try:
        return "auto_map" in PretrainedConfig.get_config_dict(model_id)[0]
    except (OSError, ValueError):
        return False


def text_position_limit(config) -> tuple[int | None, str]:
    """(positions the text model holds, the config field that says so), or (None, "") when the
    model has no fixed table (e.g. a rotary model whose config names none)."""
    for path in ("text_config", "decoder", ""):
        sub = getattr(config, path, None) if path else config
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(sub, name, None) if sub is not None else None
            if isinstance(value, int) and value > 0:
                return value, ".".join(filter(None, [path, name]))
    return None, ""


class _Loaded:
    """A model with its processor and the lock that serialises generation on it."""

    def __init__(self, processor, model):
        self.processor, self.model, self.lock = processor, model, threading.Lock()


class LocalVLMCaptioner(Captioner):
    backend = "local"

    def __init__(self, model_id: str, *, max_words: int = MAX_CAPTION_WORDS, class_hint: bool = False,
                 batch_size: int = 8, device: Optional[str] = None, dtype: Optional[str] = None,
                 max_new_tokens: int = 96, task_prompt: Optional[str] = None):
        if not model_id:
            raise LocalVLMConfigError("the local captioner needs --model PATH_OR_HUB_ID")
        if batch_size < 1 or max_new_tokens < 1:
            raise LocalVLMConfigError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
        if dtype is not None and dtype != "auto" and dtype not in _DTYPES:
            raise LocalVLMConfigError(f"--dtype {dtype!r} is not one of auto, {', '.join(sorted(_DTYPES))}")
        self.model_id = model_id
        self.max_words, self.class_hint = int(max_words), bool(class_hint)
        self.batch_size, self.max_new_tokens = int(batch_size), int(max_new_tokens)
        self.device_setting, self.dtype_setting = device or "auto", dtype or "auto"
        self.task_prompt = task_prompt
        if task_prompt is None:
            self.prompt_version = PROMPT_VERSION
            self.prompt_text = prompt_template(self.class_hint, self.max_words)
        else:
            self.prompt_version = f"task:{task_prompt}"
            self.prompt_text = task_prompt
        self._held = None     # worker_shared.Held(_Loaded): keeps the shared model alive while set up
        self._model = None
        self._processor = None
        self._lock = None
        self._chat_template = None
        self._device = None
        self._dtype = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_held=None, _model=None, _processor=None, _device=None, _dtype=None, _lock=None)
        return state

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self) -> None:
        if self._model is not None:
            return
        import torch

        from textok.devices import DeviceError, resolve_device
        from textok.pipeline.worker_shared import per_process

        try:
            self._device = torch.device(resolve_device(self.device_setting))
        except DeviceError as e:
            raise LocalVLMConfigError(str(e)) from None
        self._dtype = getattr(torch, _DTYPES.get(self.dtype_setting) or
                              ("bfloat16" if self._device.type == "cuda" else "float32"))
        self._check_weights_present()
        # One copy per worker process (Beam runs several DoFn threads per process); generation
        # on the shared model is serialised by its lock, since one batched generate saturates
        # the device anyway.
        self._held = per_process(("local-vlm", self.model_id, str(self._device), str(self._dtype)), self._load)
        loaded = self._held.value
        self._processor, self._model, self._lock = loaded.processor, loaded.model, loaded.lock
        tok = getattr(self._processor, "tokenizer", None)
        if tok is None:
            raise LocalVLMConfigError(f"{self.model_id!r}: its processor has no tokenizer to decode answers")
        # Decoder-only VLMs continue the prompt: pad on the left so every row ends at its prompt.
        tok.padding_side = "left"
        self._chat_template = self._template_of(self._processor)
        self.check_generation_fits(self._model.config)  # before the first request, not as N dead letters
        log.info("local captioner %s on %s (%s)", self.model_id, self._device, self._dtype)

    def _template_of(self, processor) -> str | None:
        template = getattr(processor, "chat_template", None)
        if isinstance(template, dict):  # several named templates: transformers renders "default"
            template = template.get("default")
        if self.task_prompt is None and not template:
            raise LocalVLMConfigError(
                f"{self.model_id!r} has no (default) chat template, so it cannot take our instruction prompt; pass "
                f"--task-prompt (e.g. \"a picture of\" or \"\" for BLIP, \"<MORE_DETAILED_CAPTION>\" for Florence-2)")
        return template

    def preflight(self) -> None:
        """Check the generation settings against the model before any image is read: loads the
        config and the processor only (no weights), so `textok caption` fails in a second with
        one line instead of dead-lettering every image. Raises LocalVLMConfigError."""
        from transformers import AutoConfig

        self._check_weights_present()
        try:
            config = AutoConfig.from_pretrained(self.model_id)
            processor = load_processor(self.model_id)
        except LocalVLMConfigError:
            raise
        except ImportError as e:
            raise _missing_package(self.model_id, e) from None
        except OSError as e:
            raise _missing_weights(self.model_id, f"{type(e).__name__}: {e}") from e
        except ValueError:  # a config transformers cannot read: _load says why, with the remote-code hint
            return
        tok = getattr(processor, "tokenizer", None)
        if tok is None:
            return  # setup() says so
        tok.padding_side = "left"
        saved = self._processor, self._chat_template
        self._processor, self._chat_template = processor, self._template_of(processor)
        try:
            self.check_generation_fits(config)
        finally:
            self._processor, self._chat_template = saved

    def check_generation_fits(self, config) -> None:
        """--max-new-tokens within the text model's positions, after the prompt (image tokens
        included for decoder-only models; an encoder-decoder's decoder holds the answer alone).
        Greedy generation past the position table fails inside `generate` on every image."""
        from PIL import Image

        limit, where = text_position_limit(config)
        if limit is None:
            return
        # a mid-sized image: processors that tile or resize by area give a typical prompt length
        ids = self._processor_inputs([CaptionRequest(key="preflight", image=Image.new("RGB", (384, 384), "grey"),
                                                     class_name="class name")]).get("input_ids")
        encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        prompt = 0 if ids is None or encoder_decoder else int(ids.shape[-1])
        if encoder_decoder and ids is not None and int(ids.shape[-1]) > limit:
            raise LocalVLMConfigError(
                f"{self.model_id!r}: the prompt takes {int(ids.shape[-1])} tokens but {where} is {limit}; use a "
                f"shorter --task-prompt or another model")
        room = limit - prompt - (1 if encoder_decoder else 0)  # the decoder's start token takes a position
        if self.max_new_tokens <= room:
            return
        if room < 1:
            raise LocalVLMConfigError(
                f"{self.model_id!r}: the prompt alone takes {prompt} of the {limit} positions the model has ({where}); "
                f"use a shorter --task-prompt or another model")
        raise LocalVLMConfigError(
            f"--max-new-tokens {self.max_new_tokens} does not fit {self.model_id!r}: {where} is {limit} and the prompt "
            f"takes {prompt}, so the model allows at most --max-new-tokens {room}")

    def _load(self) -> _Loaded:
        from transformers import AutoModelForImageTextToText

        try:
            processor = load_processor(self.model_id)
            model, info = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype=self._dtype,
                                                                      output_loading_info=True)
        except LocalVLMConfigError:
            raise
        except ImportError as e:
            raise _missing_package(self.model_id, e) from None
        except OSError as e:  # not on disk, not in the cache, and offline / not on the Hub
            raise _missing_weights(self.model_id, f"{type(e).__name__}: {e}") from e
        except ValueError as e:  # a model type AutoModelForImageTextToText does not map
            remote = "trust_remote_code" in str(e) or _needs_remote_code(self.model_id)
            hint = (" This checkpoint needs its own remote code, which textok never runs; use a checkpoint "
                    "converted for transformers (for Florence-2: florence-community/Florence-2-large or "
                    "florence-community/Florence-2-base, not microsoft/Florence-2-*)") if remote else ""
            raise LocalVLMConfigError(
                f"{self.model_id!r} is not an image-text-to-text model transformers can load with "
                f"AutoModelForImageTextToText ({str(e).splitlines()[0][:300]}).{hint}") from None
        missing = sorted(info.get("missing_keys") or [])
        if missing:  # transformers would fill them with random values: captions would be noise
            remote = _needs_remote_code(self.model_id)
            raise LocalVLMConfigError(
                f"{self.model_id!r}: {len(missing)} weight tensor(s) of {type(model).__name__} are not in the "
                f"checkpoint (e.g. {missing[0]!r}), so its layout is not the built-in class's" +
                (". It needs its own remote code, which textok never runs; use a checkpoint converted for "
                 "transformers (for Florence-2: florence-community/Florence-2-large or -base)" if remote else
                 "; use a checkpoint saved for this transformers version"))
        model.to(self._device).eval()
        return _Loaded(processor, model)

    def teardown(self) -> None:
        self._held = self._model = self._processor = self._lock = None

    def _check_weights_present(self) -> None:
        mid = self.model_id
        looks_like_path = os.path.isabs(mid) or mid.startswith(".") or os.path.exists(mid)
        if looks_like_path and not os.path.isdir(mid):
            raise _missing_weights(mid, "no such directory")
        if os.path.isdir(mid):
            if not os.path.isfile(os.path.join(mid, "config.json")):
                raise _missing_weights(mid, "the directory has no config.json")
            names = os.listdir(mid)
            if not any(n.endswith((".safetensors", ".bin")) for n in names):
                raise _missing_weights(mid, "the directory has no *.safetensors / *.bin weights")

    # -- captioning ----------------------------------------------------------------------
    def caption_batch(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        if self._model is None:
            raise RuntimeError("LocalVLMCaptioner.setup() must run before caption_batch()")
        results: dict[int, CaptionResult] = {}
        todo = []
        for i, r in enumerate(requests):
            if r.image is None:
                results[i] = CaptionResult(r.key, error_type="missing_image", attempts=0,
                                           message="the local captioner needs pixels; the request has no image")
            else:
                todo.append(i)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            for i, res in zip(chunk, self._generate_chunk([requests[i] for i in chunk])):
                results[i] = res
        return [results[i] for i in range(len(requests))]

    def _generate_chunk(self, reqs: list[CaptionRequest]) -> list[CaptionResult]:
        try:
            return self._generate(reqs)
        except Exception as e:  # e.g. CUDA OOM on one odd batch: isolate the item that fails
            if len(reqs) == 1:
                return [CaptionResult(reqs[0].key, error_type="generation_error",
                                      message=f"{type(e).__name__}: {str(e)[:500]}")]
            log.warning("batched generate failed (%s: %s); retrying %d items one by one", type(e).__name__,
                        str(e).splitlines()[0][:300] if str(e) else "", len(reqs))
            return [r for req in reqs for r in self._generate_chunk([req])]

    def _inputs(self, reqs: list[CaptionRequest]):
        """Processor inputs for one batch (tensors on the model's device and dtype).

        Chat mode renders the template to text and tokenizes it the way
        `apply_chat_template(tokenize=True)` does: without adding special tokens when the
        template already writes the BOS (Gemma 3's does; adding it again doubles it). Each
        prompt holds one image, so the images go as one list per prompt: processors that count
        images per prompt (Idefics3, SmolVLM, Gemma 3) read a flat list as every image for the
        first prompt."""
        import torch

        inputs = self._processor_inputs(reqs).to(self._device)
        for k, v in inputs.items():  # pixel tensors follow the model dtype; ids stay integer
            if torch.is_floating_point(v):
                inputs[k] = v.to(self._dtype)
        return inputs

    def _processor_inputs(self, reqs: list[CaptionRequest]):
        """The processor's tensors for one batch, on the CPU, as `_inputs` describes."""
        images = [r.image.convert("RGB") for r in reqs]
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        if self.task_prompt is not None:
            kwargs["images"] = images
            if self.task_prompt:
                kwargs.update(text=[self.task_prompt] * len(reqs), padding=True)
        else:
            tok = self._processor.tokenizer
            texts = [tok.apply_chat_template(
                [{"role": "user", "content": [
                    {"type": "image"},
                    {"type": "text", "text": build_prompt(r.class_name, self.class_hint, self.max_words)}]}],
                chat_template=self._chat_template, add_generation_prompt=True, tokenize=False)
                for r in reqs]
            kwargs.update(text=texts, images=[[img] for img in images], padding=True)
            if tok.bos_token and texts[0].startswith(tok.bos_token):
                kwargs["add_special_tokens"] = False
        return self._processor(**kwargs)

    def _generate(self, reqs: list[CaptionRequest]) -> list[CaptionResult]:
        import torch

        inputs = self._inputs(reqs)
        with self._lock, torch.inference_mode():
            out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and out.shape[1] >= prompt_ids.shape[1] and \
                torch.equal(out[:, :prompt_ids.shape[1]], prompt_ids.to(out.device)):
            out = out[:, prompt_ids.shape[1]:]  # decoder-only models return prompt + answer
        tok = self._processor.tokenizer
        special = set(tok.all_special_ids)
        n_in = inputs["attention_mask"].sum(1).tolist() if "attention_mask" in inputs else [None] * len(reqs)
        results = []
        for req, seq, nin in zip(reqs, out.tolist(), n_in):
            text, echoed = self._strip_task_prompt(tok.decode(seq, skip_special_tokens=True).strip())
            # Generated text tokens only: not the decoder-start/BOS/EOS/pad tokens, and not a
            # task prefix (BLIP) the model returned in front of its answer.
            n_out = max(0, sum(t not in special for t in seq) - echoed)
            if not text:
                results.append(CaptionResult(req.key, error_type="empty_response", output_tokens=n_out,
                                             message="the model generated no text"))
            else:
                results.append(CaptionResult(req.key, text=text, input_tokens=None if nin is None else int(nin),
                                             output_tokens=n_out))
        return results

    def _strip_task_prompt(self, text: str) -> tuple[str, int]:
        """BLIP continues its text prefix and returns it (lower-cased by its tokenizer): drop it,
        and say how many tokens it was."""
        p = (self.task_prompt or "").strip()
        if p and text.lower().startswith(p.lower()):
            n = len(self._processor.tokenizer(p, add_special_tokens=False)["input_ids"])
            return text[len(p):].strip(), n
        return text, 0

    def settings(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "task_prompt": self.task_prompt, "max_words": self.max_words,
                "class_hint": self.class_hint, "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens,
                "device": str(self._device) if self._device else self.device_setting,
                "dtype": str(self._dtype).replace("torch.", "") if self._dtype else self.dtype_setting,
                "decoding": "greedy"}


_OPTION_KEYS = {"model_id", "max_words", "class_hint", "batch_size", "device", "dtype", "max_new_tokens",
                "task_prompt"}


def from_options(options: dict) -> LocalVLMCaptioner:
    """Build from the registry's option dict (CLI flags; only non-None keys are present)."""
    opts = {k: v for k, v in options.items() if v is not None}
    check_options("local", opts, _OPTION_KEYS)
    if "model_id" not in opts:
        raise LocalVLMConfigError("the local captioner needs --model PATH_OR_HUB_ID (an image-text-to-text model)")
    return LocalVLMCaptioner(opts.pop("model_id"), **opts)


if __name__ == "__main__":
    import argparse
    import json

    from PIL import Image

    p = argparse.ArgumentParser(description="Caption image files with a local VLM and print JSON lines.")
    p.add_argument("images", nargs="+")
    p.add_argument("--model", required=True)
    p.add_argument("--task-prompt", default=None)
    p.add_argument("--max-new-tokens", type=int, default=96)
    a = p.parse_args()
    cap = LocalVLMCaptioner(a.model, task_prompt=a.task_prompt, max_new_tokens=a.max_new_tokens)
    cap.setup()
    for r in cap.caption_batch([CaptionRequest(key=f, image=Image.open(f).convert("RGB")) for f in a.images]):
        print(json.dumps(r.__dict__))
