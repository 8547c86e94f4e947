"""train-dit on tiny latents: class-conditional and T2I, outputs, exact resume, torchrun DDP."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from test_latents import make_latents
from test_train_tokenizer import assert_watchable
from helpers import ROOT, pythonpath
from textok.trainer.training.metrics_log import read_metrics
from textok.trainer.training.train_dit import load_config, train



@pytest.fixture(scope="module")
def lat(tmp_path_factory):
    return make_latents(str(tmp_path_factory.mktemp("lat")))


def tiny(lat, output, **kw):
    base = dict(latents=lat["latents"], output=str(output), preset="tiny", steps=4, batch_size=4, save_every=2,
                sample_every=2, log_every=1, num_workers=0, shuffle_buffer=8, device="cpu", sample_steps=4)
    return load_config(None, **{**base, **kw})


def test_class_conditional_run_outputs(lat, tmp_path):
    from textok.trainer.models.dit import DiT
    from textok.trainer.evaluation.sample import load_dit

    out = train(tiny(lat, tmp_path / "run", tokenizer=lat["tok"]))
    model, stats = load_dit(out)
    assert isinstance(model, DiT) and not model.cfg.t2i
    assert model.cfg.num_classes == 3 and model.cfg.num_tokens == 8 and model.cfg.class_dropout == 0.1
    assert stats["mean"] == lat["summary"]["mean"] and stats["std"] == lat["summary"]["std"]
    assert stats["encoder"] == "tiny-t5" and stats["tokenizer_sha256"].startswith("sha256:")
    rows = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and abs(r["loss"] - r["mse"] - r["vb"]) < 1e-5 for r in rows)
    ck = tmp_path / "run" / "checkpoints"
    assert (ck / "latest").read_text() == "step-000004"
    ema = load_file(str(ck / "step-000004" / "ema.safetensors"))
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())  # dit/ holds the EMA weights
    state = torch.load(ck / "step-000004" / "state.pt", weights_only=True)
    assert state["step"] == 4 and state["loader"]["batches"] == 4
    for step in (2, 4):
        assert (tmp_path / "run" / "samples" / f"step-{step:06d}.png").is_file()
    assert_watchable(tmp_path / "run", "samples", [2, 4], "loss")
    cfg = json.load(open(tmp_path / "run" / "config.json"))
    assert cfg["model"]["num_classes"] == 3 and cfg["loss"]["latent_std"] == stats["std"]


def test_tiny_preset_training_defaults():
    tiny_cfg = load_config(None, latents="l", output="o", preset="tiny", steps=100)
    assert (tiny_cfg.lr, tiny_cfg.batch_size, tiny_cfg.sample_every) == (1e-3, 64, 500)
    xl = load_config(None, latents="l", output="o", steps=100)  # XL keeps DiT's values
    assert (xl.preset, xl.lr, xl.batch_size, xl.ema, xl.warmup) == ("XL", 1e-4, 256, 0.9999, 0)


def test_t2i_run(lat, tmp_path):
    from textok.trainer.evaluation.sample import load_dit

    out = train(tiny(lat, tmp_path / "t2i", t2i=True, steps=3, tokenizer=lat["tok"]))
    model, _ = load_dit(out)
    assert model.cfg.t2i and model.cfg.text_dim == 16 and model.cfg.max_text_tokens == 8
    assert model.cfg.text_dropout == 0.1
    assert (tmp_path / "t2i" / "samples" / "step-000003.png").is_file()


def test_resume_continues_exactly(lat, tmp_path):
    full = tmp_path / "full"
    # with --tokenizer: building and running the preview must not disturb the run's RNG
    train(tiny(lat, full, steps=6, save_every=3, tokenizer=lat["tok"]))
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-000003", part / "checkpoints" / "step-000003")
    (part / "checkpoints" / "latest").write_text("step-000003")
    shutil.copy(full / "config.json", part / "config.json")
    train(tiny(lat, part, steps=6, save_every=3, tokenizer=lat["tok"], resume=True))
    a = read_metrics(str(full / "metrics.jsonl"))[3:]
    b = read_metrics(str(part / "metrics.jsonl"))
    assert [r["step"] for r in b] == [4, 5, 6]
    for ra, rb in zip(a, b):
        for k in ("loss", "mse", "vb", "grad_norm", "lr"):
            assert ra[k] == rb[k], (ra["step"], k, ra[k], rb[k])
    for f in ("model", "ema"):
        wa = load_file(str(full / "checkpoints" / "step-000006" / f"{f}.safetensors"))
        wb = load_file(str(part / "checkpoints" / "step-000006" / f"{f}.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f
    with pytest.raises(ValueError, match="width"):  # another model cannot continue this run
        train(tiny(lat, part, steps=8, resume=True, model={"width": 32}))


def test_config_errors(lat, tmp_path):
    with pytest.raises(ValueError, match="--steps"):
        tiny(lat, tmp_path, steps=0)
    with pytest.raises(ValueError, match="label 2 >= --num-classes 2"):
        train(tiny(lat, tmp_path / "nc", num_classes=2))
    with pytest.raises(ValueError, match="unknown train-dit setting"):
        load_config(None, latents="x", output="y", steps=1, stpes=2)


def test_cli_and_torchrun_two_gloo_processes(lat, tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"latents": lat["latents"], "output": str(tmp_path / "ddp"), "preset": "tiny",
                                    "steps": 2, "batch_size": 4, "save_every": 2, "log_every": 1, "num_workers": 0,
                                    "shuffle_buffer": 4, "device": "cpu"}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath()}
    # --standalone: a local rendezvous on a free port (`--master_port 0` hangs in rendezvous on torch 2.13)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "textok", "train-dit", "--config", str(cfg_file)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "step-000002" / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["loader"]["world_size"] == 2 and state["loader"]["batch_size"] == 2
    assert (tmp_path / "ddp" / "dit" / "model.safetensors").is_file()


def test_short_run_exports_an_ema_that_followed_training(lat, tmp_path):
    # EMA 0.9999 from step 0 would export ~the init after a short (demo) run; with the warmup the
    # average follows early training. final.linear starts at zero (adaLN-Zero), so its norm is the
    # distance travelled.
    train(tiny(lat, tmp_path / "run", steps=6, save_every=6, lr=1e-2))
    ck = tmp_path / "run" / "checkpoints" / "step-000006"
    live, ema = load_file(str(ck / "model.safetensors")), load_file(str(ck / "ema.safetensors"))
    moved = live["final.linear.weight"].norm()
    assert moved > 0 and ema["final.linear.weight"].norm() > 0.5 * moved
