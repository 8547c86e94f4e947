"""`--captioner openai` against a fake OpenAI-compatible server on 127.0.0.1, through the real `openai` client.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_openai_compat.py
"""
from __future__ import annotations

import json
import logging
import pickle

import pytest
from fake_gemini import error, malformed, mean_rgb, ok, safety
from fake_openai import FakeOpenAI, image_of, text_of
from PIL import Image

from textok.pipeline.captioning.captioners import build_captioner
from textok.pipeline.captioning.captioners.base import CaptionRequest
from textok.pipeline.captioning.captioners.openai_compat import OpenAICompatCaptioner, OpenAICompatConfigError, from_options
from textok.pipeline.captioning.captioners.remote import reset_process_state

FAKE_KEY = "sk-FAKE-openai-9d1e-do-not-leak"
COLOURS = [(200, 20, 20), (20, 200, 20), (20, 20, 200), (230, 230, 30), (30, 230, 230), (120, 120, 120)]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    reset_process_state()
    yield
    reset_process_state()


@pytest.fixture
def serve():
    servers = []

    def start(**kw) -> FakeOpenAI:
        servers.append(FakeOpenAI(**kw).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def _requests(n: int, size=(600, 400)) -> list[CaptionRequest]:
    return [CaptionRequest(key=f"k{i:03d}", image=Image.new("RGB", size, COLOURS[i % len(COLOURS)]),
                           class_name="tench", label=0) for i in range(n)]


def _captioner(urls, **kw) -> OpenAICompatCaptioner:
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    kw.setdefault("timeout_s", 5.0)
    cap = OpenAICompatCaptioner("Qwen/Qwen2.5-VL-7B-Instruct", urls, **kw)
    cap.setup()
    return cap


def _headers(req) -> dict[str, str]:
    return {k.lower(): v for k, v in req.headers.items()}


def _names_its_colour(text: str, rgb) -> bool:
    got = [int(x) for x in text.split("colour ")[1].split(" filling")[0].split()]
    return all(abs(a - b) <= 3 for a, b in zip(got, rgb))


def test_captions_match_their_images_and_requests_overlap(serve):
    fake = serve(default=ok(latency_s=0.15), api_key=FAKE_KEY, models=["Qwen/Qwen2.5-VL-7B-Instruct"])
    cap = _captioner(fake.base_url, max_in_flight=8)
    reqs = _requests(12)
    results = cap.caption_batch(reqs)
    assert [r.key for r in results] == [r.key for r in reqs]
    for req, res in zip(reqs, results):
        assert res.ok and res.attempts == 1 and _names_its_colour(res.text, COLOURS[int(req.key[1:]) % 6])
        assert res.input_tokens > 200 and res.output_tokens > 0
    assert fake.max_concurrency() > 1
    sent = fake.requests[0]
    assert sent.body["max_tokens"] == 256 and sent.body["temperature"] == 0.0
    img = Image.open(__import__("io").BytesIO(image_of(sent)))
    assert img.format == "JPEG" and max(img.size) == 384          # downscaled before sending
    assert "factual caption" in text_of(sent)
    assert cap.usage_summary()["requests"] == 12 and cap.usage_summary()["ok"] == 12


def test_429_and_500_are_retried_exactly_once_each_honouring_retry_after(serve):
    fake = serve(script=[error(429, retry_after="0.4"), error(500), error(503)])
    cap = _captioner(fake.base_url, max_in_flight=1)
    reqs = _requests(3)
    results = cap.caption_batch(reqs)
    assert all(r.ok for r in results)
    # one slot in flight, held through backoff: the first image meets all three errors
    assert [r.attempts for r in results] == [4, 1, 1]
    assert len(fake.requests) == 6 and [r.status for r in fake.requests] == [429, 500, 503, 200, 200, 200]
    assert len({mean_rgb(image_of(r)) for r in fake.requests[:4]}) == 1   # the retries resend the same image
    assert len({mean_rgb(image_of(r)) for r in fake.requests[3:]}) == 3   # each image answered exactly once
    t = fake.arrival_times()
    assert t[1] - t[0] >= 0.38                                 # waited out Retry-After: 0.4
    for req, res in zip(reqs, results):
        assert _names_its_colour(res.text, COLOURS[int(req.key[1:]) % 6])
    assert cap.usage_summary()["errors"] == {"http_429": 1, "http_500": 1, "http_503": 1}


def test_a_fleet_shares_the_work(serve):
    a, b = serve(default=ok(latency_s=0.1)), serve(default=ok(latency_s=0.1))
    cap = _captioner([a.base_url, b.base_url], max_in_flight=4)
    results = cap.caption_batch(_requests(8))
    assert all(r.ok for r in results)
    assert len(a.requests) >= 2 and len(b.requests) >= 2 and len(a.requests) + len(b.requests) == 8


def test_failures_are_classified(serve):
    fake = serve(script=[safety(), malformed(), ok("")])
    cap = _captioner(fake.base_url, max_in_flight=1, max_retries=0)
    res = cap.caption_batch(_requests(3))
    assert [r.error_type for r in res] == ["safety_blocked", "malformed_response", "empty_response"]
    res = cap.caption_batch([CaptionRequest(key="none", image=None)])
    assert res[0].error_type == "missing_image"


def test_rpm_paces_requests(serve):
    fake = serve()
    cap = _captioner(fake.base_url, rpm=600, max_in_flight=8)   # 10 req/s
    cap.caption_batch(_requests(6))
    t = fake.arrival_times()
    assert t[-1] - t[0] >= 0.45


def test_key_never_leaks(serve, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    fake = serve(script=[error(400)], api_key=FAKE_KEY)
    cap = _captioner(fake.base_url)
    res = cap.caption_batch(_requests(1))
    assert res[0].error_type == "http_400" and not res[0].retryable
    assert _headers(fake.requests[0])["authorization"] == f"Bearer {FAKE_KEY}"   # the key travels only here
    produced = [caplog.text, repr(cap), json.dumps(cap.settings()), json.dumps(cap.usage_summary()),
                res[0].message, pickle.dumps(cap).decode("latin-1")]
    assert not any(FAKE_KEY in p for p in produced)
    assert pickle.loads(pickle.dumps(cap))._secret is None


def test_configuration_errors(serve, monkeypatch):
    fake = serve(api_key="the-right-key", models=["m"])
    cap = OpenAICompatCaptioner("m", fake.base_url, timeout_s=5)
    cap.setup()
    with pytest.raises(OpenAICompatConfigError, match="rejected the credentials.*OPENAI_API_KEY") as exc:
        cap.caption_batch(_requests(1))
    assert FAKE_KEY not in str(exc.value)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__   # no raw body chained below it
    monkeypatch.setenv("OPENAI_API_KEY", "the-right-key")
    reset_process_state()
    cap = OpenAICompatCaptioner("other", fake.base_url, timeout_s=5)
    cap.setup()
    with pytest.raises(OpenAICompatConfigError, match="does not serve model 'other'"):
        cap.caption_batch(_requests(1))
    with pytest.raises(OpenAICompatConfigError, match="--openai-base-url"):
        OpenAICompatCaptioner("m", None)
    with pytest.raises(OpenAICompatConfigError, match="--model"):
        from_options({"openai_base_url": [fake.base_url]})
    with pytest.raises(OpenAICompatConfigError, match="MY_KEY.*not set"):
        OpenAICompatCaptioner("m", fake.base_url, api_key_env="MY_KEY").setup()
    with pytest.raises(ValueError, match="task_prompt"):
        from_options({"openai_base_url": [fake.base_url], "model_id": "m", "task_prompt": "x"})
    monkeypatch.setenv("MY_KEY", "the-right-key")
    monkeypatch.delenv("OPENAI_API_KEY")
    cap = build_captioner("openai", {"openai_base_url": [fake.base_url], "model_id": "m", "api_key_env": "MY_KEY",
                                     "max_new_tokens": 32})
    cap.setup()
    assert cap.caption_batch(_requests(1))[0].ok and fake.requests[-1].body["max_tokens"] == 32


def test_server_without_key_and_comma_separated_fleet(serve, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    a, b = serve(), serve()
    cap = from_options({"openai_base_url": [f"{a.base_url},{b.base_url}"], "model_id": "m"})
    assert cap.base_urls == [a.base_url, b.base_url]
    cap.setup()
    assert all(r.ok for r in cap.caption_batch(_requests(2)))
    assert _headers(a.requests[0])["authorization"] == "Bearer EMPTY"


def test_pipeline_end_to_end_each_key_once_with_its_own_caption(serve, tmp_path, caplog):
    """run_caption through Beam: every key ends once in captions (or deferred), each caption names
    its own image's colour, the captioner is recorded, and the key is in no output file or log."""
    import pyarrow.parquet as pq

    from textok.pipeline.captioning.pipeline import run_caption
    from textok.pipeline.captioning.store import CAPTIONS, list_table_files

    caplog.set_level(logging.DEBUG)
    data = tmp_path / "data"
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    for name, rgb in colours.items():
        (data / "train" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40 + i, 30), rgb).save(data / "train" / name / f"{i}.png")
    fake = serve(script=[error(429, retry_after="0.05"), error(500)], api_key=FAKE_KEY, default=ok(latency_s=0.05))
    out = tmp_path / "out"
    s = run_caption(str(data), str(out), captioner="openai", batch_size=4,
                    captioner_options={"openai_base_url": [fake.base_url], "model_id": "qwen-vl",
                                       "max_in_flight": 4})
    assert (s["captioned"], s["dead_letter"], s["deferred"]) == (9, 0, 0)
    assert len(fake.requests) == 11                                    # 9 images + the two retried failures
    files = list_table_files(str(out), CAPTIONS)
    rows = pq.read_table(files).to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(f"{c}/{i}" for c in colours for i in range(3))
    for r in rows:
        assert _names_its_colour(r["caption"], colours[r["key"].split("/")[0]]), r
        assert r["captioner"] == "openai:qwen-vl" and r["output_tokens"] > 0
    blobs = [caplog.text] + [open(f, "rb").read().decode("latin-1") for f in files] + \
        [p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file()]
    assert not any(FAKE_KEY in b for b in blobs)


def test_instances_in_one_process_share_one_client_per_server(serve):
    a = serve()
    c1, c2 = _captioner(a.base_url), _captioner(a.base_url)
    assert c1._held[0].value is c2._held[0].value
    reset_process_state()
    c3 = _captioner(a.base_url)
    assert c3._held[0].value is not c1._held[0].value                 # forgotten: a fresh client


def test_unreachable_server_defers_and_a_hang_times_out(serve):
    from fake_gemini import hang

    gone = serve()
    url = gone.base_url
    gone.stop()
    cap = _captioner(url, max_retries=1)
    res = cap.caption_batch(_requests(2))
    assert [r.error_type for r in res] == ["connection_error"] * 2
    assert all(r.retryable and r.attempts == 2 for r in res)        # deferred to a rerun, not dead-lettered
    slow = serve(script=[hang(3.0)])
    cap = _captioner(slow.base_url, timeout_s=0.3, max_retries=0)
    res = cap.caption_batch(_requests(1))
    assert res[0].error_type == "timeout" and not res[0].retryable


def test_budget_needs_a_price_and_stops_before_it_is_passed(serve, tmp_path):
    fake = serve()
    with pytest.raises(OpenAICompatConfigError, match="--price-table"):
        OpenAICompatCaptioner("qwen-vl", fake.base_url, max_cost_usd=1.0)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"qwen-vl": {"input_per_1m": 1000.0, "output_per_1m": 1000.0}}))
    # worst case per request: (~400 input + 256 output tokens) * $1000/1M = ~$0.66: two fit in $1.5
    cap = OpenAICompatCaptioner("qwen-vl", fake.base_url, max_cost_usd=1.5, price_table=str(prices), timeout_s=5,
                                max_in_flight=1)
    cap.setup()
    res = cap.caption_batch(_requests(5))
    assert sum(r.ok for r in res) >= 2 and len(fake.requests) == sum(r.ok for r in res)
    stopped = [r for r in res if not r.ok]
    assert stopped and all(r.error_type == "budget_exhausted" and r.retryable for r in stopped)
    assert cap.usage_summary()["cost_usd"] <= 1.5
