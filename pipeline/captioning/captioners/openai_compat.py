"""Captioner for any OpenAI-compatible chat server: vLLM, SGLang, TGI, Ollama, LM Studio.

    vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 --max-model-len 8192     # on a GPU box
    textok caption --input imgs/ --output out/ --captioner openai \
        --openai-base-url http://gpu-box:8000/v1 --model Qwen/Qwen2.5-VL-7B-Instruct --max-in-flight 64

    python -m textok.pipeline.captioning.captioners.openai_compat --base-url http://localhost:8000/v1 --model M a.jpg

Each image goes as one `POST {base_url}/chat/completions` with the image as a base64 JPEG data
URL (≤384 px by default) and our versioned prompt, through the `openai` client with its own
retries off. Pacing (--rpm/--tpm), --max-in-flight, retries honouring `Retry-After`, timeouts,
the --max-cost-usd budget and usage accounting are the Gemini backend's (remote.py). Several
--openai-base-url values spread requests over a fleet of servers: each request (and each
retry) goes to the server with the fewest requests in flight from this process.

The key comes from the environment only: `OPENAI_API_KEY`, or the variable named by
--api-key-env. Servers started without a key (vLLM's default) need none; the client then sends
the placeholder "EMPTY". The key is never an attribute of a pickled captioner, never in
settings() or a row, and every error message is scrubbed of it. A rejected key (401/403) or an
unknown model (404) stops the run with `OpenAICompatConfigError`; everything else becomes a
failed `CaptionResult`.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import os
from typing import Any, Optional

from textok.pipeline.captioning.captioners.base import CaptionRequest, check_options
from textok.pipeline.captioning.captioners.prompt import MAX_CAPTION_WORDS, PROMPT_VERSION, prompt_template
from textok.pipeline.captioning.captioners.ratelimit import retry_hint_s
from textok.pipeline.captioning.captioners.remote import Attempt, LoopThread, RemoteCaptioner

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
IMAGE_MAX_SIDE = 384
# Before a response reports real usage: Qwen2.5-VL spends one token per 28x28 px, so a 384 px
# square is ~190 tokens; LLaVA-style models 576. The limiter reconciles with the real count.
IMAGE_TOKENS_ESTIMATE = 256
NO_KEY = "EMPTY"  # what vLLM's docs pass when the server has no --api-key


class OpenAICompatConfigError(RuntimeError):
    """No base URL, a rejected key, an unknown model or a bad setting: stop the run, fix the setting."""


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def build_messages(jpeg: bytes, prompt: str) -> list[dict[str, Any]]:
    """One user turn: the image, then the instruction (the order vLLM's VLM examples use)."""
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(jpeg)}},
                                         {"type": "text", "text": prompt}]}]


def parse_completion(resp: Any) -> Attempt:
    """ChatCompletion -> caption text or a classified failure (pure; unit-testable)."""
    usage = getattr(resp, "usage", None)
    a = Attempt(input_tokens=getattr(usage, "prompt_tokens", None),
                output_tokens=getattr(usage, "completion_tokens", None), maybe_billed=usage is None)
    choices = getattr(resp, "choices", None) or []
    if not choices:
        a.error_type, a.message = "empty_response", "response has no choices"
        return a
    choice = choices[0]
    if choice.finish_reason == "content_filter":
        a.error_type, a.message = "safety_blocked", "finish_reason=content_filter"
        return a
    message = choice.message
    if getattr(message, "refusal", None):
        a.error_type, a.message = "refusal", f"refusal: {message.refusal[:300]}"
        return a
    text = (message.content or "").strip()
    if not text:
        a.error_type, a.message = "empty_response", f"no text in the answer (finish_reason={choice.finish_reason})"
        return a
    a.text = text  # finish_reason "length" keeps its text: the caption rules cut it at a sentence
    return a


class OpenAICompatCaptioner(RemoteCaptioner):
    backend = "openai"
    prompt_version = PROMPT_VERSION

    def __init__(self, model_id: str, base_urls: list[str] | str | None = None, *,
                 api_key_env: str = DEFAULT_KEY_ENV, max_words: int = MAX_CAPTION_WORDS, class_hint: bool = False,
                 rpm: Optional[float] = None, tpm: Optional[float] = None, max_in_flight: int = 32,
                 timeout_s: float = 120.0, max_retries: int = 5, max_cost_usd: Optional[float] = None,
                 price_table: Optional[str] = None, max_output_tokens: int = 256, temperature: float = 0.0,
                 image_max_side: int = IMAGE_MAX_SIDE, jpeg_quality: int = 90, backoff_base_s: float = 1.0,
                 backoff_max_s: float = 60.0):
        if not model_id:
            raise OpenAICompatConfigError("the openai captioner needs --model: the model name the server serves "
                                          "(e.g. Qwen/Qwen2.5-VL-7B-Instruct; GET {base_url}/models lists them)")
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls or [])
        urls = [u.strip().rstrip("/") for part in urls for u in part.split(",") if u.strip()]
        if not urls and os.environ.get("OPENAI_BASE_URL"):
            urls = [os.environ["OPENAI_BASE_URL"].rstrip("/")]
        if not urls:
            raise OpenAICompatConfigError(
                "the openai captioner needs --openai-base-url, e.g. http://gpu-box:8000/v1 (repeat the flag or "
                "separate with commas for several servers), or OPENAI_BASE_URL in the environment")
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if bad:
            raise OpenAICompatConfigError(f"--openai-base-url {bad[0]!r} is not an http(s) URL")
        if not api_key_env or not api_key_env.replace("_", "").isalnum():
            raise OpenAICompatConfigError(f"--api-key-env {api_key_env!r} is not an environment variable name")
        self.model_id = model_id
        self.base_urls = urls
        self.api_key_env = api_key_env
        self.max_words, self.class_hint = int(max_words), bool(class_hint)
        self.max_output_tokens = int(max_output_tokens)
        self.temperature = float(temperature)
        self.image_max_side, self.jpeg_quality = int(image_max_side), int(jpeg_quality)
        self._init_remote(rpm=rpm, tpm=tpm, max_in_flight=max_in_flight, timeout_s=timeout_s,
                          max_retries=max_retries, max_cost_usd=max_cost_usd, price_table=price_table,
                          backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s,
                          error_cls=OpenAICompatConfigError)
        self.prompt_text = prompt_template(self.class_hint, self.max_words)
        self._held: list = []          # worker_shared.Held(AsyncOpenAI), one per base URL

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_held=[], **self._transient_state())
        return state

    def __repr__(self) -> str:
        return f"OpenAICompatCaptioner(model_id={self.model_id!r}, base_urls={self.base_urls!r})"

    # -- lifecycle -----------------------------------------------------------------------
    def setup(self) -> None:
        if self._held:
            return
        try:
            import openai
        except ImportError:
            raise OpenAICompatConfigError("the openai captioner needs the `openai` package (pip install openai)") \
                from None
        from textok.pipeline.worker_shared import per_process

        key = os.environ.get(self.api_key_env, "").strip()
        if not key and self.api_key_env != DEFAULT_KEY_ENV:
            raise OpenAICompatConfigError(f"--api-key-env {self.api_key_env}: that variable is not set in the "
                                          "environment; export it, or drop the flag for a server without a key")
        self._secret = key or None
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]

        def make(url: str):
            return lambda: openai.AsyncOpenAI(api_key=key or NO_KEY, base_url=url, timeout=self.timeout_s,
                                              max_retries=0)  # our retries, so every attempt is paced

        # One client (HTTP pool) per server, process and key, shared by every DoFn thread.
        self._held = [per_process(("openai-client", url, self.timeout_s, digest), make(url), on_release=_close)
                      for url in self.base_urls]
        self._start()

    def teardown(self) -> None:
        self._held, self._secret = [], None

    def _ready(self) -> bool:
        return bool(self._held)

    def _limits_key(self) -> tuple:
        return ("openai", tuple(self.base_urls), self.model_id, self.rpm, self.tpm, self.max_in_flight,
                self.max_cost_usd)

    # -- requests ------------------------------------------------------------------------
    def _estimate_input_tokens(self, prompt: str) -> int:
        return IMAGE_TOKENS_ESTIMATE + math.ceil(len(prompt) / 4) + 8

    async def _attempt(self, jpeg: bytes, prompt: str) -> Attempt:
        import openai

        # The server with the fewest requests in flight from this process (shared by every
        # instance; only the loop thread touches the counts), ties to the first.
        load = self._shared.in_flight
        i = min(range(len(self.base_urls)), key=lambda j: load.get(j, 0))
        load[i] = load.get(i, 0) + 1
        try:
            resp = await asyncio.wait_for(
                self._held[i].value.chat.completions.create(
                    model=self.model_id, messages=build_messages(jpeg, prompt),
                    max_tokens=self.max_output_tokens, temperature=self.temperature),
                timeout=self.timeout_s + 5)  # the client's own timeout fires first; this is a backstop
        except openai.APIStatusError as e:
            return self._status_error(e, self.base_urls[i])
        except (openai.APITimeoutError, asyncio.TimeoutError):
            return Attempt(error_type="timeout", message=f"no response within {self.timeout_s:g} s", retry=True)
        except openai.APIConnectionError as e:
            return Attempt(error_type="connection_error", retry=True, maybe_billed=False,
                           message=f"{type(e).__name__} to {self.base_urls[i]}: {e.__cause__ or e}")
        except (openai.APIResponseValidationError, ValueError) as e:  # a garbled body
            return Attempt(error_type="malformed_response", message=f"{type(e).__name__}: {str(e)[:300]}",
                           retry=True)
        finally:
            load[i] -= 1
        return parse_completion(resp)

    def _status_error(self, e, url: str) -> Attempt:
        code = int(e.status_code)
        msg = self._redact(f"HTTP {code} from {url}: {str(getattr(e, 'message', '') or e)[:300]}")
        # `from None`: this runs inside `except APIStatusError`, whose unredacted body (a server
        # or proxy may quote the key there) would otherwise print as the chained context.
        if code in (401, 403):
            raise OpenAICompatConfigError(
                f"the server rejected the credentials ({msg}); check {self.api_key_env}") from None
        if code == 404:
            raise OpenAICompatConfigError(
                f"{msg}: the server does not serve model {self.model_id!r} or the URL lacks /v1; check --model "
                "against GET {base_url}/models and --openai-base-url") from None
        retry = code in (408, 409, 429) or code >= 500
        return Attempt(error_type=f"http_{code}", message=msg, retry=retry, maybe_billed=False,
                       hint_s=retry_hint_s(e) if retry else None)

    def settings(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "base_urls": self.base_urls, "api_key_env": self.api_key_env,
                "max_words": self.max_words, "class_hint": self.class_hint,
                "max_output_tokens": self.max_output_tokens, "temperature": self.temperature,
                "image_max_side": self.image_max_side, "image_format": "jpeg", "jpeg_quality": self.jpeg_quality,
                "rpm": self.rpm, "tpm": self.tpm, "max_in_flight": self.max_in_flight, "timeout_s": self.timeout_s,
                "max_retries": self.max_retries, "max_cost_usd": self.max_cost_usd,
                "prices_per_1m_usd_estimate": self.prices}


def _close(client) -> None:
    """Close a shared client's HTTP pool on the loop that used it (best effort, no wait)."""
    try:
        asyncio.run_coroutine_threadsafe(client.close(), LoopThread.get())
    except Exception:  # the process may be ending anyway
        pass


_OPTION_KEYS = {"model_id", "max_words", "class_hint", "rpm", "tpm", "max_in_flight", "timeout_s", "max_retries",
                "max_cost_usd", "price_table", "temperature", "image_max_side", "jpeg_quality", "backoff_base_s",
                "backoff_max_s", "api_key_env"}


def from_options(options: dict) -> OpenAICompatCaptioner:
    """Build from the registry's option dict: `openai_base_url` (a list or comma-separated) and
    `max_new_tokens` map to `base_urls` and `max_output_tokens`."""
    opts = {k: v for k, v in options.items() if v is not None}
    check_options("openai", opts, _OPTION_KEYS | {"openai_base_url", "max_new_tokens"})
    kwargs = {k: v for k, v in opts.items() if k in _OPTION_KEYS}
    if "max_new_tokens" in opts:
        kwargs["max_output_tokens"] = opts["max_new_tokens"]
    return OpenAICompatCaptioner(base_urls=opts.get("openai_base_url"), **{"model_id": None, **kwargs})


if __name__ == "__main__":
    import argparse

    from PIL import Image

    p = argparse.ArgumentParser(description="Caption image files through an OpenAI-compatible server; JSON lines.")
    p.add_argument("images", nargs="+")
    p.add_argument("--base-url", action="append", required=True)
    p.add_argument("--model", required=True)
    a = p.parse_args()
    cap = OpenAICompatCaptioner(a.model, a.base_url)
    cap.setup()
    for r in cap.caption_batch([CaptionRequest(key=f, image=Image.open(f).convert("RGB")) for f in a.images]):
        print(json.dumps(r.__dict__))
    print(json.dumps(cap.usage_summary()))
