"""`textok caption-report` on a captions folder with planted defects, and acting on its flags
(`encode --exclude-flagged`, `caption --recaption-flagged`)."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from html.parser import HTMLParser

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image
from planted_captions import clip_training_pairs, make_planted_captions, train_tiny_clip
from textok.pipeline.captioning.checks import (
    CheckConfig,
    ClassVocabulary,
    check_caption,
    guess_language,
    minhash_signature,
)
from textok.pipeline.captioning.report import (
    ReportConfig,
    format_summary,
    near_duplicates,
    run_caption_report,
)
from textok.schemas.caption_flags import CHECKS, flagged_keys
from textok.schemas.common import validate_file


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("planted"))
    info = make_planted_captions(root)
    clip = train_tiny_clip(os.path.join(root, "clip"), clip_training_pairs(os.path.join(root, "clip_train")),
                           [c for _, c in info["pairs"]])
    report_dir = os.path.join(root, "report")
    # 48 rows: p2 lies between the lowest and the second-lowest score, so one row is flagged clip_low
    report = run_caption_report(info["captions"], report_dir, ReportConfig(clip=clip, clip_percentile=2.0,
                                                                           contact_sheet=10))
    return dict(info, root=root, clip=clip, report=report, report_dir=report_dir)


def test_every_planted_defect_is_flagged_and_json_agrees_with_parquet(planted):
    flags = pq.read_table(os.path.join(planted["report_dir"], "flags.parquet"))
    rows = flags.to_pylist()
    assert [r["key"] for r in rows] == planted["keys"]  # one row per caption, file order
    for check, keys in planted["planted"].items():
        assert {r["key"] for r in rows if r[check]} == keys, check
    report = planted["report"]
    on_disk = json.loads(open(os.path.join(planted["report_dir"], "report.json")).read())
    assert on_disk["flags"] == report["flags"]
    for check in CHECKS:
        assert sum(bool(r[check]) for r in rows) == report["flags"][check], check
    assert sum(r["flagged"] for r in rows) == report["flags"]["flagged"]
    # the swapped caption scores lowest, and the reason says why each row was flagged
    by_key = {r["key"]: r for r in rows}
    swapped = next(iter(planted["planted"]["clip_low"]))
    assert min(rows, key=lambda r: r["clip_score"])["key"] == swapped
    assert "clip_low" in by_key[swapped]["reason"]
    dup = next(iter(planted["planted"]["dup"]))
    assert by_key[dup]["reason"].startswith(f"dup: same text as {planted['keys'][4]}")
    assert not any(by_key[k]["no_class"] for k in planted["keys"][7:8])  # "Carassius auratus" names a goldfish
    assert all(r["reason"] == "" for r in rows if not any(r[c] for c in CHECKS))
    # what the JSON says beside the counts
    assert report["most_common"][0]["count"] == 2
    assert report["dead_letters"]["by_reason"] == {"caption/refusal": 2, "caption/truncated": 1}
    assert set(report["by_prompt_version"]) == {"v1", "v2"}
    assert report["clip"]["model"] == planted["clip"] and report["clip"]["flagged"] == 1
    assert report["language"]["counts"]["fr"] == 1
    assert {c["class_name"] for c in report["classes"]} == {"tench", "goldfish", "Golden Retriever"}
    assert "toilet" not in json.dumps(report["classes"])  # synonyms of the row's own class only
    info = validate_file(os.path.join(planted["report_dir"], "flags.parquet"))
    assert info["table"] == "caption_flags" and info["meta"]["clip"]["model"] == planted["clip"]
    assert "flagged" in format_summary(report)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def test_report_html_is_self_contained_with_every_image(planted):
    text = open(os.path.join(planted["report_dir"], "report.html"), encoding="utf-8").read()
    parser = _Images()
    parser.feed(text)
    flagged = planted["report"]["flags"]["flagged"]
    assert flagged == 9 and len(parser.srcs) == 4 + 9  # words, flags, clip, classes figures + each flagged row
    for src in parser.srcs:
        assert src.startswith("data:image/"), src[:40]
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    swapped = next(iter(planted["planted"]["clip_low"]))
    assert swapped in text and "image not shown" not in text


def test_row_checks_units():
    vocab, cfg = ClassVocabulary(), CheckConfig()
    assert guess_language("Ein Hund liegt auf dem Gras neben der Tür.") == "de"
    assert guess_language("A dog lying on the grass next to a door.") == "en"
    assert guess_language("Red fox, snow") == "und"
    assert guess_language("雪の中の赤いキツネがいます") == "non-latin"
    assert check_caption("Two bathroom tissue rolls on a shelf", label=999, class_name="toilet paper", vocab=vocab,
                         config=cfg).no_class is False  # a WordNet lemma of the class
    assert check_caption("A white roll on a shelf", label=999, class_name="toilet paper", vocab=vocab,
                         config=cfg).no_class is True
    assert check_caption("Sure! A cat on a mat.", label=None, class_name=None, vocab=vocab, config=cfg).boilerplate
    # near duplicates: an added word is found, a different caption of shared words is not
    texts = ["a red fox in deep snow beside a pine tree at dusk", "a red fox in deep snow beside a pine tree at dusk today",
             "a red car in deep traffic beside a shop at noon"]
    import numpy as np

    sigs = [minhash_signature(t) for t in texts]
    bands, signatures = np.stack([s[0] for s in sigs]), np.stack([s[1] for s in sigs])
    exact = np.arange(3, dtype=np.int64)
    near, partner, _ = near_duplicates(bands, signatures, exact, 0.8)
    assert near.tolist() == [False, True, False] and partner[1] == 0


def test_encode_exclude_flagged_leaves_exactly_the_flagged_keys_out(planted, tmp_path):
    from test_text_encoder import build_tiny_t5
    from textok.pipeline.encode.pipeline import run_encode

    t5 = build_tiny_t5(str(tmp_path / "t5"))
    flags = os.path.join(planted["report_dir"], "flags.parquet")
    summary = run_encode(planted["captions"], str(tmp_path / "data"), encoder=t5, rows_per_shard=16,
                         exclude_flagged=flags, exclude_checks=["dup", "short", "non_english"])
    shards = sorted((tmp_path / "data" / "shards").glob("train-*.parquet"))
    keys = [k for s in shards for k in pq.read_table(s, columns=["key"])["key"].to_pylist()]
    excluded = planted["planted"]["dup"] | planted["planted"]["short"] | planted["planted"]["non_english"]
    assert sorted(keys) == sorted(set(planted["keys"]) - excluded) and len(keys) == len(set(keys))
    meta = json.loads(pq.read_schema(shards[0]).metadata[b"textok.meta"])
    assert meta["excluded_flagged"]["checks"] == ["dup", "short", "non_english"]
    assert meta["excluded_flagged"]["keys_in_split"] == len(excluded) == summary["excluded_flagged"]["keys"]
    # default: the `flagged` column (every check but non_ascii)
    default, _ = flagged_keys(flags)
    assert default == set().union(*planted["planted"].values())


def test_recaption_flagged_writes_a_new_version_and_leaves_the_old_rows(planted, tmp_path):
    from textok.pipeline.captioning.pipeline import run_caption

    flags = os.path.join(planted["report_dir"], "flags.parquet")
    old = {p: hashlib.sha256(open(p, "rb").read()).hexdigest()
           for p in (os.path.join(planted["captions"], "captions", f) for f in ("part-0.parquet", "part-1.parquet"))}
    with pytest.raises(ValueError, match="new folder"):
        run_caption(planted["manifest"], planted["captions"], source="manifest", captioner="template",
                    recaption_flagged=flags)
    out = str(tmp_path / "cap_v2")
    summary = run_caption(planted["manifest"], out, source="manifest", captioner="template",
                          captioner_options={"template": "a photo of a {class_name}"},
                          recaption_flagged=flags, recaption_checks=["short", "boilerplate"])
    new = pq.read_table(os.path.join(out, "captions")).to_pylist()
    assert {r["key"] for r in new} == planted["planted"]["short"] | planted["planted"]["boilerplate"]
    assert summary["recaption_of"]["checks"] == ["short", "boilerplate"]
    meta = json.loads(pq.read_schema(next((tmp_path / "cap_v2" / "captions").glob("*.parquet"))).metadata[b"textok.meta"])
    assert meta["recaption_of"]["flags"] == flags
    assert old == {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in old}


def test_cli_summary_remote_output_and_errors(planted, tmp_path):
    from test_remote_write import (
        STORE,  # registers the memfs:// Beam filesystem (object-store semantics)
    )
    from textok.cli import main

    STORE.clear()
    for sub in ("captions/part-0.parquet", "captions/part-1.parquet", "dead_letter/part-0.parquet"):
        STORE[f"memfs://bkt/cap/{sub}"] = open(os.path.join(planted["captions"], sub), "rb").read()
    result = CliRunner().invoke(main, ["caption-report", "--captions", "memfs://bkt/cap", "--output",
                                       "memfs://bkt/report", "--contact-sheet", "3"])
    assert result.exit_code == 0, result.output
    assert "flagged" in result.output and "dead letters: 3" in result.output
    report = json.loads(STORE["memfs://bkt/report/report.json"])
    assert report["flags"]["short"] == 2 and report["rows"] == 48
    flags = pq.read_table(io.BytesIO(STORE["memfs://bkt/report/flags.parquet"]))
    assert sum(flags["short"].to_pylist()) == 2
    assert not [k for k in STORE if ".inflight-" in k]
    bad = CliRunner().invoke(main, ["caption-report", "--captions", str(tmp_path / "nope"), "--output",
                                    str(tmp_path / "r")])
    assert bad.exit_code == 1 and "Error:" in bad.output and "nope" in bad.output
    bad = CliRunner().invoke(main, ["encode", "--captions", planted["captions"], "--output", str(tmp_path / "d"),
                                    "--exclude-flagged", os.path.join(planted["report_dir"], "flags.parquet"),
                                    "--flags", "dupe"])
    assert bad.exit_code != 0 and "unknown check" in bad.output
