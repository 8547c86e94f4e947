"""Gemini captioner through the real google-genai client against the fake server (offline).

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_gemini.py
"""
from __future__ import annotations

import email.utils
import io
import json
import logging
import pickle
import threading
import time

import pytest
from PIL import Image

from textok.pipeline.captioning.captioners import gemini
from textok.pipeline.captioning.captioners.base import CaptionRequest
from textok.pipeline.captioning.captioners.gemini import GeminiCaptioner, GeminiConfigError, from_options
from textok.pipeline.captioning.captioners.prompt import PROMPT_VERSION, build_prompt
from textok.pipeline.captioning.captioners.ratelimit import CostBudget, RateLimiter, backoff_s, retry_hint_s
from fake_gemini import (FakeGemini, empty, error, hang, long_answer, malformed, mean_rgb, ok,
                               prompt_blocked, safety)

FAKE_KEY = "AIzaFAKE-k3y-7f3a9c51-do-not-leak"
COLOURS = [(200, 20, 20), (20, 200, 20), (20, 20, 200), (230, 230, 30), (30, 230, 230), (120, 120, 120)]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    gemini.reset_process_state()
    yield
    gemini.reset_process_state()


@pytest.fixture
def serve():
    servers = []

    def start(**kw) -> FakeGemini:
        servers.append(FakeGemini(**kw).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def _requests(n: int, size=(64, 48)) -> list[CaptionRequest]:
    return [CaptionRequest(key=f"k{i:03d}", image=Image.new("RGB", size, COLOURS[i % len(COLOURS)]),
                           class_name="tench", label=0) for i in range(n)]


def _captioner(fake: FakeGemini, **kw) -> GeminiCaptioner:
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("rpm", None)
    kw.setdefault("tpm", None)
    cap = GeminiCaptioner(base_url=fake.url, **kw)
    cap.setup()
    return cap


def _colour_in(text: str) -> tuple[int, ...]:
    words = text.split()
    i = words.index("colour")
    return tuple(int(w) for w in words[i + 1:i + 4])


def test_success_order_usage_and_downscale(serve):
    fake = serve(api_key=FAKE_KEY)
    cap = _captioner(fake, class_hint=True, max_in_flight=4)
    reqs = _requests(6, size=(600, 300))
    results = cap.caption_batch(reqs)
    assert [r.key for r in results] == [r.key for r in reqs]
    for req, res in zip(reqs, results):
        assert res.ok and res.attempts == 1 and not res.retryable
        # the answer names the colour of the image the server received: results are not shuffled
        assert max(abs(a - b) for a, b in zip(_colour_in(res.text), req.image.getpixel((0, 0)))) <= 4
        assert res.input_tokens > 258 and res.output_tokens > 0
    for r in fake.requests:
        assert r.path == "/v1/models/gemini-2.5-flash:generateContent"
        with Image.open(io.BytesIO(r.image_bytes)) as im:
            assert im.format == "JPEG" and im.size == (384, 192)
        assert r.prompt_text == build_prompt("tench", class_hint=True)
        assert r.body["generationConfig"]["maxOutputTokens"] == 256
        # google-genai 3.x sends this one in snake_case (the API's JSON parser accepts both)
        assert list(r.body["generationConfig"]["thinkingConfig"].values()) == [0]
    usage = cap.usage_summary()
    assert usage["requests"] == 6 and usage["ok"] == 6
    assert usage["input_tokens"] == sum(r.input_tokens for r in results)
    assert cap.name == "gemini:gemini-2.5-flash" and cap.prompt_version == PROMPT_VERSION
    assert "{class_name}" in cap.prompt_text


@pytest.mark.parametrize("behaviour, error_type, attempts", [
    (safety(), "safety_blocked", 1),
    (prompt_blocked(), "safety_blocked", 1),
    (empty(), "empty_response", 1),
    (malformed(), "malformed_response", 3),
    (error(500), "http_500", 3),
    (error(503), "http_503", 3),
    (error(400), "http_400", 1),
])
def test_failure_kinds(serve, behaviour, error_type, attempts):
    fake = serve(default=behaviour)
    [res] = _captioner(fake, max_retries=2).caption_batch(_requests(1))
    assert (res.error_type, res.attempts, res.text) == (error_type, attempts, None)
    assert res.message and not res.retryable
    assert len(fake.requests) == attempts


def test_retries_then_success_and_long_answer_kept_raw(serve):
    fake = serve(script=[error(503), error(500), long_answer(120)])
    [res] = _captioner(fake, max_retries=3).caption_batch(_requests(1))
    assert res.ok and res.attempts == 3
    assert len(res.text.split()) == 120  # the 75-word rule belongs to the pipeline, not the backend


def test_429_retry_delay_is_honoured(serve):
    fake = serve(script=[error(429, retry_delay_s=0.6), ok()])
    [res] = _captioner(fake, max_retries=2).caption_batch(_requests(1))
    assert res.ok and res.attempts == 2
    t0, t1 = fake.arrival_times()
    assert t1 - t0 >= 0.6


def test_retry_after_header_is_honoured(serve):
    fake = serve(script=[error(503, retry_after="1"), ok()])
    [res] = _captioner(fake, max_retries=2).caption_batch(_requests(1))
    t0, t1 = fake.arrival_times()
    assert res.ok and t1 - t0 >= 1.0


def test_429_exhausted_is_retryable(serve):
    fake = serve(default=error(429, retry_delay_s=0.01))
    [res] = _captioner(fake, max_retries=1).caption_batch(_requests(1))
    assert (res.error_type, res.attempts, res.retryable) == ("http_429", 2, True)


def test_unreachable_endpoint_is_deferred_not_dead_lettered(serve):
    fake = serve()
    url = fake.url
    fake.stop()  # nothing listens there any more
    cap = GeminiCaptioner(base_url=url, rpm=None, tpm=None, max_retries=1, backoff_base_s=0.01, timeout_s=2)
    cap.setup()
    [res] = cap.caption_batch(_requests(1))
    assert (res.error_type, res.attempts, res.retryable) == ("connection_error", 2, True)


def test_hang_becomes_timeout(serve):
    fake = serve(default=hang(30))
    [res] = _captioner(fake, timeout_s=0.3, max_retries=1).caption_batch(_requests(1))
    assert (res.error_type, res.attempts) == ("timeout", 2)


def test_budget_stops_before_exceeding(serve, tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gemini-2.5-flash": {"input_per_1m": 1000.0, "output_per_1m": 1000.0}}))
    fake = serve()
    cap = _captioner(fake, max_cost_usd=1.5, price_table=str(prices), max_in_flight=1)
    results = cap.caption_batch(_requests(6))
    done = [r for r in results if r.ok]
    stopped = [r for r in results if r.error_type == "budget_exhausted"]
    assert done and stopped and len(done) + len(stopped) == 6
    assert all(r.retryable and r.attempts == 0 for r in stopped)
    assert len(fake.requests) == len(done)  # nothing was sent for the stopped ones
    spent = sum(cap.estimate_cost_usd(r.input_tokens, r.output_tokens) for r in done)
    assert spent <= 1.5
    # the worst case of one more request would have passed the budget
    assert spent + cap.estimate_cost_usd(gemini.estimate_input_tokens(cap.prompt_text), 256) > 1.5


def test_limiter_keeps_under_rpm(serve):
    fake = serve()
    rpm, n = 1200, 40  # 20 requests/s -> about 2 s
    results = _captioner(fake, rpm=rpm, max_in_flight=8).caption_batch(_requests(n))
    assert all(r.ok for r in results)
    times = fake.arrival_times()
    interval = 60.0 / rpm
    # Only a lower bound on the span holds on a loaded machine: a busy neighbour can delay sends
    # and bunch their arrivals at the server, but never make 40 paced requests arrive sooner.
    # The exact per-window schedule is tested with a fake clock (no wall-clock assertion there).
    assert len(times) == n
    assert times[-1] - times[0] >= (n - 1) * interval - 0.15


def test_many_threads_share_in_flight_bound(serve):
    fake = serve(default=ok(latency_s=0.15))
    caps = [_captioner(fake, max_in_flight=3) for _ in range(3)]  # one per "DoFn thread"
    out: dict[int, list] = {}

    def work(i):
        out[i] = caps[i].caption_batch(_requests(5))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for rs in out.values() for r in rs) and len(fake.requests) == 15
    assert fake.max_concurrency() <= 3


def test_missing_image_is_an_item_failure(serve):
    fake = serve()
    req = CaptionRequest(key="x", image=None)
    [res] = _captioner(fake).caption_batch([req])
    assert res.error_type == "missing_image" and not fake.requests


def test_api_key_never_leaks(serve, caplog):
    caplog.set_level(logging.DEBUG)
    fake = serve(api_key=FAKE_KEY, script=[ok(), error(500), safety(), malformed(), error(429, retry_delay_s=0.01)])
    cap = _captioner(fake, max_retries=1, max_in_flight=1)
    results = cap.caption_batch(_requests(4))
    produced = [caplog.text, repr(cap), json.dumps(cap.settings()), json.dumps(cap.usage_summary()),
                pickle.dumps(cap).decode("latin-1")]
    produced += [json.dumps(r.__dict__) for r in results]
    assert not [p for p in produced if FAKE_KEY in p]
    for r in fake.requests:  # only in the header, never in the URL or the body
        assert r.headers.get("x-goog-api-key") == FAKE_KEY
        assert FAKE_KEY not in r.path and FAKE_KEY not in json.dumps(r.body)
    cap.teardown()

    # a rejected key is a configuration error, and its message does not echo the key either
    bad = serve(api_key="another-key")
    with pytest.raises(GeminiConfigError, match="GEMINI_API_KEY") as exc:
        _captioner(bad).caption_batch(_requests(2))
    assert FAKE_KEY not in str(exc.value) and FAKE_KEY not in caplog.text


def test_configuration_errors(monkeypatch, tmp_path):
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(GeminiConfigError, match="GEMINI_API_KEY.*--vertex-project"):
        GeminiCaptioner().setup()
    with pytest.raises(GeminiConfigError, match="--price-table"):
        GeminiCaptioner("gemini-9-unknown", max_cost_usd=1.0)
    with pytest.raises(ValueError, match="device"):
        from_options({"model_id": "gemini-2.5-flash", "device": "cuda"})
    with pytest.raises(GeminiConfigError, match="vertex-location"):
        GeminiCaptioner(vertex_project="p")
    bad = tmp_path / "p.json"
    bad.write_text('{"m": {"input_per_1m": 1}}')
    with pytest.raises(ValueError, match="p.json"):
        GeminiCaptioner(price_table=str(bad))
    # the launcher-side instance prices tokens without setup (and without credentials)
    cap = from_options({"model_id": "gemini-2.5-flash", "max_new_tokens": 100, "rpm": 60, "batch_size": 8})
    assert cap.estimate_cost_usd(1_000_000, 1_000_000) == pytest.approx(2.80)
    assert cap.max_output_tokens == 100 and cap.settings()["rpm"] == 60
    assert cap.thinking_budget == 0 and GeminiCaptioner("gemini-2.5-pro").thinking_budget is None


def test_vertex_without_credentials_is_a_configuration_error(serve, monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    fake = serve()
    cap = GeminiCaptioner(base_url=fake.url, vertex_project="proj", vertex_location="us-central1")
    cap.setup()
    with pytest.raises(GeminiConfigError, match="application-default"):
        cap.caption_batch(_requests(2))
    assert not fake.requests and cap.settings()["endpoint"] == "vertex"


def test_base_url_from_environment(serve, monkeypatch):
    fake = serve()
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
    cap = GeminiCaptioner(rpm=None, tpm=None)
    cap.setup()
    assert cap.caption_batch(_requests(1))[0].ok and cap.settings()["base_url"] == fake.url


def test_retry_hint_parsing():
    class Resp:
        def __init__(self, headers):
            self.headers = headers

    class Err(Exception):
        def __init__(self, details, headers):
            self.details, self.response = details, Resp(headers)

    info = {"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                   "retryDelay": {"seconds": 2, "nanos": 500_000_000}}]}}
    assert retry_hint_s(Err(info, {})) == pytest.approx(2.5)
    assert retry_hint_s(Err({}, {"retry-after": "7"})) == 7.0
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_hint_s(Err({}, {"retry-after": date})) <= 30
    assert retry_hint_s(Err({"error": {"details": ["junk"]}}, {"retry-after": "soon"})) is None
    assert backoff_s(3, 1.0, 60.0, None) <= 4.0 and backoff_s(1, 1.0, 60.0, 9.0) >= 9.0


def test_rate_limiter_schedule_with_fake_clock():
    now = [100.0]
    lim = RateLimiter(rpm=60, tpm=6000, clock=lambda: now[0])  # 1 request/s, 100 tokens/s
    assert lim.reserve(50) == 100.0
    assert lim.reserve(50) == 101.0    # request pacing dominates (50 tokens = 0.5 s)
    assert lim.reserve(300) == 102.0   # this one books 3 s of tokens
    assert lim.reserve(10) == 105.0
    lim.reconcile(estimated_tokens=10, actual_tokens=110)  # used 1 s more than booked
    assert lim.reserve(10) == 106.1
    lim.pause_until(200.0)
    assert lim.reserve(1) == 200.0


def test_cost_budget_accounting():
    b = CostBudget(1.0)
    assert b.try_reserve(0.6) and not b.try_reserve(0.6)
    b.settle(0.6, 0.2)
    assert b.try_reserve(0.6) and b.spent_usd == pytest.approx(0.2)
    assert CostBudget(None).try_reserve(1e9)


def test_pipeline_defers_quota_failures_and_a_rerun_finishes_each_key_once(serve, tmp_path):
    """run_caption end to end: 429s past max_retries are deferred (retryable), the rest land in
    captions or the dead letter, and a rerun against a healthy server completes the set."""
    import pyarrow.parquet as pq

    from textok.pipeline.captioning.pipeline import run_caption
    from textok.pipeline.captioning.store import CAPTIONS, DEAD_LETTER, list_table_files

    data = tmp_path / "data"
    keys = []
    for name, rgb in (("red", (220, 30, 30)), ("green", (30, 200, 40)), ("blue", (30, 40, 220))):
        (data / "train" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), rgb).save(data / "train" / name / f"{i}.png")
            keys.append(f"{name}/{i}")

    def first_run(req):  # red: quota exhausted, green: blocked, blue: captioned
        r, g, _ = mean_rgb(req.image_bytes)
        return error(429, retry_delay_s=0.01) if r > 150 else safety() if g > 150 else ok()

    out = tmp_path / "out"
    opts = {"max_in_flight": 4, "max_retries": 1, "rpm": 6000}
    fake = serve(script=first_run)
    s1 = run_caption(str(data), str(out), captioner="gemini", batch_size=4,
                     captioner_options={**opts, "base_url": fake.url})
    assert (s1["captioned"], s1["dead_letter"], s1["deferred"]) == (3, 3, 3)
    fake2 = serve()
    s2 = run_caption(str(data), str(out), captioner="gemini", batch_size=4,
                     captioner_options={**opts, "base_url": fake2.url})
    assert (s2["skipped_existing"], s2["captioned"], len(fake2.requests)) == (6, 3, 3)

    def rows(table):
        return pq.read_table(list_table_files(str(out), table)).to_pylist()

    caps, dead = [r["key"] for r in rows(CAPTIONS)], [r["key"] for r in rows(DEAD_LETTER)]
    assert sorted(caps + dead) == sorted(keys) and len(set(caps + dead)) == len(keys)
    assert sorted(dead) == ["green/0", "green/1", "green/2"]

