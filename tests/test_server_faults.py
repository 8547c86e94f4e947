"""Issue 19, servers: fleet health, transient vs permanent, truncation, content parts, redaction.

Real `openai` and `google-genai` clients against the scriptable fakes on 127.0.0.1.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_server_faults.py
"""
from __future__ import annotations

import asyncio
import json
import logging
import os

import pyarrow.parquet as pq
import pytest
from fake_gemini import FakeGemini, error, hang, html_error, ok, parts, reset, truncated
from fake_openai import FakeOpenAI
from PIL import Image

from textok.pipeline.captioning.captioners.base import CaptionRequest
from textok.pipeline.captioning.captioners.fleet import FleetDownError, FleetHealth
from textok.pipeline.captioning.captioners.gemini import GeminiCaptioner
from textok.pipeline.captioning.captioners.openai_compat import OpenAICompatCaptioner, OpenAICompatConfigError, content_text
from textok.pipeline.captioning.captioners.remote import reset_process_state
from textok.redaction import redact_url, scrub, url_secrets

FAST = dict(backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5.0)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("GEMINI_API_KEY", "gm-test")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    reset_process_state()
    yield
    reset_process_state()


@pytest.fixture
def serve():
    servers = []

    def start(cls=FakeOpenAI, **kw):
        servers.append(cls(**kw).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def _requests(n: int) -> list[CaptionRequest]:
    return [CaptionRequest(key=f"k{i:03d}", image=Image.new("RGB", (64, 48), (10 * i % 250, 90, 200)))
            for i in range(n)]


def _openai(urls, **kw) -> OpenAICompatCaptioner:
    cap = OpenAICompatCaptioner("m", urls, **{**FAST, **kw})
    cap.setup()
    return cap


def _gemini(fake, **kw) -> GeminiCaptioner:
    cap = GeminiCaptioner("gemini-2.5-flash", base_url=fake.url, **{**FAST, **kw})
    cap.setup()
    return cap


def _dead_url(serve) -> str:
    gone = serve()
    url = gone.base_url
    gone.stop()
    return url


# ---------------------------------------------------------------- item 2: fleet health
def test_breaker_opens_probes_half_open_and_closes_again():
    now = [0.0]
    fleet = FleetHealth(["http://a/v1", "http://b/v1"], cooldown_s=1.0, max_cooldown_s=8.0, give_up_after=2,
                        clock=lambda: now[0])

    def send(i_expected=None, outcome="fault"):
        i = asyncio.run(fleet.acquire())
        assert i_expected is None or i == i_expected
        fleet.release(i, outcome, "HTTP 502")
        return i

    for _ in range(3):                       # a and b alternate... until a's faults open it
        assert fleet.servers[0].closed
        send(0, "fault")
        send(1, "ok")
    assert not fleet.servers[0].closed and fleet.servers[0].opens == 1
    assert [send(outcome="ok") for _ in range(4)] == [1, 1, 1, 1]   # routed around the open breaker
    now[0] = 1.01                            # cooldown over: exactly one half-open probe goes to a
    i = asyncio.run(fleet.acquire())
    assert i == 0 and fleet.servers[0].probing
    assert asyncio.run(fleet.acquire()) == 1  # no second probe while the first is out
    fleet.release(1, "ok")
    fleet.release(0, "fault", "refused")     # the probe failed: open again, twice as long
    assert fleet.servers[0].opens == 2 and fleet.servers[0].open_until == pytest.approx(3.01)
    now[0] = 3.02
    assert send(0, "ok") == 0 and fleet.servers[0].closed   # a good probe closes it
    assert fleet.down is None


def test_all_servers_down_raises_one_line_naming_each():
    now = [0.0]
    fleet = FleetHealth(["http://u:pw@a/v1", "http://b/v1?key=s3cr3t"], cooldown_s=0.5, give_up_after=1,
                        clock=lambda: now[0])
    for _ in range(30):
        try:
            i = asyncio.run(fleet.acquire())
        except FleetDownError as e:
            msg = str(e)
            break
        fleet.release(i, "fault", "ConnectError: refused")
        now[0] += 1.0
    else:
        pytest.fail("the fleet never gave up")
    assert "all 2 servers stopped answering" in msg and "\n" not in msg
    assert "http://***@a/v1" in msg and "key=***" in msg and "pw" not in msg and "s3cr3t" not in msg


def test_one_dead_and_one_failing_server_of_three_captions_everything_through_the_live_one(serve):
    live = serve(default=ok(latency_s=0.02))
    html = serve(default=html_error(502))
    cap = _openai([_dead_url(serve), html.base_url, live.base_url], max_in_flight=8, max_retries=2)
    results = cap.caption_batch(_requests(40))
    assert all(r.ok for r in results), [r.error_type for r in results if not r.ok]
    assert len(live.requests) == 40                        # every image captioned once: nothing paid twice
    # the breakers keep the bad servers out of the rotation after a few faults
    assert len(html.requests) < 20, len(html.requests)
    health = {h["url"]: h for h in cap._shared.fleet.summary()}
    assert health[live.base_url]["ok"] == 40 and health[html.base_url]["breaker"] == "open"


def test_fleet_all_down_stops_instead_of_deferring_everything(serve):
    html = serve(default=html_error(503))
    cap = _openai([_dead_url(serve), html.base_url], max_in_flight=4, max_retries=1)
    with pytest.raises(FleetDownError, match=r"all 2 servers stopped answering .*HTTP 503"):
        cap.caption_batch(_requests(20))
    assert len(html.requests) < 20


def test_a_server_that_comes_back_is_used_again(serve):
    flaky = serve(script=[html_error(502)] * 3, default=ok())
    live = serve(default=ok(latency_s=0.05))
    cap = _openai([flaky.base_url, live.base_url], max_in_flight=2, max_retries=3, backoff_base_s=0.05)
    assert all(r.ok for r in cap.caption_batch(_requests(30)))
    assert sum(r.status == 200 for r in flaky.requests) >= 1   # the half-open probe found it up again


# ---------------------------------------------------------------- item 9: transient failures
@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_transient_failures_are_retried_with_backoff(serve, backend):
    script = [html_error(502), reset(), hang(3.0), error(504), ok()]
    fake = serve(FakeOpenAI if backend == "openai" else FakeGemini, script=script)
    make = _openai if backend == "openai" else lambda f, **kw: _gemini(fake, **kw)
    cap = make(fake.base_url if backend == "openai" else fake, max_in_flight=1, max_retries=5, timeout_s=0.5)
    [res] = cap.caption_batch(_requests(1))
    assert res.ok and res.attempts == 5, res
    assert cap.usage_summary()["errors"] == {"http_502": 1, "connection_error": 1, "timeout": 1, "http_504": 1}


@pytest.mark.parametrize("behaviour, kind", [(html_error(502), "http_502"), (reset(), "connection_error")])
def test_transient_failures_that_outlast_the_retries_are_deferred_not_dead_letters(serve, behaviour, kind):
    fake = serve(default=behaviour)
    cap = _openai(fake.base_url, max_retries=1, max_in_flight=1)
    [res] = cap.caption_batch(_requests(1))
    assert res.error_type == kind and res.retryable and res.attempts == 2


# ---------------------------------------------------------------- item 7, 8: answers
@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_a_truncated_answer_is_its_own_dead_letter(serve, backend):
    fake = serve(FakeOpenAI if backend == "openai" else FakeGemini, script=[truncated(), ok()])
    cap = _openai(fake.base_url, max_in_flight=1) if backend == "openai" else _gemini(fake, max_in_flight=1)
    first, second = cap.caption_batch(_requests(2))
    assert first.error_type == "truncated_answer" and not first.retryable and first.text is None
    assert "--max-new-tokens" in first.message and second.ok


def test_content_given_as_a_list_of_parts_is_accepted(serve):
    fake = serve(default=parts())
    [res] = _openai(fake.base_url).caption_batch(_requests(1))
    assert res.ok and res.text.startswith("A flat square of colour") and res.text.endswith("whole frame.")
    assert content_text([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]) == "a b"
    assert content_text(None) == "" and content_text("x") == "x"


# ---------------------------------------------------------------- item 12: configuration errors
def test_unknown_model_answered_with_400_stops_at_once(serve):
    fake = serve(models=["served-model"], unknown_model_status=400)
    cap = _openai(fake.base_url, max_in_flight=1)
    with pytest.raises(OpenAICompatConfigError, match="does not serve model 'm'"):
        cap.caption_batch(_requests(10))
    assert len(fake.requests) == 1


def test_400_on_every_request_stops_but_a_400_after_successes_is_that_items_dead_letter(serve):
    fake = serve(default=error(400))
    cap = _openai(fake.base_url, max_in_flight=1)
    with pytest.raises(OpenAICompatConfigError, match="first 3 requests were all refused"):
        cap.caption_batch(_requests(10))
    assert len(fake.requests) == 3
    reset_process_state()
    fake2 = serve(script=[ok(), error(400), error(400), error(400), ok()])
    res = _openai(fake2.base_url, max_in_flight=1).caption_batch(_requests(5))
    assert [r.error_type for r in res] == [None, "http_400", "http_400", "http_400", None]


# ---------------------------------------------------------------- item 6: redaction
def test_redact_url_strips_userinfo_and_secret_query_values():
    assert redact_url("https://bob:s3cret@gpu:8000/v1?key=abc&api-version=2024-02&X-Amz-Signature=f0") == \
        "https://***@gpu:8000/v1?key=***&api-version=2024-02&X-Amz-Signature=***"
    assert redact_url("http://tok3n@h/v1") == "http://***@h/v1" and redact_url("http://h:80/v1") == "http://h:80/v1"
    assert set(url_secrets("http://bob:s3cret@h/v1?access_token=zz9")) == {"s3cret", "zz9", "bob"}
    text = "GET http://bob:s3cret@h/v1/x?token=abc failed: s3cret"
    assert scrub(text) == "GET http://***@h/v1/x?token=*** failed: s3cret"     # URLs only...
    assert scrub(text, url_secrets("http://bob:s3cret@h/v1")) == "GET http://***@h/v1/x?token=*** failed: ***"


def test_credentials_in_base_urls_reach_the_server_and_nothing_else(serve, tmp_path, caplog):
    """The issue's reproduction (-vv log, textok.meta settings.base_urls), through Beam and the CLI."""
    from click.testing import CliRunner

    from textok.cli import main

    caplog.set_level(logging.DEBUG)
    live = serve(script=[html_error(502), error(400)], default=ok())
    data = tmp_path / "data" / "train" / "c"
    data.mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (20, 20), (40 * i, 10, 10)).save(data / f"{i}.png")
    host = live.base_url.split("://", 1)[1]
    url = f"http://alice:pa55w0rd-XYZ@{host}?key=QUERY-S3CRET-77&api-version=1"
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["-vv", "caption", "--input", str(tmp_path / "data"), "--output", str(out),
                                  "--captioner", "openai", "--model", "m", "--openai-base-url", url,
                                  "--max-in-flight", "1", "--max-dead-letter-fraction", "0.5"])
    assert r.exit_code == 0, r.output
    sent = live.requests[-1]
    assert "key=QUERY-S3CRET-77" in sent.path                       # the credential reaches the server...
    assert {k.lower(): v for k, v in sent.headers.items()}["authorization"].startswith("Basic ")
    blobs = {"stdout+stderr": r.output + (r.stderr if r.stderr_bytes else ""), "log": caplog.text}
    for p in out.rglob("*"):
        if p.is_file():
            blobs[str(p)] = p.read_bytes().decode("latin-1")
    for name, text in blobs.items():                                 # ...and goes nowhere else
        assert "pa55w0rd-XYZ" not in text and "QUERY-S3CRET-77" not in text and "alice" not in text, name
    dead = pq.read_table(next(out.glob("dead_letter/*.parquet"))).to_pylist()
    assert [d["error_type"] for d in dead] == ["http_400"] and "***@" in dead[0]["message"]
    meta = json.loads(pq.read_metadata(next(out.glob("captions/*.parquet"))).metadata[b"textok.meta"])
    assert meta["settings"]["base_urls"] == [f"http://***@{host}?key=***&api-version=1"]
    assert os.path.isfile(out / "caption_summary.json")
