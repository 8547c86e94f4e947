"""The pipeline on a real distributed engine: Beam's DaskRunner on a local 2-worker Dask cluster.

One cluster (scheduler + 2 worker processes on 127.0.0.1) serves the whole module; each stage
runs in-process and on the cluster over the same inputs, and the outputs must be the same:
keys, rows, captions, and embeddings bit for bit (the tiny T5 is deterministic on CPU).
The gaps of Beam 2.77's DaskRunner that made the pipeline's graphs linear are pinned here
too (pipeline/runners.py): if Beam fixes them, these tests say so.
"""
from __future__ import annotations

import glob
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_encode import make_captions_dir
from test_fault_matrix import hostile_manifest
from test_text_encoder import build_tiny_t5

pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import Client

    from textok.pipeline.runners import local_cluster

    with local_cluster(2) as address:
        with Client(address) as client:
            yield address, client


def dask_args(cluster) -> list[str]:
    return ["--runner", "dask", "--dask_client_address", cluster[0]]


def table_rows(folder: str, drop=("timestamp",)) -> dict[str, pa.Table]:
    """file name -> table without the columns that differ run to run (dead-letter timestamps)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.parquet"))):
        t = pq.read_table(path)
        out[os.path.basename(path)] = t.drop_columns([c for c in drop if c in t.column_names])
    return out


def test_the_option_check_learns_the_options_of_the_runner_named():
    from textok.pipeline.beam_utils import beam_leftovers

    assert beam_leftovers(["--runner", "dask", "--dask_client_address", "tcp://127.0.0.1:8786"]) == []
    assert beam_leftovers(["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner",
                           "--dask_scheduler_file", "s.json", "--dask-local-workers", "2"]) == []
    assert beam_leftovers(["--runner", "dask", "--dask_client_adress", "x"]) == ["--dask_client_adress", "x"]
    with pytest.raises(ValueError, match="--runner nosuch.Runner: cannot import nosuch"):
        beam_leftovers(["--runner", "nosuch.Runner", "--flag", "1"])


def test_cli_refuses_local_workers_without_dask_and_names_a_typo(tmp_path):
    from click.testing import CliRunner

    from textok.cli import main

    base = ["caption", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--captioner", "provided"]
    r = CliRunner().invoke(main, [*base, "--dask-local-workers", "2"])
    assert r.exit_code == 2 and "--dask-local-workers needs --runner dask" in r.output
    r = CliRunner().invoke(main, [*base, "--runner", "dask", "--dask_client_adress", "tcp://x:1"])
    assert r.exit_code == 2 and "no such option: --dask_client_adress" in r.output


def test_encode_on_dask_matches_in_process_and_loads_t5_once_per_worker(cluster, tmp_path):
    from textok.pipeline.encode.pipeline import run_encode

    caps = make_captions_dir(str(tmp_path / "cap"), n_train=20, n_val=0, corrupt=("star/train_0005",))
    t5 = build_tiny_t5(str(tmp_path / "t5"), d_model=16)
    kw = dict(encoder=t5, rows_per_shard=4, max_tokens=8, image_size=32, batch_size=4, device="cpu")

    def count_loads():  # runs inside each worker process: count TextEncoder.load calls there
        from textok.text_encoder import TextEncoder

        if not hasattr(TextEncoder, "_real_load"):
            TextEncoder._real_load, TextEncoder.loads = TextEncoder.load, 0

            def load(self):
                TextEncoder.loads += 1
                return TextEncoder._real_load(self)
            TextEncoder.load = load
        return TextEncoder.loads

    client = cluster[1]
    before = client.run(count_loads)
    local = run_encode(caps, str(tmp_path / "local"), **kw)
    dask = run_encode(caps, str(tmp_path / "dask"), **kw, beam_args=dask_args(cluster))
    assert local["rows"] == dask["rows"] == 19 and local["dead_letter"] == dask["dead_letter"] == 1
    assert local["shards"] == dask["shards"] == 5
    for sub in ("shards", "dead_letter"):
        a, b = table_rows(str(tmp_path / "local" / sub)), table_rows(str(tmp_path / "dask" / sub))
        assert list(a) == list(b) and all(a[f].equals(b[f]) for f in a), sub  # text_emb bit-identical
    # 5 shards on 2 worker processes: the encoder loaded at most once in each (not once per bundle)
    loads = {w: n - before[w] for w, n in client.run(count_loads).items()}
    assert sum(loads.values()) >= 1 and all(n <= 1 for n in loads.values()), loads


def test_caption_on_dask_matches_in_process_dead_letters_included(cluster, tmp_path):
    from textok.pipeline.captioning.pipeline import run_caption

    manifest, keys = hostile_manifest(str(tmp_path / "m"))
    kw = dict(captioner="provided", batch_size=2, commit_every=3)
    local = run_caption(manifest, str(tmp_path / "local"), **kw)
    dask = run_caption(manifest, str(tmp_path / "dask"), **kw, beam_args=dask_args(cluster))
    for k in ("captioned", "dead_letter", "dead_letter_by_reason", "deferred", "requests", "on_disk"):
        assert local[k] == dask[k], k
    assert local["captioned"] + local["dead_letter"] == len(keys)
    for sub in ("captions", "dead_letter"):
        a, b = table_rows(str(tmp_path / "local" / sub)), table_rows(str(tmp_path / "dask" / sub))
        assert len(a) == len(b) == 1  # compacted: one file each
        ta, tb = next(iter(a.values())), next(iter(b.values()))
        assert ta.equals(tb), sub
    assert dask["on_disk"] == {"captions": 25, "dead_letter": 3}


def test_daskrunner_gaps_that_shape_the_pipeline(cluster, tmp_path):
    """Beam 2.77's DaskRunner: tagged outputs reach every consumer, and only the last sink runs."""
    from textok.pipeline.beam_utils import make_pipeline

    seen = str(tmp_path / "seen")
    os.makedirs(seen)

    def write(tag):
        def fn(x):
            with open(os.path.join(seen, f"{tag}-{x}"), "w"):
                pass
        return fn

    def split(x):
        yield beam.pvalue.TaggedOutput("odd", x) if x % 2 else x

    with make_pipeline(dask_args(cluster)) as p:
        outs = p | beam.Create([0, 1, 2, 3]) | beam.FlatMap(split).with_outputs("odd", main="even")
        outs.even | "WriteEven" >> beam.Map(write("even"))
        outs.odd | "WriteOdd" >> beam.Map(write("odd"))
    # in-process: even-0, even-2, odd-1, odd-3. Dask: only the last sink ran, and it got every element.
    assert sorted(os.listdir(seen)) == ["odd-0", "odd-1", "odd-2", "odd-3"]
