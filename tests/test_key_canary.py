"""The key canary (issue 10, problem 5): a fake Gemini server quotes the API key in every error body;
no exception text, chained cause, log line, row, metadata or summary may carry it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fake_gemini import FakeGemini, error
from test_caption_pipeline import make_folder

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
CANARY = "sk-CANARY-123-do-not-leak"


def _caption(data: str, out: str, url: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GEMINI_API_KEY=CANARY, PYTHONPATH=os.pathsep.join(filter(None, [TESTS, os.environ.get(
        "PYTHONPATH")])), OMP_NUM_THREADS="1")
    env.pop("GOOGLE_API_KEY", None)
    cmd = [sys.executable, "-m", "textok", "-vv", "caption", "--input", data, "--output", out, "--captioner", "gemini",
           "--gemini-base-url", url, "--max-retries", "1", "--batch-size", "4", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=240)


def _files_holding(root: str, needle: bytes) -> list[str]:
    hits = []
    for d, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                if needle in fh.read():
                    hits.append(os.path.join(d, f))
    return hits


@pytest.mark.parametrize("status", [403, 401, 404, 400, 500, 429])
def test_key_never_leaves_the_process_whatever_the_server_says(tmp_path, status):
    data = make_folder(tmp_path / "data", per_class=2, corrupt=False)
    out = str(tmp_path / "out")
    with FakeGemini(default=error(status, retry_delay_s=0.01), echo_key=True) as fake:
        res = _caption(data, out, fake.url)
        assert fake.requests and all(r.headers.get("x-goog-api-key") == CANARY for r in fake.requests)
    text = res.stdout + res.stderr
    assert CANARY.encode() not in text, text.decode(errors="replace")[-3000:]
    assert not _files_holding(out, CANARY.encode()) if os.path.isdir(out) else True
    if status in (401, 403, 404):  # a configuration error: one clear failure, the rows are not dead-lettered
        assert res.returncode != 0 and b"[REDACTED]" in text
    else:  # item errors are dead letters (400, 500) or deferred (429); the summary still holds no key
        # every image dead-lettered is a failed run (exit 1, the reasons on the last line, which may
        # quote the server's message: redacted too); deferred keys are not dead
        assert res.returncode == (0 if status == 429 else 1), text.decode(errors="replace")[-3000:]
        if status != 429:
            assert b"ended in the dead letter" in res.stderr.strip().splitlines()[-1]
        assert os.path.isfile(os.path.join(out, "caption_summary.json"))
