"""One object per worker process through Beam's Shared (pipeline/worker_shared.py)."""
from __future__ import annotations

import gc
import threading

from fake_gemini import FakeGemini

from textok.pipeline.worker_shared import forget_all, per_process


def test_one_build_per_key_across_threads_and_release_runs_on_last_drop():
    forget_all()
    built, released = [], []

    def build():
        built.append(object())
        return built[-1]

    boxes = []
    threads = [threading.Thread(target=lambda: boxes.append(per_process(("k", 1), build))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and all(b.value is built[0] for b in boxes)
    other = per_process(("k", 2), build, on_release=released.append)   # another key: its own object
    assert other.value is built[1]
    per_process(("k", 3), build)   # Shared keeps only the latest acquired object alive besides holders
    del other
    gc.collect()
    assert released == [built[1]]
    forget_all()


def test_gemini_instances_share_one_client(monkeypatch):
    from textok.pipeline.captioning.captioners.gemini import GeminiCaptioner, reset_process_state

    monkeypatch.setenv("GEMINI_API_KEY", "k-1")
    reset_process_state()
    with FakeGemini() as fake:
        a, b = GeminiCaptioner(base_url=fake.url), GeminiCaptioner(base_url=fake.url)
        a.setup()
        b.setup()
        assert a._client is b._client
        monkeypatch.setenv("GEMINI_API_KEY", "k-2")    # other credentials: another client
        c = GeminiCaptioner(base_url=fake.url)
        c.setup()
        assert c._client is not a._client
        for cap in (a, b, c):
            cap.teardown()
    reset_process_state()
