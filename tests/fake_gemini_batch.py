"""The Gemini Batch Mode surface on the fake server (fake_gemini.py), as google-genai calls it.

Routes (Developer API; paths read from google-genai's files.py / batches.py / _api_client.py):

    POST /upload/{version}/files              X-Goog-Upload-Protocol: resumable, Command: start
         -> 200, header X-Goog-Upload-URL
    POST <upload url>                         X-Goog-Upload-Command: "upload, finalize"
         -> 200, header X-Goog-Upload-Status: final, body {"file": {...}}
    POST /v1beta/models/{m}:batchGenerateContent  {"batch": {"displayName", "inputConfig": {"fileName"}}}
         -> an Operation {"name": "batches/..", "metadata": {"state": "BATCH_STATE_PENDING", ...}}
    GET  /v1beta/batches/{id}     GET /v1beta/batches (list)     POST /v1beta/batches/{id}:cancel
    GET  /v1beta/files/{id}:download?alt=media   (also /download/v1beta/...): the result JSONL

A job moves PENDING -> RUNNING -> its end state over wall time (`JobPlan.pending_s`,
`running_s`); its end state comes from `job_script(index, display_name) -> JobPlan`
(default: SUCCEEDED). Each request line is answered by `line_script(key) -> Behaviour`
(default `ok()`: a caption naming the image's mean colour, so a caption attached to the
wrong image shows), reusing fake_gemini's answer builder: `safety`, `prompt_blocked`,
`error(500)` (a line with an "error" status), `malformed` (a line that is not JSON).
Every call is logged in `calls` as (method, path with query, x-goog-api-key header).
"""
from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

from fake_gemini import Behaviour, FakeGemini, answer, ok

# google-genai resolves the version segment itself (v1beta, v1, or none); accept any.
_UPLOAD = re.compile(r"^/upload(/v1\w*)?/files$")
_END = {"succeed": "BATCH_STATE_SUCCEEDED", "fail": "BATCH_STATE_FAILED", "expire": "BATCH_STATE_EXPIRED",
        "cancel": "BATCH_STATE_CANCELLED"}


@dataclass
class JobPlan:
    end: str = "succeed"        # succeed | fail | expire | cancel
    pending_s: float = 0.05
    running_s: float = 0.05


@dataclass
class _Job:
    name: str
    model: str
    display_name: str
    input_file: str
    plan: JobPlan
    created: float
    cancelled: bool = False
    result_file: Optional[str] = None

    def state(self, now: float) -> str:
        if self.cancelled:
            return _END["cancel"]
        if now < self.created + self.plan.pending_s:
            return "BATCH_STATE_PENDING"
        if now < self.created + self.plan.pending_s + self.plan.running_s:
            return "BATCH_STATE_RUNNING"
        return _END[self.plan.end]


class FakeGeminiBatch(FakeGemini):
    def __init__(self, job_script: Optional[Callable[[int, str], JobPlan]] = None,
                 line_script: Optional[Callable[[str], Behaviour]] = None, **kw):
        super().__init__(**kw)
        self.job_script = job_script or (lambda i, name: JobPlan())
        self.line_script = line_script or (lambda key: ok())
        self.files: dict[str, bytes] = {}          # "files/<id>" -> content
        self.jobs: dict[str, _Job] = {}            # "batches/<id>" -> job
        self.calls: list[tuple[str, str, Optional[str]]] = []
        self._uploads: dict[str, dict] = {}
        self._ids = itertools.count()
        self._block = threading.RLock()  # _create -> _operation -> _results nests

    # -- what tests look at ------------------------------------------------------------
    def created_jobs(self) -> list[_Job]:
        with self._block:
            return sorted(self.jobs.values(), key=lambda j: j.created)

    def submitted_keys(self) -> list[str]:
        """Every request key of every created job (a key twice = paid twice)."""
        keys = []
        for job in self.created_jobs():
            keys += [json.loads(line)["key"] for line in self.files[job.input_file].splitlines() if line.strip()]
        return keys

    # -- routes --------------------------------------------------------------------------
    def handle_extra(self, method: str, path: str, headers: dict, raw: bytes):
        route = path.split("?")[0]
        hdr = {k.lower(): v for k, v in headers.items()}
        with self._block:
            self.calls.append((method, path, hdr.get("x-goog-api-key")))
        # The upload URL's upload_id is the credential of the second upload step (no key header).
        if self.api_key is not None and hdr.get("x-goog-api-key") != self.api_key and "upload_id=" not in path:
            return 400, {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                                   "status": "INVALID_ARGUMENT"}}
        if method == "POST" and _UPLOAD.match(route) and "upload_id=" not in path:
            return self._upload_start(path, hdr, raw)
        if method == "POST" and "upload_id=" in path:
            return self._upload_finish(path, hdr, raw)
        if method == "POST" and route.endswith(":batchGenerateContent"):
            return self._create(route, json.loads(raw or b"{}"))
        if method == "POST" and route.endswith(":cancel"):
            return self._cancel(route)
        if method == "GET" and route.endswith(":download"):
            name = "files/" + route.rsplit("/", 1)[1].split(":")[0]
            if name not in self.files:
                return 404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}}
            return 200, self.files[name]
        if method == "GET" and route.rstrip("/").endswith("/batches"):
            with self._block:
                ops = [self._operation(j) for j in self.jobs.values()]
            return 200, {"operations": ops}
        if method == "GET" and "/batches/" in route:
            job = self.jobs.get("batches/" + route.rsplit("/", 1)[1])
            if job is None:
                return 404, {"error": {"code": 404, "message": "batch not found", "status": "NOT_FOUND"}}
            return 200, self._operation(job)
        return 404, {"error": {"code": 404, "message": f"no route {method} {route}", "status": "NOT_FOUND"}}

    def _upload_start(self, path: str, hdr: dict, raw: bytes):
        if hdr.get("x-goog-upload-protocol") != "resumable" or hdr.get("x-goog-upload-command") != "start":
            return 400, {"error": {"code": 400, "message": "expected a resumable upload start", "status": "INVALID"}}
        upload_id = uuid.uuid4().hex
        meta = json.loads(raw or b"{}").get("file", {})
        self._uploads[upload_id] = {"meta": meta, "data": b"",
                                    "size": int(hdr.get("x-goog-upload-header-content-length", "0"))}
        return 200, {}, {"X-Goog-Upload-URL": f"{self.url}{path.split('?')[0]}?upload_id={upload_id}"
                                              "&upload_protocol=resumable"}

    def _upload_finish(self, path: str, hdr: dict, raw: bytes):
        upload_id = path.split("upload_id=")[1].split("&")[0]
        up = self._uploads[upload_id]
        up["data"] += raw
        if "finalize" not in hdr.get("x-goog-upload-command", ""):
            return 200, {}, {"X-Goog-Upload-Status": "active"}
        name = f"files/up{next(self._ids)}{upload_id[:8]}"
        with self._block:
            self.files[name] = up["data"]
        info = {"name": name, "mimeType": up["meta"].get("mimeType", "jsonl"), "sizeBytes": str(len(up["data"])),
                "state": "ACTIVE", "uri": f"{self.url}/v1beta/{name}"}
        return 200, {"file": info}, {"X-Goog-Upload-Status": "final"}

    def _create(self, route: str, body: dict):
        model = route.split("/models/")[1].split(":")[0]
        batch = body.get("batch", {})
        file_name = batch.get("inputConfig", {}).get("fileName")
        if file_name not in self.files:
            return 400, {"error": {"code": 400, "message": f"input file {file_name} not found", "status": "INVALID"}}
        with self._block:
            index = len(self.jobs)
            name = f"batches/job{index}{uuid.uuid4().hex[:6]}"
            self.jobs[name] = _Job(name, model, batch.get("displayName", ""), file_name,
                                   self.job_script(index, batch.get("displayName", "")), time.monotonic())
            return 200, self._operation(self.jobs[name])

    def _cancel(self, route: str):
        job = self.jobs.get("batches/" + route.rsplit("/", 1)[1].split(":")[0])
        if job is None:
            return 404, {"error": {"code": 404, "message": "batch not found", "status": "NOT_FOUND"}}
        job.cancelled = True
        return 200, {}

    def _operation(self, job: _Job) -> dict:
        state = job.state(time.monotonic())
        meta = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
                "model": f"models/{job.model}", "displayName": job.display_name, "state": state,
                "inputConfig": {"fileName": job.input_file}, "createTime": "2026-01-01T00:00:00Z"}
        op = {"name": job.name, "metadata": meta}
        if state == "BATCH_STATE_SUCCEEDED":
            meta["output"] = {"responsesFile": self._results(job)}
            op["done"] = True
        elif state != "BATCH_STATE_PENDING" and state != "BATCH_STATE_RUNNING":
            op["done"] = True
            op["error"] = {"code": 13 if state == "BATCH_STATE_FAILED" else 4, "message": f"job {state}"}
        return op

    def _results(self, job: _Job) -> str:
        with self._block:
            if job.result_file is None:
                out = []
                for line in self.files[job.input_file].splitlines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    out.append(self._result_line(job.model, item["key"], item["request"]))
                job.result_file = f"files/batch-result{next(self._ids)}"
                self.files[job.result_file] = b"\n".join(out) + b"\n"
            return job.result_file

    def _result_line(self, model: str, key: str, request: dict) -> bytes:
        parts = request["contents"][0]["parts"]
        image = next((base64.b64decode(p["inlineData"]["data"]) for p in parts if "inlineData" in p), None)
        prompt = " ".join(p["text"] for p in parts if "text" in p)
        b = self.line_script(key)
        status, payload, _ = answer(b, model, image, prompt)
        if b.kind == "malformed":
            return b'{"key": "' + key.encode() + b'", "response": {"candidates": [{"cont'
        if status != 200:
            return json.dumps({"key": key, "error": payload["error"]}).encode()
        return json.dumps({"key": key, "response": payload}).encode()
