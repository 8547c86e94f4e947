"""Issue 19 item 17: `--resume` with settings that change the experiment stops and names each one,
unless --allow-config-change, which records the change in OUTPUT/config_history.jsonl.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_resume_config.py
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from test_train_tokenizer import SMALL_DISC, shards, tiny  # noqa: F401 - fixture
from textok.trainer.training.checkpoint import config_changes
from textok.trainer.training.train_tokenizer import train


def _history(run) -> list[dict]:
    return [json.loads(line) for line in (run / "config_history.jsonl").read_text().splitlines()]


def test_resume_with_another_flip_or_lr_stops_naming_each_difference(shards, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    train(tiny(shards, run, steps=2))
    saved = (run / "config.json").read_text()
    with pytest.raises(ValueError, match=r"--resume would change the experiment \(train.hflip: False -> True; "
                                         r"train.lr: 0.001 -> 0.002\).*--allow-config-change"):
        train(tiny(shards, run, steps=4, hflip=True, lr=2e-3, resume=True))
    with pytest.raises(ValueError, match=r"train.text_mode: 'both' -> 'none'; model.text_mode: 'both' -> 'none'"):
        train(tiny(shards, run, steps=4, text_mode="none", resume=True))
    with pytest.raises(ValueError, match=r"loss.l2_weight: 1.0 -> 2.0"):
        train(tiny(shards, run, steps=4, loss={**SMALL_DISC, "l2_weight": 2.0}, resume=True))
    assert (run / "config.json").read_text() == saved          # a refused resume rewrites nothing
    assert [h["event"] for h in _history(run)] == ["start"]
    # operational settings (more steps, logging, workers) are no experiment change
    train(tiny(shards, run, steps=3, log_every=2, resume=True))
    assert _history(run)[-1]["changes"] == {}


def test_allow_config_change_continues_and_records_it(shards, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    train(tiny(shards, run, steps=2))
    train(tiny(shards, run, steps=3, lr=2e-3, resume=True, allow_config_change=True))
    first, second = _history(run)
    assert first["event"] == "start" and second["event"] == "resume" and second["step"] == 2
    assert second["changes"] == {"train.lr": {"saved": 0.001, "now": 0.002}}
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.002


def test_cli_resume_with_changed_preset_is_one_error_line(shards, tmp_path):  # noqa: F811
    from textok.cli import main

    run = tmp_path / "run"
    train(tiny(shards, run, steps=2))
    args = ["train-tokenizer", "--shards", shards, "--output", str(run), "--preset", "S", "--image-size", "32",
            "--patch-size", "4", "--num-tokens", "8", "--steps", "4", "--resume", "--device", "cpu"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.count("Error:") == 1 and "train.preset: 'tiny' -> 'S'" in r.output


def test_dit_settings_compare_the_same_way():
    saved = {"train": {"lr": 1e-4, "steps": 10, "num_workers": 2, "latents": "a"}, "model": {"depth": 2},
             "loss": {"latent_mean": [0.0]}}
    now = {"train": {"lr": 1e-4, "steps": 20, "num_workers": 0, "latents": "b"}, "model": {"depth": 2},
           "loss": {"latent_mean": [0.5]}}
    assert config_changes(saved, now) == {"train.latents": ("a", "b"), "loss.latent_mean": ([0.0], [0.5])}
