"""Local captioner: any Hugging Face image-text-to-text model, batched `generate`, GPU if present.

    huggingface-cli download Salesforce/blip-image-captioning-large --local-dir models/blip
    textok caption --input imgs/ --output out/ --captioner local --model models/blip --task-prompt "a picture of"

    python -m pipeline.captioners.local --model PATH_OR_ID [--task-prompt TEXT] a.jpg b.png

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

GPU: cuda when available, in bf16; CPU in fp32 (both settings: `device`, `dtype`).
Greedy decoding, so a caption depends only on the image, the prompt and the weights.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Optional

from textok.pipeline.captioners.base import Captioner, CaptionRequest, CaptionResult
from textok.pipeline.captioners.prompt import MAX_CAPTION_WORDS, PROMPT_VERSION, build_prompt, prompt_template

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


# One copy of each model per worker process: Beam runs several DoFn instances (threads) per
# process, and each would otherwise load its own copy onto the same GPU. Generation on a
# shared model is serialised by its lock (one batched generate saturates the device anyway).
_SHARED: dict[tuple, tuple[Any, Any, threading.Lock]] = {}
_SHARED_LOCK = threading.Lock()


class LocalVLMConfigError(RuntimeError):
    """Weights missing, model not an image-text-to-text model, or a bad setting."""


def _missing_weights(model_id: str, why: str) -> LocalVLMConfigError:
    return LocalVLMConfigError(
        f"cannot load the local captioning model {model_id!r}: {why}. Download it with "
        f"`huggingface-cli download {model_id} --local-dir models/<name>` on a machine with network access "
        f"and pass that directory with --model PATH (or set HF_HOME to a cache that holds it).")


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
        self._model = None
        self._processor = None
        self._lock = None
        self._device = None
        self._dtype = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_model=None, _processor=None, _device=None, _dtype=None, _lock=None)
        return state

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self) -> None:
        if self._model is not None:
            return
        import torch

        self._device = torch.device(self._resolve_device(torch))
        self._dtype = getattr(torch, _DTYPES.get(self.dtype_setting) or
                              ("bfloat16" if self._device.type == "cuda" else "float32"))
        self._check_weights_present()
        self._processor, self._model, self._lock = self._load_shared()
        tok = getattr(self._processor, "tokenizer", None)
        if tok is None:
            raise LocalVLMConfigError(f"{self.model_id!r}: its processor has no tokenizer to decode answers")
        # Decoder-only VLMs continue the prompt: pad on the left so every row ends at its prompt.
        tok.padding_side = "left"
        if self.task_prompt is None and not getattr(self._processor, "chat_template", None):
            raise LocalVLMConfigError(
                f"{self.model_id!r} has no chat template, so it cannot take our instruction prompt; pass "
                f"--task-prompt (e.g. \"a picture of\" or \"\" for BLIP, \"<MORE_DETAILED_CAPTION>\" for Florence-2)")
        log.info("local captioner %s on %s (%s)", self.model_id, self._device, self._dtype)

    def _load_shared(self):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        key = (self.model_id, str(self._device), str(self._dtype))
        with _SHARED_LOCK:
            if key not in _SHARED:
                try:
                    processor = AutoProcessor.from_pretrained(self.model_id)
                    model = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype=self._dtype)
                except OSError as e:  # not on disk, not in the cache, and offline / not on the Hub
                    raise _missing_weights(self.model_id, f"{type(e).__name__}: {e}") from e
                except ValueError as e:  # a model type AutoModelForImageTextToText does not map
                    raise LocalVLMConfigError(
                        f"{self.model_id!r} is not an image-text-to-text model transformers can load with "
                        f"AutoModelForImageTextToText ({e})") from e
                model.to(self._device).eval()
                _SHARED[key] = (processor, model, threading.Lock())
            return _SHARED[key]

    def teardown(self) -> None:
        self._model = None
        self._processor = None

    def _resolve_device(self, torch) -> str:
        if self.device_setting == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device_setting.startswith("cuda") and not torch.cuda.is_available():
            raise LocalVLMConfigError(f"--device {self.device_setting} but torch sees no CUDA device")
        return self.device_setting

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
            log.warning("batched generate failed (%s); retrying %d items one by one", type(e).__name__, len(reqs))
            return [r for req in reqs for r in self._generate_chunk([req])]

    def _texts(self, reqs: list[CaptionRequest]) -> Optional[list[str]]:
        if self.task_prompt is not None:
            return [self.task_prompt] * len(reqs) if self.task_prompt else None
        texts = []
        for r in reqs:
            messages = [{"role": "user", "content": [
                {"type": "image"},
                {"type": "text", "text": build_prompt(r.class_name, self.class_hint, self.max_words)}]}]
            texts.append(self._processor.apply_chat_template(messages, add_generation_prompt=True))
        return texts

    def _generate(self, reqs: list[CaptionRequest]) -> list[CaptionResult]:
        import torch

        images = [r.image.convert("RGB") for r in reqs]
        texts = self._texts(reqs)
        kwargs: dict[str, Any] = {"images": images, "return_tensors": "pt"}
        if texts is not None:
            kwargs.update(text=texts, padding=True)
        inputs = self._processor(**kwargs).to(self._device)
        for k, v in inputs.items():  # pixel tensors follow the model dtype; ids stay integer
            if torch.is_floating_point(v):
                inputs[k] = v.to(self._dtype)
        with self._lock, torch.inference_mode():
            out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and out.shape[1] >= prompt_ids.shape[1] and \
                torch.equal(out[:, :prompt_ids.shape[1]], prompt_ids.to(out.device)):
            out = out[:, prompt_ids.shape[1]:]  # decoder-only models return prompt + answer
        tok = self._processor.tokenizer
        pad_id = tok.pad_token_id
        n_in = inputs["attention_mask"].sum(1).tolist() if "attention_mask" in inputs else [None] * len(reqs)
        results = []
        for req, seq, nin in zip(reqs, out, n_in):
            text = self._strip_task_prompt(tok.decode(seq, skip_special_tokens=True).strip())
            n_out = int((seq != pad_id).sum()) if pad_id is not None else int(seq.numel())
            if not text:
                results.append(CaptionResult(req.key, error_type="empty_response", output_tokens=n_out,
                                             message="the model generated no text"))
            else:
                results.append(CaptionResult(req.key, text=text, input_tokens=None if nin is None else int(nin),
                                             output_tokens=n_out))
        return results

    def _strip_task_prompt(self, text: str) -> str:
        """BLIP continues its text prefix and returns it (lower-cased by its tokenizer)."""
        p = (self.task_prompt or "").strip()
        if p and text.lower().startswith(p.lower()):
            return text[len(p):].strip()
        return text

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
    from textok.pipeline.captioners import check_options

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
