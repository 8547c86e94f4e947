"""An exported model is complete (issue 21): what save_pretrained / push_to_hub write carries the
side files the commands check (text_encoder.json, latent_stats.json, training.json), so a
tokenizer and a DiT pushed to a hub, and nothing else, drive extract-latents -> sample.

The "hub" is local: push_to_hub's upload lands in a huggingface_hub cache folder laid out as a
download leaves it, and the commands read it by repo id, offline (conftest sets HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from textok.cli import main
from test_data import write_shards
from test_hub import fake_hub_cache
from test_latents import MAX_TOKENS, TEXT_DIM
from test_sample import write_pools


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """push_to_hub -> a cache folder that from_pretrained / the commands resolve repo ids from."""
    import huggingface_hub

    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: huggingface_hub.hf_api.RepoUrl(f"https://hf.co/{repo_id}"))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        fake_hub_cache(cache, repo_id, {"main": folder_path})
        return f"https://hf.co/{repo_id}/commit/1"

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return cache


def _cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def test_pushed_models_drive_extract_latents_and_sample_with_no_other_input(tmp_path, local_hub):
    from textok.trainer.models.dit import DiT
    from textok.trainer.models.textok import TexTok

    shards = tmp_path / "shards"
    write_shards(str(shards), num_files=1, rows_per_file=12, dim=TEXT_DIM, max_tokens=MAX_TOKENS, image_size=32,
                 encoder="tiny-t5")
    common = ["--preset", "tiny", "--steps", "2", "--batch-size", "4", "--num-workers", "0", "--device", "cpu"]
    _cli("train-tokenizer", "--shards", shards, "--output", tmp_path / "tok", "--num-tokens", "4", *common)

    # load the run's tokenizer, push it; then nothing of the run dir is used again
    tok = TexTok.from_pretrained(tmp_path / "tok" / "tokenizer")
    assert tok.side_files["text_encoder.json"]["encoder"] == "tiny-t5"
    assert tok.side_files["training.json"]["train"]["num_tokens"] == 4
    tok.push_to_hub("someone/tok")
    _cli("extract-latents", "--tokenizer", "someone/tok", "--shards", shards, "--output", tmp_path / "latents",
         "--device", "cpu", "--num-workers", "0")
    _cli("train-dit", "--latents", tmp_path / "latents", "--output", tmp_path / "dit", *common)
    dit = DiT.from_pretrained(tmp_path / "dit" / "dit")
    assert dit.side_files["latent_stats.json"]["tokenizer_sha256"]
    dit.push_to_hub("someone/dit")

    pools = write_pools(tmp_path / "pools", classes=(0, 1, 2))
    _cli("sample", "--dit", "someone/dit", "--tokenizer", "someone/tok", "--pools", pools, "--classes", "0,1",
         "--n", "2", "--steps", "3", "--device", "cpu", "--output", tmp_path / "samples")
    assert np.load(tmp_path / "samples" / "samples.npz")["images"].shape[0] == 4


def test_save_pretrained_of_a_loaded_model_keeps_the_side_files(tmp_path):
    """A user's save_pretrained (the README's example) writes what the run wrote, byte for byte in
    the weights, so a re-saved tokenizer is still the one a DiT's latents came from."""
    from test_latents import make_tokenizer
    from textok.trainer.models.textok import TexTok

    src = make_tokenizer(tmp_path / "src")
    TexTok.from_pretrained(src).save_pretrained(tmp_path / "copy")
    for name in ("text_encoder.json",):
        assert json.loads((tmp_path / "copy" / name).read_text()) == json.loads(open(os.path.join(src, name)).read())
    # Same tensors, bit for bit, and the same metadata. Not the same file bytes: safetensors writes
    # its metadata map in an order that varies between processes (a hash map).
    from safetensors import safe_open

    with safe_open(str(tmp_path / "copy" / "model.safetensors"), "pt") as a, \
            safe_open(os.path.join(src, "model.safetensors"), "pt") as b:
        assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            ta, tb = a.get_tensor(k), b.get_tensor(k)
            assert ta.dtype == tb.dtype and torch.equal(ta, tb), k
    with pytest.raises(ValueError, match="not one of"):
        model = TexTok.from_pretrained(src)
        model.side_files["notes.json"] = {}
        model.save_pretrained(tmp_path / "bad")
