"""Issue 19 item 13: NaN/inf embeddings never reach a shard, `inspect` refuses them, and the trainer
names the shard and row (or the batch's keys) instead of a bare NonFiniteLossError.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_finite_checks.py
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_data import write_shards
from test_encode import make_captions_dir
from test_text_encoder import build_tiny_t5
from textok.schemas.common import SchemaError


def poison_t5(t5_dir: str, token_id: int) -> None:
    """Set one token's input embedding to NaN: every caption holding that token encodes to NaN."""
    import torch
    from transformers import T5EncoderModel

    model = T5EncoderModel.from_pretrained(t5_dir)
    with torch.no_grad():
        model.shared.weight[token_id] = float("nan")
    model.save_pretrained(t5_dir)


def poison_shard(path: str, row: int) -> None:
    """Rewrite one shard with NaN in `row`'s text_emb (bypassing the writer, which refuses NaN)."""
    table = pq.read_table(path)
    col = table.column("text_emb").combine_chunks()
    i = table.schema.get_field_index("text_emb")
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):  # v3: raw float16 bytes per row
        blobs = col.to_pylist()
        first = np.frombuffer(blobs[row], "<f2").copy()
        first[0] = np.nan
        blobs[row] = first.tobytes()
        pq.write_table(table.set_column(i, table.schema.field(i), pa.array(blobs, col.type)), path)
        return
    offsets = col.offsets.to_numpy()
    dim = col.type.value_type.list_size
    flat = col.values.values.to_numpy(zero_copy_only=False).copy()
    flat[int(offsets[row]) * dim] = np.nan
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float16()), dim)
    emb = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner)
    pq.write_table(table.set_column(i, table.schema.field(i), emb), path)


def test_encode_dead_letters_non_finite_embeddings_and_keeps_the_rest(tmp_path):
    from transformers import AutoTokenizer

    from textok.pipeline.encode.pipeline import read_captions, run_encode

    caps = make_captions_dir(str(tmp_path / "cap"), n_train=12, n_val=0)
    t5 = build_tiny_t5(str(tmp_path / "t5"), d_model=16)
    rows = read_captions(caps, "train").to_pylist()
    tok = AutoTokenizer.from_pretrained(t5)
    ids = {r["key"]: set(tok(r["caption"], truncation=True, max_length=8)["input_ids"]) for r in rows}
    counts = {t: sum(t in s for s in ids.values()) for s in ids.values() for t in s if t > 2}
    token = min(counts, key=lambda t: abs(counts[t] - 3))          # a token in a few captions, not all
    poisoned = sorted(k for k, s in ids.items() if token in s)
    assert 0 < len(poisoned) < len(rows)
    poison_t5(t5, token)
    out = str(tmp_path / "data")
    summary = run_encode(caps, out, encoder=t5, max_tokens=8, rows_per_shard=5, batch_size=4, device="cpu")
    shard_keys = [k for f in sorted(os.listdir(os.path.join(out, "shards"))) if f.endswith(".parquet")
                  for k in pq.read_table(os.path.join(out, "shards", f), columns=["key"])["key"].to_pylist()]
    dead = pq.read_table(os.path.join(out, "dead_letter")).to_pylist()
    assert sorted(d["key"] for d in dead) == poisoned
    assert {d["error_type"] for d in dead} == {"non_finite_embedding"}
    assert all(d["key"] in d["message"] and "float16" in d["message"] for d in dead)
    assert sorted(shard_keys + poisoned) == sorted(r["key"] for r in rows)   # every key once
    assert summary["dead_letter"] == len(poisoned)


@pytest.fixture
def nan_shards(tmp_path):
    paths = write_shards(str(tmp_path / "shards"), num_files=2, rows_per_file=6)
    poison_shard(paths[1], 4)
    return paths


def test_inspect_refuses_a_shard_with_nan_naming_file_row_and_key(nan_shards):
    from textok.pipeline.inspect_table import inspect_table

    inspect_table(nan_shards[0])                                   # the clean file stays valid
    with pytest.raises(SchemaError, match=r"train-00001-of-00002.parquet: 1 row\(s\) hold NaN/inf.*\[4\].*k00010"):
        inspect_table(os.path.dirname(nan_shards[0]))


def test_loader_names_the_shard_and_row_before_any_training_step(nan_shards):
    from textok.trainer.data.loader import ShardLoader

    loader = ShardLoader(os.path.dirname(nan_shards[0]), image_size=32, batch_size=4, train=False, num_workers=0)
    with pytest.raises(SchemaError, match=r"train-00001-of-00002.parquet: row 4 \(key 'k00010'\) has NaN/inf"):
        for _ in loader:
            pass


def test_non_finite_loss_names_the_batch_keys():
    from textok.trainer.training.guards import NonFiniteLossError, check_finite

    class NoCheckpoint:
        def latest(self):
            return None

    with pytest.raises(NonFiniteLossError, match=r"step 7: \{'l2': nan\}; this rank's batch held keys \['a/1', 'b/2'\]"):
        check_finite({"l2": float("nan"), "lr": 1e-4}, 7, NoCheckpoint(), keys=["a/1", "b/2"])
