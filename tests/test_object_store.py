"""Every stage on an object store: encode, pools, inspect, compact and the trainer's loader against a
local S3-compatible server (moto), reached through Beam's own S3 filesystem and pyarrow.fs."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from s3_server import local_s3
from test_encode import make_captions_dir
from helpers import make_random_t5
from test_text_encoder import build_tiny_t5
from textok.cli import main
from textok import storage as rio
from textok.pipeline.encode.pipeline import run_encode
from textok.pipeline.inspect_table import inspect_table
from textok.pipeline.pools import run_pools
from textok.schemas.common import parquet_source, write_table_atomic
from textok.trainer.data.loader import ShardLoader

pytestmark = pytest.mark.slow  # four Beam pipelines against a local S3 server: ~1 min on 2 cores

MULTI = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]


@pytest.fixture(scope="module")
def s3():
    with local_s3() as server:
        rio.set_filesystem_options(server.beam_args)
        yield server
    rio.set_filesystem_options([])


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(str(tmp_path_factory.mktemp("t5")))


@pytest.fixture(scope="module")
def captions(s3, tmp_path_factory):
    """(local caption dir, the same captions on S3 with their images on S3 too)."""
    root = make_captions_dir(str(tmp_path_factory.mktemp("cap")), n_train=12, n_val=6,
                             corrupt=("square/train_0004",))
    images = s3.upload_tree(os.path.join(root, "images"), "images")
    for name in sorted(os.listdir(os.path.join(root, "captions"))):
        t = pq.read_table(os.path.join(root, "captions", name))
        uris = pc.replace_substring(t["source_uri"], os.path.join(root, "images"), images)
        t = t.set_column(t.schema.get_field_index("source_uri"), "source_uri", uris)
        write_table_atomic(t, f"s3://{s3.bucket}/cap/captions/{name}")
    return root, f"s3://{s3.bucket}/cap"


@pytest.fixture(scope="module")
def encoded(s3, t5_dir, captions, tmp_path_factory):
    """The same split encoded in-process to a local folder and by 2 worker processes to S3."""
    local_caps, remote_caps = captions
    local_out = str(tmp_path_factory.mktemp("local") / "data")
    local = run_encode(local_caps, local_out, encoder=t5_dir, rows_per_shard=5, device="cpu")
    remote_out = f"s3://{s3.bucket}/data"
    remote = run_encode(remote_caps, remote_out, encoder=t5_dir, rows_per_shard=5, device="cpu",
                        beam_args=s3.beam_args + MULTI)
    return local_out, local, remote_out, remote


def _content(source) -> list:
    t = pq.read_table(parquet_source(source))
    return t.drop_columns(["image"]).to_pylist(), t["image"].to_pylist()


def test_encode_to_s3_with_worker_processes_matches_local_in_process(s3, encoded):
    local_out, local, remote_out, remote = encoded
    assert (remote["shards"], remote["rows"], remote["dead_letter"]) == (local["shards"], local["rows"], 1) == (3, 11, 1)
    names = sorted(f for f in os.listdir(os.path.join(local_out, "shards")) if f.endswith(".parquet"))
    keys = s3.keys("data/")
    assert [k for k in keys if k.startswith("data/shards/") and k.endswith(".parquet")] == \
        [f"data/shards/{n}" for n in names]
    assert not [k for k in keys if rio.INFLIGHT in k], keys  # every upload was committed by its rename
    assert {"data/shards/.plan-train.json", "data/encode_summary_train.json"} <= set(keys)
    for n in names:  # same rows, same embeddings, same image bytes
        assert _content(f"{remote_out}/shards/{n}") == _content(os.path.join(local_out, "shards", n))
    dead = [k for k in keys if k.startswith("data/dead_letter/")]
    assert len(dead) == 1 and pq.read_table(parquet_source(f"s3://{s3.bucket}/{dead[0]}"))["key"].to_pylist() \
        == ["square/train_0004"]


def test_resume_on_s3_rewrites_only_the_missing_shard(s3, t5_dir, captions, encoded):
    _, _, remote_out, _ = encoded
    s3.client().delete_object(Bucket=s3.bucket, Key="data/shards/train-00001-of-00003.parquet")
    again = run_encode(captions[1], remote_out, encoder=t5_dir, rows_per_shard=5, device="cpu",
                       beam_args=s3.beam_args)
    assert (again["shards_written_now"], again["shards_skipped_done"], again["rows"]) == (1, 2, 11)
    with pytest.raises(ValueError, match="planned with different"):  # the plan on S3 is checked too
        run_encode(captions[1], remote_out, encoder=t5_dir, rows_per_shard=4, device="cpu", beam_args=s3.beam_args)


def test_pools_inspect_compact_on_s3(s3, t5_dir, captions, encoded):
    _, _, remote_out, _ = encoded
    pools = run_pools(captions[1], remote_out, encoder=t5_dir, per_class=2, device="cpu", beam_args=s3.beam_args)
    assert pools["counts"] == {"0": 2, "1": 2, "2": 2}
    keys = s3.keys("data/pools/")
    assert keys == ["data/pools/val.parquet", "data/pools/val_summary.json"]  # part files cleaned up
    report = inspect_table(f"{remote_out}/shards", project_rows=1_000_000)
    assert report["rows"] == 11 and report["storage_dtype"] == "float16"
    per_example = sum(report["bytes_per_example"].values())
    assert report["projected"]["total_GB"] == pytest.approx(per_example * 1e6 / 1e9, abs=1e-3)
    other_t5 = make_random_t5(str(t5_dir) + "_other", ["a red circle", "a blue square"] * 20, d_model=32,
                              vocab_size=30, seed=1)  # same D, other weights
    with pytest.raises(ValueError, match="were encoded with"):  # the shards on S3 are checked before any work
        run_pools(captions[1], remote_out, encoder=other_t5, per_class=2, device="cpu", beam_args=s3.beam_args)
    r = CliRunner().invoke(main, ["inspect", f"{remote_out}/pools/val.parquet", "--json", *s3.beam_args])
    assert r.exit_code == 0 and json.loads(r.stdout)["table"] == "pools", r.output
    # the caption folder on S3 holds two part files: compact merges them into one sorted file
    r = CliRunner().invoke(main, ["compact", captions[1], *s3.beam_args])
    assert r.exit_code == 0, r.output
    cap = [k for k in s3.keys("cap/captions/") if k.endswith(".parquet")]
    assert len(cap) == 1 and cap[0].startswith("cap/captions/captions-")
    assert pq.read_table(parquet_source(f"s3://{s3.bucket}/{cap[0]}")).num_rows == 18


def _batches(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_trainer_streams_s3_shards_like_local_ones(s3, encoded, num_workers):
    """`--shards s3://...` through pyarrow.fs (endpoint from AWS_ENDPOINT_URL), nothing copied locally."""
    local_out, _, remote_out, _ = encoded
    kw = dict(image_size=16, batch_size=3, train=True, seed=3, num_workers=num_workers, shuffle_buffer=4)
    remote = ShardLoader(f"{remote_out}/shards", split="train", **kw)
    local = ShardLoader(os.path.join(local_out, "shards"), split="train", **kw)
    assert [f.rsplit("/", 1)[-1] for f in remote.files] == [os.path.basename(f) for f in local.files]
    assert remote.files[0].startswith("s3://")
    for a, b in zip(_batches(remote, 4), _batches(local, 4)):
        assert a["key"] == b["key"]
        assert np.array_equal(a["images"].numpy(), b["images"].numpy())
        assert np.array_equal(a["text_emb"].numpy(), b["text_emb"].numpy())
    glob = ShardLoader(f"{remote_out}/shards/train-0000[01]-*.parquet", image_size=16, batch_size=2)
    assert len(glob.files) == 2


def test_s3_reads_share_one_client_and_a_missing_image_is_a_read_error(s3):
    """Beam's S3 filesystem built a boto3 Session + client per call (0.3-0.8 s each: the 15x of an
    encode to S3); remote_io installs one client per process and settings under it."""
    from apache_beam.io.aws.clients.s3 import boto3_client

    from textok.schemas.images import ImageDecodeError
    from textok.pipeline.sources.records import read_image_bytes

    s3.client().put_object(Bucket=s3.bucket, Key="one/a.bin", Body=b"abc")
    assert rio.read_bytes(f"s3://{s3.bucket}/one/a.bin") == b"abc"
    assert rio.exists(f"s3://{s3.bucket}/one/a.bin")
    from apache_beam.io.filesystems import FileSystems

    assert isinstance(boto3_client.boto3, rio._SharedBoto3)
    options = FileSystems._pipeline_options  # what Beam's S3 filesystem builds its clients from
    assert boto3_client.Client(options).client is boto3_client.Client(options).client
    with pytest.raises(ImageDecodeError, match=f"s3://{s3.bucket}/one/missing.jpg") as e:
        read_image_bytes(f"s3://{s3.bucket}/one/missing.jpg")
    assert e.value.error_type == "read_error"
