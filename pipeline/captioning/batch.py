"""Caption with Gemini Batch Mode: half the price, results within 24 h, submitted once.

    export GEMINI_API_KEY=...
    textok caption --input /data/imagenet --split val --output out/val_caps --captioner gemini \
        --model gemini-2.5-flash-lite --gemini-mode batch --max-cost-usd 20      # submit, report, exit
    textok caption ... same command ...            # later: polls the jobs, writes what has ended
    textok caption ... same command ... --wait     # or block until every job has ended
    textok batch-status out/val_caps               # jobs, states, counts, age, cost

One run: (1) finish what a killed run left half-done (see pipeline/captioning/batch_ledger.py for the
phases: an orphaned upload is created or discovered by its display name, never created
twice); (2) plan: keys already captioned or dead-lettered on disk, and keys of jobs still
in flight, are not sent; keys whose lines failed retryably are sent again in a new job;
(3) submit the rest, within --max-cost-usd at batch prices, in JSONL files split by
requests and bytes per job; (4) poll every submitted job (with --wait: with backoff until
all have ended, resubmitting retryable keys up to --batch-max-attempts); an ended job's
results are mapped back by request key and go through the same caption rules and durable
part-file writer as the synchronous path, and only then is the job marked collected. A
kill while writing leaves committed parts; the rerun collects the job again and skips the
keys already on disk, and compaction keeps every key in exactly one table.
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from textok.pipeline.captioning.batch_ledger import (COLLECTED, CREATING, PREPARED, SUBMITTED, JobEntry, fault_point, load_all,
                                          new_entry_id, now_iso, requests_dir, save)
from textok.pipeline.captioning.pipeline import (caption_meta, dead_letter_row, plan_caption_run, result_row)
from textok.pipeline.captioning.rules import DEFAULT_MAX_WORDS
from textok.atomic import write_json_atomic
from textok.pipeline.captioning.store import (CAPTIONS, DEAD_LETTER, SUMMARY_FILE, WritePartsFn, compact,
                                           has_parts, list_table_files, open_parquet)
from textok.pipeline.captioning.captioners.base import CaptionResult
from textok.pipeline.captioning.captioners.prompt import build_prompt
from textok.pipeline.captioning.captioners.gemini import (GeminiCaptioner, estimate_input_tokens, from_options,
                                               generation_settings, request_jpeg)
from textok.pipeline.captioning.captioners.gemini_batch import (BATCH_PRICE_FACTOR, DEFAULT_MAX_FILE_MB, DEFAULT_MAX_REQUESTS,
                                                     MAX_FILE_BYTES_API, SUCCEEDED, BatchAPIError, BatchClient,
                                                     parse_result_line, request_line)
from textok.schemas.images import ImageDecodeError, decode_image
from textok.pipeline.sources.records import ImageRecord, list_records, read_image_bytes

log = logging.getLogger("textok.caption")

IMAGENET_1K_IMAGES = 1_281_167 + 50_000   # train + val
PROJECTION_OUTPUT_TOKENS = 100            # assumed answer length until results show the real one


@dataclass
class BatchOptions:
    wait: bool = False
    max_requests_per_job: int = DEFAULT_MAX_REQUESTS
    max_file_mb: float = DEFAULT_MAX_FILE_MB
    poll_s: float = 30.0
    poll_max_s: float = 600.0
    max_attempts: int = 3
    encode_workers: int = 4

    def __post_init__(self):
        if self.max_requests_per_job < 1 or self.max_attempts < 1 or self.poll_s <= 0:
            raise ValueError("--batch-max-requests and --batch-max-attempts must be >= 1, --batch-poll-seconds > 0")
        if not 0 < self.max_file_mb * 1024 * 1024 <= MAX_FILE_BYTES_API:
            raise ValueError(f"--batch-max-file-mb must be in (0, {MAX_FILE_BYTES_API // 1024 ** 2}] "
                             "(the Batch Mode input file limit is 2 GB)")


class _Writers:
    """The synchronous path's part writers (caption_store.WritePartsFn), driven outside Beam: one pair
    per caption metadata, because jobs submitted with another model or prompt keep theirs (their
    part files, and the compacted files after them, carry the metadata the job was sent with)."""

    def __init__(self, output_dir: str, commit_every: int, commit_seconds: float):
        self.output_dir, self.commit_every, self.commit_seconds = output_dir, commit_every, commit_seconds
        self.by_meta: dict[str, dict[str, WritePartsFn]] = {}

    def _fns(self, meta: dict) -> dict[str, WritePartsFn]:
        tag = json.dumps(meta, sort_keys=True, default=str)
        if tag not in self.by_meta:
            fns = {t: WritePartsFn(self.output_dir, t, meta, self.commit_every, self.commit_seconds)
                   for t in (CAPTIONS, DEAD_LETTER)}
            for fn in fns.values():
                fn.setup()
                fn.start_bundle()
            self.by_meta[tag] = fns
        return self.by_meta[tag]

    def add(self, table: str, row: dict, meta: dict) -> None:
        self._fns(meta)[table].process(row)

    def flush(self) -> None:
        for fns in self.by_meta.values():
            for fn in fns.values():
                fn.finish_bundle()
                fn.start_bundle()


class BatchRun:
    def __init__(self, output_dir: str, cap: GeminiCaptioner, client: BatchClient, records: list[ImageRecord],
                 opts: BatchOptions, max_words: int, writers: _Writers, captioned: set, dead: set):
        self.output_dir, self.cap, self.client, self.opts, self.max_words = output_dir, cap, client, opts, max_words
        self.by_key = {r.key: r for r in records}
        self.writers, self.captioned, self.dead = writers, captioned, dead
        self.generation = generation_settings(cap.max_output_tokens, cap.temperature, cap.thinking_budget)
        self.meta = caption_meta(cap, max_words)  # what new jobs are submitted with
        self.stats: collections.Counter = collections.Counter()
        self.dead_by_reason: collections.Counter = collections.Counter()
        self.attempts: collections.Counter = collections.Counter()

    # -- costs -----------------------------------------------------------------------------
    def batch_cost(self, input_tokens: int, output_tokens: int) -> Optional[float]:
        sync = self.cap.estimate_cost_usd(input_tokens, output_tokens)
        return None if sync is None else sync * BATCH_PRICE_FACTOR

    def worst_cost(self, record: ImageRecord) -> float:
        prompt = build_prompt(record.class_name, self.cap.class_hint, self.cap.max_words)
        return self.batch_cost(estimate_input_tokens(prompt), self.cap.max_output_tokens) or 0.0

    # -- submit ----------------------------------------------------------------------------
    def _encode(self, record: ImageRecord):
        try:
            image = decode_image(read_image_bytes(record.source_uri), uri=record.source_uri)
        except ImageDecodeError as e:
            return None, dead_letter_row(record, "read" if e.error_type == "read_error" else "decode",
                                         e.error_type, e.message)
        prompt = build_prompt(record.class_name, self.cap.class_hint, self.cap.max_words)
        jpeg = request_jpeg(image, self.cap.image_max_side, self.cap.jpeg_quality)
        return (request_line(record.key, jpeg, prompt, self.generation), [image.width, image.height]), None

    def submit(self, todo: list[ImageRecord]) -> list[JobEntry]:
        """Write request files split by the per-job limits; upload and create one job per file."""
        entries: list[JobEntry] = []
        max_bytes = int(self.opts.max_file_mb * 1024 * 1024)
        cur: Optional[dict] = None
        with concurrent.futures.ThreadPoolExecutor(self.opts.encode_workers) as pool:
            for start in range(0, len(todo), 256):  # bounded memory: 256 encoded images at a time
                chunk = todo[start:start + 256]
                for record, (ok, dead_row) in zip(chunk, pool.map(self._encode, chunk)):
                    if dead_row is not None:
                        self._write(DEAD_LETTER, dead_row, self.meta)
                        continue
                    line, size = ok
                    if cur is not None and (len(cur["keys"]) >= self.opts.max_requests_per_job
                                            or cur["bytes"] + len(line) > max_bytes):
                        entries.append(self._close(cur))
                        cur = None
                    if cur is None:
                        cur = self._open()
                    cur["file"].write(line)
                    fault_point("request_file")  # a kill here leaves a request file no ledger entry names
                    cur["bytes"] += len(line)
                    cur["keys"].append(record.key)
                    cur["sizes"][record.key] = size
                    cur["cost"] += self.worst_cost(record)
        if cur is not None:
            entries.append(self._close(cur))
        self.writers.flush()
        return entries

    def _open(self) -> dict:
        eid = new_entry_id()
        path = FileSystems.join(requests_dir(self.output_dir), f"{eid}.jsonl")
        return {"id": eid, "path": path, "file": FileSystems.create(path), "bytes": 0, "keys": [], "sizes": {},
                "cost": 0.0}

    def _close(self, cur: dict) -> JobEntry:
        cur["file"].close()
        entry = JobEntry(id=cur["id"], display_name=f"textok-{cur['id']}", model=self.cap.model_id,
                         prompt_version=self.cap.prompt_version, keys=cur["keys"], sizes=cur["sizes"],
                         request_file=cur["path"], request_bytes=cur["bytes"], est_cost_usd=round(cur["cost"], 6),
                         caption_meta=self.meta)
        save(entry, self.output_dir)  # the intent record: on disk before anything is sent
        self.advance(entry, recovering=False)
        return entry

    def advance(self, e: JobEntry, recovering: bool) -> None:
        """prepared -> creating -> submitted; each phase on disk before the next call is made."""
        if e.phase == PREPARED:
            e.uploaded_file = self._upload(e)
            fault_point("after_upload")
            e.phase = CREATING
            save(e, self.output_dir)
            fault_point("before_create")
        if e.phase == CREATING:
            job = self.client.find(e.display_name) if recovering else None
            if job is None:
                try:
                    job = self.client.create(e.model, e.uploaded_file, e.display_name)
                except BatchAPIError as err:
                    if not recovering or err.code not in (400, 404):
                        raise  # no answer: the job may exist; the next run finds it by display name
                    # A rejected create of a recovered entry: its upload (older than 48 h?) is
                    # gone. Upload the kept request file again, once.
                    log.warning("creating %s from %s failed; uploading its request file again", e.display_name,
                                e.uploaded_file)
                    e.phase = PREPARED
                    return self.advance(e, recovering=False)
                fault_point("after_create")
                self.stats["jobs_created"] += 1
                self.stats["requests_submitted"] += len(e.keys)
            else:
                self.stats["jobs_discovered"] += 1
            e.job_name, e.remote_state, e.submitted_at, e.phase = job.name, job.state, now_iso(), SUBMITTED
            save(e, self.output_dir)
            # The job holds its own copy now; a failed job's keys are encoded afresh into a new file.
            FileSystems.delete([e.request_file])
            log.info("batch job %s (%s): %d requests, est. <= $%.4f", e.job_name, e.display_name, len(e.keys),
                     e.est_cost_usd)

    def _upload(self, e: JobEntry) -> str:
        if "://" not in e.request_file:
            return self.client.upload(e.request_file, e.display_name)
        with tempfile.TemporaryDirectory() as tmp:  # the Files API uploads from a local file
            local = os.path.join(tmp, os.path.basename(e.request_file))
            with FileSystems.open(e.request_file) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return self.client.upload(local, e.display_name)

    # -- poll and collect --------------------------------------------------------------------
    def poll(self, entries: list[JobEntry]) -> None:
        """Poll submitted jobs once (or, with --wait, with backoff until none is running); collect ended ones."""
        delay = self.opts.poll_s
        while True:
            for e in [e for e in entries if e.phase == SUBMITTED]:
                job = self.client.get(e.job_name)
                self.stats["polls"] += 1
                fault_point("poll")
                e.remote_state, e.polled_at = job.state, now_iso()
                if job.state in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_QUEUED",
                                 "JOB_STATE_UNSPECIFIED"):
                    save(e, self.output_dir)
                else:
                    self.collect(e, job)
            running = [e for e in entries if e.phase == SUBMITTED]
            if not running or not self.opts.wait:
                return
            log.info("%d batch job(s) still running; next poll in %.0f s", len(running), delay)
            time.sleep(delay)
            delay = min(delay * 1.5, self.opts.poll_max_s)

    def entry_meta(self, e: JobEntry) -> dict:
        """The caption metadata `e` was submitted with (the ledger is the source of truth). Entries
        written before it was recorded keep their ledger model and prompt version; the settings
        they lack are marked as taken from the collecting run."""
        if e.caption_meta:
            return e.caption_meta
        meta = dict(self.meta, captioner=f"gemini:{e.model}", model=e.model, prompt_version=e.prompt_version,
                    settings={**self.meta["settings"], "model_id": e.model})
        if e.prompt_version != self.meta["prompt_version"]:
            meta["prompt_text"] = None
        meta["provenance"] = "model and prompt version from the batch ledger; other settings from the collecting run"
        return meta

    def read_results(self, e: JobEntry, data: bytes) -> dict[str, CaptionResult]:
        """Result lines -> one result per key this job sent. A line whose key is not a string, or a key
        with two different answers, never crashes the collection (a crash would repeat on every rerun
        and strand the job): it becomes a non-retryable dead letter that says what the file held."""
        results: dict[str, CaptionResult] = {}
        conflicts: dict[str, list[str]] = {}
        for line in data.splitlines():
            if not line.strip():
                continue
            key, res = parse_result_line(line)
            if key is None:
                self.stats["unreadable_result_lines"] += 1
                continue
            if not isinstance(key, str):
                self.stats["bad_key_result_lines"] += 1
                sent = str(key) if not isinstance(key, (dict, list)) and str(key) in e.sizes else None
                log.warning("batch job %s: a result line has key %r (%s, not a string)", e.job_name,
                            key, type(key).__name__)
                if sent is None:
                    continue
                res = CaptionResult(sent, error_type="invalid_result_key", message=(
                    f"the batch result line for this request has key {key!r} ({type(key).__name__}), not the string "
                    f"{sent!r} that was sent; its answer is not trusted"))
                key = sent
            if key not in e.sizes:  # never attach an answer to a key this job did not send
                self.stats["foreign_result_lines"] += 1
                continue
            if key in results and _answer(results[key]) != _answer(res):
                conflicts.setdefault(key, [_answer(results[key])]).append(_answer(res))
                continue
            results.setdefault(key, res)
        for key, answers in conflicts.items():
            self.stats["conflicting_result_keys"] += 1
            shown = " | ".join(repr(a[:200]) for a in answers)
            results[key] = CaptionResult(key, error_type="conflicting_results", attempts=1, message=(
                f"the batch result file holds {len(answers)} different answers for this key: {shown}"))
        return results

    def collect(self, e: JobEntry, job) -> None:
        results: dict[str, CaptionResult] = {}
        reason = None
        meta = self.entry_meta(e)
        provenance = SimpleNamespace(name=meta["captioner"], prompt_version=meta["prompt_version"])
        max_words = int(meta.get("max_words") or self.max_words)
        if job.result_file:
            results = self.read_results(e, self.client.download(job.result_file))
        else:
            reason = f"batch job {e.job_name} ended {job.state}" + (" without a result file" if job.state == SUCCEEDED
                                                                     else "")
            log.warning("%s: its %d keys are resubmitted (up to --batch-max-attempts)", reason, len(e.keys))
        attempts = self.attempts
        in_tok = out_tok = 0
        written = collections.Counter()
        for key in e.keys:
            record = self.by_key.get(key)
            if record is None or key in self.captioned or key in self.dead:
                continue  # written before a crash, or no longer in the input
            res = results.get(key) or CaptionResult(
                key, retryable=True, error_type="batch_" + job.state.rsplit("_", 1)[-1].lower() if reason else
                "missing_from_results", message=reason or "the result file has no line for this key")
            in_tok += res.input_tokens or 0
            out_tok += res.output_tokens or 0
            if res.retryable:
                tries = attempts[key] + 1
                if tries < self.opts.max_attempts:
                    e.retry[key] = f"{res.error_type}: {res.message}"
                    continue
                res = CaptionResult(key, error_type=res.error_type, attempts=tries,
                                    message=f"{res.message} (gave up after {tries} batch attempts)")
            res.attempts = max(res.attempts, attempts[key] + 1)
            width, height = e.sizes[key]
            table, row = result_row(record, res, provenance, max_words, width, height)
            self._write(table, row, meta)
            written[table] += 1
            fault_point("write")
        self.writers.flush()  # committed before the entry says collected
        e.outcome = {"state": job.state, "results": len(results), "captioned": written[CAPTIONS],
                     "dead_letter": written[DEAD_LETTER], "input_tokens": in_tok, "output_tokens": out_tok,
                     "cost_usd": self.batch_cost(in_tok, out_tok), "retry": len(e.retry), "reason": reason}
        e.result_file, e.ended_at, e.phase = job.result_file, now_iso(), COLLECTED
        save(e, self.output_dir)
        self.stats["jobs_collected"] += 1
        self.stats["input_tokens"] += in_tok
        self.stats["output_tokens"] += out_tok

    def _write(self, table: str, row: dict, meta: dict) -> None:
        self.writers.add(table, row, meta)
        (self.captioned if table == CAPTIONS else self.dead).add(row["key"])
        self.stats[table] += 1
        if table == DEAD_LETTER:
            self.dead_by_reason[row["error_type"]] += 1

    def load_attempts(self, entries: list[JobEntry]) -> None:
        """Batch attempts per key so far: one per collected job whose line for it failed retryably."""
        self.attempts = collections.Counter(k for e in entries if e.phase == COLLECTED for k in e.retry)


def _answer(res: CaptionResult) -> str:
    """What a result line said, for comparing duplicates and naming them in a dead letter."""
    return res.text if res.error_type is None and res.text is not None else f"[{res.error_type}] {res.message or ''}"


def run_batch_caption(input_path: str, output_dir: str, *, source: str = "auto", split: str = "train",
                      captioner_options: dict[str, Any] | None = None, max_words: int = DEFAULT_MAX_WORDS,
                      retry_dead_letters: bool = False, commit_every: int = 256, commit_seconds: float = 60.0,
                      batch: BatchOptions | None = None, source_options: dict[str, Any] | None = None,
                      beam_args: Sequence[str] = ()) -> dict:
    """Submit / poll / collect Batch Mode jobs for one split into output_dir; returns the run summary.
    The whole run holds output_dir's writer lease: a second run on the same folder is refused before
    it can submit anything (two runs would each pay for every key). `beam_args` carry storage
    options (--s3_endpoint_url ...) for an object-store output."""
    from textok import storage as rio
    from textok.lease import hold_lease

    t0 = time.monotonic()
    opts = batch or BatchOptions()
    rio.set_filesystem_options(beam_args)
    if "://" not in output_dir:
        output_dir = os.path.abspath(output_dir)
    rio.check_destination(output_dir)
    with hold_lease(output_dir, "caption --gemini-mode batch") as lease:
        return _run_batch_held(input_path, output_dir, lease, t0, opts, source, split, captioner_options, max_words,
                               retry_dead_letters, commit_every, commit_seconds, source_options)


def _run_batch_held(input_path, output_dir, lease, t0, opts, source, split, captioner_options, max_words,
                    retry_dead_letters, commit_every, commit_seconds, source_options) -> dict:
    from textok.pipeline.cleanup import clean_output

    options = {k: v for k, v in (captioner_options or {}).items() if v is not None}
    if options.get("vertex_project"):
        raise ValueError("--gemini-mode batch uses the Gemini Developer API (GEMINI_API_KEY); Vertex AI batch "
                         "prediction is not supported: drop --vertex-project/--vertex-location or use sync mode")
    cap = from_options({**options, "max_words": max_words})
    client = BatchClient(cap.base_url, max(cap.timeout_s, 600.0))
    records = list_records(input_path, source, split, **(source_options or {}))
    clean_output(output_dir, lease)  # orphaned request files and temp files of killed runs
    plan = plan_caption_run(records, output_dir, retry_dead_letters)
    writers = _Writers(output_dir, commit_every, commit_seconds)
    run = BatchRun(output_dir, cap, client, records, opts, max_words, writers, set(plan.captioned_keys),
                   set() if retry_dead_letters else set(plan.dead_keys))
    entries = load_all(output_dir)
    for e in entries:  # a killed run's half-done submissions: never create a second job for one entry
        if e.phase in (PREPARED, CREATING):
            run.advance(e, recovering=True)
    budget_deferred, budget_left = 0, cap.max_cost_usd
    for _round in range(opts.max_attempts + 2):
        collected_before = run.stats["jobs_collected"]
        run.load_attempts(entries)
        in_flight = {k for e in entries if e.in_flight for k in e.keys}
        todo = [r for r in records if r.key not in run.captioned and r.key not in run.dead and r.key not in in_flight]
        todo, budget_deferred = _within_budget(run, todo, budget_left)
        new = run.submit(todo) if todo else []
        if budget_left is not None:  # one budget for the whole run, however many rounds --wait makes
            budget_left -= sum(e.est_cost_usd for e in new)
        entries += new
        run.poll(entries)
        # Without --wait: one pass. With it: go on while jobs ended this round (their retryable
        # keys, if any, are the next round's todo) or new ones were submitted.
        if not opts.wait or (not new and run.stats["jobs_collected"] == collected_before):
            break
    writers.flush()
    compaction = compact(output_dir) if has_parts(output_dir) else None
    summary = batch_summary(run, entries, plan, records, budget_deferred, compaction, time.monotonic() - t0)
    summary.update({"input": input_path, "split": split, "output": output_dir})
    write_json_atomic(summary, FileSystems.join(output_dir, SUMMARY_FILE))
    return summary


def _within_budget(run: BatchRun, todo: list[ImageRecord], max_cost_usd: Optional[float]):
    """--max-cost-usd applies before submission, at batch prices, to this run's new requests."""
    if max_cost_usd is None:
        return todo, 0
    spent = 0.0
    for i, r in enumerate(todo):
        spent += run.worst_cost(r)
        if spent > max_cost_usd:
            log.warning("--max-cost-usd %.4f: submitting %d of %d requests (worst case at batch prices); rerun "
                        "with a larger budget for the rest", max_cost_usd, i, len(todo))
            return todo[:i], len(todo) - i
    return todo, 0


def _count_rows(output_dir: str, table: str) -> int:
    return sum(open_parquet(p).metadata.num_rows for p in list_table_files(output_dir, table))


def cost_projection(run: BatchRun, entries: list[JobEntry], n_images: int) -> dict[str, Any]:
    """Sync vs batch cost of captioning n_images: the prompt's estimated input tokens, and the mean
    answer length of every job collected so far (PROJECTION_OUTPUT_TOKENS before any)."""
    prompt = build_prompt("tench", run.cap.class_hint, run.cap.max_words)
    in_tok = estimate_input_tokens(prompt)
    n_caps = sum(e.outcome.get("captioned", 0) for e in entries if not e.in_flight)
    out_total = sum(e.outcome.get("output_tokens", 0) for e in entries if not e.in_flight)
    out_tok = out_total / n_caps if n_caps else PROJECTION_OUTPUT_TOKENS
    sync = run.cap.estimate_cost_usd(in_tok * n_images, out_tok * n_images)
    return {"images": n_images, "input_tokens_per_image": in_tok, "output_tokens_per_image": round(out_tok, 1),
            "output_tokens_from": "results" if n_caps else "assumed",
            "sync_usd": None if sync is None else round(sync, 2),
            "batch_usd": None if sync is None else round(sync * BATCH_PRICE_FACTOR, 2)}


def batch_summary(run: BatchRun, entries: list[JobEntry], plan, records: list, budget_deferred: int,
                  compaction: Optional[dict], wall: float) -> dict[str, Any]:
    s = run.stats
    phases = collections.Counter(e.phase if e.phase != SUBMITTED else e.remote_state for e in entries)
    in_flight = [e for e in entries if e.in_flight]
    return {
        "captioner": run.cap.name, "prompt_version": run.cap.prompt_version, "mode": "batch",
        "records": len(records), "skipped_existing": plan.skipped_existing,
        "captioned": s[CAPTIONS], "dead_letter": s[DEAD_LETTER], "dead_letter_by_reason": dict(run.dead_by_reason),
        "deferred": budget_deferred + sum(len(e.keys) for e in in_flight),
        "input_tokens": s["input_tokens"], "output_tokens": s["output_tokens"],
        "estimated_cost_usd": run.batch_cost(s["input_tokens"], s["output_tokens"]),
        "wall_s": round(wall, 3),
        "on_disk": {CAPTIONS: _count_rows(run.output_dir, CAPTIONS),
                    DEAD_LETTER: _count_rows(run.output_dir, DEAD_LETTER)},
        "compaction": compaction, "finished_at": now_iso(),
        "batch": {
            "jobs_total": len(entries), "jobs_by_state": dict(phases),
            "jobs_created_this_run": s["jobs_created"], "jobs_discovered_this_run": s["jobs_discovered"],
            "requests_submitted_this_run": s["requests_submitted"], "jobs_collected_this_run": s["jobs_collected"],
            "requests_in_flight": sum(len(e.keys) for e in in_flight),
            "keys_to_resubmit": len({k for e in entries if e.phase == COLLECTED for k in e.retry}
                                    - run.captioned - run.dead),
            "budget_deferred": budget_deferred, "polls": s["polls"],
            "unreadable_result_lines": s["unreadable_result_lines"],
            "bad_key_result_lines": s["bad_key_result_lines"],
            "conflicting_result_keys": s["conflicting_result_keys"],
            "foreign_result_lines": s["foreign_result_lines"],
            "estimated_cost_usd_all_jobs": round(sum((e.outcome.get("cost_usd") or 0.0) if not e.in_flight
                                                     else e.est_cost_usd for e in entries), 6),
            "price_factor_vs_sync": BATCH_PRICE_FACTOR,
            "projection": {"whole_input": cost_projection(run, entries, len(records)),
                           "imagenet_1k": cost_projection(run, entries, IMAGENET_1K_IMAGES)},
        },
    }
