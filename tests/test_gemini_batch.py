"""Gemini Batch Mode captioning against the fake batch server, through the real google-genai client.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_gemini_batch.py
"""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from PIL import Image

from textok.cli import main
from textok.lease import set_force_unlock
from textok.pipeline.captioning.batch import BatchOptions, run_batch_caption
from textok.pipeline.captioning.batch_ledger import COLLECTED, load_all
from textok.pipeline.captioning.captioners.prompt import build_prompt
from textok.pipeline.captioning.captioners import gemini
from textok.pipeline.captioning.captioners.gemini_batch import parse_result_line, request_line
from fake_gemini import error, malformed, ok, prompt_blocked, safety
from fake_gemini_batch import FakeGeminiBatch, JobPlan
from test_caption_pipeline import assert_each_key_once, make_folder, read_table

FAKE_KEY = "AIzaFAKE-batch-9c1e77d2-do-not-leak"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(poll_s=0.05, poll_max_s=0.2)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    monkeypatch.delenv("TEXTOK_BATCH_FAULT", raising=False)
    gemini.reset_process_state()
    set_force_unlock(False)
    yield
    set_force_unlock(False)


@pytest.fixture
def serve():
    servers = []

    def start(**kw) -> FakeGeminiBatch:
        servers.append(FakeGeminiBatch(api_key=FAKE_KEY, **kw).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def colour(i: int) -> tuple[int, int, int]:
    return (20 * (i % 12), 20 * (i // 12 % 12), 200 - 20 * (i // 144))


def make_images(root, n: int) -> str:
    """root/train/c<k>/<i>.png: n flat images, each a colour no other image has."""
    for i in range(n):
        d = os.path.join(root, "train", f"c{i % 3}")
        os.makedirs(d, exist_ok=True)
        Image.new("RGB", (12 + i % 5, 10), colour(i)).save(os.path.join(d, f"{i}.png"))
    return str(root)


def keys(n: int) -> list[str]:
    return [f"c{i % 3}/{i}" for i in range(n)]


def caption_colour(text: str) -> tuple[int, ...]:
    words = text.replace(".", "").split()
    i = words.index("colour")
    return tuple(int(w) for w in words[i + 1:i + 4])


def assert_captions_match_images(out):
    rows = read_table(out, "captions")
    assert rows
    for r in rows:
        want = colour(int(r["key"].split("/")[1]))
        got = caption_colour(r["caption"])
        assert max(abs(a - b) for a, b in zip(want, got)) <= 4, (r["key"], want, got)  # JPEG: a few levels off


def assert_key_nowhere(out, *texts):
    for dirpath, _, files in os.walk(out):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                assert FAKE_KEY.encode() not in f.read(), name
    for t in texts:
        assert FAKE_KEY not in t


def run(data, out, fake, **kw):
    opts = {**FAST, **kw.pop("batch", {})}
    return run_batch_caption(data, str(out), captioner_options={"model_id": "gemini-2.5-flash-lite",
                                                                "base_url": fake.url, **kw.pop("cap", {})},
                             batch=BatchOptions(**opts), commit_every=kw.pop("commit_every", 256), **kw)


# --------------------------------------------------------------------------- pure lines

def test_request_line_is_the_sync_request_and_result_lines_classify():
    line = json.loads(request_line("a/b.png", b"\xff\xd8jpeg", "Describe.",
                                   gemini.generation_settings(64, 0.2, 0)))
    assert line["key"] == "a/b.png"
    parts = line["request"]["contents"][0]["parts"]
    assert base64.b64decode(parts[0]["inlineData"]["data"]) == b"\xff\xd8jpeg" and parts[1] == {"text": "Describe."}
    assert line["request"]["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.2,
                                                   "thinkingConfig": {"thinkingBudget": 0}}
    good = {"key": "k", "response": {"candidates": [{"content": {"parts": [{"text": "A red cube."}]},
                                                     "finishReason": "STOP"}],
                                     "usageMetadata": {"promptTokenCount": 270, "candidatesTokenCount": 5}}}
    key, r = parse_result_line(json.dumps(good).encode())
    assert (key, r.text, r.input_tokens, r.output_tokens, r.retryable) == ("k", "A red cube.", 270, 5, False)
    key, r = parse_result_line(b'{"key": "s", "response": {"candidates": [{"finishReason": "SAFETY"}]}}')
    assert (key, r.error_type, r.retryable) == ("s", "safety_blocked", False)
    key, r = parse_result_line(b'{"key": "e", "error": {"code": 503, "message": "overloaded"}}')
    assert (key, r.error_type, r.retryable) == ("e", "http_503", True)
    key, r = parse_result_line(b'{"key": "b", "error": {"code": 400, "message": "bad image"}}')
    assert (key, r.error_type, r.retryable) == ("b", "http_400", False)
    key, r = parse_result_line(b'{"key": "m/1", "response": {"candi')
    assert (key, r.error_type, r.retryable) == ("m/1", "malformed_response", True)
    assert parse_result_line(b"\x00garbage") == (None, None)


# --------------------------------------------------------------------------- end to end

def test_wait_collects_every_key_once_retries_only_retryable_lines_and_rerun_sends_nothing(tmp_path, serve):
    n = 30
    data = make_images(tmp_path / "data", n)
    first_seen: set = set()

    def lines(key):  # a key's first line fails as scripted; its resubmission succeeds
        if key in first_seen:
            return ok()
        first_seen.add(key)
        return {"c0/3": safety(), "c1/4": prompt_blocked(), "c2/5": error(503), "c0/6": malformed(),
                "c1/7": error(400)}.get(key, ok())

    fake = serve(line_script=lines, job_script=lambda i, name: JobPlan(pending_s=0.05, running_s=0.1))
    out = tmp_path / "out"
    s = run(data, out, fake, batch={"wait": True, "max_requests_per_job": 8})
    assert_each_key_once(out, keys(n))
    assert_captions_match_images(out)
    dead = {r["key"]: r["error_type"] for r in read_table(out, "dead_letter")}
    assert dead == {"c0/3": "safety_blocked", "c1/4": "safety_blocked", "c1/7": "http_400"}
    sent = fake.submitted_keys()
    assert sorted(sent) == sorted(keys(n) + ["c2/5", "c0/6"])  # only the retryable lines went twice
    b = s["batch"]
    assert (b["jobs_created_this_run"], b["requests_submitted_this_run"], b["requests_in_flight"]) == (5, 32, 0)
    assert s["captioned"] == n - 3 and s["on_disk"] == {"captions": n - 3, "dead_letter": 3}
    proj = b["projection"]["imagenet_1k"]
    assert proj["batch_usd"] == pytest.approx(proj["sync_usd"] / 2, abs=0.01) and proj["sync_usd"] > 0
    assert proj["output_tokens_from"] == "results"
    summary_file = json.loads((out / "caption_summary.json").read_text())
    assert summary_file["batch"]["projection"]["whole_input"]["images"] == n
    routes = {(m, "upload" if r.startswith("/upload/") else r.split(":")[-1] if ":" in r else r.split("/")[-2])
              for m, r, _ in ((m, p.split("?")[0], k) for m, p, k in fake.calls)}
    assert routes == {("POST", "upload"), ("POST", "batchGenerateContent"), ("GET", "batches"), ("GET", "download")}
    assert all(k == FAKE_KEY for m, r, k in fake.calls if "upload_id" not in r)  # the key only in its header
    again = run(data, out, fake, batch={"wait": True})
    assert again["batch"]["requests_submitted_this_run"] == 0 and len(fake.created_jobs()) == 5
    assert_key_nowhere(out)


def test_without_wait_submit_exits_and_later_runs_poll_then_collect(tmp_path, serve):
    n = 9
    data = make_images(tmp_path / "data", n)
    fake = serve(job_script=lambda i, name: JobPlan(pending_s=0.5, running_s=4.0))
    out = tmp_path / "out"
    s1 = run(data, out, fake, batch={"max_requests_per_job": 4})
    assert (s1["batch"]["jobs_created_this_run"], s1["captioned"], s1["deferred"]) == (3, 0, n)
    assert set(s1["batch"]["jobs_by_state"]) == {"JOB_STATE_PENDING"}
    r = CliRunner().invoke(main, ["batch-status", str(out), "--gemini-base-url", fake.url, "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [x["requests"] for x in rows] == [4, 4, 1] and all(x["est_cost_usd"] > 0 for x in rows)
    time.sleep(0.6)
    s2 = run(data, out, fake)
    assert s2["batch"]["requests_submitted_this_run"] == 0 and s2["captioned"] == 0
    assert set(s2["batch"]["jobs_by_state"]) == {"JOB_STATE_RUNNING"}
    time.sleep(4.0)
    s3 = run(data, out, fake)
    assert (s3["batch"]["requests_submitted_this_run"], s3["captioned"]) == (0, n)
    assert len(fake.created_jobs()) == 3 and all(e.phase == COLLECTED for e in load_all(str(out)))
    assert_each_key_once(out, keys(n))
    assert_captions_match_images(out)
    table = CliRunner().invoke(main, ["batch-status", str(out), "--no-refresh"])
    assert "JOB_STATE_SUCCEEDED" in table.output and "3 jobs, 9 requests" in table.output


def test_failed_expired_cancelled_jobs_resubmit_then_dead_letter_with_reason(tmp_path, serve):
    n = 6
    data = make_images(tmp_path / "data", n)
    ends = {0: "expire", 1: "fail"}
    fake = serve(job_script=lambda i, name: JobPlan(end=ends.get(i, "succeed")))
    out = tmp_path / "out"
    s = run(data, out, fake, batch={"wait": True, "max_requests_per_job": 3})
    assert_each_key_once(out, keys(n))
    assert s["captioned"] == n and len(fake.created_jobs()) == 4  # two ended badly, their keys went again
    out2 = tmp_path / "out2"
    fake2 = serve(job_script=lambda i, name: JobPlan(end="cancel"))
    s = run(data, out2, fake2, batch={"wait": True, "max_attempts": 2})
    assert_each_key_once(out2, keys(n))
    dead = read_table(out2, "dead_letter")
    assert {r["error_type"] for r in dead} == {"batch_cancelled"} and len(fake2.created_jobs()) == 2
    assert all("ended JOB_STATE_CANCELLED" in r["message"] and "after 2 batch attempts" in r["message"]
               for r in dead)


def test_budget_applies_before_submission_at_batch_prices(tmp_path, serve):
    data = make_images(tmp_path / "data", 10)
    fake = serve()
    out = tmp_path / "out"
    # worst case per request at flash-lite list prices, halved: (≈375 in * 0.10 + 256 out * 0.40) / 1e6 / 2
    prompt = build_prompt("c0", False, 75)
    worst = (gemini.estimate_input_tokens(prompt) * 0.10 + 256 * 0.40) / 1e6 / 2
    s = run(data, out, fake, cap={"max_cost_usd": 3.5 * worst}, batch={"wait": True})  # --wait: still one budget
    assert s["batch"]["requests_submitted_this_run"] == 3 and s["batch"]["budget_deferred"] == 7
    assert len(fake.submitted_keys()) == 3


def test_results_never_attach_to_the_wrong_image(tmp_path, serve):
    n = 12
    data = make_images(tmp_path / "data", n)
    fake = serve()
    real = fake._results

    def shuffled(job):  # answer in reverse order, plus a line for a key the job never sent
        name = real(job)
        lines = fake.files[name].splitlines()[::-1]
        foreign = json.loads(lines[0])
        foreign["key"] = "c9/999"
        fake.files[name] = b"\n".join(lines + [json.dumps(foreign).encode()]) + b"\n"
        return name

    fake._results = shuffled
    out = tmp_path / "out"
    s = run(data, out, fake, batch={"wait": True})
    assert s["batch"]["foreign_result_lines"] == 1
    assert_each_key_once(out, keys(n))
    assert_captions_match_images(out)


def killed_run(data, out, fake, point: str) -> subprocess.CompletedProcess:
    """`textok caption --gemini-mode batch --wait` in a subprocess, SIGKILLed at a named point."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", TEXTOK_BATCH_FAULT=point)
    cmd = [sys.executable, "-m", "textok", "-v", "caption", "--input", data, "--output", str(out), "--captioner",
           "gemini", "--model", "gemini-2.5-flash-lite", "--gemini-base-url", fake.url, "--gemini-mode", "batch",
           "--batch-max-requests", "5", "--commit-every", "2", "--wait", "--batch-poll-seconds", "0.05"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    return proc


@pytest.mark.parametrize("point,jobs_at_kill,captions_at_kill", [
    ("after_upload", 0, 0), ("before_create", 0, 0), ("after_create", 1, 0), ("poll", 2, 0), ("write:5", 2, 4)])
def test_sigkill_at_each_point_then_rerun_each_key_once_never_paid_twice(tmp_path, serve, point, jobs_at_kill,
                                                                          captions_at_kill):
    n = 10
    data = make_images(tmp_path / "data", n)
    fake = serve(job_script=lambda i, name: JobPlan(pending_s=0.0, running_s=0.0))
    out = tmp_path / "out"
    proc = killed_run(data, out, fake, point)
    assert len(fake.created_jobs()) == jobs_at_kill
    assert len(read_table(out, "captions")) == captions_at_kill  # write:5 -> two parts of 2 rows committed
    s = run(data, out, fake, batch={"wait": True, "max_requests_per_job": 5})
    assert_each_key_once(out, keys(n))
    assert_captions_match_images(out)
    assert sorted(fake.submitted_keys()) == sorted(keys(n))  # every key in exactly one job
    assert len(fake.created_jobs()) == 2
    if point == "after_create":
        assert s["batch"]["jobs_discovered_this_run"] == 1
    assert_key_nowhere(out, proc.stdout.decode(), proc.stderr.decode())


def test_cli_batch_mode_output_and_errors_hold_no_key(tmp_path, serve):
    data = make_images(tmp_path / "data", 4)
    fake = serve()
    out = tmp_path / "out"
    args = ["caption", "--input", data, "--output", str(out), "--captioner", "gemini", "--gemini-base-url", fake.url,
            "--gemini-mode", "batch", "--wait", "--batch-poll-seconds", "0.05"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["on_disk"]["captions"] == 4
    r = CliRunner().invoke(main, ["caption", "--input", data, "--output", str(out), "--captioner", "template",
                                  "--template", "a {class_name}", "--gemini-mode", "batch"])
    assert r.exit_code == 1 and "--gemini-mode batch needs --captioner gemini" in r.output
    r = CliRunner().invoke(main, ["caption", "--input", data, "--output", str(out), "--captioner", "gemini",
                                  "--wait"])
    assert r.exit_code == 1 and "apply only with --gemini-mode batch" in r.output
    r = CliRunner().invoke(main, args + ["--vertex-project", "p", "--vertex-location", "us-central1"])
    assert r.exit_code == 1 and "Vertex AI batch prediction is not supported" in r.output
    os.environ["GEMINI_API_KEY"] = "AIzaWRONG-" + FAKE_KEY  # rejected: the error must not echo it
    r = CliRunner().invoke(main, args + ["--output", str(tmp_path / "o2")])
    assert r.exit_code == 1 and "Error:" in r.output and "AIzaWRONG" not in r.output
    assert_key_nowhere(out, r.output)


def test_fake_batch_server_speaks_cancel_and_list_to_the_real_client(serve):
    from google import genai
    from google.genai import types

    fake = serve(job_script=lambda i, name: JobPlan(pending_s=30))
    client = genai.Client(api_key=FAKE_KEY, http_options=types.HttpOptions(base_url=fake.url))
    up = client.files.upload(file=__import__("io").BytesIO(b'{"key": "a", "request": {}}\n'),
                             config={"mime_type": "jsonl"})
    job = client.batches.create(model="gemini-2.5-flash-lite", src=up.name, config={"display_name": "d1"})
    assert job.state.name == "JOB_STATE_PENDING" and not job.done
    client.batches.cancel(name=job.name)
    assert client.batches.get(name=job.name).state.name == "JOB_STATE_CANCELLED"
    assert [j.display_name for j in client.batches.list()] == ["d1"]


def test_recovered_upload_that_expired_is_uploaded_again_once(tmp_path, serve):
    data = make_images(tmp_path / "data", 5)
    fake = serve()
    out = tmp_path / "out"
    killed_run(data, out, fake, "before_create")
    fake.files.clear()  # the Files API dropped the upload (48 h later)
    s = run(data, out, fake, batch={"wait": True})
    assert s["batch"]["jobs_created_this_run"] == 1 and len(fake.created_jobs()) == 1
    assert_each_key_once(out, keys(5))


def test_unreadable_images_are_dead_lettered_before_submission(tmp_path, serve):
    data = make_folder(tmp_path / "data")  # 9 images + not-an-image, empty and truncated files
    fake = serve()
    out = tmp_path / "out"
    s = run(data, out, fake, batch={"wait": True})
    dead = {r["key"]: r["error_type"] for r in read_table(out, "dead_letter")}
    assert set(dead) == {"red/notimage", "red/empty", "red/truncated"}
    assert not set(dead) & set(fake.submitted_keys()) and len(fake.submitted_keys()) == 9
    assert s["on_disk"] == {"captions": 9, "dead_letter": 3}
