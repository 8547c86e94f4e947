"""`textok caption`, `textok compact`, `textok make-demo-data` through click's CliRunner."""
from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
from click.testing import CliRunner

from textok.cli import main
from textok.pipeline.captioning.store import CAPTIONS, DEAD_LETTER, PART_PREFIX, list_table_files
from textok.pipeline.commands.options import captioner_options
from test_caption_pipeline import PLUGIN, make_folder


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_make_demo_data_then_caption_provided_from_its_manifest(tmp_path):
    demo = tmp_path / "demo"
    r = invoke("make-demo-data", "--out", str(demo), "--n", "12", "--size", "16", "--val-fraction", "0.25")
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout)
    assert made["splits"] == {"train": 9, "val": 3}
    out = tmp_path / "caps"
    # --direct_running_mode is not ours: it must reach Beam untouched.
    r = invoke("caption", "--input", str(demo / "manifest.jsonl"), "--output", str(out), "--captioner", "provided",
               "--split", "val", "--direct_running_mode", "in_memory")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert (summary["captioned"], summary["dead_letter"], summary["split"]) == (3, 0, "val")
    manifest = [json.loads(line) for line in (demo / "manifest.jsonl").read_text().splitlines()]
    expected = {m["key"]: m["caption"] for m in manifest if m["split"] == "val"}
    rows = pq.read_table(list_table_files(str(out), CAPTIONS)).to_pylist()
    assert {r["key"]: r["caption"] for r in rows} == expected
    assert json.loads((out / "caption_summary.json").read_text())["captioned"] == 3


def test_caption_plugin_with_captioner_opts_and_rerun_skips(tmp_path):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    args = ["caption", "--input", data, "--output", str(out), "--captioner", PLUGIN, "--batch-size", "3",
            "--captioner-opt", 'refuse=["blue/0"]', "--commit-every", "1"]
    summary = json.loads(invoke(*args).stdout)
    assert summary["captioned"] == 8
    assert summary["dead_letter_by_reason"] == {"empty_file": 1, "not_an_image": 1, "refusal": 1, "truncated": 1}
    again = json.loads(invoke(*args).stdout)
    assert (again["skipped_existing"], again["to_caption"], again["compaction"]) == (12, 0, None)


def test_configuration_errors_are_one_clear_line(tmp_path):
    data = make_folder(tmp_path / "data", corrupt=False)
    r = CliRunner().invoke(main, ["caption", "--input", data, "--output", str(tmp_path / "o"),
                                  "--captioner", "bogus"])
    assert r.exit_code == 2 and "choose one of provided, template, gemini, local" in r.output
    r = CliRunner().invoke(main, ["caption", "--input", data, "--output", str(tmp_path / "o"),
                                  "--captioner", "template", "--rpm", "10"])
    assert r.exit_code == 1 and "captioner 'template' does not use option(s) ['rpm']" in r.output
    assert not (tmp_path / "o").exists()  # rejected before anything ran
    r = CliRunner().invoke(main, ["caption", "--input", data, "--output", str(tmp_path / "o"),
                                  "--captioner", "local"])
    assert r.exit_code == 1 and "--captioner local" in r.output and "--model" in r.output
    r = CliRunner().invoke(main, ["caption", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"),
                                  "--captioner", "provided"])
    assert r.exit_code == 1 and "missing" in r.output and "no such file" in r.output


def test_compact_command_merges_parts(tmp_path):
    data = make_folder(tmp_path / "data", corrupt=False)
    out = tmp_path / "out"
    import apache_beam as beam

    from textok.pipeline.beam_utils import make_pipeline
    from textok.pipeline.captioning.pipeline import CaptionImages, WriteCaptionParts, caption_meta
    from textok.pipeline.captioning.captioners import build_captioner
    from textok.pipeline.sources.records import list_records

    # A caller's pipeline (as `textok prepare` builds one) leaves part files behind.
    with make_pipeline() as p:
        outs = p | beam.Create(list_records(data)) | CaptionImages("template", {}, batch_size=2)
        outs | WriteCaptionParts(str(out), caption_meta(build_captioner("template", {}), 75), commit_every=2)
    parts = list_table_files(str(out), CAPTIONS)
    assert len(parts) == 5 and all(os.path.basename(p).startswith(PART_PREFIX) for p in parts)
    r = invoke("compact", str(out))
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout)
    assert stats[CAPTIONS] == {"files_in": 5, "files_out": 1, "rows": 9, "duplicates_dropped": 0}
    assert stats[DEAD_LETTER]["rows"] == 0
    assert len(list_table_files(str(out), CAPTIONS)) == 1
    r = CliRunner().invoke(main, ["compact", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "no Parquet files under captions/ or dead_letter/" in r.output


def test_captioner_options_pass_only_what_the_user_set():
    kwargs = {"model": "gemini-x", "template": None, "class_hint": False, "rpm": 100.0, "tpm": None,
              "max_in_flight": None, "timeout": 30.0, "max_retries": None, "max_cost_usd": None,
              "gemini_base_url": "http://127.0.0.1:1", "vertex_project": None, "vertex_location": None,
              "price_table": None, "device": None, "max_new_tokens": None, "task_prompt": None, "dtype": None,
              "captioner_opt": {"x": 1}}
    assert captioner_options(kwargs) == {"model_id": "gemini-x", "rpm": 100.0, "timeout_s": 30.0,
                                         "base_url": "http://127.0.0.1:1", "x": 1}
    assert captioner_options({**kwargs, "class_hint": True})["class_hint"] is True
