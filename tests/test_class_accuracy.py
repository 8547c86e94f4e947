"""class-accuracy: a probe trained on real labelled images scores samples against the classes asked for."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from textok.pipeline.sources.demo_data import SHAPES, render_scene, sample_scene
from textok.schemas.common import with_metadata, write_table_atomic
from textok.schemas.shards import image_column, shards_schema, text_emb_blob_columns
from textok.trainer.evaluation.class_accuracy import ClassAccuracyConfig, evaluate_class_accuracy


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Real shard files of tiles scenes (labels = the shape class; text is not used here)."""
    root = tmp_path_factory.mktemp("cls")
    out = {}
    for split, seed, n in (("train", 0, 280), ("val", 1, 70)):
        rows = [sample_scene(seed, i, "tiles") for i in range(n)]
        imgs = []
        for r in rows:
            buf = io.BytesIO()
            render_scene(r, 32).save(buf, format="PNG")
            imgs.append(buf.getvalue())
        embs = [np.zeros((1, 4), np.float16)] * n
        meta = {"encoder": "none", "D": 4, "max_tokens": 1, "compute_dtype": "float32", "storage_dtype": "float16",
                "split": split, "num_rows": n}
        table = pa.Table.from_arrays([
            pa.array([f"{split}/{i}" for i in range(n)]), pa.array([split] * n),
            pa.array([r["label"] for r in rows], pa.int32()), pa.array([r["class_name"] for r in rows]),
            pa.array([r["caption"] for r in rows]), image_column(imgs), pa.array(["png"] * n),
            pa.array([32] * n, pa.int32()), pa.array([32] * n, pa.int32()), text_emb_blob_columns(embs, 4)["text_emb"],
            pa.array([1] * n, pa.int32())], schema=with_metadata(shards_schema(4), "shards", "encode", meta))
        write_table_atomic(table, os.path.join(root, f"{split}-00000-of-00001.parquet"))
        out[split] = rows
    assert len(SHAPES) == 7
    return str(root), out


def test_probe_recognises_real_images_and_scores_samples_by_their_asked_class(shards, tmp_path):
    root, rows = shards
    val = rows["val"][:35]
    images = np.stack([np.asarray(render_scene(r, 32)) for r in val])
    labels = np.array([r["label"] for r in val])
    right, wrong = tmp_path / "right.npz", tmp_path / "wrong.npz"
    np.savez(right, images=images, labels=labels, cfg_scale=np.float64(1.5))
    np.savez(wrong, images=images, labels=(labels + 1) % 7)  # same pictures, the wrong classes asked for
    r = evaluate_class_accuracy(ClassAccuracyConfig(train=root, val=root, samples=[str(right), str(wrong)],
                                                    output=str(tmp_path / "acc.json"), steps=150))
    assert r["num_classes"] == 7 and r["chance"] == pytest.approx(1 / 7)
    assert r["train_images"] == 280 and r["val_images"] == 70
    assert r["real_val_accuracy"] > 0.6, r  # the shapes are large and plain: a probe learns them quickly
    good, bad = r["samples"]
    assert good["accuracy"] > 0.6 and good["times_chance"] == pytest.approx(good["accuracy"] * 7)
    assert good["cfg_scale"] == 1.5 and bad["cfg_scale"] is None
    assert bad["accuracy"] < 0.3
    assert json.load(open(tmp_path / "acc.json"))["samples"][0]["accuracy"] == good["accuracy"]


def test_unlabelled_samples_are_refused(shards, tmp_path):
    root, _ = shards
    np.savez(tmp_path / "t2i.npz", images=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(KeyError, match="labels"):
        evaluate_class_accuracy(ClassAccuracyConfig(train=root, val=root, samples=[str(tmp_path / "t2i.npz")]))


def test_controls_score_five_latent_sources_with_the_samples_pool_captions(shards, tmp_path):
    """Real files: a tokenizer, its latents of the labelled shards, pools; the samples are real
    held-out images (right by construction) while a random tokenizer decodes the controls to noise,
    so what the 'DiT' adds over the caption alone must come out clearly positive, with its SE."""
    from test_latents import make_tokenizer
    from textok.pipeline.pools import pools_table
    from textok.trainer.data.latents import ExtractConfig, extract_latents

    root, rows = shards
    tok = make_tokenizer(tmp_path / "tok", text_dim=4, encoder="none")
    extract_latents(ExtractConfig(tokenizer=tok, shards=root, output=str(tmp_path / "latents"), batch_size=64,
                                  device="cpu", num_workers=0))
    rng = np.random.default_rng(0)
    pool_rows = [dict(label=c, class_name=SHAPES[c], key=f"pool/{c}/{k}", caption=f"a {SHAPES[c]}",
                      text_emb=rng.standard_normal((1, 4)).astype(np.float16), text_len=1)
                 for c in range(7) for k in range(3)]
    meta = {"encoder": "none", "D": 4, "max_tokens": 1, "compute_dtype": "float32", "storage_dtype": "float16",
            "per_class": 3, "seed": 0, "source_split": "val"}
    write_table_atomic(pools_table(pool_rows, meta), str(tmp_path / "pools" / "val.parquet"))
    val = rows["val"][:42]
    labels = np.array([r["label"] for r in val])
    npz = tmp_path / "s.npz"
    np.savez(npz, images=np.stack([np.asarray(render_scene(r, 32)) for r in val]), labels=labels,
             caption_keys=np.array([f"pool/{c}/{i % 3}" for i, c in enumerate(labels)]), cfg_scale=np.float64(1.0))
    r = evaluate_class_accuracy(ClassAccuracyConfig(train=root, val=root, samples=[str(npz)], steps=150,
                                                    tokenizer=tok, latents=str(tmp_path / "latents"),
                                                    pools=str(tmp_path / "pools"), output=str(tmp_path / "a.json")))
    s = r["samples"][0]
    c = s["controls"]
    assert list(c) == ["dit", "same_class_real", "other_class_real", "gaussian", "mean_latent"]
    assert c["dit"]["accuracy"] == s["accuracy"] > 0.6
    for v in c.values():
        p = v["accuracy"]
        assert 0 <= p <= 1 and v["se"] == pytest.approx((p * (1 - p) / 42) ** 0.5)
    for name, ctrl in (("dit_minus_other_class", "other_class_real"), ("dit_minus_gaussian", "gaussian")):
        gain = s[name]
        assert gain["value"] == pytest.approx(s["accuracy"] - c[ctrl]["accuracy"])  # paired: same captions
        assert gain["value"] > 3 * gain["se"] > 0, (name, gain)  # noise decodes carry no class
    assert "controls" in json.load(open(tmp_path / "a.json"))["samples"][0]
    np.savez(tmp_path / "nokeys.npz", images=np.load(npz)["images"], labels=labels)
    with pytest.raises(KeyError, match="caption_keys"):
        evaluate_class_accuracy(ClassAccuracyConfig(train=root, val=root, samples=[str(tmp_path / "nokeys.npz")],
                                                    steps=5, tokenizer=tok, latents=str(tmp_path / "latents"),
                                                    pools=str(tmp_path / "pools")))
