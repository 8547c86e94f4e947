"""What a hostile trial broke (issue 10, problems 1, 2, 3, 7): every input row ends exactly once
(captioned or dead-lettered with a reason), and bad inputs fail with one line naming file, line, fix."""
from __future__ import annotations

import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from textok.pipeline.captioning.pipeline import run_caption
from textok.pipeline.captioning.rules import clean_caption
from textok.pipeline.sources.records import list_records
from test_caption_pipeline import assert_each_key_once, read_table

CAPTIONS, DEAD = "captions", "dead_letter"


def _img(root) -> str:
    path = os.path.join(root, "a.png")
    if not os.path.exists(path):
        Image.new("RGB", (4, 4), (9, 9, 9)).save(path)
    return "a.png"


def _jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


# ---------------------------------------------------------------- 1. split filter: nothing silently dropped
def test_rows_without_split_belong_to_the_requested_split_and_case_is_ignored(tmp_path):
    uri = _img(tmp_path)
    manifest = _jsonl(tmp_path / "m.jsonl", [
        {"uri": uri, "key": "t", "split": "train", "caption": "a cat"},
        {"uri": uri, "key": "v", "split": "val", "caption": "a dog"},
        {"uri": uri, "key": "none", "caption": "a cow"},
        {"uri": uri, "key": "T", "split": "Train", "caption": "a hen"},
        {"uri": uri, "key": "odd", "split": "tset", "caption": "a fox"}])
    per_split = {}
    for split in ("train", "val"):
        out = tmp_path / split
        run_caption(manifest, str(out), captioner="provided", split=split)
        per_split[split] = ({r["key"] for r in read_table(out, CAPTIONS)}, {r["key"]: r for r in read_table(out, DEAD)})
    assert per_split["train"][0] == {"t", "none", "T"}
    assert per_split["val"][0] == {"v", "none"}
    for split in ("train", "val"):  # the unknown value is a dead letter naming it, in every run
        dead = per_split[split][1]
        assert set(dead) == {"odd"} and dead["odd"]["error_type"] == "unknown_split"
        assert "'tset'" in dead["odd"]["message"]
    # every row of the manifest ended somewhere in the train run, exactly once
    assert_each_key_once(tmp_path / "train", ["t", "none", "T", "odd"])


# ---------------------------------------------------------------- 2. a caption that cannot be stored
def test_lone_surrogate_caption_is_that_rows_dead_letter_and_the_rest_are_committed(tmp_path):
    uri = _img(tmp_path)
    rows = [{"uri": uri, "key": f"k{i:02d}", "caption": f"a red square number {i}"} for i in range(23)]
    rows.append({"uri": uri, "key": "bad", "caption": "bad \ud800 x"})
    manifest = _jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    s = run_caption(manifest, str(out), captioner="provided")
    assert s["captioned"] == 23 and s["dead_letter_by_reason"] == {"invalid_utf8": 1}
    dead = {r["key"]: r for r in read_table(out, DEAD)}
    assert "not valid UTF-8" in dead["bad"]["message"]
    assert_each_key_once(out, [r["key"] for r in rows])
    again = run_caption(manifest, str(out), captioner="provided")  # a rerun is a no-op, not a crash
    assert again["to_caption"] == 0


def test_clean_caption_rejects_text_that_is_not_utf8():
    assert clean_caption("ok \udce9 text")[1] == "invalid_utf8"
    assert clean_caption("fine text")[1] is None


# ---------------------------------------------------------------- 3. caption column types
def test_binary_caption_column_is_decoded_and_bad_bytes_dead_lettered(tmp_path):
    uri = _img(tmp_path)
    table = pa.table({"uri": [uri] * 2, "key": ["good", "latin1"],
                      "caption": pa.array(["café au lait".encode(), "caf\xe9 au lait".encode("latin-1")], pa.binary())})
    pq.write_table(table, tmp_path / "m.parquet")
    out = tmp_path / "out"
    run_caption(str(tmp_path / "m.parquet"), str(out), captioner="provided")
    caps = {r["key"]: r["caption"] for r in read_table(out, CAPTIONS)}
    assert caps == {"good": "Café au lait."} or caps == {"good": "café au lait"}
    assert {r["key"]: r["error_type"] for r in read_table(out, DEAD)} == {"latin1": "invalid_utf8"}


@pytest.mark.parametrize("values,type_name", [([["a", "b"]], "list<"), ([12345], "int64"), ([1.5], "double")])
def test_non_string_caption_columns_are_refused_naming_column_and_type(tmp_path, values, type_name):
    uri = _img(tmp_path)
    pq.write_table(pa.table({"uri": [uri], "caption": values}), tmp_path / "m.parquet")
    with pytest.raises(ValueError, match=rf"m.parquet: column 'caption' has type {re.escape(type_name)}"):
        list_records(str(tmp_path / "m.parquet"))


@pytest.mark.parametrize("value", [["a", "b"], 12345, {"t": 1}, True])
def test_non_string_caption_in_jsonl_is_refused_naming_line(tmp_path, value):
    uri = _img(tmp_path)
    manifest = _jsonl(tmp_path / "m.jsonl", [{"uri": uri, "key": "a", "caption": "ok"},
                                            {"uri": uri, "key": "b", "caption": value}])
    with pytest.raises(ValueError, match=rf"m.jsonl row 2: column 'caption' holds {type(value).__name__}"):
        list_records(manifest)


# ---------------------------------------------------------------- 7. clear errors
@pytest.mark.parametrize("ext", ["jsonl", "csv"])
def test_latin1_manifest_error_names_file_line_and_fix(tmp_path, ext):
    uri = _img(tmp_path)
    path = tmp_path / f"m.{ext}"
    if ext == "jsonl":
        text = f'{{"uri": "{uri}", "caption": "ok"}}\n{{"uri": "{uri}", "key": "b", "caption": "caf\xe9"}}\n'
    else:
        text = f"uri,key,caption\n{uri},a,ok\n{uri},b,caf\xe9\n"
    path.write_bytes(text.encode("latin-1"))
    line = 2 if ext == "jsonl" else 3
    with pytest.raises(ValueError, match=rf"m\.{ext}:{line}: not valid UTF-8 \(byte 0xe9.*re-save it as UTF-8"):
        list_records(str(path))


def test_output_that_is_a_file_is_one_clear_error(tmp_path):
    from textok.cli import main

    uri = _img(tmp_path)
    manifest = _jsonl(tmp_path / "m.jsonl", [{"uri": uri, "caption": "a cat"}])
    target = tmp_path / "taken.txt"
    target.write_text("x")
    res = CliRunner().invoke(main, ["caption", "--input", manifest, "--output", str(target), "--captioner", "provided"])
    assert res.exit_code != 0 and res.exception is None or isinstance(res.exception, SystemExit)
    assert "Error: --output" in res.output and "existing file" in res.output
    assert "Traceback" not in res.output


def test_hostile_keys_are_kept_verbatim_and_duplicates_refused(tmp_path):
    uri = _img(tmp_path)
    keys = ["a/../b", "../../etc/passwd", "x\\y", "sp ace/é", "a" * 300]
    manifest = _jsonl(tmp_path / "m.jsonl", [{"uri": uri, "key": k, "caption": "a cat"} for k in keys])
    out = tmp_path / "out"
    run_caption(manifest, str(out), captioner="provided")
    assert_each_key_once(out, keys)
    assert sorted(os.listdir(out)) == ["caption_summary.json", "captions", "dead_letter"] or \
        sorted(os.listdir(out)) == ["caption_summary.json", "captions"]
    dup = _jsonl(tmp_path / "d.jsonl", [{"uri": uri, "key": "k", "caption": "a"}, {"uri": uri, "key": "k"}])
    with pytest.raises(ValueError, match="duplicate key 'k'"):
        list_records(dup)


def test_empty_and_very_long_captions(tmp_path):
    uri = _img(tmp_path)
    manifest = _jsonl(tmp_path / "m.jsonl", [{"uri": uri, "key": "empty", "caption": ""},
                                            {"uri": uri, "key": "blank", "caption": "   "},
                                            {"uri": uri, "key": "long", "caption": "word " * 100_000}])
    out = tmp_path / "out"
    run_caption(manifest, str(out), captioner="provided")
    caps = {r["key"]: r for r in read_table(out, CAPTIONS)}
    assert caps["long"]["num_words"] == 75
    assert {r["key"] for r in read_table(out, DEAD)} == {"empty", "blank"}


@pytest.mark.parametrize("command", [["encode", "--captions", "CAP", "--encoder", "x"],
                                     ["pools", "--captions", "CAP", "--encoder", "x"],
                                     ["extract-latents", "--tokenizer", "TOK", "--shards", "CAP"]])
def test_output_that_is_a_file_is_refused_by_every_writer(tmp_path, command):
    from textok.cli import main

    target = tmp_path / "taken.txt"
    target.write_text("x")
    argv = [str(tmp_path) if a in ("CAP", "TOK") else a for a in command] + ["--output", str(target)]
    res = CliRunner().invoke(main, argv)
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert f"Error: --output {target}: this is an existing file" in res.output
