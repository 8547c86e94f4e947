"""A fake OpenAI-compatible server on 127.0.0.1 (what vLLM, SGLang, TGI, Ollama serve).

    POST /v1/chat/completions   {"model", "messages": [{"role": "user", "content": [
                                   {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}},
                                   {"type": "text", "text": ...}]}], "max_tokens", ...}
    -> {"id", "object": "chat.completion", "created", "model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ...}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}

Scripting, recording, `max_concurrency()` and the answer that names the image's mean colour
are FakeGemini's (tests/fake_gemini.py): `script=[error(429, retry_after="0.2"), ok()]`.
`api_key` makes other bearer tokens a 401; `models` makes other model names a 404 (or
`unknown_model_status=400`, as some servers answer). `truncated()` answers finish_reason
"length"; `parts()` answers `message.content` as a list of text parts. Query parameters of each
request are recorded in `RecordedRequest.path`.

    python tests/fake_openai.py --latency 0.3      # serve until Ctrl-C, print the base URL
"""
from __future__ import annotations

import base64
import json
import time
from typing import Any, Optional

import fake_gemini
from fake_gemini import Behaviour, FakeGemini, RecordedRequest, mean_rgb

PATH = "/v1/chat/completions"


def image_of(req: RecordedRequest) -> Optional[bytes]:
    for m in req.body.get("messages", []):
        for part in m.get("content", []) if isinstance(m.get("content"), list) else []:
            url = (part.get("image_url") or {}).get("url", "") if part.get("type") == "image_url" else ""
            if url.startswith("data:") and "," in url:
                return base64.b64decode(url.split(",", 1)[1])
    return None


def text_of(req: RecordedRequest) -> str:
    return " ".join(part.get("text", "") for m in req.body.get("messages", [])
                    for part in (m.get("content") if isinstance(m.get("content"), list) else [])
                    if part.get("type") == "text")


class FakeOpenAI(FakeGemini):
    def __init__(self, script=None, default: Optional[Behaviour] = None, api_key: Optional[str] = None,
                 models: Optional[list[str]] = None, unknown_model_status: int = 404):
        super().__init__(script=script, default=default, api_key=api_key)
        self.models = models
        self.unknown_model_status = unknown_model_status

    def _handler(self):
        return _make_handler(self)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


def _error(status: int, message: str) -> dict[str, Any]:
    kinds = {401: "invalid_request_error", 404: "NotFoundError", 429: "rate_limit_exceeded", 500: "server_error"}
    return {"error": {"message": message, "type": kinds.get(status, "server_error"), "code": status}}


def _make_handler(fake: FakeOpenAI):
    # FakeGemini's handler sends, records and times requests; only the route and shapes differ.
    class Handler(fake_gemini._make_handler(fake)):
        def _serve(self) -> None:
            t = time.monotonic()
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                body = {}
            req = self._req = RecordedRequest(t, self.path, body.get("model", ""), dict(self.headers.items()), body)
            with fake._lock:
                fake.requests.append(req)
            if self.path.split("?")[0] != PATH:
                req.kind, req.status = "not_found", 404
                return self._send(404, _error(404, f"no route {self.path}"))
            if fake.api_key is not None and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                req.kind, req.status = "bad_key", 401
                return self._send(401, _error(401, "Incorrect API key provided."))
            if fake.models is not None and req.model not in fake.models:
                req.kind, req.status = "unknown_model", fake.unknown_model_status
                return self._send(fake.unknown_model_status,
                                  _error(fake.unknown_model_status, f"The model `{req.model}` does not exist."))
            b = self._behave(req, lambda status, b: _error(status, f"fake server error {status}"))
            if b is None:
                return None
            if b.kind == "malformed":
                return self._send(200, b'{"choices": [{"message": {"content": "A ca')
            rgb = mean_rgb(image_of(req))
            text = "" if b.kind == "empty" else b.text if b.text is not None else (
                f"A flat square of colour {' '.join(map(str, rgb)) if rgb else 'unknown'} filling the whole frame.")
            prompt_tokens = 200 * (rgb is not None) + max(1, len(text_of(req)) // 4)
            out_tokens = max(1, round(len(text.split()) * 1.3)) if text else 0
            content: Any = text
            if b.kind == "parts":  # split in two text parts around an image part the client must skip
                half = max(text.rfind(" ", 0, len(text) // 2), 0)
                content = [{"type": "text", "text": text[:half]}, {"type": "image_url", "image_url": {"url": "x"}},
                           {"type": "text", "text": text[half:]}]
            finish = {"safety": "content_filter", "truncated": "length"}.get(b.kind, "stop")
            return self._send(200, {
                "id": f"chatcmpl-{len(fake.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": req.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
                          "total_tokens": prompt_tokens + out_tokens}})

    return Handler


if __name__ == "__main__":
    fake_gemini.serve_until_interrupted(FakeOpenAI, "base_url")
