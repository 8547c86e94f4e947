"""Gemini Batch Mode, the wire side: request lines, result lines, and the google-genai calls.

The Developer API's Batch Mode takes a JSONL file of `{"key": ..., "request":
GenerateContentRequest}` lines (uploaded with the Files API), runs it as one job within a
target of 24 h at half the synchronous price, and answers with a JSONL file of `{"key",
"response": GenerateContentResponse}` or `{"key", "error": Status}` lines. Requests are built
exactly as the synchronous captioner builds them (gemini.request_jpeg, build_prompt,
generation_settings), and answers go through the same `parse_response`, so both modes
caption alike. The orchestration (ledger, polling, writing) is pipeline/captioning/batch.py.

    line = request_line("n01440764/x.JPEG", jpeg_bytes, prompt, generation_settings(256, None, 0))
    key, result = parse_result_line(b'{"key": "k", "response": {...}}')

Limits (ai.google.dev/gemini-api/docs/batch-mode): an input file of at most 2 GB and at most
100 concurrent batch jobs per project; jobs left pending/running for 48 h expire. The API
publishes no per-job request count, so the default split (20k requests, ≈ 0.5–1 GB of
≤384-px JPEGs) keeps each job small enough that a failed or expired one costs little to redo.
Vertex AI batch prediction (GCS/BigQuery in and out) is not implemented.
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from textok.pipeline.captioning.captioners.base import CaptionResult
from textok.pipeline.captioning.captioners.gemini import GeminiConfigError, api_key_from_env, parse_response

BATCH_PRICE_FACTOR = 0.5          # Batch Mode bills half the synchronous price
MAX_FILE_BYTES_API = 2 * 1024 ** 3
DEFAULT_MAX_FILE_MB = 1900        # under the 2 GB input file limit, with room for the last line
DEFAULT_MAX_REQUESTS = 20_000
REQUEST_MIME_TYPE = "jsonl"       # what the Batch Mode guide passes to files.upload

# Remote job states as google-genai reports them (BATCH_STATE_* mapped to JOB_STATE_*).
SUCCEEDED, FAILED, CANCELLED, EXPIRED = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
                                         "JOB_STATE_EXPIRED")
ENDED_STATES = {SUCCEEDED, FAILED, CANCELLED, EXPIRED, "JOB_STATE_PARTIALLY_SUCCEEDED"}
_KEY_IN_LINE = re.compile(rb'"key"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _camel(obj: Any) -> Any:
    """snake_case dict keys -> the REST API's lowerCamelCase (JSONL lines are raw REST bodies)."""
    if isinstance(obj, dict):
        return {re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k): _camel(v) for k, v in obj.items()}
    return obj


def request_line(key: str, jpeg: bytes, prompt: str, generation: dict[str, Any]) -> bytes:
    """One JSONL request line: image first, then the prompt, as the synchronous path sends them."""
    request = {"contents": [{"role": "user", "parts": [
        {"inlineData": {"mimeType": "image/jpeg", "data": base64.b64encode(jpeg).decode("ascii")}},
        {"text": prompt}]}], "generationConfig": _camel(generation)}
    return json.dumps({"key": key, "request": request}, separators=(",", ":")).encode() + b"\n"


def parse_result_line(line: bytes) -> tuple[Optional[str], Optional[CaptionResult]]:
    """One result line -> (key, CaptionResult). A line that is not JSON yields its key when one can
    be read from it (result: retryable malformed_response) or (None, None)."""
    try:
        obj = json.loads(line)
        key = obj["key"]
    except (ValueError, KeyError, TypeError):
        m = _KEY_IN_LINE.search(line)
        if m is None:
            return None, None
        key = json.loads(b'"' + m.group(1) + b'"')
        return key, CaptionResult(key, error_type="malformed_response", retryable=True,
                                  message=f"result line is not valid JSON: {line[:120]!r}")
    error = obj.get("error") or obj.get("status")
    if error is not None or "response" not in obj:
        error = error or {}
        code = int(error.get("code") or 0)
        retry = code in (0, 408, 429) or code >= 500 or error.get("status") in ("UNAVAILABLE", "INTERNAL")
        return key, CaptionResult(key, error_type=f"http_{code}" if code else "line_error", retryable=retry,
                                  message=f"batch line failed: {error.get('status', '')} {error.get('message', '')}"
                                  .strip())
    from google.genai import types

    try:
        resp = types.GenerateContentResponse.model_validate(obj["response"])
    except ValueError as e:  # pydantic ValidationError: the right JSON, the wrong shape
        return key, CaptionResult(key, error_type="malformed_response", retryable=True,
                                  message=f"{type(e).__name__}: {str(e)[:200]}")
    a = parse_response(resp)
    return key, CaptionResult(key, text=a.text, error_type=a.error_type, message=a.message, attempts=1,
                              input_tokens=a.input_tokens, output_tokens=a.output_tokens)


class BatchAPIError(RuntimeError):
    """A Files/Batches API call failed (the message never holds the API key). `code` is the HTTP
    status, None when no answer came back (the call may or may not have taken effect)."""

    def __init__(self, message: str, code: Optional[int] = None):
        super().__init__(message)
        self.code = code


@dataclass
class RemoteJob:
    name: str
    state: str
    result_file: Optional[str] = None


class BatchClient:
    """The google-genai calls Batch Mode needs, with the API key scrubbed from every error."""

    def __init__(self, base_url: Optional[str] = None, timeout_s: float = 600.0):
        from google import genai
        from google.genai import types

        self._key = api_key_from_env()
        if not self._key:
            raise GeminiConfigError("Gemini Batch Mode needs a Developer API key: set GEMINI_API_KEY (or "
                                    "GOOGLE_API_KEY); Vertex AI batch prediction is not supported")
        self._client = genai.Client(api_key=self._key,
                                    http_options=types.HttpOptions(base_url=base_url, timeout=int(timeout_s * 1000)))

    def __getstate__(self):
        raise TypeError("BatchClient holds an API key and is not picklable")

    def redact(self, text: str) -> str:
        return text.replace(self._key, "[REDACTED]") if self._key else text

    def _call(self, what: str, fn, *args, **kwargs):
        from google.genai import errors

        try:
            return fn(*args, **kwargs)
        except errors.APIError as e:
            code = int(e.code or 0)
            msg = self.redact(f"{what}: HTTP {code} {e.status or ''}: {e.message or ''}")
            if code in (401, 403):
                raise GeminiConfigError(f"Gemini rejected the credentials ({msg}); check GEMINI_API_KEY") from None
            raise BatchAPIError(msg, code) from None
        except (OSError, ValueError, KeyError) as e:  # transport errors, an unfinished upload
            raise BatchAPIError(self.redact(f"{what}: {type(e).__name__}: {e}")) from None

    def upload(self, path: str, display_name: str) -> str:
        f = self._call(f"upload {path}", self._client.files.upload, file=path,
                       config={"display_name": display_name, "mime_type": REQUEST_MIME_TYPE})
        return f.name

    def create(self, model: str, file_name: str, display_name: str) -> RemoteJob:
        job = self._call(f"create batch job {display_name}", self._client.batches.create, model=model,
                         src=file_name, config={"display_name": display_name})
        return _remote(job)

    def get(self, name: str) -> RemoteJob:
        return _remote(self._call(f"get {name}", self._client.batches.get, name=name))

    def find(self, display_name: str) -> Optional[RemoteJob]:
        """The job created under `display_name`, if any (a run killed before it recorded the name)."""
        jobs = self._call("list batch jobs", lambda: [j for j in self._client.batches.list(config={"page_size": 100})
                                                      if j.display_name == display_name])
        return _remote(jobs[0]) if jobs else None

    def download(self, file_name: str) -> bytes:
        return self._call(f"download {file_name}", self._client.files.download, file=file_name)


def _remote(job) -> RemoteJob:
    state = getattr(job.state, "name", None) or str(job.state or "JOB_STATE_UNSPECIFIED")
    dest = getattr(job, "dest", None)
    return RemoteJob(job.name, state, getattr(dest, "file_name", None) if dest is not None else None)
