"""The fault matrix (issue 10): every writer is SIGKILLed at every named point (textok.faults),
rerun, and must then hold every key exactly once, validate, and show no reader extra rows.

Each case runs the real command in a subprocess with TEXTOK_FAULT armed, asserts the process
died there (SIGKILL, not a clean exit), checks that nothing a `*.parquet` glob matches is a temp
file, reruns the same command unarmed, and checks the output with `textok.schemas.validate`,
pyarrow, `datasets.load_dataset("parquet")` and DuckDB's `read_parquet('DIR/*.parquet')`.
Inputs are hostile on purpose: mixed / missing / odd-case / unknown splits, a lone-surrogate
caption, empty and 100k-word captions, keys with separators and `..`.
"""
from __future__ import annotations

import fnmatch
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

import pyarrow.parquet as pq
import pytest
from PIL import Image

from textok import faults
from textok.schemas.common import validate

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
TEXT_DIM, MAX_TOKENS = 16, 8
TRAIN_CFG = {"preset": "tiny", "image_size": 32, "patch_size": 4, "num_tokens": 8, "steps": 4, "batch_size": 4,
             "warmup": 2, "perceptual": "none", "disc_start": 2, "save_every": 2, "sample_every": 100, "log_every": 1,
             "num_workers": 0, "shuffle_buffer": 8, "device": "cpu",
             "loss": {"disc": {"channel_base": 512, "channel_max": 32}}}


# ---------------------------------------------------------------- inputs
def hostile_manifest(root: str) -> tuple[str, list[str]]:
    """A JSONL manifest of 30 rows; returns (path, the keys a `--split train` run must account for)."""
    os.makedirs(root, exist_ok=True)
    Image.new("RGB", (6, 6), (200, 10, 10)).save(os.path.join(root, "img.png"))
    rows, train_keys = [], []
    for i in range(22):
        split = ["train", None, "Train", "TRAIN "][i % 4]
        row = {"uri": "img.png", "key": f"k/{i:02d}", "caption": f"a red square number {i} on white"}
        if split is not None:
            row["split"] = split
        rows.append(row)
        train_keys.append(row["key"])
    odd = [{"key": "dots/../up", "caption": "a key with dots"}, {"key": "..\\win\\sep", "caption": "backslashes"},
           {"key": "surrogate", "caption": "bad \ud800 caption"}, {"key": "empty", "caption": ""},
           {"key": "long", "caption": "word " * 100_000}, {"key": "odd-split", "caption": "x", "split": "tset"}]
    for r in odd:
        rows.append({"uri": "img.png", **r})
        train_keys.append(r["key"])
    rows += [{"uri": "img.png", "key": f"v/{i}", "caption": "a val image", "split": "val"} for i in range(2)]
    path = os.path.join(root, "manifest.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path, train_keys


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from test_encode import make_captions_dir
    from test_latents import make_tokenizer
    from test_text_encoder import build_tiny_t5
    from textok.pipeline.encode.pipeline import read_captions, run_encode

    root = str(tmp_path_factory.mktemp("matrix"))
    manifest, caption_keys = hostile_manifest(os.path.join(root, "manifest"))
    caps = make_captions_dir(os.path.join(root, "cap"), n_train=20, n_val=9, corrupt=("star/train_0005",))
    t5 = build_tiny_t5(os.path.join(root, "t5"), d_model=TEXT_DIM)
    data = os.path.join(root, "data")
    run_encode(caps, data, encoder=t5, rows_per_shard=8, max_tokens=MAX_TOKENS, image_size=32, batch_size=8,
               device="cpu")
    with open(os.path.join(root, "train.json"), "w") as f:
        json.dump(TRAIN_CFG, f)
    tok = make_tokenizer(os.path.join(root, "tok"), text_dim=TEXT_DIM, encoder=t5)
    from textok.trainer.data.latents import ExtractConfig, extract_latents

    latents = os.path.join(root, "latents")
    extract_latents(ExtractConfig(tokenizer=os.path.join(root, "tok"), shards=os.path.join(data, "shards"),
                                  output=latents, batch_size=8, device="cpu", with_text=False, num_workers=0))
    return {"root": root, "manifest": manifest, "latents": latents, "caption_keys": caption_keys, "cap": caps, "t5": t5,
            "shards": os.path.join(data, "shards"), "train_cfg": os.path.join(root, "train.json"),
            "tok": tok,
            "train_keys": read_captions(caps, "train", columns=["key", "split"])["key"].to_pylist(),
            "val_labels": sorted(set(read_captions(caps, "val", columns=["key", "split", "label"])["label"]
                                     .to_pylist()))}


# ---------------------------------------------------------------- readers
def parquet_names(folder: str) -> list[str]:
    """What a `*.parquet` glob matches, hidden names included (DuckDB does not skip them)."""
    return sorted(f for f in os.listdir(folder) if fnmatch.fnmatch(f, "*.parquet")) if os.path.isdir(folder) else []


def reader_rows(folder: str, cache: str) -> dict[str, int]:
    """Rows each reader sees in DIR/*.parquet."""
    import datasets
    import duckdb
    import pyarrow.dataset as pads

    files = [os.path.join(folder, f) for f in parquet_names(folder)]
    hf = datasets.load_dataset("parquet", data_files=os.path.join(folder, "*.parquet"), split="train",
                               cache_dir=cache)
    with duckdb.connect() as con:
        duck = con.execute(f"SELECT count(*) FROM read_parquet('{folder}/*.parquet')").fetchone()[0]
    return {"pyarrow": pads.dataset(files, format="parquet").count_rows(), "datasets": hf.num_rows, "duckdb": duck}


def keys_of(folder: str, prefix: str = "") -> list[str]:
    return [k for f in parquet_names(folder) if f.startswith(prefix)
            for k in pq.read_table(os.path.join(folder, f), columns=["key"])["key"].to_pylist()]


def check_table(folder: str, cache: str, expect_table: str, prefix: str = "") -> list[str]:
    """Validate every file, check each reader sees exactly the rows of the unique keys; return the keys."""
    keys = keys_of(folder, prefix)
    assert len(keys) == len(set(keys)), f"{folder}: duplicate keys"
    if not keys:
        return keys
    for info in validate(folder):
        assert info["table"] == expect_table or not os.path.basename(info["path"]).startswith(prefix)
    if not prefix:
        assert set(reader_rows(folder, cache).values()) == {len(keys)}, reader_rows(folder, cache)
    return keys


def no_temps(root: str) -> None:
    left = [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files if n.startswith(".tmp-")]
    assert not left, f"temp files left after the rerun: {left}"


# ---------------------------------------------------------------- writers
@dataclass
class Writer:
    name: str
    command: Callable[[dict, str], list[str]]   # (inputs, out) -> textok argv
    verify: Callable[[dict, str, str], int]     # (inputs, out, cache) -> rows checked
    prepare: Callable[[dict, str], None] | None = None
    watch: tuple[str, ...] = ()                 # folders (under out) whose *.parquet readers use


def _caption_cmd(extra=()):
    return lambda inp, out: ["caption", "--input", inp["manifest"], "--output", out, "--captioner", "provided",
                             "--batch-size", "4", "--commit-every", "4",
                             "--max-dead-letter-fraction", "1", *extra]  # hostile rows are dead letters on purpose


def _verify_captions(inp, out, cache) -> int:
    caps = check_table(os.path.join(out, "captions"), cache, "captions")
    dead = check_table(os.path.join(out, "dead_letter"), cache, "dead_letter")
    assert not set(caps) & set(dead)
    assert sorted(caps + dead) == sorted(inp["caption_keys"])
    reasons = {r["key"]: r["error_type"] for f in parquet_names(os.path.join(out, "dead_letter"))
               for r in pq.read_table(os.path.join(out, "dead_letter", f)).to_pylist()}
    assert reasons == {"surrogate": "invalid_utf8", "empty": "empty", "odd-split": "unknown_split"} or \
        reasons == {"surrogate": "invalid_utf8", "empty": "missing_caption", "odd-split": "unknown_split"}
    return len(caps) + len(dead)


def _prepare_compact(inp, out) -> None:
    """Uncompacted parts: a caption run killed after its third part."""
    res = _run(_caption_cmd()(inp, out), fault="caption.part_committed:3")
    assert res.returncode == -signal.SIGKILL


def _verify_compact(inp, out, cache) -> int:
    n = _verify_captions(inp, out, cache) if os.path.exists(os.path.join(out, "caption_summary.json")) else None
    keys = check_table(os.path.join(out, "captions"), cache, "captions")
    keys += check_table(os.path.join(out, "dead_letter"), cache, "dead_letter")
    assert len(keys) == len(set(keys)) and set(keys) <= set(inp["caption_keys"]) and len(keys) >= 8
    assert not [f for f in os.listdir(os.path.join(out, "captions")) if f.startswith("part-")]
    return n or len(keys)


def _verify_encode(inp, out, cache) -> int:
    shard_keys = check_table(os.path.join(out, "shards"), cache, "shards")
    dead = check_table(os.path.join(out, "dead_letter"), cache, "dead_letter", prefix="encode-train-")
    assert dead == ["star/train_0005"]
    assert sorted(shard_keys + dead) == sorted(inp["train_keys"])
    return len(shard_keys) + len(dead)


def _verify_pools(inp, out, cache) -> int:
    keys = check_table(os.path.join(out, "pools"), cache, "pools")
    table = pq.read_table(os.path.join(out, "pools", "val.parquet"))
    assert sorted(set(table["label"].to_pylist())) == inp["val_labels"] and len(keys) == 3 * len(inp["val_labels"])
    assert not [d for d in os.listdir(os.path.join(out, "pools")) if d.startswith(".parts-")]
    return len(keys)


def _verify_latents(inp, out, cache) -> int:
    keys = check_table(out, cache, "latents")
    assert sorted(keys) == sorted(keys_of(inp["shards"]))
    assert parquet_names(out) == parquet_names(inp["shards"])
    return len(keys)


def _verify_train(inp, out, cache) -> int:
    import torch

    from textok.trainer.models.textok import TexTok

    ck = os.path.join(out, "checkpoints")
    latest = open(os.path.join(ck, "latest")).read().strip()
    assert latest == "step-000004"
    state = torch.load(os.path.join(ck, latest, "state.pt"), weights_only=True)
    assert state["step"] == 4 and state["loader"]["batches"] == 4
    TexTok.from_pretrained(os.path.join(out, "tokenizer"))
    assert json.load(open(os.path.join(out, "tokenizer", "text_encoder.json")))["D"] == TEXT_DIM
    return 0


def _verify_dit(inp, out, cache) -> int:
    import torch

    from textok.trainer.models.dit import DiT

    ck = os.path.join(out, "checkpoints")
    latest = open(os.path.join(ck, "latest")).read().strip()
    assert latest == "step-000002"
    assert torch.load(os.path.join(ck, latest, "state.pt"), weights_only=True)["step"] == 2
    DiT.from_pretrained(os.path.join(out, "dit"))
    assert json.load(open(os.path.join(out, "dit", "latent_stats.json")))["mean"]
    return 0


MP = ("--direct_running_mode", "multi_processing", "--direct_num_workers", "2")
WRITERS = {
    "caption": Writer("caption", _caption_cmd(), _verify_captions, watch=("captions", "dead_letter")),
    "caption-mp": Writer("caption-mp", _caption_cmd(MP), _verify_captions, watch=("captions", "dead_letter")),
    "compact": Writer("compact", lambda inp, out: ["compact", out], _verify_compact, prepare=_prepare_compact,
                      watch=("captions", "dead_letter")),
    "encode": Writer("encode", lambda inp, out: [
        "encode", "--captions", inp["cap"], "--output", out, "--encoder", inp["t5"], "--rows-per-shard", "8",
        "--max-tokens", str(MAX_TOKENS), "--image-size", "32", "--batch-size", "8", "--device", "cpu"],
        _verify_encode, watch=("shards", "dead_letter")),
    "pools": Writer("pools", lambda inp, out: [
        "pools", "--captions", inp["cap"], "--output", out, "--encoder", inp["t5"], "--per-class", "3",
        "--max-tokens", str(MAX_TOKENS), "--device", "cpu"], _verify_pools, watch=("pools",)),
    "latents": Writer("latents", lambda inp, out: [
        "extract-latents", "--tokenizer", inp["tok"], "--shards", inp["shards"], "--output", out, "--device", "cpu",
        "--num-workers", "0", "--batch-size", "8"], _verify_latents, watch=("",)),
    "train": Writer("train", lambda inp, out: [
        "train-tokenizer", "--config", inp["train_cfg"], "--shards", inp["shards"], "--output", out], _verify_train),
    "train-dit": Writer("train-dit", lambda inp, out: [
        "train-dit", "--latents", inp["latents"], "--output", out, "--preset", "tiny", "--steps", "2",
        "--batch-size", "4", "--save-every", "2", "--num-workers", "0", "--device", "cpu"], _verify_dit),
}


# (writer, TEXTOK_FAULT value): every named point of textok.faults, in every writer that has it
CASES = [
    ("caption", "caption.part_temp_written:2"), ("caption", "caption.part_committed:2"),
    ("caption", "compact.outputs_written"), ("caption", "compact.between_deletes"),
    ("caption-mp", "caption.part_temp_written"), ("caption-mp", "caption.part_committed:2"),
    ("caption-mp", "compact.outputs_written"),
    ("compact", "compact.outputs_written"), ("compact", "compact.between_deletes"),
    ("encode", "shards.after_write_before_rename:2"), ("encode", "shards.after_rename"),
    ("encode", "encode.dead_letter_written"),
    ("pools", "pools.part_written:2"), ("pools", "pools.merged_before_cleanup"),
    ("latents", "latents.after_write_before_rename:2"), ("latents", "latents.after_rename"),
    ("train", "checkpoint.temp_written:2"), ("train", "checkpoint.before_latest"), ("train", "export.temp_written"),
    ("train-dit", "export.temp_written"),
]
# One case per pipeline writer stays in the quick set; the rest (each ~10 s: two process starts
# with Beam and torch) are marked slow: `pytest -m "not slow"` skips them, the full suite runs them.
QUICK = {("caption", "caption.part_temp_written:2"), ("encode", "shards.after_write_before_rename:2"),
         ("pools", "pools.part_written:2"), ("latents", "latents.after_write_before_rename:2")}


def _run(argv: list[str], fault: str | None = None, timeout: float = 240,
         env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])))
    env.pop(faults.ENV, None)
    env.pop(faults.ONCE_ENV, None)
    env.update(env_extra or {})
    if fault:
        env[faults.ENV] = fault
    return subprocess.run([sys.executable, "-m", "textok", *argv], cwd=ROOT, env=env, capture_output=True,
                          timeout=timeout, start_new_session=True)


def test_every_named_point_is_in_the_matrix():
    assert {point.split(":")[0] for _, point in CASES} == set(faults.POINTS)


@pytest.mark.parametrize("writer,fault", [pytest.param(w, f, marks=[] if (w, f) in QUICK else [pytest.mark.slow])
                                          for w, f in CASES], ids=[f"{w}-{f}" for w, f in CASES])
def test_sigkill_at_a_named_point_then_rerun_loses_and_duplicates_nothing(inputs, tmp_path, writer, fault):
    w = WRITERS[writer]
    out = str(tmp_path / "out")
    if w.prepare:
        w.prepare(inputs, out)
    # A SIGKILLed writer leaves its output lease behind; its holder is provably dead (this host, boot
    # and pid namespace), so the rerun takes the folder over with no flag, as a user reruns a killed job.
    died = _run(w.command(inputs, out), fault=fault)
    # multi_processing: the SIGKILL hits a worker process and the runner fails the pipeline
    if writer == "caption-mp" and died.returncode != -signal.SIGKILL:
        assert died.returncode != 0, died.stderr.decode(errors="replace")[-2000:]
        if fault.startswith("caption."):  # a worker died (pipeline/worker_deaths.py): one line, no traceback
            err = died.stderr.decode(errors="replace")
            assert [ln for ln in err.splitlines() if ln.startswith("Error:")] == [err.strip().splitlines()[-1]]
            assert "died mid-run" in err and "Traceback" not in err, err[-2000:]
    else:
        assert died.returncode == -signal.SIGKILL, (died.returncode, died.stderr.decode(errors="replace")[-2000:])
    for sub in w.watch:  # a temp file must never be what a *.parquet glob picks up
        assert not [n for n in parquet_names(os.path.join(out, sub)) if n.startswith(".")]
    again = _run(w.command(inputs, out) + (["--resume"] if writer.startswith("train") else []))
    assert again.returncode == 0, again.stderr.decode(errors="replace")[-3000:]
    w.verify(inputs, out, str(tmp_path / "hf-cache"))
    no_temps(out)


def test_a_kill_between_write_and_rename_leaves_nothing_a_parquet_glob_reads(tmp_path):
    """The trial's reproduction in miniature: SIGKILL after the temp file is written, before the rename."""
    import duckdb

    folder = tmp_path / "shards"
    script = ("import pyarrow as pa; from textok.schemas.common import write_table_atomic; "
              f"write_table_atomic(pa.table({{'key': ['a', 'b']}}), {str(folder / 'train-0.parquet')!r}, "
              "fault_point='shards.after_write_before_rename')")
    env = dict(os.environ, **{faults.ENV: "shards.after_write_before_rename"})
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr.decode()
    left = os.listdir(folder)
    assert len(left) == 1 and left[0].startswith(".tmp-") and not fnmatch.fnmatch(left[0], "*.parquet")
    with duckdb.connect() as con:  # DuckDB's glob does not skip hidden files: the name itself must not match
        with pytest.raises(duckdb.IOException, match="No files found"):
            con.execute(f"SELECT count(*) FROM read_parquet('{folder}/*.parquet')").fetchone()
    from textok.atomic import clean_temps

    assert clean_temps(str(folder), final_prefix="train-") == [str(folder / left[0])] and not os.listdir(folder)


# ---------------------------------------------------------------- server faults (issue 19)
# `textok caption --captioner openai` against fleets of fake servers (tests/fake_openai.py, the real
# `openai` client) that die, answer HTML 502 pages, reset connections, hang, truncate, answer in
# content parts, refuse the model or the key. Every case checks: each key ends once (captions or
# dead letter, with the expected reasons), no image was answered twice ("paid twice"), and a run
# that must stop prints one `Error:` line and no traceback; a rerun against a healthy server then
# captions the rest, each key once.
N_IMAGES = 16
SECRET_PASSWORD, SECRET_QUERY = "pa55w0rd-canary", "QUERY-canary-77"
# scripted answers in order; the expected dead letters (1-2 of 16) stay under the failing fraction
ONE_AT_A_TIME = ("--max-in-flight", "1", "--max-dead-letter-fraction", "0.5")


def server_images(root: str) -> str:
    for i in range(N_IMAGES):  # every image a colour no other has: the fake's answer names it
        d = os.path.join(root, "train", f"c{i % 2}")
        os.makedirs(d, exist_ok=True)
        Image.new("RGB", (16, 12), (15 * i, 200 - 10 * i, 90)).save(os.path.join(d, f"{i}.png"))
    return root


def server_keys() -> list[str]:
    return sorted(f"c{i % 2}/{i}" for i in range(N_IMAGES))


@dataclass
class ServerCase:
    servers: list                 # (Behaviour default, script, FakeOpenAI kwargs) per server; None = dead
    stops: bool = False           # the run must stop with one line
    dead: dict | None = None      # expected dead-letter reasons {error_type: count}
    extra: tuple = ()
    secret_url: bool = False      # the live server's URL carries user:pass@ and ?key=


def _server_cases() -> dict[str, ServerCase]:
    from fake_gemini import error, hang, html_error, ok, parts, reset, truncated

    live = (ok(), [], {})
    return {
        "fleet-one-dead": ServerCase([None, live]),
        "fleet-one-html-502": ServerCase([(html_error(502), [], {}), live]),
        "fleet-one-resetting": ServerCase([(reset(), [], {}), live]),
        "transient-502-reset-hang-504": ServerCase([(ok(), [html_error(502), reset(), hang(3.0), error(504)], {})],
                                                   extra=("--timeout", "1")),
        "truncated-and-content-parts": ServerCase([(parts(), [truncated(), truncated()], {})],
                                                  dead={"truncated_answer": 2}, extra=ONE_AT_A_TIME),
        "credentials-in-url": ServerCase([(ok(), [html_error(502), error(400)], {})], dead={"http_400": 1},
                                         secret_url=True, extra=ONE_AT_A_TIME),
        # two requests in flight: a stop must come before most images were sent
        "fleet-all-dead": ServerCase([None, (html_error(503), [], {})], stops=True, extra=("--max-in-flight", "2")),
        "unknown-model-400": ServerCase([(ok(), [], {"models": ["other"], "unknown_model_status": 400})], stops=True,
                                        extra=("--max-in-flight", "2")),
        "bad-key-401": ServerCase([(ok(), [], {"api_key": "the-right-key"})], stops=True,
                                  extra=("--max-in-flight", "2")),
        "bad-key-401-multi-processing": ServerCase([(ok(), [], {"api_key": "the-right-key"})], stops=True,
                                                   extra=("--max-in-flight", "1", "--direct_running_mode",
                                                          "multi_processing", "--direct_num_workers", "2")),
    }


SERVER_CASES = sorted(_server_cases())
QUICK_SERVER = {"fleet-one-dead", "fleet-all-dead", "credentials-in-url"}


def _caption_openai(data: str, out: str, urls: list[str], extra=(), vv: bool = False) -> subprocess.CompletedProcess:
    args = ["caption", "--input", data, "--output", out, "--captioner", "openai", "--model", "m",
            "--batch-size", "4", "--max-retries", "2", *extra]
    for u in urls:
        args += ["--openai-base-url", u]
    env_extra = {"OPENAI_API_KEY": "sk-matrix"}
    old = {k: os.environ.get(k) for k in env_extra}
    os.environ.update(env_extra)
    try:
        return _run(["-vv", *args] if vv else args)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _answered_twice(fakes) -> int:
    """Images the servers answered with 200 more than once (each answer would be billed)."""
    from fake_gemini import mean_rgb
    from fake_openai import image_of

    seen: dict = {}
    for f in fakes:
        for r in f.requests:
            if r.status == 200:
                rgb = mean_rgb(image_of(r))
                seen[rgb] = seen.get(rgb, 0) + 1
    return sum(n > 1 for n in seen.values())


def _server_outcome(out: str) -> tuple[list[str], dict[str, int]]:
    caps = keys_of(os.path.join(out, "captions"))
    dead_rows = [r for f in parquet_names(os.path.join(out, "dead_letter"))
                 for r in pq.read_table(os.path.join(out, "dead_letter", f)).to_pylist()]
    reasons: dict[str, int] = {}
    for r in dead_rows:
        reasons[r["error_type"]] = reasons.get(r["error_type"], 0) + 1
    keys = caps + [r["key"] for r in dead_rows]
    assert len(keys) == len(set(keys)), "a key is written twice"
    return keys, reasons


@pytest.mark.parametrize("case", [pytest.param(c, marks=[] if c in QUICK_SERVER else [pytest.mark.slow])
                                  for c in SERVER_CASES], ids=SERVER_CASES)
def test_server_faults_lose_nothing_pay_nothing_twice_and_stop_with_one_line(tmp_path, case):
    from fake_openai import FakeOpenAI

    spec = _server_cases()[case]
    data, out = server_images(str(tmp_path / "data")), str(tmp_path / "out")
    fakes, urls = [], []
    for s in spec.servers:
        if s is None:  # dead: a port nothing listens on any more
            gone = FakeOpenAI().start()
            urls.append(gone.base_url)
            gone.stop()
            continue
        default, script, kw = s
        fakes.append(FakeOpenAI(default=default, script=list(script), **kw).start())
        url = fakes[-1].base_url
        if spec.secret_url:
            url = url.replace("://", f"://alice:{SECRET_PASSWORD}@") + f"?key={SECRET_QUERY}&api-version=1"
        urls.append(url)
    try:
        res = _caption_openai(data, out, urls, spec.extra, vv=spec.secret_url)  # -vv: every URL HTTP logs
        err = res.stderr.decode(errors="replace")
        if spec.stops:
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert res.returncode == 1, err[-3000:]
            assert lines[-1].startswith("Error: ") and sum(ln.startswith("Error:") for ln in lines) == 1, err[-3000:]
            assert "Traceback" not in err, err[-3000:]  # also from multi_processing workers
            keys, reasons = _server_outcome(out)
            assert not reasons, f"a stopped run dead-lettered {reasons}"
            sent = len([r for f in fakes for r in f.requests])
            assert sent < N_IMAGES / 2, sent                              # stopped early, not per image
            healthy = FakeOpenAI().start()                               # the fix: a working server
            fakes.append(healthy)
            again = _caption_openai(data, out, [healthy.base_url])
            assert again.returncode == 0, again.stderr.decode(errors="replace")[-3000:]
        else:
            assert res.returncode == 0, err[-3000:]
        keys, reasons = _server_outcome(out)
        assert sorted(keys) == server_keys(), "a key was lost"                 # 0 lost, 0 duplicated
        assert reasons == (spec.dead or {}), reasons
        assert _answered_twice(fakes) == 0                                     # 0 paid twice
        summary = json.load(open(os.path.join(out, "caption_summary.json")))
        assert summary["deferred"] == 0
        if spec.secret_url:                                                    # in no file, no log line
            blobs = [res.stdout, res.stderr] + [open(os.path.join(d, f), "rb").read()
                                                for d, _, fs in os.walk(out) for f in fs]
            assert fakes[0].requests[-1].path.endswith(f"key={SECRET_QUERY}&api-version=1")   # yet it was sent
            assert not [b for b in blobs if SECRET_PASSWORD.encode() in b or SECRET_QUERY.encode() in b]
    finally:
        for f in fakes:
            f.stop()


# ---------------------------------------------------------------- a Dask worker killed mid-run
# `--dask-local-workers 2` starts the cluster inside the command, so its worker processes inherit
# TEXTOK_FAULT; TEXTOK_FAULT_ONCE makes only the first worker to reach the point die (its nanny
# restarts it, and Dask reruns the task it held on a live worker).
DASK = ("--runner", "dask", "--dask-local-workers", "2")


def _one_worker_died(res: subprocess.CompletedProcess, marker: str) -> None:
    """The worker died (the marker exists); the run completed or failed with one `Error:` line."""
    err = res.stderr.decode(errors="replace")
    assert os.path.exists(marker), "no worker reached the armed point: " + err[-2000:]
    if res.returncode != 0:
        assert res.returncode == 1 and len([ln for ln in err.splitlines() if ln.startswith("Error:")]) == 1, err


@pytest.mark.slow
def test_dask_worker_killed_mid_encode_then_rerun_holds_every_key_once(inputs, tmp_path):
    out, marker = str(tmp_path / "out"), str(tmp_path / "killed")
    argv = WRITERS["encode"].command(inputs, out) + list(DASK)
    first = _run(argv, fault="shards.after_rename", env_extra={faults.ONCE_ENV: marker})
    _one_worker_died(first, marker)
    again = _run(argv)
    assert again.returncode == 0, again.stderr.decode(errors="replace")[-3000:]
    _verify_encode(inputs, out, str(tmp_path / "hf-cache"))
    no_temps(out)


@pytest.mark.slow
def test_dask_worker_killed_mid_caption_pays_for_no_key_twice(tmp_path):
    """Gemini (fake server) on 2 Dask workers; one dies right after committing the 4th caption of
    its chunk (chunks of 4 here). Dask reruns that chunk elsewhere, which reads what the dead
    attempt committed and sends none of it again: 12 images, 12 requests over both runs."""
    from fake_gemini import FakeGemini, ok
    from test_caption_pipeline import make_folder

    data, out, marker = make_folder(str(tmp_path / "data"), per_class=4, corrupt=False), str(tmp_path / "out"), \
        str(tmp_path / "killed")
    with FakeGemini(default=ok(latency_s=0.05)) as fake:
        argv = ["caption", "--input", data, "--output", out, "--captioner", "gemini", "--model",
                "gemini-2.5-flash-lite", "--gemini-base-url", fake.url, "--batch-size", "1", "--max-in-flight", "1",
                "--commit-every", "1", *DASK]
        key = {"GEMINI_API_KEY": "fake-key-for-the-local-server"}
        first = _run(argv, fault="caption.part_committed:4", env_extra={**key, faults.ONCE_ENV: marker})
        _one_worker_died(first, marker)
        again = _run(argv, env_extra=key)
        assert again.returncode == 0, again.stderr.decode(errors="replace")[-3000:]
        requests = len(fake.requests)
    caps = check_table(os.path.join(out, "captions"), str(tmp_path / "hf-cache"), "captions")
    assert sorted(caps) == sorted(f"{c}/{i}" for c in ("red", "green", "blue") for i in range(4))
    assert requests == 12, f"{requests} requests for 12 images: a committed key was paid for twice"
    no_temps(out)


# ---------------------------------------------------------------- a second writer (issue 19)
HOLDER = ("import sys, time; from textok.lease import hold_lease, set_force_unlock\n"
          "set_force_unlock(True)\n"  # the compact case starts from a killed caption run's stale lease
          "with hold_lease(sys.argv[1], 'caption'):\n"
          "    print('held', flush=True); time.sleep(600)\n")


@pytest.mark.parametrize("writer", [pytest.param(w, marks=[] if w == "encode" else [pytest.mark.slow])
                                    for w in ("caption", "compact", "encode", "pools")])
def test_a_second_writer_is_refused_with_the_owner_and_writes_nothing(inputs, tmp_path, writer):
    """Another run holds the output folder: the command exits 1 with one line naming it, before any work."""
    w = WRITERS[writer]
    out = str(tmp_path / "out")
    if w.prepare:
        w.prepare(inputs, out)
    before = sorted(os.path.join(d, n) for d, _, files in os.walk(out) for n in files) if os.path.isdir(out) else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, out], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        res = _run(w.command(inputs, out))
    finally:
        holder.kill()
        holder.wait()
    err = res.stderr.decode(errors="replace")
    assert res.returncode == 1 and err.count("Error:") == 1 and "Traceback" not in err, err[-2000:]
    assert f"another writer holds this output folder: `textok caption` (pid {holder.pid}" in err
    after = {os.path.join(d, n) for d, _, files in os.walk(out) for n in files}
    assert after == set(before) | {os.path.join(out, "_textok.lease")}  # nothing written, nothing removed
