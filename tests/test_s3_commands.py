"""`caption`, `prepare` and `encode` against an S3-compatible server (moto) through the CLI (issue 19
items 1 and 14), and the writer lease on S3 (conditional writes).

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_s3_commands.py
"""
from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from s3_server import local_s3
from textok import storage as rio
from textok.cli import main
from textok.lease import Lease, LeaseHeld, read_lease


@pytest.fixture(scope="module")
def s3():
    with local_s3("bkt") as server:
        yield server
    rio.set_filesystem_options([])


@pytest.fixture(scope="module")
def manifest(s3):
    """s3://bkt/in/manifest.jsonl: 6 train + 4 val rows (class labels), images beside it on S3."""
    client = s3.client()
    rows = []
    for i in range(10):
        buf = io.BytesIO()
        Image.new("RGB", (12, 12), (20 * i, 100, 200 - 10 * i)).save(buf, format="PNG")
        client.put_object(Bucket="bkt", Key=f"in/img{i}.png", Body=buf.getvalue())
        rows.append({"uri": f"img{i}.png", "key": f"k{i}", "caption": f"a square of shade {i}", "label": i % 2,
                     "class_name": ["tench", "goldfish"][i % 2], "split": "train" if i < 6 else "val"})
    client.put_object(Bucket="bkt", Key="in/manifest.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows))
    return "s3://bkt/in/manifest.jsonl"


def _cli(args):
    r = CliRunner().invoke(main, args)
    return r


@pytest.mark.slow  # Beam's S3 filesystem builds a boto3 client per call: ~0.6 s each on 2 busy cores
def test_caption_reads_and_writes_s3_through_the_cli(s3, manifest):
    r = _cli(["caption", "--input", manifest, "--output", "s3://bkt/caps", "--captioner", "provided", *s3.beam_args])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["on_disk"] == {"captions": 6, "dead_letter": 0}
    names = s3.keys("caps/")
    assert "caps/caption_summary.json" in names and not [n for n in names if "lease" in n]  # released
    again = _cli(["caption", "--input", manifest, "--output", "s3://bkt/caps", "--captioner", "provided",
                  *s3.beam_args])
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped_existing"] == 6, again.output


@pytest.mark.slow  # three Beam pipelines + a tiny T5 on S3 (~2 min on 2 busy cores)
def test_prepare_on_s3_end_to_end(s3, manifest, tmp_path):
    from test_text_encoder import build_tiny_t5

    t5 = build_tiny_t5(str(tmp_path / "t5"))
    r = _cli(["prepare", "--input", manifest, "--output", "s3://bkt/run", "--captioner", "provided",
              "--encoder", t5, "--encoder-device", "cpu", "--per-class", "2", "--rows-per-shard", "4", *s3.beam_args])
    assert r.exit_code == 0, r.output
    names = s3.keys("run/")
    shards = [n for n in names if n.startswith("run/shards/train-") and n.endswith(".parquet")]
    val = [n for n in names if n.startswith("run/shards/val-") and n.endswith(".parquet")]
    assert len(shards) == 2 and len(val) >= 1 and "run/pools/val.parquet" in names
    rio.set_filesystem_options(s3.beam_args)
    rows = sum(pq.ParquetFile(rio.open_input(f"s3://bkt/{n}")).metadata.num_rows for n in shards)
    assert rows == 6
    assert not [n for n in names if n.endswith("_textok.lease")]


def test_encode_to_a_missing_bucket_is_one_line_before_any_work(s3):
    # The encoder path does not exist either: the destination is checked first, so the bucket is named.
    r = _cli(["encode", "--captions", "s3://bkt/caps", "--output", "s3://no-such-bucket/data", "--encoder",
              "/nonexistent/t5", *s3.beam_args])
    assert r.exit_code == 1, r.output
    lines = [x for x in r.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --output s3://no-such-bucket/data: cannot write there")
    assert "does not exist" in lines[0] and "Traceback" not in r.output


def test_s3_lease_is_a_conditional_create_and_renewal_never_overwrites_a_new_holder(s3):
    rio.set_filesystem_options(s3.beam_args)
    folder = "s3://bkt/leased"
    first, second = Lease(folder, "caption", 60.0), Lease(folder, "encode", 60.0)
    first.take()
    try:
        with pytest.raises(LeaseHeld, match="another writer holds this output folder: `textok caption`"):
            second.take()
        # Someone clears the lease (--force-unlock elsewhere) and a third run takes it: the first
        # run's renewal must not write over it (If-Match on the old ETag), it learns it lost.
        s3.client().delete_object(Bucket="bkt", Key="leased/_textok.lease")
        third = Lease(folder, "pools", 60.0)
        third.take()
        first.renew()
        assert first.lost and read_lease(folder)["token"] == third.token
        with pytest.raises(ValueError, match="lost its writer lease"):
            first.check()
        third.release()
    finally:
        first.release()
        second.release()
    assert read_lease(folder) is None


def test_batch_mode_keeps_storage_options_and_refuses_pipeline_ones():
    args = ["--s3_endpoint_url", "http://minio:9000", "--runner", "DataflowRunner", "--s3_region_name=eu-west-1"]
    assert rio.filesystem_args(args) == ["--s3_endpoint_url", "http://minio:9000", "--s3_region_name=eu-west-1"]
    r = CliRunner().invoke(main, ["caption", "--input", "x", "--output", "y", "--captioner", "gemini",
                                  "--gemini-mode", "batch", "--runner", "DataflowRunner"])
    assert r.exit_code == 2 and "unknown options ['--runner', 'DataflowRunner']" in r.output, r.output
