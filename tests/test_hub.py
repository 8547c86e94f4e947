"""Hub conventions shared by TexTok and DiT (trainer/models/hub.py): save/load round trip with a
model card, a revision resolved through the Hugging Face cache, and one clear error for an
unreachable hub id or a broken directory -- all offline (conftest sets HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from textok.trainer.models.dit import DiT, dit_config
from textok.trainer.models.hub import ModelFormatError, ModelNotFoundError
from textok.trainer.models.textok import TexTok, textok_config


def tiny_textok(seed: int) -> TexTok:
    torch.manual_seed(seed)
    return TexTok(textok_config("tiny", text_dim=16, max_text_tokens=8, num_tokens=4, depth=1))


def tiny_dit(seed: int) -> DiT:
    torch.manual_seed(seed)
    return DiT(dit_config("tiny", num_tokens=4, depth=1, num_classes=3))


MODELS = [pytest.param(TexTok, tiny_textok, id="textok"), pytest.param(DiT, tiny_dit, id="dit")]


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def fake_hub_cache(cache, repo_id: str, revisions: dict) -> None:
    """Lay out `revisions` ({name: model dir}) as huggingface_hub's cache does after a download:
    refs/<name> -> commit, snapshots/<commit>/files. Offline, the real snapshot_download reads it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for i, (name, src) in enumerate(revisions.items()):
        commit = f"{i + 1:040x}"
        shutil.copytree(src, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / name).write_text(commit)


@pytest.mark.parametrize("cls, make", MODELS)
def test_round_trip_writes_config_weights_and_card(tmp_path, cls, make):
    model = make(1)
    model.save_pretrained(tmp_path / "m", card={"data": "runs/demo/shards", "steps": 1500,
                                                "metrics": {"l2": 0.0123, "epoch": 3}})
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    assert raw["model_type"] == cls.model_type and raw["num_tokens"] == 4
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: textok" in card
    assert "| num_tokens | 4 |" in card and "- steps: 1500" in card and "runs/demo/shards" in card
    assert "| l2 | 0.0123 |" in card and f"{cls.__name__}.from_pretrained" in card
    loaded = cls.from_pretrained(tmp_path / "m")
    assert loaded.cfg == model.cfg and same_weights(loaded, model) and not loaded.training
    # a second save into the same directory describes the new weights (the card is rewritten)
    make(2).save_pretrained(tmp_path / "m", card={"steps": 3000})
    assert "- steps: 3000" in (tmp_path / "m" / "README.md").read_text()
    assert same_weights(cls.from_pretrained(str(tmp_path / "m")), make(2))


@pytest.mark.parametrize("cls, make", MODELS)
def test_hub_id_and_revision_through_the_cache(tmp_path, cls, make):
    make(1).save_pretrained(tmp_path / "v1")
    make(2).save_pretrained(tmp_path / "main")
    fake_hub_cache(tmp_path / "cache", "someone/tiny", {"v1": tmp_path / "v1", "main": tmp_path / "main"})
    old = cls.from_pretrained("someone/tiny", revision="v1", cache_dir=tmp_path / "cache")
    new = cls.from_pretrained("someone/tiny", cache_dir=tmp_path / "cache")
    assert same_weights(old, make(1)) and same_weights(new, make(2))
    with pytest.raises(ModelNotFoundError, match="revision 'v2'.*hf download someone/tiny"):
        cls.from_pretrained("someone/tiny", revision="v2", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("cls, make", MODELS)
def test_unreachable_hub_id_or_missing_dir_is_one_clear_error(tmp_path, cls, make):
    with pytest.raises(FileNotFoundError) as e:  # offline, not cached
        cls.from_pretrained("someone/not-cached", cache_dir=tmp_path / "cache")
    assert isinstance(e.value, ModelNotFoundError) and "'someone/not-cached'" in str(e.value)
    assert "HF_HUB_OFFLINE" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        cls.from_pretrained(tmp_path / "runs" / "nowhere")
    with pytest.raises(ModelNotFoundError, match="lacks config.json"):
        cls.from_pretrained(tmp_path)


@pytest.mark.parametrize("cls, make", MODELS)
def test_corrupt_or_foreign_directory(tmp_path, cls, make):
    model = make(1)
    model.save_pretrained(tmp_path)
    weights = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ModelFormatError, match="truncated or corrupt"):
        cls.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(weights)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "widht": 3}))
    with pytest.raises(ValueError, match="widht"):
        cls.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**raw, "model_type": "other"}))
    with pytest.raises(ModelFormatError, match="model_type"):
        cls.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**raw, "width": 32}))
    with pytest.raises(ModelFormatError, match="does not match"):
        cls.from_pretrained(tmp_path)


def test_cli_paths_take_hub_ids(tmp_path, monkeypatch):
    """--tokenizer/--ckpt and --dit accept a hub id: its cached snapshot, with the side files."""
    from textok.trainer.run_dir import STATS_NAME, dit_dir, tokenizer_dir

    tiny_dit(1).save_pretrained(tmp_path / "dit")
    (tmp_path / "dit" / STATS_NAME).write_text(json.dumps({"mean": [0.0], "std": [1.0]}))
    fake_hub_cache(tmp_path / "cache", "someone/dit", {"main": tmp_path / "dit"})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    got = dit_dir("someone/dit")
    assert json.loads((tmp_path / "cache").joinpath(got, STATS_NAME).read_text())["std"] == [1.0]
    with pytest.raises(ModelNotFoundError, match="'someone/tok' is neither a local directory"):
        tokenizer_dir("someone/tok")
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        tokenizer_dir(str(tmp_path / "runs" / "tok"))


@pytest.mark.parametrize("cls, make", MODELS)
def test_push_to_hub_uploads_config_weights_and_card(tmp_path, monkeypatch, cls, make):
    """push_to_hub goes through huggingface_hub's HfApi; stand-in methods record what it uploads."""
    import huggingface_hub

    uploaded = {}

    def upload_folder(self, *, repo_id, folder_path, revision=None, **kw):
        uploaded.update({p.name: p.read_bytes() for p in folder_path.iterdir()}, repo=repo_id, branch=revision)
        return "commit-url"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: huggingface_hub.hf_api.RepoUrl(f"https://hf.co/{repo_id}"))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert make(1).push_to_hub("someone/tiny", card={"steps": 7}, branch="v1") == "commit-url"
    assert uploaded["repo"] == "someone/tiny" and uploaded["branch"] == "v1"
    assert json.loads(uploaded["config.json"])["model_type"] == cls.model_type
    assert b"- steps: 7" in uploaded["README.md"] and len(uploaded["model.safetensors"]) > 1000
