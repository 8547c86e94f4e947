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
