"""eval-gen with the packaged FID Inception on tiny sets; CLIP score on a tiny random CLIP; efficiency CLI."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from test_data import write_shards
from textok.trainer.evaluation.eval_gen import EvalGenConfig, clip_score, evaluate_generation

N_IMAGES = 5  # > k = 3 nearest neighbours, so precision/recall are defined


@pytest.fixture(scope="module")
def shard_images(tmp_path_factory):
    """A 5-image shard and its images as the sampler would store them (uint8, centre crop 32)."""
    from textok.trainer.data.loader import ShardLoader
    from textok.trainer.evaluation.grid import to_uint8

    d = tmp_path_factory.mktemp("ref")
    write_shards(str(d / "shards"), num_files=1, rows_per_file=N_IMAGES, dim=8, max_tokens=4, image_size=32)
    batch = next(iter(ShardLoader(str(d / "shards"), 32, N_IMAGES, train=False)))
    return str(d / "shards"), to_uint8(batch["images"]), [f"caption {i}" for i in range(N_IMAGES)]


def test_fid_of_a_set_against_itself_is_zero(shard_images, tmp_path):
    shards, images, captions = shard_images
    npz = tmp_path / "samples.npz"
    np.savez(npz, images=images, labels=np.zeros(N_IMAGES), captions=np.asarray(captions))
    out = tmp_path / "gen.json"
    r = evaluate_generation(EvalGenConfig(samples=str(npz), reference=shards, output=str(out), device="cpu",
                                          batch_size=N_IMAGES))
    assert r["num_samples"] == r["num_reference"] == N_IMAGES and r["image_size"] == 32
    assert abs(r["gfid"]) < 1e-2, r["gfid"]
    assert r["precision"] == 1.0 and r["recall"] == 1.0
    assert r["inception_score"] is None and "classifier" in r["inception_score_note"]
    assert r["clip_score"] is None
    assert json.load(open(out))["gfid"] == r["gfid"]


def test_other_images_give_finite_positive_fid_against_an_adm_style_npz(shard_images, tmp_path):
    _, images, _ = shard_images
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=images)  # the layout of ADM's reference batches
    noise = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", images=noise)
    r = evaluate_generation(EvalGenConfig(samples=str(tmp_path / "s.npz"), reference=str(ref), device="cpu"))
    assert np.isfinite(r["gfid"]) and r["gfid"] > 1.0
    assert 0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0
    with pytest.raises(ValueError, match="uint8"):
        np.savez(tmp_path / "bad.npz", images=noise.astype(np.float32))
        evaluate_generation(EvalGenConfig(samples=str(tmp_path / "bad.npz"), reference=str(ref), device="cpu"))


def make_tiny_clip(path: str) -> str:
    """A random-init CLIP + a character-level CLIP tokenizer and image processor (no download)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    os.makedirs(path, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tok = CLIPTokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(path)
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=77, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(cfg).save_pretrained(path)
    return path


def test_clip_score_matches_clip_logits(tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    path = make_tiny_clip(str(tmp_path / "clip"))
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    captions = ["a red circle", "blue square", "a small star 2"]
    got = clip_score(path, images, captions, "cpu", batch_size=2)
    model, proc = CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)
    with torch.no_grad():
        out = model(**proc(text=captions, images=list(images), return_tensors="pt", padding=True))
        cos = out.logits_per_image.diagonal() / model.logit_scale.exp()
    assert (cos < 0).any() and (cos > 0).any()  # the clamp at 0 is exercised on both sides
    assert got > 0 and got == pytest.approx(float((100 * cos).clamp(min=0).mean()), abs=1e-4)
    with pytest.raises(FileNotFoundError, match="--clip"):
        clip_score(str(tmp_path / "missing"), images, captions, "cpu")


def test_cli_efficiency(tmp_path):
    from click.testing import CliRunner

    from textok.cli import main

    res = CliRunner().invoke(main, ["efficiency", "--preset", "tiny", "--tokens", "4", "8", "--no-time",
                                    "--output", str(tmp_path)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    ours = [m for m in report["models"] if m["kind"] == "textok"]
    assert [m["tokens"] for m in ours] == [4, 8] and ours[0]["gflops_per_sample"] < ours[1]["gflops_per_sample"]
    assert (tmp_path / "efficiency.png").is_file() and (tmp_path / "efficiency.json").is_file()
