"""textok sample: class-conditional captions come from that class's pool, seeded determinism, T2I
with a real (tiny, random) T5 through TextEncoder, and refusals of mismatched encoders / tokenizers."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from textok.pipeline.pools import pools_table
from textok.schemas.common import write_table_atomic
from test_latents import MAX_TOKENS, TEXT_DIM, make_latents, make_tokenizer
from textok.trainer.evaluation.sample import SampleConfig, run_sample
from textok.trainer.training.train_dit import load_config, train


def write_pools(path, encoder="tiny-t5", dim=TEXT_DIM, classes=(0, 1, 2), per_class=4, seed=0) -> str:
    rng = np.random.default_rng(seed)
    rows = []
    for c in classes:
        for k in range(per_class):
            emb = rng.standard_normal((int(rng.integers(1, MAX_TOKENS + 1)), dim)).astype(np.float16)
            rows.append(dict(label=c, class_name=f"class {c}", key=f"val/{c}/{k}", caption=f"class {c} image {k}",
                             text_emb=emb, text_len=len(emb)))
    meta = {"encoder": encoder, "D": dim, "max_tokens": MAX_TOKENS, "compute_dtype": "float32",
            "storage_dtype": "float16", "per_class": per_class, "seed": 0, "source_split": "val"}
    write_table_atomic(pools_table(rows, meta), os.path.join(path, "val.parquet"))
    return str(path)


def _train(lat, out, **kw):
    return train(load_config(None, latents=lat["latents"], output=str(out), preset="tiny", steps=2, batch_size=4,
                             save_every=2, log_every=1, num_workers=0, shuffle_buffer=8, device="cpu", **kw))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    lat = make_latents(str(root))
    return {**lat, "dit": _train(lat, root / "run"), "pools": write_pools(root / "pools")}


def sample(run, out, **kw):
    base = dict(dit=run["dit"], tokenizer=run["tok"], output=str(out), pools=run["pools"], classes=[0, 2], n=3,
                steps=5, device="cpu")
    return run_sample(SampleConfig(**{**base, **kw}))


def test_class_conditional_captions_come_from_each_class_pool(run, tmp_path):
    res = sample(run, tmp_path / "a", n=6)
    data = np.load(res["npz"])
    assert data["images"].shape == (12, 32, 32, 3) and data["images"].dtype == np.uint8
    assert data["labels"].tolist() == [0] * 6 + [2] * 6
    for label, cap, key in zip(data["labels"], data["captions"], data["caption_keys"]):
        assert key.startswith(f"val/{label}/") and cap.startswith(f"class {label} image "), (label, cap)
    assert len(set(data["captions"][:6])) > 1  # drawn, not always the first caption of the pool
    assert os.path.isfile(res["grid"]) and json.load(open(tmp_path / "a" / "samples.json"))["num_images"] == 12


def test_same_seed_same_images_other_seed_differs(run, tmp_path):
    a = np.load(sample(run, tmp_path / "a", sampler="ddim", batch_size=4)["npz"])
    b = np.load(sample(run, tmp_path / "b", sampler="ddim", batch_size=4)["npz"])
    c = np.load(sample(run, tmp_path / "c", sampler="ddim", batch_size=4, seed=1)["npz"])
    assert np.array_equal(a["images"], b["images"]) and list(a["captions"]) == list(b["captions"])
    assert not np.array_equal(a["images"], c["images"])


def test_all_classes_and_refusals(run, tmp_path):
    res = sample(run, tmp_path / "all", classes=None, all_classes=True, n=1)
    assert np.load(res["npz"])["labels"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="another text encoder"):
        sample(run, tmp_path / "x", pools=write_pools(tmp_path / "p2", encoder="other-t5"))
    with pytest.raises(KeyError, match="class 2"):
        sample(run, tmp_path / "x", pools=write_pools(tmp_path / "p3", classes=(0, 1)))
    with pytest.raises(ValueError, match="not the tokenizer"):
        sample(run, tmp_path / "x", tokenizer=make_tokenizer(tmp_path / "tok2", seed=5))
    with pytest.raises(ValueError, match="class-conditional"):
        sample(run, tmp_path / "x", captions=["a red circle"])


@pytest.mark.parametrize("learn_sigma,diffusion_steps", [(False, 1000), (True, 100)])
def test_sampling_follows_the_diffusion_the_dit_was_trained_with(learn_sigma, diffusion_steps, tmp_path,
                                                                  monkeypatch):
    from textok.trainer.models.dit import DiT

    lat = make_latents(str(tmp_path / "lat"))
    dit = _train(lat, tmp_path / "run", diffusion_steps=diffusion_steps, model={"learn_sigma": learn_sigma})
    saved = json.load(open(os.path.join(dit, "config.json")))
    assert (saved["learn_sigma"], saved["diffusion_steps"], saved["noise_schedule"]) == \
           (learn_sigma, diffusion_steps, "linear")
    seen = []
    forward = DiT.forward
    monkeypatch.setattr(DiT, "forward", lambda self, x, t, **kw: seen.append(t.max().item()) or forward(self, x, t, **kw))
    run = {**lat, "dit": dit, "pools": write_pools(tmp_path / "pools")}
    res = sample(run, tmp_path / "s", steps=10, n=2)  # learn_sigma=False crashed here (16 vs 8 channels)
    assert np.load(res["npz"])["images"].shape[0] == 4
    # the respaced chain starts at the last timestep of the *trained* chain, not of a 1000-step one
    assert max(seen) == diffusion_steps - 1
    with pytest.raises(ValueError, match="diffusion steps"):
        sample(run, tmp_path / "t", steps=diffusion_steps + 1)


def test_guidance_defaults_are_recorded_and_a_sweep_reports_the_best(run, tmp_path):
    from click.testing import CliRunner

    from textok.cli import main
    from textok.trainer.evaluation.eval_gen import EvalGenConfig, evaluate_generation

    gfid_set = sample(run, tmp_path / "all", classes=None, all_classes=True, n=1)
    grid = sample(run, tmp_path / "grid", n=1)
    assert (gfid_set["cfg_scale"], grid["cfg_scale"]) == (1.5, 4.0)  # DiT's FID-50K scale vs its picture scale
    assert float(np.load(gfid_set["npz"])["cfg_scale"]) == 1.5
    res = CliRunner().invoke(main, ["sample", "--dit", run["dit"], "--tokenizer", run["tok"], "--pools", run["pools"],
                                    "--classes", "all", "--n", "2", "--steps", "3", "--cfg", "1.0,2.0",
                                    "--device", "cpu", "--output", str(tmp_path / "sweep")])
    assert res.exit_code == 0, res.output
    npzs = json.loads(res.output)["npz"]
    assert [float(np.load(p)["cfg_scale"]) for p in npzs] == [1.0, 2.0]
    # same seed: the same pool captions at every scale, so the scales are compared on equal terms
    assert list(np.load(npzs[0])["captions"]) == list(np.load(npzs[1])["captions"])
    ref = tmp_path / "ref.npz"
    np.savez(ref, images=np.load(gfid_set["npz"])["images"][:2].repeat(3, axis=0))
    out = evaluate_generation(EvalGenConfig(samples=npzs, reference=str(ref), output=str(tmp_path / "g.json"),
                                            device="cpu", batch_size=8))
    assert [r["cfg_scale"] for r in out["sweep"]] == [1.0, 2.0]
    n = len(np.load(npzs[0])["images"])
    assert all(r["num_samples"] == n and r["num_reference"] == 6 and r["kid_std"] >= 0 for r in out["sweep"])
    # no tuning set: choosing on the reported reference would select on the test set, so nothing is "best"
    assert out["chosen"] is None and "--tuning-reference" in out["chosen_note"] and "best" not in out
    tune = tmp_path / "tune.npz"  # other real images: the scale is chosen on these, reported on ref
    np.savez(tune, images=np.load(npzs[1])["images"].repeat(2, axis=0))  # 2n images
    out = evaluate_generation(EvalGenConfig(samples=npzs, reference=str(ref), tuning_reference=str(tune),
                                            device="cpu", batch_size=8))
    pick = min(out["sweep"], key=lambda r: r["gfid_tuning"])
    assert out["chosen"]["cfg_scale"] == pick["cfg_scale"] == 2.0  # the set the tuning images were copied from
    assert out["chosen"]["gfid"] == pick["gfid"] and out["tuning_reference"] == str(tune)
    assert out["reference"] == str(ref) and out["num_tuning_reference"] == 2 * n
    with pytest.raises(ValueError, match="selected on the test set"):
        evaluate_generation(EvalGenConfig(samples=npzs, reference=str(ref), tuning_reference=str(ref), device="cpu"))
    single = evaluate_generation(EvalGenConfig(samples=gfid_set["npz"], reference=str(ref), device="cpu"))
    assert single["cfg_scale"] == 1.5


def test_cli_sample(run, tmp_path):
    from click.testing import CliRunner

    from textok.cli import main

    res = CliRunner().invoke(main, ["sample", "--dit", os.path.dirname(run["dit"]), "--tokenizer", run["tok"],
                                    "--pools", run["pools"], "--classes", "1,2", "--n", "2", "--steps", "3",
                                    "--device", "cpu", "--output", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["num_images"] == 4


def test_text_to_image_with_the_shards_encoder(tmp_path):
    from test_text_encoder import build_tiny_t5

    t5 = build_tiny_t5(str(tmp_path / "t5"), d_model=TEXT_DIM)
    lat = make_latents(str(tmp_path), encoder=t5, rows_per_file=6)
    dit = _train(lat, tmp_path / "run", t2i=True)
    caps = ["a red circle on the left", "a small blue square"]
    res = run_sample(SampleConfig(dit=dit, tokenizer=lat["tok"], output=str(tmp_path / "s"), captions=caps, n=2,
                                  steps=4, device="cpu"))
    data = np.load(res["npz"])
    assert data["images"].shape == (4, 32, 32, 3) and list(data["captions"]) == [caps[0]] * 2 + [caps[1]] * 2
    other = build_tiny_t5(str(tmp_path / "t5b"), d_model=TEXT_DIM)
    with pytest.raises(ValueError, match="does not match"):
        run_sample(SampleConfig(dit=dit, tokenizer=lat["tok"], output=str(tmp_path / "s2"), captions=caps,
                                steps=2, device="cpu", encoder=other))
    with pytest.raises(ValueError, match="text-to-image"):
        run_sample(SampleConfig(dit=dit, tokenizer=lat["tok"], output=str(tmp_path / "s3"), classes=[0],
                                device="cpu"))
