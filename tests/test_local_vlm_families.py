"""Every popular local VLM family, tiny and random, batched through LocalVLMCaptioner.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_local_vlm_families.py

For each family (tests/tiny_vlms.py) a padded batch of images of mixed sizes must give what
one-by-one calls give, without falling back to one-by-one and without echoing the prompt;
output_tokens counts generated words only. Qwen2-VL / Qwen2.5-VL / SmolVLM2 load without
torchvision (their video processor is left out), and Gemma 3's BOS-writing template gets one BOS.
"""
from __future__ import annotations

import logging

import pytest
from PIL import Image
from tiny_vlms import BUILDERS, TASK_PROMPTS, WORDS

from textok.pipeline.captioning.captioners.base import CaptionRequest
from textok.pipeline.captioning.captioners.local import LocalVLMCaptioner, LocalVLMConfigError, _missing_package


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cache: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in cache:
            cache[name] = BUILDERS[name](str(tmp_path_factory.mktemp(name)))
        return cache[name]
    return get


def _requests(n: int) -> list[CaptionRequest]:
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 250)]
    reqs = []
    for i in range(n):
        img = Image.new("RGB", (40 + 9 * i, 30 + 5 * i), colours[i % len(colours)])
        img.paste((255 - 40 * i, 40 * i % 256, 128), (5, 5, 20, 20))
        reqs.append(CaptionRequest(key=f"img{i}", image=img, class_name=["cat", "small red dog", "tree"][i % 3]))
    return reqs


@pytest.mark.parametrize("family", list(BUILDERS))
def test_padded_batch_equals_one_by_one(family, saved, caplog):
    task = TASK_PROMPTS.get(family)
    cap = LocalVLMCaptioner(saved(family), task_prompt=task, class_hint=True, max_new_tokens=5, batch_size=4,
                            device="cpu")
    cap.setup()
    reqs = _requests(4)
    with caplog.at_level(logging.WARNING, logger="textok.pipeline.captioning.captioners.local"):
        batched = cap.caption_batch(reqs)
    assert "one by one" not in caplog.text, caplog.text  # really batched
    single = [cap.caption_batch([r])[0] for r in reqs]
    assert [r.key for r in batched] == [r.key for r in reqs]
    assert [r.text for r in batched] == [r.text for r in single]
    for r in batched:
        assert r.ok, r.message
        words = r.text.split()
        assert set(words) <= set(WORDS), r.text          # no template, role or image tokens echoed
        assert "<|assistant|>" not in r.text and "caption en" not in r.text
        assert r.output_tokens == len(words) <= 5       # generated words only (one token each here)
        assert r.input_tokens and r.input_tokens > 1
    if family != "gemma3":  # its tiny model's logits move with the image, but not its argmax
        assert len({r.text for r in batched}) > 1  # captions depend on the image: a mix-up would show


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "smolvlm2"])
def test_video_families_load_without_torchvision(family, saved):
    import importlib.util

    from transformers import AutoProcessor

    assert importlib.util.find_spec("torchvision") is None  # the project never installs it
    with pytest.raises(ImportError, match="(?i)torchvision"):
        AutoProcessor.from_pretrained(saved(family))     # what users hit before
    cap = LocalVLMCaptioner(saved(family), max_new_tokens=3, device="cpu")
    cap.setup()
    assert not hasattr(cap._processor, "video_processor")
    assert all(r.ok for r in cap.caption_batch(_requests(2)))


def test_gemma3_template_bos_is_not_doubled(saved):
    cap = LocalVLMCaptioner(saved("gemma3"), max_new_tokens=3, device="cpu")
    cap.setup()
    tok = cap._processor.tokenizer
    assert tok("cat")["input_ids"][0] == tok.bos_token_id  # the tokenizer alone would add one
    ids = cap._inputs(_requests(3))["input_ids"]
    for row in ids.tolist():
        assert row.count(tok.bos_token_id) == 1, row


def test_import_errors_name_the_package():
    e = _missing_package("m", ImportError("Qwen2VLVideoProcessor requires the Torchvision library but it was not "
                                          "found in your environment."))
    assert "'torchvision'" in str(e) and "pip install torchvision" in str(e) and "\n" not in str(e)
    e = _missing_package("m", ImportError("Package `num2words` is required to run SmolVLM processor."))
    assert "pip install num2words" in str(e)
    assert isinstance(e, LocalVLMConfigError)


def test_remote_code_checkpoint_fails_clearly(tmp_path):
    """microsoft/Florence-2-* ship their own modelling code, which textok never runs."""
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "florence2_remote", "auto_map": {
        "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"}}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(LocalVLMConfigError, match="florence-community/Florence-2"):
        LocalVLMCaptioner(str(tmp_path), task_prompt="<MORE_DETAILED_CAPTION>", device="cpu").setup()


def test_checkpoint_with_missing_weights_fails_instead_of_random_init(saved, tmp_path):
    """A checkpoint laid out for remote code loads into the built-in class with holes that
    transformers fills randomly; the captioner refuses it."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    src = saved("florence2")
    dst = tmp_path / "florence-remote-layout"
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if "vision_tower" not in k}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"}
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LocalVLMConfigError, match="not in the checkpoint.*remote code.*florence-community"):
        LocalVLMCaptioner(str(dst), task_prompt="<MORE_DETAILED_CAPTION>", device="cpu").setup()


def test_pipeline_batch_12_equals_batch_1(saved, tmp_path):
    """As a user runs it: `run_caption --captioner local` on 12 images of mixed sizes, batch 12 vs 1."""
    import pyarrow.parquet as pq

    from textok.pipeline.captioning.pipeline import run_caption
    from textok.pipeline.captioning.store import CAPTIONS, list_table_files

    data = tmp_path / "data" / "train" / "shapes"
    data.mkdir(parents=True)
    for r in _requests(12):
        r.image.save(data / f"{r.key}.png")
    captions = {}
    for batch in (12, 1):
        out = tmp_path / f"out{batch}"
        s = run_caption(str(tmp_path / "data"), str(out), captioner="local", batch_size=batch,
                        captioner_options={"model_id": saved("qwen2_vl"), "max_new_tokens": 4, "device": "cpu"})
        assert (s["captioned"], s["dead_letter"]) == (12, 0)
        rows = pq.read_table(list_table_files(str(out), CAPTIONS)).to_pylist()
        captions[batch] = {r["key"]: r["caption"] for r in rows}
    assert captions[12] == captions[1] and len(set(captions[12].values())) > 1
