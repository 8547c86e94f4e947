"""The captioning stage end to end through the real Beam pipeline, on real files.

`ColourCaptioner` below is a real pixel-reading backend (it names the mean colour), loaded
through the registry's `module:factory` plugin path, so the tests exercise decoding, the
caption rules, deferral, refusals, kills and reruns without any model weights.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import ROOT, TESTS, pythonpath
from textok.pipeline.beam_utils import make_pipeline
from textok.pipeline.captioning.pipeline import (TODO_PREFIX, CaptionBatchFn, CaptionImages, pending_limit,
                                       plan_caption_run, run_caption)
from textok.pipeline.captioning.store import (CAPTIONS, DEAD_LETTER, PART_PREFIX, WritePartsFn, compact, done_keys,
                                    list_table_files)
from textok.pipeline.captioning.captioners import build_captioner
from textok.pipeline.captioning.captioners.base import Captioner, CaptionRequest, CaptionResult
from textok.schemas.common import validate

PLUGIN = "test_caption_pipeline:colour_captioner"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


class ColourCaptioner(Captioner):
    """Names the dominant colour of the image; `defer`/`refuse` keys script failures."""

    backend = "colour"
    model_id = "mean-rgb"
    prompt_version = "colour-v1"
    prompt_text = "Name the main colour."

    def __init__(self, delay_s: float = 0.0, refuse=(), defer=()):
        self.delay_s, self.refuse, self.defer = delay_s, set(refuse), set(defer)

    def settings(self):
        return {"delay_s": self.delay_s}

    def estimate_cost_usd(self, input_tokens, output_tokens):
        return input_tokens * 1e-6 + output_tokens * 4e-6

    def caption_batch(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        time.sleep(self.delay_s)
        out = []
        for r in requests:
            if r.key in self.defer:
                out.append(CaptionResult(r.key, error_type="budget_exhausted", message="budget", retryable=True,
                                         attempts=0))
            elif r.key in self.refuse:
                out.append(CaptionResult(r.key, text="I'm sorry, I can't describe this image.", input_tokens=100,
                                         output_tokens=9, attempts=2))
            else:
                mean = np.asarray(r.image, dtype=np.float32).reshape(-1, 3).mean(0)
                name = min(COLOURS, key=lambda c: float(np.square(mean - COLOURS[c]).sum()))
                out.append(CaptionResult(r.key, text=f"The image shows a {name} square.", input_tokens=100,
                                         output_tokens=5))
        return out


def colour_captioner(options: dict) -> ColourCaptioner:
    return ColourCaptioner(float(options.get("delay_s", 0.0)), options.get("refuse", ()), options.get("defer", ()))


@dataclass
class BatchStats:
    """What an asynchronous test captioner saw, shared by every instance of one run."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    second_started: threading.Event = field(default_factory=threading.Event)
    submitted: int = 0
    running: int = 0
    max_running: int = 0


BATCH_STATS: dict[str, BatchStats] = {}  # run id (option "stats") -> stats; in-process runner only


class PooledColourCaptioner(ColourCaptioner):
    """ColourCaptioner with `submit_batch` on a thread pool, like gemini's event loop.

    The first batch holds until a second batch has started, so a DoFn that waits for each
    batch before submitting the next never overlaps two (that batch then gives up after
    30 s and `max_running` stays 1); one that keeps batches pending overlaps at once.
    """

    def __init__(self, stats_id: str, max_in_flight: int, **kw):
        super().__init__(**kw)
        self.stats_id, self.max_in_flight, self._pool = stats_id, max_in_flight, None

    def setup(self):
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pooled-colour")

    def teardown(self):
        self._pool.shutdown(wait=True)

    def submit_batch(self, requests):
        return self._pool.submit(self._run, requests)

    def _run(self, requests):
        st = BATCH_STATS.setdefault(self.stats_id, BatchStats())
        with st.lock:
            st.submitted += 1
            st.running += 1
            st.max_running = max(st.max_running, st.running)
            first = st.submitted == 1
            if not first:
                st.second_started.set()
        try:
            if first:
                st.second_started.wait(timeout=30)
            return self.caption_batch(requests)
        finally:
            with st.lock:
                st.running -= 1


def pooled_colour_captioner(options: dict) -> PooledColourCaptioner:
    return PooledColourCaptioner(options["stats"], int(options.get("max_in_flight", 1)),
                                 refuse=options.get("refuse", ()), defer=options.get("defer", ()))


class HeldColourCaptioner(ColourCaptioner):
    """`submit_batch` returns futures the test itself completes (or fails)."""

    max_in_flight = None

    def __init__(self):
        super().__init__(refuse=["red/1"], defer=["green/0"])
        self.submitted: list[tuple[list[CaptionRequest], Future]] = []

    def submit_batch(self, requests):
        self.submitted.append((requests, Future()))
        return self.submitted[-1][1]

    def complete(self, i: int) -> None:
        requests, future = self.submitted[i]
        future.set_result(self.caption_batch(requests))


def held_colour_captioner(options: dict) -> HeldColourCaptioner:
    return HeldColourCaptioner()


def make_folder(root, per_class: int = 3, corrupt: bool = True) -> str:
    """root/train/<colour>/<i>.png (+ three broken files in red/); returns root."""
    for ci, (name, rgb) in enumerate(COLOURS.items()):
        os.makedirs(os.path.join(root, "train", name), exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (8 + i, 6 + ci), rgb).save(os.path.join(root, "train", name, f"{i}.png"))
    if corrupt:
        red = os.path.join(root, "train", "red")
        with open(os.path.join(red, "notimage.png"), "wb") as f:
            f.write(b"this is not a png at all")
        open(os.path.join(red, "empty.png"), "wb").close()
        with open(os.path.join(red, "0.png"), "rb") as f:
            data = f.read()
        with open(os.path.join(red, "truncated.png"), "wb") as f:
            f.write(data[: len(data) // 2])
    return str(root)


def read_table(out, table):
    files = list_table_files(str(out), table)
    return pq.read_table(files).to_pylist() if files else []


def assert_each_key_once(out, expected_keys):
    caps = [r["key"] for r in read_table(out, CAPTIONS)]
    dead = [r["key"] for r in read_table(out, DEAD_LETTER)]
    assert len(caps) == len(set(caps)) and len(dead) == len(set(dead))
    assert not set(caps) & set(dead)
    assert sorted(caps + dead) == sorted(expected_keys)


def test_template_end_to_end_on_a_class_folder(tmp_path):
    data = make_folder(tmp_path / "data", corrupt=False)
    out = tmp_path / "out"
    s = run_caption(data, str(out), captioner="template", captioner_options={"template": "a photo of a {class_name}"},
                    commit_every=2, batch_size=4)
    assert s["captioned"] == 9 and s["dead_letter"] == 0 and s["to_caption"] == 9
    rows = read_table(out, CAPTIONS)
    assert [r["key"] for r in rows] == sorted(r["key"] for r in rows)  # compacted: sorted by key
    assert {r["caption"] for r in rows} == {f"a photo of a {c}" for c in COLOURS}
    assert all(r["captioner"] == "template" and r["num_words"] == 5 and r["width"] is None for r in rows)
    assert [os.path.basename(p).startswith(CAPTIONS) for p in list_table_files(str(out), CAPTIONS)] == [True]
    info = validate(str(out / "captions"), expect_table="captions")[0]
    assert info["meta"]["prompt_text"] == "a photo of a {class_name}"
    assert info["meta"]["captioner"] == "template" and info["stage"] == "caption"
    summary = json.loads((out / "caption_summary.json").read_text())
    assert summary["captioned"] == 9 and summary["on_disk"] == {"captions": 9, "dead_letter": 0}


def test_provided_captions_from_a_manifest_clean_and_dead_letter(tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(img)
    rows = [{"uri": "a.png", "key": "k1", "caption": "The image shows a black tile."},
            {"uri": "a.png", "key": "k2"},
            {"uri": "a.png", "key": "k3", "caption": "As an AI I cannot see."},
            {"uri": "a.png", "key": "k4", "caption": " ".join(["w"] * 80)}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    s = run_caption(str(manifest), str(out), captioner="provided", max_words=75)
    caps = {r["key"]: r for r in read_table(out, CAPTIONS)}
    dead = {r["key"]: r for r in read_table(out, DEAD_LETTER)}
    assert caps["k1"]["caption"] == "A black tile."
    assert caps["k4"]["num_words"] == 75
    assert dead["k2"]["error_type"] == "missing_caption" and dead["k2"]["stage"] == "caption"
    assert dead["k3"]["error_type"] == "refusal"
    assert s["dead_letter_by_reason"] == {"missing_caption": 1, "refusal": 1}
    validate(str(out / "dead_letter"), expect_table="dead_letter")


def test_template_without_class_name_is_a_dead_letter_and_bad_templates_fail(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "x.png")
    out = tmp_path / "out"
    s = run_caption(str(flat), str(out), captioner="template")
    assert s["dead_letter_by_reason"] == {"missing_class_name": 1}
    with pytest.raises(ValueError, match="fields"):
        build_captioner("template", {"template": "a photo of a {colour}"})
    with pytest.raises(ValueError, match="does not use option"):
        build_captioner("template", {"rpm": 10})
    with pytest.raises(ValueError, match="unknown captioner 'nope'.*gemini"):
        build_captioner("nope", {})


def test_corrupt_images_go_to_dead_letter_with_reason(tmp_path):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    s = run_caption(data, str(out), captioner=PLUGIN, batch_size=2, commit_every=3)
    dead = {r["key"]: r for r in read_table(out, DEAD_LETTER)}
    assert {k: (d["stage"], d["error_type"]) for k, d in dead.items()} == {
        "red/notimage": ("decode", "not_an_image"), "red/empty": ("decode", "empty_file"),
        "red/truncated": ("decode", "truncated")}
    assert all(d["source_uri"].endswith(".png") and d["message"] for d in dead.values())
    caps = {r["key"]: r for r in read_table(out, CAPTIONS)}
    assert caps["green/1"]["caption"] == "A green square."  # caption rules applied to the backend's answer
    assert (caps["blue/2"]["width"], caps["blue/2"]["height"]) == (10, 8)
    assert caps["red/0"]["captioner"] == "colour:mean-rgb" and caps["red/0"]["prompt_version"] == "colour-v1"
    assert s["input_tokens"] == 900 and s["output_tokens"] == 45
    assert s["estimated_cost_usd"] == pytest.approx(900e-6 + 45 * 4e-6)
    assert_each_key_once(out, [f"{c}/{i}" for c in COLOURS for i in range(3)] + list(dead))


def test_deferred_results_are_not_written_and_a_rerun_finishes_them(tmp_path):
    data = make_folder(tmp_path / "data", corrupt=False)
    out = tmp_path / "out"
    s1 = run_caption(data, str(out), captioner=PLUGIN, captioner_options={"defer": ["red/0", "blue/1"]})
    assert (s1["captioned"], s1["deferred"], s1["dead_letter"]) == (7, 2, 0)
    assert s1["requests"] == 7  # deferred results made no attempt
    s2 = run_caption(data, str(out), captioner=PLUGIN)
    assert (s2["skipped_existing"], s2["captioned"], s2["deferred"]) == (7, 2, 0)
    assert_each_key_once(out, [f"{c}/{i}" for c in COLOURS for i in range(3)])


def test_retry_dead_letters_replaces_the_old_rows(tmp_path):
    data = make_folder(tmp_path / "data", corrupt=False)
    out = tmp_path / "out"
    keys = [f"{c}/{i}" for c in COLOURS for i in range(3)]
    s1 = run_caption(data, str(out), captioner=PLUGIN, captioner_options={"refuse": ["red/1", "green/2"]})
    assert s1["dead_letter_by_reason"] == {"refusal": 2} and s1["retries"] == 2
    assert run_caption(data, str(out), captioner=PLUGIN)["to_caption"] == 0  # dead keys are done...
    # ...until retried: red/1 now succeeds, green/2 is refused again.
    s3 = run_caption(data, str(out), captioner=PLUGIN, captioner_options={"refuse": ["green/2"]},
                     retry_dead_letters=True)
    assert (s3["to_caption"], s3["retried_dead_letters"], s3["captioned"], s3["dead_letter"]) == (2, 2, 1, 1)
    assert s3["compaction"]["dead_letter"]["superseded_by_caption"] == 1
    assert [r["key"] for r in read_table(out, DEAD_LETTER)] == ["green/2"]
    assert_each_key_once(out, keys)


def test_compaction_dedupes_keeps_newest_and_is_deterministic(tmp_path):
    out = str(tmp_path / "out")
    meta = {"captioner": "t", "prompt_version": "v"}

    def write(table, rows):
        fn = WritePartsFn(out, table, meta, commit_every=100)
        fn.setup()
        fn.start_bundle()
        for r in rows:
            fn.process(r)
        fn.finish_bundle()
        time.sleep(0.002)  # part names order by commit time

    def cap(key, text):
        return {"key": key, "split": "train", "source_uri": f"/{key}", "caption": text, "num_words": 1,
                "captioner": "t", "prompt_version": "v", "attempts": 1}

    def dead(key, msg):
        return {"key": key, "stage": "caption", "error_type": "x", "message": msg, "attempts": 1,
                "timestamp": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}

    write(CAPTIONS, [cap("b", "old"), cap("a", "a1")])
    write(CAPTIONS, [cap("b", "new")])                  # a bundle Beam retried
    write(DEAD_LETTER, [dead("a", "superseded"), dead("c", "first")])
    write(DEAD_LETTER, [dead("c", "second")])
    stats = compact(out, rows_per_file=1)
    assert stats[CAPTIONS]["duplicates_dropped"] == 1 and stats[DEAD_LETTER]["superseded_by_caption"] == 1
    assert [(r["key"], r["caption"]) for r in read_table(out, CAPTIONS)] == [("a", "a1"), ("b", "new")]
    assert [(r["key"], r["message"]) for r in read_table(out, DEAD_LETTER)] == [("c", "second")]
    files = list_table_files(out, CAPTIONS)
    assert len(files) == 2 and not any(os.path.basename(f).startswith(PART_PREFIX) for f in files)
    before = read_table(out, CAPTIONS)
    compact(out, rows_per_file=1)
    assert list_table_files(out, CAPTIONS) == files and read_table(out, CAPTIONS) == before
    assert done_keys(out) == ({"a", "b"}, {"c"})


def _wait_for_parts(out, proc, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"caption subprocess ended early (rc={proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        parts = [p for p in list_table_files(str(out), CAPTIONS) if os.path.basename(p).startswith(PART_PREFIX)]
        if len(parts) >= 2:
            return parts
        time.sleep(0.05)
    pytest.fail("no part files appeared")


def test_sigkill_keeps_committed_parts_and_rerun_completes_each_key_once(tmp_path):
    data = make_folder(tmp_path / "data", per_class=8, corrupt=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "textok", "caption", "--input", data, "--output", str(out), "--captioner", PLUGIN,
           "--captioner-opt", "delay_s=0.25", "--batch-size", "2", "--commit-every", "2", "--commit-seconds", "600"]
    env = dict(os.environ, PYTHONPATH=pythonpath(), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_parts(out, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    captioned_before, _ = done_keys(str(out))  # every committed part is a complete file
    assert 4 <= len(captioned_before) < 24
    # The killed holder's lease stays, but its holder is provably dead (same host, boot and pid
    # namespace): the rerun takes the folder over and resumes, no flag needed.
    s = run_caption(data, str(out), captioner=PLUGIN, batch_size=4)
    assert s["skipped_existing"] == len(captioned_before)
    assert s["captioned"] == 24 - len(captioned_before)
    assert_each_key_once(out, [f"{c}/{i}" for c in COLOURS for i in range(8)])
    assert not [n for n in os.listdir(out) if n.startswith(TODO_PREFIX)]  # the killed run's todo file is gone


def test_multi_processing_runner_gives_the_same_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(TESTS)  # worker processes import the plugin module from tests/
    monkeypatch.setenv("PYTHONPATH", pythonpath())
    data = make_folder(tmp_path / "data", corrupt=True)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "timestamp"} for r in rows]  # noqa: E731
    results = []
    for name, beam_args in (("inproc", ()), ("mp", ("--direct_running_mode", "multi_processing",
                                                     "--direct_num_workers", "2"))):
        out = tmp_path / name
        s = run_caption(data, str(out), captioner=PLUGIN, batch_size=2, beam_args=beam_args)
        results.append((s["captioned"], s["dead_letter"], read_table(out, CAPTIONS),
                        drop(read_table(out, DEAD_LETTER))))
    assert results[0][:2] == (9, 3)
    assert results[0] == results[1]


def test_plan_and_transform_compose_in_a_caller_pipeline(tmp_path):
    """`textok prepare` builds its own pipeline from these pieces."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from textok.pipeline.sources.records import list_records

    data = make_folder(tmp_path / "data", per_class=1, corrupt=False)
    plan = plan_caption_run(list_records(data), str(tmp_path / "none"))
    assert len(plan.records) == 3 and plan.skipped_existing == 0
    with make_pipeline() as p:
        outs = p | beam.Create(plan.records) | CaptionImages(PLUGIN, {}, batch_size=2)
        assert_that(outs[CAPTIONS] | beam.Map(lambda r: (r["key"], r["caption"])),
                    equal_to([("red/0", "A red square."), ("green/0", "A green square."),
                              ("blue/0", "A blue square.")]))
        assert_that(outs[DEAD_LETTER], equal_to([]), label="no_dead")


def test_writer_commits_on_time_inside_one_long_bundle(tmp_path, monkeypatch):
    """FnApiRunner may run the whole input as one bundle: the time check must commit mid-bundle."""
    import types

    from textok.pipeline.captioning import store as caption_store

    now = [1000.0]  # a scripted clock: the test never depends on real timing
    monkeypatch.setattr(caption_store, "time", types.SimpleNamespace(monotonic=lambda: now[0],
                                                                     time_ns=time.time_ns))
    out = str(tmp_path / "out")
    fn = WritePartsFn(out, DEAD_LETTER, {}, commit_every=1000, commit_seconds=60)
    fn.setup()
    fn.start_bundle()
    row = {"key": "k0", "stage": "decode", "error_type": "x", "message": "m", "attempts": 1,
           "timestamp": dt.datetime.now(dt.timezone.utc)}
    fn.process(row)
    now[0] += 59.0
    fn.process({**row, "key": "k0b"})
    assert list_table_files(out, DEAD_LETTER) == []          # buffered: neither limit reached
    now[0] += 2.0
    fn.process({**row, "key": "k1"})
    parts = list_table_files(out, DEAD_LETTER)
    assert len(parts) == 1 and pq.read_table(parts[0]).column("key").to_pylist() == ["k0", "k0b", "k1"]
    fn.process({**row, "key": "k2"})
    fn.finish_bundle()
    assert done_keys(out) == (set(), {"k0", "k0b", "k1", "k2"})
    with pytest.raises(ValueError, match="--commit-every"):
        WritePartsFn(out, DEAD_LETTER, {}, commit_every=0)


def test_gemini_backend_through_the_pipeline_against_a_fake_server(tmp_path, monkeypatch):
    """The registry's gemini path, the caption rules and the usage counters on real HTTP (loopback)."""
    import io

    from fake_gemini import FakeGemini, long_answer, ok, safety

    def behaviour(req):
        r, g, b = np.asarray(Image.open(io.BytesIO(req.image_bytes)).convert("RGB"), np.float32).reshape(-1, 3).mean(0)
        return safety() if r > 150 else long_answer(120) if g > 150 else ok("The image shows a blue tile.")

    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    data = make_folder(tmp_path / "data", corrupt=False)
    out = tmp_path / "out"
    with FakeGemini(script=behaviour) as fake:
        s = run_caption(data, str(out), captioner="gemini", batch_size=4,
                        captioner_options={"base_url": fake.url, "max_in_flight": 4, "max_retries": 0})
        assert len(fake.requests) == 9
    caps = {r["key"]: r for r in read_table(out, CAPTIONS)}
    dead = {r["key"]: r for r in read_table(out, DEAD_LETTER)}
    assert sorted(dead) == ["red/0", "red/1", "red/2"]
    assert {d["error_type"] for d in dead.values()} == {"safety_blocked"}
    assert caps["blue/0"]["caption"] == "A blue tile."
    assert caps["green/0"]["num_words"] == 75 and caps["green/0"]["caption"].endswith("word74")
    assert caps["blue/0"]["captioner"].startswith("gemini:")
    assert s["requests"] == 9 and s["input_tokens"] > 0 and s["output_tokens"] > 0
    assert s["estimated_cost_usd"] > 0
    meta = validate(str(out / "captions"))[0]["meta"]
    assert meta["backend"] == "gemini" and "test-key" not in json.dumps(meta)  # never secrets in metadata


def test_batches_overlap_when_the_captioner_can_submit_and_each_key_arrives_once(tmp_path):
    """A backend with submit_batch gets several batches at once; outcomes and counters are unchanged."""
    data = make_folder(tmp_path / "data", corrupt=True)
    out = tmp_path / "out"
    opts = {"stats": str(tmp_path), "max_in_flight": 2, "refuse": ["green/1"], "defer": ["blue/2"]}
    s = run_caption(data, str(out), captioner="test_caption_pipeline:pooled_colour_captioner",
                    captioner_options=opts, batch_size=2, commit_every=3)
    st = BATCH_STATS.get(str(tmp_path))
    assert st is not None, "the DoFn never called submit_batch"
    assert st.max_running >= 2 and st.submitted == 5  # 9 decodable images in batches of 2, each sent once
    assert (s["captioned"], s["deferred"], s["dead_letter"]) == (7, 1, 4)
    assert s["dead_letter_by_reason"] == {"refusal": 1, "not_an_image": 1, "empty_file": 1, "truncated": 1}
    assert (s["requests"], s["retries"], s["input_tokens"], s["output_tokens"]) == (9, 1, 800, 44)
    caps = {r["key"]: r for r in read_table(out, CAPTIONS)}
    assert caps["green/0"]["caption"] == "A green square." and "blue/2" not in caps
    keys = [f"{c}/{i}" for c in COLOURS for i in range(3)] + ["red/notimage", "red/empty", "red/truncated"]
    assert_each_key_once(out, [k for k in keys if k != "blue/2"])
    # The deferred key is captioned by the next run.
    s2 = run_caption(data, str(out), captioner=PLUGIN, batch_size=2)
    assert (s2["to_caption"], s2["captioned"], s2["deferred"]) == (1, 1, 0)
    assert_each_key_once(out, keys)


def test_pending_batches_emit_as_they_finish_and_drain_in_finish_bundle():
    """The DoFn alone: out-of-order completion, blocking at the limit, windows kept, drain, failure."""
    from apache_beam.pvalue import TaggedOutput
    from apache_beam.transforms.window import IntervalWindow
    from apache_beam.utils.timestamp import Timestamp
    from apache_beam.utils.windowed_value import WindowedValue

    from textok.pipeline.sources.records import ImageRecord

    assert pending_limit(None, 1) == 3 and pending_limit(32, 32) == 3 and pending_limit(32, 4) == 9

    def batch(*keys):
        return [(ImageRecord(key=k, split="train", source_uri=f"/{k}.png", class_name=k.split("/")[0]),
                 Image.new("RGB", (4, 4), COLOURS[k.split("/")[0]])) for k in keys]

    def flat(outputs):
        rows = []
        for o in outputs:
            tag, wv = (o.tag, o.value) if isinstance(o, TaggedOutput) else (CAPTIONS, o)
            assert isinstance(wv, WindowedValue)
            rows.append((tag, wv.value["key"], wv.windows[0].start, wv.timestamp))
        return sorted(rows)

    fn = CaptionBatchFn("test_caption_pipeline:held_colour_captioner", {}, max_words=20, batch_size=1)
    fn.setup()
    cap = fn._captioner
    fn.start_bundle()
    windows = [IntervalWindow(10 * i, 10 * i + 10) for i in range(3)]
    call = lambda i, b: list(fn.process(b, window=windows[i], timestamp=Timestamp(10 * i + 1)))  # noqa: E731
    assert call(0, batch("red/0", "red/1")) == []
    assert call(1, batch("green/0", "green/1")) == []
    cap.complete(1)
    # Third pending batch reaches the limit (3): process waits for one, and batch 1 is done.
    assert flat(call(2, batch("blue/0"))) == [(CAPTIONS, "green/1", 10, Timestamp(11))]  # green/0 deferred
    cap.complete(2)
    cap.complete(0)
    assert flat(fn.finish_bundle()) == [(CAPTIONS, "blue/0", 20, Timestamp(21)), (CAPTIONS, "red/0", 0, Timestamp(1)),
                                        (DEAD_LETTER, "red/1", 0, Timestamp(1))]
    assert list(fn.finish_bundle()) == []
    # A failed batch fails the bundle and cancels the batches still pending.
    fn.start_bundle()
    assert call(0, batch("red/2")) == [] and call(1, batch("blue/1")) == []
    cap.submitted[3][1].set_exception(RuntimeError("bad API key"))
    with pytest.raises(RuntimeError, match="bad API key"):
        list(fn.finish_bundle())
    assert cap.submitted[4][1].cancelled()
    fn.teardown()


def test_rerun_refuses_a_split_whose_keys_another_split_already_holds(tmp_path):
    """Folder keys are relative to the split folder (train/cat/1.png and val/cat/1.png are both
    "cat/1"): a second split captioned into the same output must not be skipped as "done"."""
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            os.makedirs(tmp_path / "data" / split / cls)
            Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "data" / split / cls / "1.png")
    out = str(tmp_path / "out")
    run_caption(str(tmp_path / "data"), out, split="train", captioner="template")
    with pytest.raises(ValueError, match=r"'cat/1'.*split 'val'.*split 'train'.*--output"):
        run_caption(str(tmp_path / "data"), out, split="val", captioner="template")
    assert run_caption(str(tmp_path / "data"), out, split="train", captioner="template")["skipped_existing"] == 2


def test_caption_store_ignores_encode_dead_letters_in_the_same_folder(tmp_path):
    """`textok encode --output` = the caption folder puts encode-*.parquet in dead_letter/: the
    caption stage must neither count them as its own nor merge them away in compaction."""
    from textok.pipeline.encode.pipeline import dead_letter_table

    data = make_folder(tmp_path / "data", per_class=1, corrupt=False)
    out = str(tmp_path / "out")
    run_caption(data, out, captioner="template")
    enc = os.path.join(out, DEAD_LETTER, "encode-train-00000-of-00001.parquet")
    row = {"key": "red/0", "split": "train", "stage": "encode", "source_uri": "x", "error_type": "truncated",
           "message": "m", "attempts": 1, "timestamp": dt.datetime.now(dt.timezone.utc)}
    os.makedirs(os.path.dirname(enc))
    pq.write_table(dead_letter_table([row], {}), enc)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(os.path.join(data, "train", "red", "new.png"))
    s = run_caption(data, out, captioner="template", retry_dead_letters=True)
    assert s["captioned"] == 1 and s["on_disk"] == {CAPTIONS: 4, DEAD_LETTER: 0}
    assert os.path.exists(enc)
