"""The captioning stage: image records -> captions + dead letters, resumable.

    textok caption --input data/imagenet --split train --output out/captions \
        --captioner gemini --model gemini-2.5-flash-lite --rpm 2000
    textok caption --input manifest.jsonl --output out/captions --captioner provided \
        --direct_running_mode multi_processing --direct_num_workers 4
    python -c "from textok.pipeline.captioning.pipeline import run_caption; \
        print(run_caption('data/folder', 'out/caps', captioner='template'))"

The graph `run_caption` runs, on every runner (in-process, Dask, Dataflow, Flink, Spark):

    Create(TodoChunk...) | Reshuffle | ParDo(CaptionChunkFn)

The records to caption go to a todo file; the graph carries only chunk descriptors (byte
ranges of that file, `CAPTION_CHUNK_BATCHES` batches each). `CaptionChunkFn` reads its
chunk, reads + decodes each image (skipped when the captioner needs no pixels), captions it
in batches (`CaptionBatchFn`'s engine: captioner built in `setup()`, many requests in
flight, the caption rules on every answer) and commits captions and dead letters to small
atomic part files as it goes (textok.pipeline.captioning.store). One linear chain with no
tagged outputs, no second sink, no output from `finish_bundle` and no `beam.io.Read`: Beam's
DaskRunner supports no more than that (pipeline/runners.py). A chunk Beam retries (a worker
died) first reads the keys its earlier attempt committed, and does not pay for them again.
Results a backend marks `retryable` (budget exhausted, rate limit or a server's transient
failures outlasting the retries) are written nowhere: they are counted as "deferred", by reason,
and the next run over the same output tries them again.

`run_caption` plans the run (skips keys already on disk), runs the pipeline, compacts the
parts and writes DIR/caption_summary.json. `CaptionImages` + `WriteCaptionParts` (tagged
outputs, two sinks) compose into a caller's own pipeline on runners that support those.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.utils.windowed_value import WindowedValue

from textok import storage as rio
from textok.atomic import require_output_dir, write_json_atomic
from textok.lease import hold_lease
from textok.pipeline.cleanup import TODO_PREFIX  # one name for the to-do files (cleanup removes them)
from textok.pipeline.captioning.rules import DEFAULT_MAX_WORDS, clean_caption, count_words
from textok.pipeline.captioning.store import (CAPTIONS, DEAD_LETTER, STAGE, SUMMARY_FILE, WritePartsFn,
                                           compact, has_parts, list_table_files, open_parquet, parts_tagged,
                                           read_key_splits)
from textok.pipeline.captioning.captioners import build_captioner
from textok.pipeline.captioning.captioners.base import Captioner, CaptionRequest, CaptionResult
from textok.schemas.images import ImageDecodeError, decode_image
from textok.pipeline.sources.records import ImageRecord, list_records, read_image_bytes
from textok.progress import open_stage, stage_progress

log = logging.getLogger("textok.caption")

NAMESPACE = "textok"
DEFAULT_BATCH_SIZE = 32
# Batches per unit of work: enough to keep several batches' requests in flight within a chunk
# (`pending_limit`), few enough that a run of a few thousand images still spreads over workers.
CAPTION_CHUNK_BATCHES = 4


def _counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def dead_letter_row(record: ImageRecord, stage: str, error_type: str, message: str, attempts: int = 1) -> dict:
    _counter("dead_letter").inc()
    _counter(f"dead_letter_{error_type}").inc()
    return {"key": record.key, "split": record.split, "stage": stage, "source_uri": record.source_uri,
            "error_type": error_type, "message": message, "attempts": attempts,
            "timestamp": dt.datetime.now(dt.timezone.utc)}


def read_decode(record: ImageRecord, needs_pixels: bool) -> tuple[ImageRecord, Any] | dict:
    """ImageRecord -> (record, RGB image or None), or the dead-letter row of an unreadable image."""
    if getattr(record, "error_type", None):  # the source listed it but could not accept it
        return dead_letter_row(record, "source", record.error_type, record.error_message or record.error_type)
    if not needs_pixels:
        return record, None
    try:
        data = read_image_bytes(record.source_uri)
    except ImageDecodeError as e:
        return dead_letter_row(record, "read", e.error_type, e.message)
    try:
        return record, decode_image(data, uri=record.source_uri)
    except ImageDecodeError as e:
        return dead_letter_row(record, "decode", e.error_type, e.message)


class ReadDecodeFn(beam.DoFn):
    """ImageRecord -> (record, RGB image or None); unreadable images go to the dead letter."""

    def __init__(self, needs_pixels: bool):
        self.needs_pixels = needs_pixels

    def process(self, record):  # -> (record, image) | TaggedOutput(dead_letter)
        out = read_decode(record, self.needs_pixels)
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, out) if isinstance(out, dict) else out


def pending_limit(max_in_flight: int | None, batch_size: int) -> int:
    """How many submitted batches `CaptionBatchFn` keeps pending before it blocks.

    Enough batches to fill the backend's `max_in_flight` requests, and at least two, so
    while one batch waits on its slowest request the next ones already use the freed slots;
    +1 so that a batch being prepared (JPEG encoding on the DoFn thread) does not leave the
    backend idle.
    """
    return max(2, math.ceil((max_in_flight or 0) / max(batch_size, 1))) + 1


@dataclass(eq=False)
class _Pending:
    """One submitted batch: its inputs, its future, and where its outputs belong."""

    batch: list
    requests: list[CaptionRequest]
    future: concurrent.futures.Future
    window: Any
    timestamp: Any


class CaptionBatchFn(beam.DoFn):
    """A batch of (record, image) -> caption rows and dead-letter rows.

    The captioner is built and set up in `setup()` (once per worker: model load, client);
    the DoFn itself pickles only the backend name and options.

    A backend with `submit_batch(requests) -> Future[list[CaptionResult]]` (gemini) is kept
    busy across batches: `process` submits and emits whichever batches are already done,
    blocks only with `pending_limit` batches pending, and `finish_bundle` drains the rest
    (a bundle ends only when every input of it has an output). Waiting for each batch's
    slowest request before starting the next cost ~15 % of the configured rate at batch 32.
    Other backends are called synchronously with `caption_batch`.
    """

    def __init__(self, captioner: str, options: dict[str, Any], max_words: int,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        self.captioner_name, self.options, self.max_words = captioner, dict(options), max_words
        self.batch_size = batch_size

    def setup(self) -> None:
        self._captioner: Captioner = build_captioner(self.captioner_name, self.options)
        self._captioner.setup()
        self._counters = {n: _counter(n) for n in ("captioned", "deferred", "requests", "retries",
                                                   "input_tokens", "output_tokens")}
        submit = getattr(self._captioner, "submit_batch", None)
        self._submit = submit if callable(submit) else None
        self._limit = pending_limit(getattr(self._captioner, "max_in_flight", None), self.batch_size)
        self._pending: list[_Pending] = []

    def start_bundle(self) -> None:
        self._cancel_pending()  # left only by a failed bundle, which Beam retries as a whole

    def teardown(self) -> None:
        self._cancel_pending()
        captioner = getattr(self, "_captioner", None)
        if captioner is not None:
            captioner.teardown()

    def process(self, batch, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        requests = [CaptionRequest(key=r.key, image=img, class_name=r.class_name, label=r.label,
                                   provided_caption=r.caption, source_uri=r.source_uri) for r, img in batch]
        if self._submit is None:
            yield from self._outputs(batch, requests, self._captioner.caption_batch(requests))
            return
        self._pending.append(_Pending(batch, requests, self._submit(requests), window, timestamp))
        yield from self._collect(block=len(self._pending) >= self._limit)

    def finish_bundle(self):
        while self._pending:
            yield from self._collect(block=True)

    def _collect(self, block: bool):
        """Emit every finished batch (after waiting for one if `block`), as explicit WindowedValues:
        a batch finishing during another element's `process`, or in `finish_bundle`, keeps the
        window and timestamp of its own input."""
        try:
            if block:
                concurrent.futures.wait([p.future for p in self._pending],
                                        return_when=concurrent.futures.FIRST_COMPLETED)
            done, waiting = [], []
            for p in self._pending:
                (done if p.future.done() else waiting).append(p)
            self._pending = waiting
            for p in done:
                for out in self._outputs(p.batch, p.requests, p.future.result()):
                    if isinstance(out, beam.pvalue.TaggedOutput):
                        yield beam.pvalue.TaggedOutput(out.tag, WindowedValue(out.value, p.timestamp, (p.window,)))
                    else:
                        yield WindowedValue(out, p.timestamp, (p.window,))
        except Exception:
            self._cancel_pending()  # a config error fails the bundle: stop its other requests
            raise

    def _cancel_pending(self) -> None:
        pending, self._pending = getattr(self, "_pending", []), []
        for p in pending:
            p.future.cancel()

    def _outputs(self, batch, requests: list[CaptionRequest], results: list[CaptionResult]):
        if len(results) != len(requests) or any(a.key != b.key for a, b in zip(requests, results)):
            raise RuntimeError(f"captioner {self._captioner.name!r} broke the Captioner contract: "
                               f"{len(results)} results for {len(requests)} requests, or keys out of order")
        stage_progress("caption", "images").update(len(results))
        for (record, image), result in zip(batch, results):
            yield from self._outcome(record, image, result)

    def _outcome(self, record: ImageRecord, image: Any, result: CaptionResult):
        c = self._counters
        attempts = max(int(result.attempts or 0), 0)
        c["requests"].inc(attempts)
        c["retries"].inc(max(attempts - 1, 0))
        c["input_tokens"].inc(result.input_tokens or 0)
        c["output_tokens"].inc(result.output_tokens or 0)
        out = result_row(record, result, self._captioner, self.max_words,
                         *((image.width, image.height) if image is not None else (None, None)))
        if out is None:
            c["deferred"].inc()
            _counter(f"deferred_{result.error_type or 'unknown'}").inc()
        elif out[0] == DEAD_LETTER:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, out[1])
        else:
            c["captioned"].inc()
            yield out[1]


def result_row(record: ImageRecord, result: CaptionResult, captioner: Captioner, max_words: int,
               width: int | None, height: int | None) -> tuple[str, dict] | None:
    """One backend result -> (table, row) after the caption rules, or None when the result is
    retryable (deferred to a rerun). Shared by the Beam path and the batch-mode collector."""
    attempts = max(int(result.attempts or 0), 0)
    if result.retryable:
        return None
    if result.error_type is not None:
        return DEAD_LETTER, dead_letter_row(record, STAGE, result.error_type, result.message or result.error_type,
                                            attempts)
    caption, error_type, message = clean_caption(result.text, max_words)
    if error_type is not None:
        return DEAD_LETTER, dead_letter_row(record, STAGE, error_type, message, attempts)
    return CAPTIONS, {"key": record.key, "split": record.split, "label": record.label,
                      "class_name": record.class_name, "source_uri": record.source_uri, "caption": caption,
                      "num_words": count_words(caption), "captioner": captioner.name,
                      "prompt_version": captioner.prompt_version, "input_tokens": result.input_tokens,
                      "output_tokens": result.output_tokens, "attempts": attempts, "width": width, "height": height}


class CaptionImages(beam.PTransform):
    """PCollection[ImageRecord] -> {"captions": caption rows, "dead_letter": dead-letter rows}.

    Rows are dicts matching schemas/captions.py CAPTIONS_SCHEMA / DEAD_LETTER_SCHEMA.
    """

    def __init__(self, captioner: str, options: dict[str, Any] | None = None, *,
                 max_words: int = DEFAULT_MAX_WORDS, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        self.captioner, self.options = captioner, dict(options or {})
        self.max_words, self.batch_size = max_words, batch_size
        # Built here only to learn whether pixels are needed; no setup(), so no model load.
        self.needs_pixels = build_captioner(captioner, self.options).needs_pixels

    def expand(self, records):
        decoded = records | "ReadDecode" >> beam.ParDo(ReadDecodeFn(self.needs_pixels)).with_outputs(
            DEAD_LETTER, main="decoded")
        # min == max: every batch but the last is full, so a backend's batch size is honoured
        # (the adaptive sizer would start at 1 and time tiny batches of API calls).
        batches = decoded.decoded | "Batch" >> beam.BatchElements(
            min_batch_size=self.batch_size, max_batch_size=self.batch_size)
        captioned = batches | "Caption" >> beam.ParDo(
            CaptionBatchFn(self.captioner, self.options, self.max_words, self.batch_size)).with_outputs(
                DEAD_LETTER, main=CAPTIONS)
        dead = (decoded[DEAD_LETTER], captioned[DEAD_LETTER]) | "FlattenDeadLetters" >> beam.Flatten()
        return {CAPTIONS: captioned[CAPTIONS], DEAD_LETTER: dead}


class WriteCaptionParts(beam.PTransform):
    """{"captions": rows, "dead_letter": rows} -> part files under output_dir (a sink)."""

    def __init__(self, output_dir: str, meta: dict[str, Any], *, commit_every: int = 256,
                 commit_seconds: float = 60.0):
        super().__init__()
        self.output_dir, self.meta = output_dir, meta
        self.commit_every, self.commit_seconds = commit_every, commit_seconds

    def expand(self, outputs):
        for table in (CAPTIONS, DEAD_LETTER):
            outputs[table] | f"Write_{table}" >> beam.ParDo(
                WritePartsFn(self.output_dir, table, self.meta, self.commit_every, self.commit_seconds))
        return beam.pvalue.PDone(outputs[CAPTIONS].pipeline)


def record_to_json(record: ImageRecord) -> str:
    return json.dumps(dataclasses.asdict(record), sort_keys=True)


def record_from_json(line: str) -> ImageRecord:
    return ImageRecord(**json.loads(line))


@dataclass(frozen=True)
class TodoChunk:
    """Records `[offset, offset + length)` (bytes) of a todo file: one unit of captioning work.
    `tag` names the chunk's part files (run id + index), so a retried chunk finds what it committed."""

    path: str
    index: int
    offset: int
    length: int
    tag: str


def write_todo(records: Sequence[ImageRecord], output_dir: str,
               chunk_size: int) -> tuple[str, list[TodoChunk]]:
    """Write the records to caption as JSON lines DIR/_todo-*.jsonl; return it and its chunks of
    `chunk_size` records.

    A file instead of `beam.Create(records)`: a million records inline would bloat the pipeline
    graph (Dataflow caps it at 10 MB), while chunk descriptors are a few dozen bytes each and
    workers read their own byte range. Todo files a killed run left behind are removed first
    (they are recomputed anyway).
    """
    stale = [m.path for m in FileSystems.match([FileSystems.join(output_dir, TODO_PREFIX + "*.jsonl")])[0]
             .metadata_list]
    if stale:
        log.info("removing %d todo file(s) of an earlier, interrupted run", len(stale))
        FileSystems.delete(stale)
    run_id = uuid.uuid4().hex[:8]
    path = FileSystems.join(output_dir, f"{TODO_PREFIX}{time.time_ns()}-{run_id}.jsonl")
    chunks, offset = [], 0
    with FileSystems.create(path) as f:
        for start in range(0, len(records), max(chunk_size, 1)):
            data = b"".join((record_to_json(r) + "\n").encode() for r in records[start:start + chunk_size])
            f.write(data)
            chunks.append(TodoChunk(path, len(chunks), offset, len(data), f"{run_id}-c{len(chunks):06d}"))
            offset += len(data)
    return path, chunks


def read_todo_chunk(chunk: TodoChunk) -> list[ImageRecord]:
    with FileSystems.open(chunk.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.seek(chunk.offset)
        data = f.read(chunk.length)
    return [record_from_json(line.decode()) for line in data.split(b"\n") if line]


class CaptionChunkFn(CaptionBatchFn):
    """TodoChunk -> captions and dead letters committed to part files under output_dir (a sink).

    Reads the chunk's records, drops the keys an earlier attempt of this chunk committed (a
    worker died, the runner retried the chunk: they were paid for), reads and decodes images,
    captions them `batch_size` at a time through `CaptionBatchFn` (requests of several batches
    in flight) and waits for every batch before `process` returns, so nothing is emitted from
    `finish_bundle`. Rows are committed every `commit_every` rows / `commit_seconds` and at
    the end of the chunk.
    """

    def __init__(self, captioner: str, options: dict[str, Any], max_words: int, batch_size: int,
                 needs_pixels: bool, output_dir: str, meta: dict[str, Any], commit_every: int = 256,
                 commit_seconds: float = 60.0):
        super().__init__(captioner, options, max_words, batch_size)
        WritePartsFn(output_dir, CAPTIONS, meta, commit_every, commit_seconds)  # check the settings now
        self.needs_pixels, self.output_dir, self.meta = needs_pixels, output_dir, meta
        self.commit_every, self.commit_seconds = commit_every, commit_seconds

    def process(self, chunk: TodoChunk, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        writers = {t: WritePartsFn(self.output_dir, t, self.meta, self.commit_every, self.commit_seconds,
                                   part_tag=chunk.tag) for t in (CAPTIONS, DEAD_LETTER)}
        committed = set()
        for table, fn in writers.items():
            committed.update(k for p in parts_tagged(self.output_dir, table, chunk.tag)
                             for k in open_parquet(p).read(columns=["key"]).column("key").to_pylist())
            fn.setup()
            fn.start_bundle()
        if committed:
            _counter("skipped_committed_by_earlier_attempt").inc(len(committed))
            log.info("caption chunk %s: %d keys already committed by an earlier attempt", chunk.tag, len(committed))

        def write(outputs) -> None:
            for out in outputs:
                table = out.tag if isinstance(out, beam.pvalue.TaggedOutput) else CAPTIONS
                row = out.value if isinstance(out, beam.pvalue.TaggedOutput) else out
                writers[table].process(row.value if isinstance(row, WindowedValue) else row)

        batch: list = []
        for record in read_todo_chunk(chunk):
            if record.key in committed:
                continue
            decoded = read_decode(record, self.needs_pixels)
            if isinstance(decoded, dict):
                writers[DEAD_LETTER].process(decoded)
                continue
            batch.append(decoded)
            if len(batch) == self.batch_size:
                write(super().process(batch, window, timestamp))
                batch = []
        if batch:
            write(super().process(batch, window, timestamp))
        while self._pending:
            write(self._collect(block=True))
        for fn in writers.values():
            fn.finish_bundle()
        return ()


@dataclass
class CaptionPlan:
    records: list[ImageRecord]                  # still to caption in this run
    captioned_keys: set[str] = field(default_factory=set)
    dead_keys: set[str] = field(default_factory=set)
    skipped_existing: int = 0
    retried_dead_letters: int = 0


def plan_caption_run(records: Sequence[ImageRecord], output_dir: str,
                     retry_dead_letters: bool = False) -> CaptionPlan:
    """Drop records whose key is already captioned (or dead-lettered, unless retried).

    Keys are unique per output folder, not per split (compaction keeps one row per key), and
    folder keys are relative to the split folder: a key already on disk under another split
    is a different image, so it fails here instead of being skipped as done."""
    captioned, dead = read_key_splits(output_dir, CAPTIONS), read_key_splits(output_dir, DEAD_LETTER)
    todo, skipped, retried = [], 0, 0
    for r in records:
        on_disk = captioned.get(r.key, dead.get(r.key))
        if on_disk is not None and on_disk != r.split:
            raise ValueError(f"{output_dir}: key {r.key!r} of split {r.split!r} is already there as split "
                             f"{on_disk!r} (keys must be unique per output folder); caption each split into "
                             f"its own --output, as `textok prepare` does")
        if r.key in captioned or (r.key in dead and not retry_dead_letters):
            skipped += 1
        else:
            retried += r.key in dead
            todo.append(r)
    return CaptionPlan(todo, set(captioned), set(dead), skipped, retried)


def _same_folder(a: str, b: str) -> bool:
    norm = (lambda p: p.rstrip("/") if "://" in p else os.path.realpath(p))  # noqa: E731
    a, b = norm(a), norm(b)
    return a == b or a == norm(FileSystems.join(b, CAPTIONS)) or b == norm(FileSystems.join(a, CAPTIONS))


def select_flagged(records: Sequence[ImageRecord], output_dir: str, flags: str,
                   checks: Sequence[str] | None) -> tuple[list[ImageRecord], dict[str, Any]]:
    """The records whose keys a caption report flagged, and a record of the selection. Refuses to
    write into the captions folder the report read: re-captions are a new version beside the old."""
    from textok.schemas.caption_flags import flagged_keys, parse_checks

    keys, info = flagged_keys(flags, parse_checks(checks) if checks else None)
    source = info.get("captions")
    if source and "://" not in source and not os.path.isabs(source):
        source = None  # a relative path recorded elsewhere cannot be compared; the key check below still holds
    if source and _same_folder(output_dir, source):
        raise ValueError(f"--output {output_dir} is the captions folder {flags} reports on; re-caption into a new "
                         f"folder (e.g. {output_dir.rstrip('/')}_v2) so the old captions stay comparable")
    chosen = [r for r in records if r.key in keys]
    info["keys_in_input"] = len(chosen)
    info["keys_not_in_input"] = len(keys) - len(chosen)
    if keys and not chosen:
        raise ValueError(f"{flags}: none of its {len(keys)} flagged keys is a record of this --input/--split; "
                         "give the input the flagged captions were made from")
    log.info("re-captioning %d flagged keys (%s) of %s", len(chosen), ",".join(info["checks"]), flags)
    return chosen, info


def caption_meta(captioner: Captioner, max_words: int) -> dict[str, Any]:
    """The `textok.meta` of caption files: what made these captions (never secrets)."""
    return {"captioner": captioner.name, "backend": captioner.backend, "model": captioner.model_id,
            "prompt_version": captioner.prompt_version, "prompt_text": captioner.prompt_text,
            "settings": captioner.settings(), "max_words": max_words}


def query_counters(result) -> dict[str, int] | None:
    """Beam counters of namespace "textok", summed over steps (committed where the runner has them);
    None when the runner collects no metrics (Beam's DaskRunner raises NotImplementedError)."""
    totals: dict[str, int] = {}
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except NotImplementedError:
        return None
    for c in counters:
        value = c.committed if c.committed is not None else c.attempted
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(value or 0)
    return totals


def counters_from_parts(output_dir: str, run_id: str, to_caption: int) -> dict[str, int]:
    """The summary's counters rebuilt from the part files this run committed (names carry the run
    id), for runners without metrics. Exact for captioned, dead letters (by reason) and tokens;
    `requests` counts the attempts of committed keys only (those of deferred keys are not on
    disk), and `deferred` is what is neither captioned nor dead-lettered."""
    rows: dict[str, dict[str, dict]] = {CAPTIONS: {}, DEAD_LETTER: {}}
    for table in rows:
        for path in parts_tagged(output_dir, table, f"{run_id}-c*"):  # later parts win, as in compaction
            rows[table].update((r["key"], r) for r in open_parquet(path).read().to_pylist())
    caps, dead = rows[CAPTIONS], {k: r for k, r in rows[DEAD_LETTER].items() if k not in rows[CAPTIONS]}
    out = {"captioned": len(caps), "dead_letter": len(dead), "deferred": max(to_caption - len(caps) - len(dead), 0),
           "input_tokens": sum(r["input_tokens"] or 0 for r in caps.values()),
           "output_tokens": sum(r["output_tokens"] or 0 for r in caps.values())}
    attempts = [int(r["attempts"] or 0) for r in (*caps.values(), *dead.values())
                if r.get("stage", STAGE) == STAGE]  # dead letters of the source/read/decode steps sent nothing
    out["requests"], out["retries"] = sum(attempts), sum(max(a - 1, 0) for a in attempts)
    for r in dead.values():
        out[f"dead_letter_{r['error_type']}"] = out.get(f"dead_letter_{r['error_type']}", 0) + 1
    return out


def _count_rows(output_dir: str, table: str) -> int:
    return sum(open_parquet(p).metadata.num_rows for p in list_table_files(output_dir, table))


def run_caption(input_path: str, output_dir: str, *, source: str = "auto", split: str = "train",
                captioner: str = "provided", captioner_options: dict[str, Any] | None = None,
                max_words: int = DEFAULT_MAX_WORDS, retry_dead_letters: bool = False, commit_every: int = 256,
                commit_seconds: float = 60.0, batch_size: int | None = None, beam_args: Sequence[str] = (),
                source_options: dict[str, Any] | None = None, recaption_flagged: str | None = None,
                recaption_checks: Sequence[str] | None = None,
                records: Sequence[ImageRecord] | None = None) -> dict[str, Any]:
    """Caption one split of a source into output_dir; resumable; returns the run summary.

    `recaption_flagged`: a caption report's flags.parquet; only its flagged keys (any of
    `recaption_checks`, default its `flagged` column) are captioned, into `output_dir`, which must
    not be the folder the report read: the old rows stay as they are, and both versions can be
    reported on and compared (`textok caption-report` on each). The run holds output_dir's writer
    lease (textok.lease) from its first write to its summary.
    `records`: the split's records already listed (`textok prepare` assigns rows without a split
    of their own to exactly one split first); by default the source is listed here."""
    from textok.pipeline.beam_utils import make_pipeline
    from textok.pipeline.cleanup import clean_output

    t0 = time.monotonic()
    rio.set_filesystem_options(beam_args)
    require_output_dir(output_dir)
    if "://" not in output_dir:  # workers (other processes, other cwd) get the same absolute paths
        output_dir = os.path.abspath(output_dir)
    options = {k: v for k, v in (captioner_options or {}).items() if v is not None}
    for key, value in (("max_words", max_words), ("batch_size", batch_size)):
        if value is not None and options.get(key, value) != value:
            raise ValueError(f"{key}={value} disagrees with captioner_options[{key!r}]={options[key]}")
        if value is not None:
            options[key] = value
    batch_size = int(options.get("batch_size", DEFAULT_BATCH_SIZE))
    cap = build_captioner(captioner, options)  # fail on bad options before listing a million files
    with hold_lease(output_dir, "caption") as lease:  # also the destination check: before any listing or work
        if records is None:
            records = list_records(input_path, source, split, **(source_options or {}))
        records = list(records)
        recaption = None
        if recaption_flagged:
            records, recaption = select_flagged(records, output_dir, recaption_flagged, recaption_checks)
        clean_output(output_dir, lease)  # a killed run's temp and to-do files (older than this lease)
        plan = plan_caption_run(records, output_dir, retry_dead_letters)
        log.info("caption %s [%s]: %d records, %d already done, %d to caption with %s",
                 input_path, split, len(records), plan.skipped_existing, len(plan.records), cap.name)
        counters: dict[str, int] = {}
        pipeline_s = 0.0
        if plan.records:
            todo, chunks = write_todo(plan.records, output_dir, CAPTION_CHUNK_BATCHES * batch_size)
            try:
                p = make_pipeline(beam_args)
                meta = caption_meta(cap, max_words)
                if recaption:
                    meta["recaption_of"] = {k: recaption[k] for k in ("flags", "checks", "captions")}
                _ = (p | "Chunks" >> beam.Create(chunks)
                     | "Spread" >> beam.Reshuffle()  # chunks to workers (no fusion with the one-worker Create)
                     | "CaptionChunks" >> beam.ParDo(CaptionChunkFn(
                         captioner, options, max_words, batch_size, cap.needs_pixels, output_dir, meta,
                         commit_every, commit_seconds)))
                t_pipeline = time.monotonic()
                with open_stage("caption", len(plan.records), "images", output=output_dir):
                    result = p.run()
                    result.wait_until_finish()
                pipeline_s = time.monotonic() - t_pipeline
                counters = query_counters(result)
                if counters is None:  # the runner reports no metrics (DaskRunner): count what this run committed
                    counters = counters_from_parts(output_dir, chunks[0].tag.split("-")[0], len(plan.records))
            finally:
                FileSystems.delete([todo])
        compaction = compact(output_dir) if has_parts(output_dir) else None
        wall = time.monotonic() - t0
        summary = _summary(cap, counters, plan, len(records), wall, pipeline_s, compaction, output_dir)
        summary.update({"input": input_path, "split": split, "output": output_dir})
        if recaption:
            summary["recaption_of"] = recaption
        write_json_atomic(summary, FileSystems.join(output_dir, SUMMARY_FILE))
        log.info("caption summary: %s", {k: summary[k] for k in ("captioned", "dead_letter", "deferred",
                                                                 "skipped_existing", "wall_s")})
        if summary["deferred"]:
            log.warning("%d keys were deferred (%s); rerun the same command to caption them", summary["deferred"],
                        deferred_reasons(summary["deferred_by_reason"]))
        return summary


# Why a key was deferred, in words: a server fault must never read as a budget stop (issue 19).
_DEFERRED_WORDS = {"budget_exhausted": "the --max-cost-usd budget", "http_429": "rate limited (HTTP 429)",
                   "connection_error": "server unreachable", "timeout": "server timed out"}


def deferred_reasons(by_reason: dict[str, int]) -> str:
    """"server unreachable: 3, HTTP 502 (server error): 2" from {"connection_error": 3, "http_502": 2}."""
    def words(reason: str) -> str:
        if reason in _DEFERRED_WORDS:
            return _DEFERRED_WORDS[reason]
        if reason.startswith("http_5"):
            return f"HTTP {reason[5:]} (server error)"
        return reason
    return ", ".join(f"{words(k)}: {v}" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1])) or "unknown"


def _summary(cap: Captioner, counters: dict[str, int], plan: CaptionPlan, n_records: int, wall: float,
             pipeline_s: float, compaction: dict | None, output_dir: str) -> dict[str, Any]:
    prefix = "dead_letter_"
    by_reason = {k[len(prefix):]: v for k, v in sorted(counters.items()) if k.startswith(prefix) and v}
    deferred_by_reason = {k[len("deferred_"):]: v for k, v in sorted(counters.items())
                          if k.startswith("deferred_") and v}
    in_tok, out_tok = counters.get("input_tokens", 0), counters.get("output_tokens", 0)
    processed = counters.get("captioned", 0) + counters.get("dead_letter", 0)
    requests = counters.get("requests", 0)
    return {
        "captioner": cap.name, "prompt_version": cap.prompt_version,
        "records": n_records, "skipped_existing": plan.skipped_existing,
        "retried_dead_letters": plan.retried_dead_letters, "to_caption": len(plan.records),
        "captioned": counters.get("captioned", 0), "dead_letter": counters.get("dead_letter", 0),
        "dead_letter_by_reason": by_reason, "deferred": counters.get("deferred", 0),
        "deferred_by_reason": deferred_by_reason,
        "requests": requests, "retries": counters.get("retries", 0),
        "input_tokens": in_tok, "output_tokens": out_tok,
        "estimated_cost_usd": cap.estimate_cost_usd(in_tok, out_tok),
        # Rates over the pipeline's own run time (listing, planning and compaction excluded).
        "wall_s": round(wall, 3), "pipeline_s": round(pipeline_s, 3),
        "images_per_s": round(processed / pipeline_s, 3) if pipeline_s > 0 else None,
        "requests_per_min": round(requests * 60.0 / pipeline_s, 2) if pipeline_s > 0 else None,
        "on_disk": {CAPTIONS: _count_rows(output_dir, CAPTIONS), DEAD_LETTER: _count_rows(output_dir, DEAD_LETTER)},
        "compaction": compaction,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
