"""A fake Gemini API server on 127.0.0.1 speaking the REST shape google-genai talks to.

    POST /{v1|v1beta}/models/{model}:generateContent   (API key in the x-goog-api-key header)
    -> {"candidates": [{"content": {"parts": [{"text": ...}], "role": "model"},
                        "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount", "candidatesTokenCount", "totalTokenCount"},
        "modelVersion": model}

Scriptable per request: pass `script=` a list of `Behaviour`s (consumed in arrival order,
then `default`) or a function `(RecordedRequest) -> Behaviour`. Behaviours: `ok`, `error`
(429 with google.rpc.RetryInfo retryDelay and/or Retry-After, 500, 503...), `html_error`
(a proxy's 502 page), `reset` (the connection is reset, no answer), `hang`, `safety`,
`prompt_blocked`, `empty`, `malformed`, `long_answer`, `truncated` (cut at the output limit:
finishReason MAX_TOKENS / finish_reason length), `parts` (OpenAI: content as a list of parts). Every request is recorded
with its arrival time, headers and JSON body, so tests can check pacing and that the key
travels only in the header.

The default answer names the mean colour of the image it received ("... colour 200 10 10
..."), so a test can tell which image a caption belongs to.

    with FakeGemini(script=[error(429, retry_delay_s=0.2), ok()]) as fake:
        client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=fake.url))

    python tests/fake_gemini.py --latency 0.3      # serve until Ctrl-C, print the URL
"""
from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Union

_PATH = re.compile(r"^/(v1|v1beta|v1alpha)/models/([^/:]+):generateContent$")
IMAGE_TOKENS = 258  # what Gemini 2.x bills for an image with both sides <= 384 px


@dataclass
class Behaviour:
    kind: str = "ok"                       # ok | error | html_error | reset | hang | safety | prompt_blocked | empty
    #                                        | malformed | truncated | parts
    latency_s: float = 0.0
    status: int = 200
    text: Optional[str] = None             # ok: answer text (default: names the image's colour)
    retry_delay_s: Optional[float] = None  # error: google.rpc.RetryInfo retryDelay
    retry_after: Optional[str] = None      # error: Retry-After header value
    hang_s: float = 30.0                   # hang: how long the server sits on the request


def ok(text: Optional[str] = None, latency_s: float = 0.0) -> Behaviour:
    return Behaviour("ok", latency_s=latency_s, text=text)


def error(status: int, retry_delay_s: Optional[float] = None, retry_after: Optional[str] = None,
          latency_s: float = 0.0) -> Behaviour:
    return Behaviour("error", latency_s=latency_s, status=status, retry_delay_s=retry_delay_s,
                     retry_after=retry_after)


def hang(seconds: float = 30.0) -> Behaviour:
    return Behaviour("hang", hang_s=seconds)


def safety() -> Behaviour:
    return Behaviour("safety")


def prompt_blocked() -> Behaviour:
    return Behaviour("prompt_blocked")


def empty() -> Behaviour:
    return Behaviour("empty")


def malformed() -> Behaviour:
    return Behaviour("malformed")


def html_error(status: int = 502) -> Behaviour:
    """What a load balancer answers for a dead backend: an HTML page, not the API's JSON error."""
    return Behaviour("html_error", status=status)


def reset() -> Behaviour:
    """The connection is reset (RST) after the request is read: no status line at all."""
    return Behaviour("reset")


def truncated(text: str = "A red square sits on the left of a") -> Behaviour:
    return Behaviour("truncated", text=text)


def parts(text: Optional[str] = None) -> Behaviour:
    return Behaviour("parts", text=text)


def long_answer(words: int = 120) -> Behaviour:
    return Behaviour("ok", text=" ".join(f"word{i}" for i in range(words)) + ".")


@dataclass
class RecordedRequest:
    t: float                 # time.monotonic() at arrival
    path: str
    model: str
    headers: dict[str, str]
    body: dict[str, Any]
    kind: str = ""           # behaviour served
    status: int = 0
    t_done: float = 0.0      # time.monotonic() when the answer was sent

    @property
    def prompt_text(self) -> str:
        parts = self.body.get("contents", [{}])[0].get("parts", [])
        return " ".join(p["text"] for p in parts if "text" in p)

    @property
    def image_bytes(self) -> Optional[bytes]:
        for p in self.body.get("contents", [{}])[0].get("parts", []):
            if "inlineData" in p:
                data = p["inlineData"]["data"]  # google-genai sends URL-safe base64; accept both alphabets
                return base64.urlsafe_b64decode(data.replace("+", "-").replace("/", "_") + "=" * (-len(data) % 4))
        return None


Script = Union[list, Callable[[RecordedRequest], Behaviour], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # listen backlog: the default 5 would stall bursts of connects


class FakeGemini:
    def __init__(self, script: Script = None, default: Optional[Behaviour] = None,
                 api_key: Optional[str] = None, echo_key: bool = False):
        self.default = default or ok()
        self.api_key = api_key            # when set, other keys get the real API_KEY_INVALID 400
        self.echo_key = echo_key          # hostile: every error body quotes the key it received
        self.requests: list[RecordedRequest] = []
        self._script = script
        self._queue = list(script) if isinstance(script, list) else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> "FakeGemini":
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes hanging handlers
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "FakeGemini":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _handler(self):
        return _make_handler(self)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- scripting --------------------------------------------------------------------
    def _next_behaviour(self, req: RecordedRequest) -> Behaviour:
        if callable(self._script):
            return self._script(req)
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
        return self.default

    def arrival_times(self) -> list[float]:
        with self._lock:
            return sorted(r.t for r in self.requests)

    def max_concurrency(self) -> int:
        """Most requests the server held at once (from arrival and answer times)."""
        with self._lock:
            events = sorted([(r.t, 1) for r in self.requests] + [(r.t_done, -1) for r in self.requests if r.t_done])
        best = cur = 0
        for _, d in events:
            cur += d
            best = max(best, cur)
        return best


def mean_rgb(img_bytes: Optional[bytes]) -> Optional[tuple[int, int, int]]:
    """Mean colour of an encoded image (what the default answer names)."""
    if not img_bytes:
        return None
    from PIL import Image

    with Image.open(io.BytesIO(img_bytes)) as im:
        return tuple(int(c) for c in im.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0)))


def _usage(req: RecordedRequest, answer: str) -> dict[str, int]:
    prompt = IMAGE_TOKENS * (req.image_bytes is not None) + max(1, len(req.prompt_text) // 4)
    out = max(1, round(len(answer.split()) * 1.3))
    return {"promptTokenCount": prompt, "candidatesTokenCount": out, "totalTokenCount": prompt + out}


def _error_body(status: int, retry_delay_s: Optional[float]) -> dict[str, Any]:
    names = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
             500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
    err: dict[str, Any] = {"code": status, "message": f"fake server error {status}",
                           "status": names.get(status, "UNKNOWN")}
    if status == 429:
        err["message"] = "You exceeded your current quota, please check your plan and billing details."
        err["details"] = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                           "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                                           "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]}]
        if retry_delay_s is not None:
            err["details"].append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                   "retryDelay": f"{retry_delay_s:g}s"})
    return {"error": err}


def answer(b: Behaviour, model: str, image_bytes: Optional[bytes], prompt_text: str
           ) -> tuple[int, Union[bytes, dict], Optional[dict]]:
    """(HTTP status, body, extra headers) of one generateContent answer; the batch fake reuses it
    for each line of a result file."""
    req = RecordedRequest(0.0, "", model, {}, {"contents": [{"parts": [{"text": prompt_text}] + (
        [{"inlineData": {"data": base64.b64encode(image_bytes).decode()}}] if image_bytes else [])}]})
    if b.kind == "error":
        headers = {"Retry-After": b.retry_after} if b.retry_after else None
        return b.status, _error_body(b.status, b.retry_delay_s), headers
    if b.kind == "malformed":
        return 200, b'{"candidates": [{"content": {"parts": [{"text": "A ca', None
    if b.kind == "empty":
        return 200, {"candidates": [], "usageMetadata": _usage(req, ""), "modelVersion": model}, None
    if b.kind == "prompt_blocked":
        return 200, {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": _usage(req, ""),
                     "modelVersion": model}, None
    if b.kind == "safety":
        cand = {"finishReason": "SAFETY", "index": 0, "safetyRatings": [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]}
        return 200, {"candidates": [cand], "usageMetadata": _usage(req, ""), "modelVersion": model}, None
    rgb = mean_rgb(image_bytes)
    text = b.text if b.text is not None else (
        f"A flat square of colour {' '.join(map(str, rgb)) if rgb else 'unknown'} filling the whole frame.")
    cand = {"content": {"parts": [{"text": text}], "role": "model"},
            "finishReason": "MAX_TOKENS" if b.kind == "truncated" else "STOP", "index": 0}
    return 200, {"candidates": [cand], "usageMetadata": _usage(req, text), "modelVersion": model}, None


def _make_handler(fake: FakeGemini):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real endpoint

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, status: int, payload: Union[bytes, dict], headers: Optional[dict] = None) -> None:
            if fake.echo_key and status >= 400 and isinstance(payload, dict) and "error" in payload:
                key = self.headers.get("x-goog-api-key")
                payload = {"error": dict(payload["error"], message=f"{payload['error'].get('message')} "
                                                                   f"(key={key}, url={self.path}?key={key})")}
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): nothing to deliver

        def _send_raw(self, status: int, data: bytes, content_type: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _reset(self) -> None:
            """Abort the TCP connection (SO_LINGER 0 -> RST), as a crashing backend does."""
            import socket
            import struct

            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.wfile.flush()
            except OSError:
                pass
            for f in (self.rfile, self.wfile):
                try:
                    f.close()
                except OSError:
                    pass
            self.connection.close()

        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            self._req: Optional[RecordedRequest] = None
            try:
                self._serve()
            except Exception as e:  # a bug in a test script must show as a 500, not a dropped connection
                self._send(500, {"error": {"code": 500, "message": f"fake server bug: {e!r}", "status": "INTERNAL"}})
            if self._req is not None:
                self._req.t_done = time.monotonic()

        def _behave(self, req: RecordedRequest, error_body: Callable[[int, Behaviour], dict]) -> Optional[Behaviour]:
            """Pick the scripted behaviour, wait its latency, and answer hangs and errors here
            (None: answered); otherwise the 200 answer is the caller's to shape."""
            b = fake._next_behaviour(req)
            req.kind = b.kind
            if b.latency_s:
                fake._stop.wait(b.latency_s)
            if b.kind == "hang":
                fake._stop.wait(b.hang_s)
                req.status = 504
                self._send(504, error_body(504, b))
                return None
            if b.kind == "error":
                req.status = b.status
                headers = {"Retry-After": b.retry_after} if b.retry_after else None
                self._send(b.status, error_body(b.status, b), headers)
                return None
            if b.kind == "html_error":
                req.status = b.status
                page = f"<html><head><title>{b.status} Bad Gateway</title></head><body><center><h1>{b.status} " \
                       "Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
                self._send_raw(b.status, page.encode(), "text/html")
                return None
            if b.kind == "reset":
                req.status = 0
                self._reset()
                return None
            req.status = 200
            return b

        do_GET = do_POST  # noqa: N815 - the batch fake serves GET routes through handle_extra

        def _serve(self) -> None:
            t = time.monotonic()
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            m = _PATH.match(self.path.split("?")[0])
            extra = getattr(fake, "handle_extra", None)
            if not m and extra is not None:  # the batch fake's routes (files, batches)
                return self._send(*extra(self.command, self.path, dict(self.headers.items()), raw))
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                body = {}
            req = self._req = RecordedRequest(t, self.path, m.group(2) if m else "", dict(self.headers.items()), body)
            with fake._lock:
                fake.requests.append(req)
            if not m:
                req.kind, req.status = "not_found", 404
                return self._send(404, _error_body(404, None))
            if fake.api_key is not None and self.headers.get("x-goog-api-key") != fake.api_key:
                req.kind, req.status = "bad_key", 400
                err = _error_body(400, None)
                err["error"]["message"] = "API key not valid. Please pass a valid API key."
                err["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                            "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]
                return self._send(400, err)
            b = self._behave(req, lambda status, b: _error_body(status, b.retry_delay_s))
            if b is None:
                return None
            status, payload, headers = answer(b, req.model, req.image_bytes, req.prompt_text)
            return self._send(status, payload, headers)

    return Handler


def serve_until_interrupted(fake_cls=None, url_attr: str = "url") -> None:
    """`python tests/fake_<api>.py --latency S`: serve on 127.0.0.1, print the URL, wait for Ctrl-C."""
    import argparse

    fake_cls = fake_cls or FakeGemini
    p = argparse.ArgumentParser(description=f"Serve a {fake_cls.__name__} API on 127.0.0.1")
    p.add_argument("--latency", type=float, default=0.0)
    a = p.parse_args()
    with fake_cls(default=ok(latency_s=a.latency)) as fake:
        print(getattr(fake, url_attr), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    serve_until_interrupted()
