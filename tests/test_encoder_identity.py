"""Encoder identity (issue 10, problem 6): pools refuse shards of another encoder at once; the same
weights through another path are the same encoder (train-tokenizer --resume); and the trainer
trains on shards `textok encode` made with a real (tiny, random) T5, not on random embeddings."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from textok.pipeline.encode.pipeline import run_encode
from textok.schemas.encoder_identity import encoder_differences
from textok.pipeline.pools import run_pools
from test_encode import make_captions_dir
from test_text_encoder import build_tiny_t5
from test_train_tokenizer import tiny


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ident")
    caps = make_captions_dir(str(root / "cap"), n_train=16, n_val=9)
    t5 = build_tiny_t5(str(root / "t5"), d_model=16)
    out = str(root / "data")
    run_encode(caps, out, encoder=t5, rows_per_shard=8, batch_size=8, device="cpu", image_size=32)
    return {"root": root, "cap": caps, "t5": t5, "out": out}


def test_identity_is_the_weight_hash_then_the_id():
    assert encoder_differences({"encoder": "/a", "encoder_hash": "h1", "D": 8}, {"encoder": "/b", "encoder_hash": "h1",
                                                                                 "D": 8}) == []
    assert encoder_differences({"encoder": "/a", "encoder_hash": "h1"}, {"encoder": "/a", "encoder_hash": "h2"}) == \
        ["encoder_hash"]
    assert encoder_differences({"encoder": "/a"}, {"encoder": "/b", "encoder_hash": "h"}) == ["encoder"]
    assert encoder_differences({"encoder": "/a", "D": 8}, {"encoder": "/a", "D": 16}) == ["D"]


def test_pools_into_an_output_of_another_encoder_refused_at_once(world, tmp_path):
    wide = build_tiny_t5(str(tmp_path / "t5-wide"), d_model=32)
    with pytest.raises(ValueError, match=r"shards/train-00000-of-00002.parquet: these shards were encoded with .*"
                                         r"\(D=16\).*\(D=32\).*Use --encoder"):
        run_pools(world["cap"], world["out"], encoder=wide, per_class=2, device="cpu")
    assert not os.path.exists(os.path.join(world["out"], "pools"))
    # the same weights copied elsewhere are accepted
    copy = shutil.copytree(world["t5"], str(tmp_path / "t5-copy"))
    s = run_pools(world["cap"], world["out"], encoder=copy, per_class=2, device="cpu")
    assert s["rows"] == 6


def test_trainer_on_encoded_shards_and_resume_through_another_path_of_the_same_weights(world, tmp_path):
    from textok.trainer.data.loader import ShardLoader
    from textok.trainer.models.textok import TexTok
    from textok.trainer.training.metrics_log import read_metrics
    from textok.trainer.training.train_tokenizer import train

    shards = os.path.join(world["out"], "shards")
    run = tmp_path / "run"
    train(tiny(shards, run, steps=2, save_every=2, batch_size=4))
    record = json.load(open(run / "text_encoder.json"))
    assert record["encoder"] == world["t5"] and record["D"] == 16 and record["encoder_hash"].startswith("sha256:")
    # the same T5 weights reached through another folder, encoded into another output
    copy = shutil.copytree(world["t5"], str(tmp_path / "mnt" / "t5"))
    out2 = str(tmp_path / "data2")
    run_encode(world["cap"], out2, encoder=copy, rows_per_shard=8, batch_size=8, device="cpu", image_size=32)
    # other shards are another experiment's data unless the user says so: refused, then accepted and recorded
    with pytest.raises(ValueError, match=r"--resume would change the experiment \(train.shards"):
        train(tiny(os.path.join(out2, "shards"), run, steps=4, save_every=2, batch_size=4, resume=True))
    tok = train(tiny(os.path.join(out2, "shards"), run, steps=4, save_every=2, batch_size=4, resume=True,
                     allow_config_change=True))
    assert "train.shards" in (run / "config_history.jsonl").read_text()
    rows = read_metrics(str(run / "metrics.jsonl"))
    assert [r["step"] for r in rows][-2:] == [3, 4] and all(np.isfinite(r["total"]) for r in rows)
    # the model reads the encoded captions: other text, other reconstruction
    model = TexTok.from_pretrained(tok).eval()
    batch = next(iter(ShardLoader(os.path.join(out2, "shards"), 32, 4, train=False)))
    assert batch["text_mask"].sum() > 0 and batch["text_emb"].float().abs().sum() > 0
    with torch.no_grad():
        a, _ = model(batch["images"], batch["text_emb"].float(), batch["text_mask"])
        b, _ = model(batch["images"], batch["text_emb"].float().roll(1, dims=0), batch["text_mask"].roll(1, dims=0))
    assert (a - b).abs().max() > 1e-4
