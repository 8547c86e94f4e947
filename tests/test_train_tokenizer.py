"""train-tokenizer end to end on tiny shards: outputs, exact resume, NaN stop, torchrun DDP, eval + compare."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_data import write_shards
from helpers import ROOT, pythonpath
from textok.trainer.training.guards import NonFiniteLossError
from textok.trainer.training.metrics_log import read_metrics
from textok.trainer.training.train_tokenizer import load_config, train

SMALL_DISC = {"disc": {"channel_base": 512, "channel_max": 32}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    write_shards(str(d), num_files=2, rows_per_file=12, dim=16, max_tokens=8, image_size=32)
    return str(d)


def tiny(shards, output, **kw):
    base = dict(shards=shards, output=str(output), preset="tiny", image_size=32, patch_size=4, num_tokens=8,
                steps=4, batch_size=4, warmup=2, perceptual="none", disc_start=2, save_every=2, sample_every=2,
                log_every=1, num_workers=0, shuffle_buffer=8, device="cpu", loss=dict(SMALL_DISC))
    return load_config(None, **{**base, **kw})


def test_train_tiny_writes_checkpoints_config_tokenizer(shards, tmp_path, monkeypatch):
    from textok.trainer.models.textok import TexTok
    from textok.trainer.training.metrics_log import MetricsLogger

    plotted = []  # how many logged steps loss.png showed each time it was drawn
    real_plot = MetricsLogger.plot
    monkeypatch.setattr(MetricsLogger, "plot", lambda self, png: plotted.append(len(read_metrics(self.path)))
                        or real_plot(self, png))
    out = train(tiny(shards, tmp_path / "run"))
    assert plotted[:2] == [2, 4]  # refreshed at every preview (sample_every=2), not only at the end
    assert_watchable(tmp_path / "run", "reconstructions", [2, 4], "total")
    card = (tmp_path / "run" / "tokenizer" / "README.md").read_text()  # the model card knows the run
    assert "- steps: 4" in card and f"- data: {shards}" in card and "| total |" in card
    model = TexTok.from_pretrained(out)
    assert model.cfg.num_tokens == 8 and model.cfg.text_dim == 16 and model.cfg.max_text_tokens == 8
    cfg = json.load(open(tmp_path / "run" / "config.json"))
    assert cfg["train"]["steps"] == 4 and cfg["model"]["text_mode"] == "both" and cfg["loss"]["disc_start"] == 2
    rows = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert "d_hinge" not in rows[1] and "d_hinge" in rows[2]  # D starts at step index 2
    # after warm-up (2 steps) each preview measures the latent: own Z vs another image's Z
    assert "latent_gain_db" not in rows[1] and isinstance(rows[3]["latent_gain_db"], float)
    ck = tmp_path / "run" / "checkpoints"
    assert open(ck / "latest").read() == "step-000004"
    for f in ("model", "ema", "discriminator"):
        assert load_file(str(ck / "step-000004" / f"{f}.safetensors"))
    state = torch.load(ck / "step-000004" / "state.pt", weights_only=True)
    assert state["step"] == 4 and state["loader"]["batches"] == 4
    # the exported tokenizer holds the EMA weights
    ema = load_file(str(ck / "step-000004" / "ema.safetensors"))
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items() if k in ema)
    assert (tmp_path / "run" / "samples" / "step-000004.png").is_file()
    assert (tmp_path / "run" / "loss.png").is_file()
    # the shards' text encoder travels with the tokenizer (extract-latents checks it)
    for d in (tmp_path / "run", tmp_path / "run" / "tokenizer"):
        assert json.load(open(d / "text_encoder.json")) == {"encoder": "tiny-t5", "D": 16, "max_tokens": 8}


def test_degenerate_latent_is_warned_about_and_logged(shards, tmp_path, monkeypatch, caplog):
    """A latent that carries nothing (the decoder's view of Z zeroed) is logged near 0 dB and warned about."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from textok.trainer.models.textok import TexTok

    real_decode = TexTok.decode
    monkeypatch.setattr(TexTok, "decode", lambda self, z, *a, **k: real_decode(self, torch.zeros_like(z), *a, **k))
    with caplog.at_level("WARNING", logger="textok.trainer.training.train_tokenizer"):
        train(tiny(shards, tmp_path / "run", steps=4, warmup=1, disc_start=100))
    rows = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["latent_gain_db"] for r in rows if "latent_gain_db" in r] == [0.0, 0.0]  # steps 2 and 4
    assert "latent_gain_db = 0.00 dB" in caplog.text and "carries almost nothing" in caplog.text
    events = EventAccumulator(str(tmp_path / "run" / "tb")).Reload()
    assert [e.step for e in events.Scalars("latent_gain_db")] == [2, 4]


def assert_watchable(run, image_tag: str, image_steps: list[int], scalar: str) -> None:
    """TensorBoard (run/tb) holds the preview grids and the curves; loss.png exists."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb")).Reload()
    assert [e.step for e in events.Images(image_tag)] == image_steps
    assert [e.step for e in events.Scalars(scalar)] == [r["step"] for r in read_metrics(str(run / "metrics.jsonl"))]
    assert (run / "loss.png").is_file()


def test_presets_carry_training_defaults(tmp_path):
    tiny_cfg = load_config(None, shards="s", output="o", preset="tiny", steps=1500)
    assert (tiny_cfg.warmup, tiny_cfg.disc_start, tiny_cfg.perceptual) == (100, 5000, "none")
    assert (tiny_cfg.lr, tiny_cfg.batch_size, tiny_cfg.image_size) == (1e-3, 32, 32)
    paper = load_config(None, shards="s", output="o", preset="B", steps=1500)  # the paper's values
    assert (paper.warmup, paper.disc_start, paper.lr, paper.batch_size, paper.ema) == (5000, 80_000, 1e-4, 256, 0.999)
    assert paper.perceptual != "none" and paper.image_size == 256
    # flag > config file > preset default
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"preset": "tiny", "warmup": 7, "lr": 0.5}))
    mixed = load_config(str(f), shards="s", output="o", steps=10, lr=0.25)
    assert (mixed.warmup, mixed.lr, mixed.disc_start, mixed.perceptual) == (7, 0.25, 5000, "none")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_device_is_resolved_by_textok_devices(shards, tmp_path):
    from textok.devices import DeviceError

    with pytest.raises(DeviceError, match="--device cuda: torch sees no CUDA device"):
        train(tiny(shards, tmp_path, device="cuda"))


def test_resume_continues_exactly(shards, tmp_path):
    full = tmp_path / "full"
    train(tiny(shards, full, steps=6, save_every=3, disc_start=2))
    # a run interrupted after step 3: its output dir as it was then
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-000003", part / "checkpoints" / "step-000003")
    (part / "checkpoints" / "latest").write_text("step-000003")
    shutil.copy(full / "config.json", part / "config.json")
    train(tiny(shards, part, steps=6, save_every=3, disc_start=2, resume=True))

    a = read_metrics(str(full / "metrics.jsonl"))[3:]
    b = read_metrics(str(part / "metrics.jsonl"))
    assert [r["step"] for r in b] == [4, 5, 6]
    for ra, rb in zip(a, b):
        for k in ("total", "l2", "gan", "d_total", "lecam", "grad_norm", "d_grad_norm", "lr"):
            assert ra[k] == rb[k], (ra["step"], k, ra[k], rb[k])
    for f in ("model", "ema", "discriminator"):
        wa = load_file(str(full / "checkpoints" / "step-000006" / f"{f}.safetensors"))
        wb = load_file(str(part / "checkpoints" / "step-000006" / f"{f}.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f


def test_discriminator_exists_from_its_start_step_and_resume_across_it_is_exact(shards, tmp_path):
    full = tmp_path / "full"
    out = train(tiny(shards, full, steps=6, save_every=2, disc_start=4))
    ck = full / "checkpoints"
    before = load_file(str(ck / "step-000002" / "discriminator.safetensors"))
    assert set(before) == {"lecam_ema_real", "lecam_ema_fake", "lecam_initialised"}  # no D, no D optimizer
    assert "opt_d" not in torch.load(ck / "step-000002" / "state.pt", weights_only=True)
    assert any(k.startswith("discriminator.") for k in load_file(str(ck / "step-000006" / "discriminator.safetensors")))
    assert "opt_d" in torch.load(ck / "step-000006" / "state.pt", weights_only=True)
    # the weights-only export: model weights and its config, no optimizer or loss state
    exported = sorted(os.listdir(out))
    assert not any(n.endswith((".pt", ".pth", ".bin")) for n in exported), exported
    keys = {k for f in exported if f.endswith(".safetensors") for k in load_file(os.path.join(out, f))}
    assert keys and not any(k.startswith(("discriminator", "opt", "lecam")) or "exp_avg" in k for k in keys)
    # resumed from step 2, before D exists: D is created at step 4 exactly as in the uninterrupted run
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(ck / "step-000002", part / "checkpoints" / "step-000002")
    (part / "checkpoints" / "latest").write_text("step-000002")
    shutil.copy(full / "config.json", part / "config.json")
    train(tiny(shards, part, steps=6, save_every=2, disc_start=4, resume=True))
    a, b = read_metrics(str(full / "metrics.jsonl"))[2:], read_metrics(str(part / "metrics.jsonl"))
    assert [r["step"] for r in b] == [3, 4, 5, 6] and "d_total" in b[-1]
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "time"} == {k: v for k, v in rb.items() if k != "time"}
    for f in ("model", "ema", "discriminator"):
        wa = load_file(str(ck / "step-000006" / f"{f}.safetensors"))
        wb = load_file(str(part / "checkpoints" / "step-000006" / f"{f}.safetensors"))
        assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa), f


def test_resume_with_other_model_config_fails(shards, tmp_path):
    train(tiny(shards, tmp_path, steps=2))
    with pytest.raises(ValueError, match="num_tokens"):
        train(tiny(shards, tmp_path, steps=4, num_tokens=4, resume=True))


def test_nan_loss_stops_naming_step_and_checkpoint(shards, tmp_path):
    with pytest.raises(NonFiniteLossError) as e:
        train(tiny(shards, tmp_path, steps=4, lr=1e30, warmup=0, save_every=1))
    msg = str(e.value)
    assert "step 2" in msg and "step-000001" in msg
    with pytest.raises(NonFiniteLossError, match="step 1.*none saved yet"):  # NaN weights are never saved
        train(tiny(shards, tmp_path / "inf", steps=4, lr=float("inf"), warmup=0, save_every=1))


def test_train_with_auto_perceptual_never_uses_the_fid_inception(shards, tmp_path):
    out = train(tiny(shards, tmp_path, steps=1, perceptual="auto"))
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert rows[0]["perceptual"] > 0 and os.path.isdir(out)
    run = json.load(open(tmp_path / "config.json"))
    assert run["loss"]["perceptual"] == "efficientnet"  # the resolved backend is recorded, not "auto"
    assert run["train"]["hflip"] is False  # flips are off unless asked for


def test_rfid_of_a_tokenizer_trained_on_the_fid_network_is_marked(shards, tmp_path):
    from textok.trainer.evaluation.eval_tokenizer import EvalTokenizerConfig, compare_table, evaluate

    train(tiny(shards, tmp_path / "inc", steps=1, perceptual="inception", loss={**SMALL_DISC, "inception_resize": 75}))
    train(tiny(shards, tmp_path / "eff", steps=1, perceptual="auto", text_mode="none"))
    cache = str(tmp_path / "real.npz")
    for name in ("inc", "eff"):  # the second run reuses the originals' features from the cache
        evaluate(EvalTokenizerConfig(ckpt=str(tmp_path / name), shards=shards, split="train",
                                     output=str(tmp_path / name / "eval"), num_samples=4, batch_size=4,
                                     num_workers=0, device="cpu", real_features=cache))
    inc, eff = (json.load(open(tmp_path / n / "eval" / "eval.json")) for n in ("inc", "eff"))
    fresh = evaluate(EvalTokenizerConfig(ckpt=str(tmp_path / "eff"), shards=shards, split="train",
                                         output=str(tmp_path / "fresh"), num_samples=4, batch_size=4,
                                         num_workers=0, device="cpu"))
    assert fresh["rfid"] == pytest.approx(eff["rfid"], rel=1e-6)
    with pytest.raises(ValueError, match="other images"):
        evaluate(EvalTokenizerConfig(ckpt=str(tmp_path / "eff"), shards=shards, split="train",
                                     output=str(tmp_path / "x"), num_samples=3, batch_size=4,
                                     num_workers=0, device="cpu", real_features=cache))
    assert inc["trained_on_fid_network"] is True and "trained on the FID network" in inc["rfid_note"]
    assert inc["perceptual"] == "inception" and inc["hflip"] is False
    assert eff["trained_on_fid_network"] is False and "rfid_note" not in eff and eff["perceptual"] == "efficientnet"
    table = compare_table([str(tmp_path / "inc"), str(tmp_path / "eff")])
    assert f"{inc['rfid']:.3f} †" in table and "† trained on the FID network" in table
    assert f"{eff['rfid']:.3f} |" in table


def test_compare_refuses_text_and_baseline_trained_with_different_flips(tmp_path):
    from textok.trainer.evaluation.eval_tokenizer import compare_table

    def fake_eval(name, mode, hflip):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(
            {"image_size": 32, "num_tokens": 4, "text_mode": mode, "rfid": 10.0, "psnr": 20.0, "ssim": 0.5,
             "num_samples": 10, "hflip": hflip}))
        return str(tmp_path / name)

    with pytest.raises(ValueError, match="different flips"):
        compare_table([fake_eval("tok", "both", False), fake_eval("base", "none", True)])
    assert "| no |" in compare_table([str(tmp_path / "tok"), fake_eval("base2", "none", False)])
    # a run that does not know its flip setting cannot be compared with one that does (issue 18 item 9)
    unknown = fake_eval("copied", "none", None)
    with pytest.raises(ValueError, match=r"copied does not record whether.*tok does \(hflip=False\).*"
                                         r"eval-tokenizer --ckpt RUN_DIR.*--no-hflip"):
        compare_table([str(tmp_path / "tok"), unknown])


def _torchrun(cfg, tmp_path, name):
    cfg_file = tmp_path / f"{name}.json"
    cfg_file.write_text(json.dumps(dict(cfg.__dict__)))
    with socket.socket() as sock:  # a free loopback port (torchrun's --master_port 0 hangs here)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "textok", "train-tokenizer", "--config", str(cfg_file)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_torchrun_two_gloo_processes_train_and_resume_exactly(shards, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    kw = dict(steps=4, save_every=2, disc_start=1)
    _torchrun(tiny(shards, full, **kw), tmp_path, "full")
    state = torch.load(full / "checkpoints" / "step-000002" / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["loader"]["world_size"] == 2 and state["loader"]["batch_size"] == 2
    assert (full / "tokenizer" / "model.safetensors").is_file()
    # resume both ranks from step 2: per-rank RNG, loader positions and the synced LeCAM means
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-000002", part / "checkpoints" / "step-000002")
    (part / "checkpoints" / "latest").write_text("step-000002")
    shutil.copy(full / "config.json", part / "config.json")
    _torchrun(tiny(shards, part, resume=True, **kw), tmp_path, "part")
    a, b = read_metrics(str(full / "metrics.jsonl"))[2:], read_metrics(str(part / "metrics.jsonl"))
    assert [r["step"] for r in b] == [3, 4]
    for ra, rb in zip(a, b):
        for k in ("total", "l2", "gan", "d_total", "lecam", "grad_norm"):
            assert ra[k] == rb[k], (ra["step"], k, ra[k], rb[k])


def test_eval_tokenizer_writes_json_and_grid(shards, tmp_path):
    from click.testing import CliRunner

    from textok.cli import main

    train(tiny(shards, tmp_path / "run", steps=2))
    res = CliRunner().invoke(main, ["eval-tokenizer", "--ckpt", str(tmp_path / "run"), "--shards", shards,
                                    "--split", "train", "--output", str(tmp_path / "eval"), "--num-samples", "5", "--batch-size", "3",
                                    "--num-workers", "0", "--device", "cpu", "--real-features", str(tmp_path / "real.npz")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    r = json.load(open(tmp_path / "eval" / "eval.json"))
    # the first 5 images of the split, in order (the controls' first pass must not move the loader on)
    from textok.trainer.data.loader import ShardLoader

    first = next(iter(ShardLoader(shards, 32, 5, split="train", train=False)))["key"]
    assert np.load(tmp_path / "real.npz")["keys"].tolist() == list(first)
    assert r["num_samples"] == 5 and r["text_mode"] == "both" and r["num_tokens"] == 8
    assert 0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1 and r["rfid"] > 0
    # the controls, on the same 5 images (the lone 5th is swapped with the 4th: batch size 3)
    for k in ("psnr_swapped_latent", "psnr_mean_latent", "psnr_swapped_text", "psnr_mean_image"):
        assert 0 < r[k] < 100, k
    assert r["latent_gain_db"] == pytest.approx(r["psnr"] - r["psnr_swapped_latent"])
    assert r["text_gain_db"] == pytest.approx(r["psnr"] - r["psnr_swapped_text"])
    assert r["rkid_std"] >= 0 and r["kid_subset_size"] == 2 and r["kid_subsets"] == 100
    assert "latent_gain_db" in res.output and "another image's Z" in res.output  # the terminal report
    assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    assert r["inception_score"] is None and "classifier" in r["inception_score_note"]
    from PIL import Image

    grid = Image.open(tmp_path / "eval" / "recon.png")
    assert grid.size == (2 + 2 * 34, 2 + 3 * 34)  # originals | reconstructions of the first batch (3 rows)


def test_compare_table_has_gain_vs_no_text_baseline(shards, tmp_path):
    """The table compares real eval-tokenizer results: a text run against its no-text baseline at the same N."""
    from click.testing import CliRunner

    from textok.cli import main

    runs = {}
    for mode in ("both", "none"):
        train(tiny(shards, tmp_path / mode, steps=2, text_mode=mode))
        res = CliRunner().invoke(main, ["eval-tokenizer", "--ckpt", str(tmp_path / mode), "--shards", shards,
                                        "--split", "train", "--output", str(tmp_path / mode / "eval"),
                                        "--num-samples", "6", "--batch-size", "3", "--num-workers", "0",
                                        "--device", "cpu"])
        assert res.exit_code == 0, res.output + repr(res.exception)
        runs[mode] = json.load(open(tmp_path / mode / "eval" / "eval.json"))
        assert runs[mode]["text_mode"] == mode and runs[mode]["num_tokens"] == 8 and runs[mode]["rfid"] > 0
    assert runs["both"]["rfid"] != runs["none"]["rfid"]  # two different models were measured
    res = CliRunner().invoke(main, ["eval-tokenizer", "--output", str(tmp_path / "cmp.md"), "--compare",
                                    str(tmp_path / "both" / "eval"), str(tmp_path / "none" / "eval")])
    assert res.exit_code == 0, res.output
    rows = [[c.strip() for c in line.split("|")[1:-1]]
            for line in (tmp_path / "cmp.md").read_text().splitlines()[2:] if line.startswith("|")]
    assert len(rows) == 2
    gain = 100 * (runs["both"]["rfid"] - runs["none"]["rfid"]) / runs["none"]["rfid"]
    both, none = (next(r for r in rows if r[1] == mode) for mode in ("both", "none"))
    assert both[1:5] == ["both", "32", "8", "6"] and none[1:5] == ["none", "32", "8", "6"]
    # the controls side by side: PSNR, another's Z, mean Z, another's caption, mean image, the two gains
    assert both[5:12] == [f"{runs['both'][k]:.2f}" for k in ("psnr", "psnr_swapped_latent", "psnr_mean_latent",
                                                              "psnr_swapped_text", "psnr_mean_image",
                                                              "latent_gain_db", "text_gain_db")]
    assert none[8] == "—" and none[11] == "—"  # the baseline reads no caption
    assert float(both[12]) == pytest.approx(runs["both"]["rfid"], abs=5e-4)
    assert both[13] == f"{runs['both']['rkid']:.4f} ± {runs['both']['rkid_std']:.4f}"
    assert both[14] == f"{gain:+.1f} %" and none[14] == "—"


def test_compare_table_plots_rfid_vs_tokens_and_shows_the_flip_setting(tmp_path):
    from click.testing import CliRunner

    from textok.cli import main

    def fake_eval(name, mode, n, rfid):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(
            {"image_size": 256, "num_tokens": n, "text_mode": mode, "rfid": rfid, "psnr": 20.0, "ssim": 0.5,
             "lpips": None, "inception_score": None, "num_samples": 100}))
        return str(tmp_path / name)

    runs = [fake_eval("tok32", "both", 32, 2.4), fake_eval("base32", "none", 32, 3.8),
            fake_eval("tok64", "both", 64, 1.53), fake_eval("base64", "none", 64, 2.04)]
    res = CliRunner().invoke(main, ["eval-tokenizer", "--output", str(tmp_path / "cmp.md"), "--plot",
                                    str(tmp_path / "rfid_vs_tokens.png"), "--compare", *runs])
    assert res.exit_code == 0, res.output
    from PIL import Image

    assert Image.open(tmp_path / "rfid_vs_tokens.png").size[0] > 400
    text = (tmp_path / "cmp.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 6 and "| ? |" in lines[2]  # eval.json without the flip setting: unknown, said so
    assert "tok32 | both | 256 | 32 | 100 | 20.00 | — |" in lines[3] and "| 2.400 | — | -36.8 % |" in lines[3]
    assert "from before the controls; rerun eval-tokenizer" in text
    assert "tok64 | both | 256 | 64 | 100 |" in lines[5] and "| 1.530 | — | -25.0 % |" in lines[5]
    assert "base32 | none | 256 | 32 | 100 |" in lines[2] and "| 3.800 | — | — |" in lines[2]


def test_config_file_yaml_and_json_overrides_and_unknown_key(tmp_path):
    (tmp_path / "c.yaml").write_text("shards: s\noutput: o\nsteps: 10\npreset: tiny\nlr: 0.001\n"
                                     "model: {dropout: 0.1}\nbetas: [0.9, 0.95]\n")
    cfg = load_config(str(tmp_path / "c.yaml"), lr=None, steps=20)  # None = flag not given
    assert (cfg.lr, cfg.steps, cfg.betas, cfg.model) == (0.001, 20, (0.9, 0.95), {"dropout": 0.1})
    assert (cfg.image_size, cfg.patch_size, cfg.num_tokens) == (32, 4, 16)  # the tiny preset's own values
    b = load_config(None, shards="s", output="o", steps=1)
    assert (b.preset, b.image_size, b.patch_size, b.num_tokens, b.ema, b.disc_start) == ("B", 256, 8, 128, 0.999, 80_000)
    (tmp_path / "bad.json").write_text(json.dumps({"shards": "s", "output": "o", "steps": 1, "learning_rate": 1}))
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="--steps"):
        load_config(None, shards="s", output="o")


def test_eval_tokenizer_refuses_shards_of_another_text_encoder(shards, tmp_path):
    # same D and max_tokens, other encoder: the embeddings mean something else to the model
    from textok.schemas.common import SchemaError
    from textok.trainer.evaluation.eval_tokenizer import EvalTokenizerConfig, evaluate

    train(tiny(shards, tmp_path / "run", steps=1))
    other = tmp_path / "other"
    other.mkdir()
    write_shards(str(other), num_files=1, rows_per_file=4, dim=16, max_tokens=8, image_size=32, encoder="other-t5")
    with pytest.raises(SchemaError, match="other-t5"):
        evaluate(EvalTokenizerConfig(ckpt=str(tmp_path / "run"), shards=str(other), output=str(tmp_path / "eval"),
                                     split="train", num_workers=0, device="cpu"))


def test_resume_on_shards_of_another_text_encoder_fails(shards, tmp_path):
    from textok.schemas.common import SchemaError

    train(tiny(shards, tmp_path / "run", steps=2))
    other = tmp_path / "other"
    other.mkdir()
    write_shards(str(other), num_files=2, rows_per_file=12, dim=16, max_tokens=8, image_size=32, encoder="other-t5")
    with pytest.raises(SchemaError, match="other-t5"):
        train(tiny(str(other), tmp_path / "run", steps=4, resume=True))


def test_train_step_benchmark_runs_on_a_tiny_preset():
    # bench/train_step.py times the real train_step; it must build the model the trainer builds
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train_step", os.path.join(ROOT, "bench", "train_step.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.bench("tiny", 2, 1, torch.device("cpu"), with_disc=True, perceptual="none", image_size=32,
                    text_dim=16, max_tokens=8)
    assert r["num_tokens"] == 16 and r["flops_per_step"] > 0 and r["images_per_second"] > 0


def test_compile_and_channels_last_train_on_cpu(shards, tmp_path):
    """--compile (torch.compile of the step; "aot_eager": Dynamo + AOTAutograd graph capture without
    Inductor's minutes of C++ codegen on 2 cores) and --channels-last train: finite losses, the GAN
    step included, and checkpoints of the original module's keys."""
    import torch._dynamo

    torch._dynamo.reset()
    out = train(tiny(shards, tmp_path / "c", steps=4, disc_start=2, compile=True, compile_backend="aot_eager",
                     channels_last=True,
                     sample_every=100))
    rows = read_metrics(str(tmp_path / "c" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(r["total"])) for r in rows)
    assert "d_total" in rows[-1]
    eager = load_file(str(tmp_path / "c" / "checkpoints" / "step-000004" / "model.safetensors"))
    assert not any(k.startswith("_orig_mod") for k in eager)  # the original module is saved, not the wrapper
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
