"""Per-class caption pools: K per class, unseen images only, deterministic across runs and runners."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from textok.pipeline.encode.pipeline import in_holdout, read_captions, run_encode
from textok.pipeline.pools import run_pools, select_pool
from textok.schemas.common import validate
from textok.schemas.shards import text_emb_views
from test_encode import make_captions_dir
from test_text_encoder import build_tiny_t5


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(str(tmp_path_factory.mktemp("t5")))


@pytest.fixture(scope="module")
def captions_dir(tmp_path_factory):
    return make_captions_dir(str(tmp_path_factory.mktemp("cap")), n_train=40, n_val=14)


def test_val_pools_k_per_class_short_classes_reported(t5_dir, captions_dir, tmp_path):
    out = str(tmp_path / "data")
    s = run_pools(captions_dir, out, encoder=t5_dir, per_class=4, device="cpu", seed=3)
    path = os.path.join(out, "pools", "val.parquet")
    info = validate(path, expect_table="pools")[0]
    assert info["meta"]["per_class"] == 4 and info["meta"]["source_split"] == "val" and info["meta"]["D"] == 32
    t = pq.read_table(path)
    val = read_captions(captions_dir, "val").to_pylist()
    by_class = {}
    for r in val:
        by_class.setdefault(r["label"], []).append(r)
    for label, rows in by_class.items():
        got = [r["key"] for r in t.to_pylist() if r["label"] == label]
        assert got == [r["key"] for r in select_pool(rows, 4, 3)] and len(got) == min(4, len(rows))
    assert set(t["key"].to_pylist()) <= {r["key"] for r in val}
    views = text_emb_views(t["text_emb"])
    assert [v.shape[0] for v in views] == t["text_len"].to_pylist()
    with open(os.path.join(out, "pools", "val_summary.json")) as f:
        summary = json.load(f)
    assert summary == {**s, "path": path} and summary["classes"] == 3
    assert summary["counts"] == {str(k): min(4, len(v)) for k, v in sorted(by_class.items())}
    # a rerun with the same settings leaves the finished pool alone
    mtime = os.stat(path).st_mtime_ns
    assert run_pools(captions_dir, out, encoder=t5_dir, per_class=4, device="cpu", seed=3) == summary
    assert os.stat(path).st_mtime_ns == mtime
    # a larger K than some classes hold: those are kept whole and reported
    s6 = run_pools(captions_dir, str(tmp_path / "d6"), encoder=t5_dir, per_class=5, device="cpu")
    assert s6["short_classes"] == {"2": 4} and s6["counts"] == {"0": 5, "1": 5, "2": 4}


def test_holdout_pools_never_in_train_shards_and_deterministic(t5_dir, captions_dir, tmp_path):
    out = str(tmp_path / "data")
    run_encode(captions_dir, out, encoder=t5_dir, rows_per_shard=16, device="cpu", pool_holdout_fraction=0.4, seed=1)
    s = run_pools(captions_dir, out, encoder=t5_dir, per_class=3, device="cpu", pool_holdout_fraction=0.4, seed=1)
    pool = pq.read_table(os.path.join(out, "pools", "train.parquet"))
    shard_keys = set(pq.read_table(os.path.join(out, "shards"))["key"].to_pylist())
    assert pool.num_rows == s["rows"] > 0 and not set(pool["key"].to_pylist()) & shard_keys
    assert all(in_holdout(k, 0.4, 1) for k in pool["key"].to_pylist())
    assert max(s["counts"].values()) <= 3
    # same pools from a fresh run on the multi-process runner
    other = str(tmp_path / "other")
    run_pools(captions_dir, other, encoder=t5_dir, per_class=3, device="cpu", pool_holdout_fraction=0.4, seed=1,
              beam_args=["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"])
    pool2 = pq.read_table(os.path.join(other, "pools", "train.parquet"))
    assert pool2.drop_columns(["text_emb"]).equals(pool.drop_columns(["text_emb"]))
    for a, b in zip(text_emb_views(pool["text_emb"]), text_emb_views(pool2["text_emb"])):
        np.testing.assert_array_equal(a, b)
    # a different seed draws different captions
    s2 = run_pools(captions_dir, str(tmp_path / "seed2"), encoder=t5_dir, per_class=3, device="cpu",
                   pool_holdout_fraction=0.4, seed=2)
    assert pq.read_table(os.path.join(tmp_path, "seed2", "pools", "train.parquet"))["key"].to_pylist() \
        != pool["key"].to_pylist() or s2["rows"] != s["rows"]
    # pools whose hold-out differs from the shards' would leak training images: refused
    with pytest.raises(ValueError, match="same values"):
        run_pools(captions_dir, out, encoder=t5_dir, per_class=3, device="cpu", pool_holdout_fraction=0.2, seed=1)


def test_pools_from_train_refused(t5_dir, captions_dir, tmp_path):
    with pytest.raises(ValueError, match="reuse training images"):
        run_pools(captions_dir, str(tmp_path), encoder=t5_dir, split="train", device="cpu")


def test_encode_after_holdout_pools_must_exclude_the_same_slice(t5_dir, captions_dir, tmp_path):
    """Pools built first, shards second: the shards must still leave the pools' keys out."""
    out = str(tmp_path / "data")
    run_pools(captions_dir, out, encoder=t5_dir, per_class=2, device="cpu", pool_holdout_fraction=0.4, seed=1)
    with pytest.raises(ValueError, match=r"pools.*hold-out fraction 0.4 and seed 1.*--pool-holdout-fraction 0.0"):
        run_encode(captions_dir, out, encoder=t5_dir, rows_per_shard=16, device="cpu")
    assert not os.path.exists(os.path.join(out, "shards"))
    # pools of the whole val split hold nothing out: val shards (for evaluation) stay allowed
    run_pools(captions_dir, out, encoder=t5_dir, per_class=2, device="cpu", seed=5)
    assert run_encode(captions_dir, out, encoder=t5_dir, rows_per_shard=16, device="cpu", split="val")["rows"] == 14
