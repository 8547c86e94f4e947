"""Every command's common mistakes through the real CLI: exit status 2 (usage) or 1 (failure),
exactly one `Error:` line naming the file/flag, no traceback (unless -vv); unknown options are
usage errors unless Beam's own parser knows them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from test_caption_pipeline import make_folder
from test_data import write_shards
from test_encode import make_captions_dir
from textok.cli import main
from textok.errors import FlagError, user_error
from textok.pipeline.captioning.captioners.base import Captioner

TESTS = os.path.dirname(os.path.abspath(__file__))
TINY_TOKENIZER = ["--preset", "tiny", "--image-size", "32", "--patch-size", "4", "--num-tokens", "8",
                  "--batch-size", "4", "--perceptual", "none", "--num-workers", "0", "--device", "cpu",
                  "--warmup", "1", "--disc-start", "100", "--save-every", "1", "--sample-every", "100"]


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def fails(result, code: int, *needles: str) -> str:
    """The run exited with `code` through click (not an escaped exception) and printed one
    `Error:` line that contains every needle; returns that line."""
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    write_shards(str(d), num_files=1, rows_per_file=8, dim=16, max_tokens=8, image_size=32)
    return str(d)


@pytest.fixture(scope="module")
def tok_run(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "run"
    r = cli("train-tokenizer", "--shards", shards, "--output", out, "--steps", "1", *TINY_TOKENIZER)
    assert r.exit_code == 0, r.output
    return out


# ----------------------------------------------------------------------------- pipeline commands

def test_caption_mistakes(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", corrupt=False)
    out = tmp_path / "out"
    fails(cli("caption", "--input", tmp_path / "missing", "--output", out, "--captioner", "provided"), 1, "missing")
    fails(cli("caption", "--input", data, "--output", out, "--captioner", "template", "--rpmm", "5"),
          2, "--rpmm", "did you mean --rpm?")
    fails(cli("caption", "--input", data, "--output", out), 2, "--captioner")
    # gemini without credentials: refused before the pipeline starts, nothing written
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    fails(cli("caption", "--input", data, "--output", out, "--captioner", "gemini"), 1, "--captioner gemini",
          "GEMINI_API_KEY")
    fails(cli("prepare", "--input", data, "--output", out, "--captioner", "gemini", "--encoder", tmp_path),
          1, "GEMINI_API_KEY")
    assert not out.exists()


class _KeyRejectingCaptioner(Captioner):
    backend, model_id = "rejecting", "x"

    def caption_batch(self, requests):
        raise ValueError("the service rejected the API key; check MY_SERVICE_KEY")


def rejecting_captioner(options):
    return _KeyRejectingCaptioner()


def test_a_mistake_raised_inside_the_pipeline_is_one_line_too(tmp_path):
    data = make_folder(tmp_path / "data", corrupt=False)
    r = cli("caption", "--input", data, "--output", tmp_path / "out",
            "--captioner", "test_cli_errors:rejecting_captioner")
    fails(r, 1, "MY_SERVICE_KEY")
    # multi-process and remote runners hand the worker's exception back as traceback text
    remote = RuntimeError("Traceback (most recent call last):\n  File \"w.py\", line 1, in f\n"
                          "plug.GeminiConfigError: Gemini rejected the credentials [while running 'Caption']")
    assert user_error(remote) == "Gemini rejected the credentials [while running 'Caption']"
    assert user_error(RuntimeError("Traceback (most recent call last):\n  File \"w.py\"\nTypeError: bug")) is None


def test_encode_and_pools_mistakes(tmp_path, shards):
    caps = make_captions_dir(str(tmp_path / "cap"), n_train=4, n_val=3)
    out = tmp_path / "data"
    line = fails(cli("encode", "--captions", caps, "--output", out, "--emb-dtipe", "int8"), 2, "--emb-dtipe",
                 "did you mean --emb-dtype?")
    assert "Beam" in line
    fails(cli("encode", "--captions", caps, "--output", out, "--row-per-shard", "4"), 2, "--rows-per-shard")
    fails(cli("encode", "--captions", caps, "--output", out, "stray"), 2, "'stray'")
    fails(cli("encode", "--captions", caps, "--output", out, "--rows-per-shard", "4", "--shard-mb", "1"),
          2, "--rows-per-shard", "--shard-mb")
    fails(cli("encode", "--captions", caps, "--output", out, "--direct_num_workers", "two"),
          2, "--direct_num_workers")
    # Beam's options (of any PipelineOptions subclass) pass the check: the run then fails on the input
    fails(cli("encode", "--captions", tmp_path / "nope", "--output", out, "--direct_num_workers", "2",
              "--runner=DirectRunner", "--project", "p", "--s3_endpoint_url", "http://127.0.0.1:9"), 1, "nope")
    fails(cli("encode", "--captions", shards, "--output", out), 1, "'shards'", "expected 'captions'")
    fails(cli("encode", "--captions", caps, "--output", out, "--encoder", tmp_path / "no-encoder"), 1, "no-encoder")
    fails(cli("pools", "--captions", caps, "--output", out, "--per-class", "0"), 2, "--per-class")
    fails(cli("pools", "--captions", caps, "--output", out, "--per-clas", "3"), 2, "did you mean --per-class?")
    fails(cli("pools", "--captions", tmp_path / "nope", "--output", out), 1, "nope")
    fails(cli("prepare", "--input", tmp_path / "nope", "--output", out, "--captioner", "provided",
              "--encoder-dtyp", "float32"), 2, "did you mean --encoder-dtype?")


def test_inspect_compact_demo_mistakes(tmp_path):
    fails(cli("inspect", tmp_path / "nope"), 1, "nope")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    fails(cli("inspect", bad), 1, "bad.parquet")
    fails(cli("compact", tmp_path), 1, str(tmp_path))
    fails(cli("make-demo-data", "--out", tmp_path / "d", "--n", "0"), 1, "n=0")
    fails(cli("make-demo-data", "--out", tmp_path / "d", "--n", "many"), 2, "--n")


# ----------------------------------------------------------------------------- trainer commands

def test_train_tokenizer_mistakes(tmp_path, shards, tok_run):
    run = tmp_path / "run"
    fails(cli("train-tokenizer", "--shards", tmp_path / "nope", "--output", run, "--steps", "1"), 1, "nope")
    fails(cli("train-tokenizer", "--shards", shards, "--output", run), 2, "--steps")
    fails(cli("train-tokenizer", "--shards", shards, "--output", run, "--shard", "x"), 2, "--shards")
    bad_config = tmp_path / "c.json"
    bad_config.write_text(json.dumps({"stepz": 3}))
    fails(cli("train-tokenizer", "--config", bad_config, "--shards", shards, "--output", run), 1, "stepz")
    if not torch.cuda.is_available():
        fails(cli("train-tokenizer", "--shards", shards, "--output", run, "--steps", "1", "--device", "cuda"),
              1, "--device cuda")
    # --resume with other dimensions than the saved run
    args = ["train-tokenizer", "--shards", shards, "--output", tok_run, "--steps", "2", *TINY_TOKENIZER]
    fails(cli(*[a if a != "8" else "16" for a in args], "--resume"), 1, "num_tokens", "--resume")


def test_corrupt_checkpoints_name_the_file(tmp_path, shards, tok_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tok_run, run)
    ckpt = run / "checkpoints" / open(run / "checkpoints" / "latest").read().strip()
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 8 + b"garbage")
    args = ["train-tokenizer", "--shards", shards, "--output", run, "--steps", "2", *TINY_TOKENIZER, "--resume"]
    fails(cli(*args), 1, "model.safetensors", "checkpoint")
    (ckpt / "model.safetensors").unlink()
    shutil.copy(tok_run / "checkpoints" / ckpt.name / "model.safetensors", ckpt / "model.safetensors")
    (ckpt / "state.pt").write_bytes(b"PK\x03\x04 not a zip")
    fails(cli(*args), 1, "state.pt", "checkpoint")
    tok = run / "tokenizer"
    (tok / "model.safetensors").write_bytes(b"garbage")
    fails(cli("extract-latents", "--tokenizer", tok, "--shards", shards, "--output", tmp_path / "lat"), 1,
          "model.safetensors")


def test_encoder_mismatch_and_remote_runner_credentials(tmp_path, tok_run, monkeypatch):
    other = tmp_path / "other"
    write_shards(str(other), num_files=1, rows_per_file=4, dim=16, max_tokens=8, image_size=32, encoder="other-t5")
    fails(cli("extract-latents", "--tokenizer", tok_run, "--shards", other, "--output", tmp_path / "l"), 1,
          "'other-t5'", "'tiny-t5'")
    # On a remote runner the workers' environment holds the key: the launcher does not demand it.
    from textok.pipeline.commands.options import check_captioner

    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    check_captioner("gemini", {}, 75, ["--runner", "DataflowRunner"])


def test_extract_latents_eval_sample_mistakes(tmp_path, shards, tok_run):
    fails(cli("extract-latents", "--tokenizer", tmp_path / "nope", "--shards", shards, "--output", tmp_path / "l"),
          1, "--tokenizer", "nope")
    fails(cli("extract-latents", "--tokenizer", tok_run, "--shards", tmp_path / "nope", "--output", tmp_path / "l"),
          1, "nope")
    fails(cli("eval-tokenizer", "--ckpt", tok_run, "--shards", shards, "--output", tmp_path / "e"), 1, "--split")
    fails(cli("eval-tokenizer", "--output", tmp_path / "e"), 2, "--ckpt")
    fails(cli("train-dit", "--latents", tmp_path / "nope", "--output", tmp_path / "d", "--steps", "1"), 1, "nope")
    fails(cli("train-dit", "--latents", tmp_path / "nope", "--output", tmp_path / "d"), 2, "--steps")
    fails(cli("sample", "--dit", tmp_path / "nope", "--tokenizer", tok_run, "--output", tmp_path / "s"), 1, "--dit")
    fails(cli("sample", "--dit", tmp_path, "--tokenizer", tok_run, "--output", tmp_path / "s", "--classes", "a"),
          2, "--classes")
    fails(cli("eval-gen", "--samples", tmp_path / "no.npz", "--reference", shards), 1, "no.npz")
    fails(cli("efficiency", "--preset", "tiny"), 2, "--tokens")


def test_verbose_twice_shows_the_traceback(tmp_path):
    r = cli("-vv", "inspect", tmp_path / "nope")
    assert r.exit_code == 1 and "Traceback" in r.stderr and "FileNotFoundError" in r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("Error:")] == [
        f"Error: {tmp_path / 'nope'}: no such file or directory"]


def test_user_error_tells_mistakes_from_bugs():
    assert user_error(FileNotFoundError(2, "No such file or directory", "/x/y")) == \
        "[Errno 2] No such file or directory: '/x/y'"
    missing_class = "runs/pools: no pool captions for class 7"
    assert user_error(KeyError(missing_class)) == missing_class
    assert user_error(FlagError("give --a\n or --b")) == "give --a or --b"
    from huggingface_hub.errors import OfflineModeIsEnabled

    assert user_error(OfflineModeIsEnabled("cannot reach the Hub for me/tok: offline mode")) == \
        "cannot reach the Hub for me/tok: offline mode"
    assert user_error(KeyError("weight")) is None  # a bare key: a bug in the code
    assert user_error(RuntimeError("CUDA error: device-side assert")) is None
    assert user_error(TypeError("unsupported operand")) is None


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import textok.pipeline.inspect_table as inspect_table

    def broken(*a, **k):
        raise TypeError("a bug")

    monkeypatch.setattr(inspect_table, "inspect_table", broken)
    r = cli("inspect", tmp_path)
    assert isinstance(r.exception, TypeError)


def test_real_process_one_line_no_beam_noise(tmp_path):
    """`python -m textok` as a user runs it: the exit status, one line, no apitools warning."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])))
    p = subprocess.run([sys.executable, "-m", "textok", "compact", str(tmp_path / "nope")], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().splitlines() == [f"Error: {tmp_path / 'nope'}: no Parquet files under captions/ or "
                                             "dead_letter/ (expected the --output DIR of `textok caption`)"]
    p = subprocess.run([sys.executable, "-m", "textok", "encode", "--captions", str(tmp_path), "--output",
                        str(tmp_path / "o"), "--emb-dtipe", "int8"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and "apitools" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert [line for line in p.stderr.splitlines() if line.startswith("Error:")][0].startswith(
        "Error: no such option: --emb-dtipe (did you mean --emb-dtype?")
