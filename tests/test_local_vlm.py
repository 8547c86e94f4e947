"""Local VLM captioner on a tiny random-init BLIP saved to disk and loaded through the real path.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_local_vlm.py
"""
from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image

from textok.pipeline.captioning.captioners.base import CaptionRequest
from textok.pipeline.captioning.captioners.local import LocalVLMCaptioner, LocalVLMConfigError, from_options
from tiny_vlms import WORDS, build_blip, build_llava



@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> str:
    """A 2-layer BLIP (random weights) + an offline-built processor, saved like a Hub checkpoint."""
    return build_blip(str(tmp_path_factory.mktemp("tiny-blip")))


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    """A decoder-only chat VLM (CLIP vision + Llama text) with a chat template: the instruction-prompt
    path and left padding."""
    return build_llava(str(tmp_path_factory.mktemp("tiny-llava")))


def _requests(n: int) -> list[CaptionRequest]:
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 250), (0, 0, 0)]
    reqs = []
    for i in range(n):
        img = Image.new("RGB", (40 + 7 * i, 30), colours[i % len(colours)])
        img.paste((255 - 40 * i, 40 * i % 256, 128), (5, 5, 20, 20))  # each image differs
        reqs.append(CaptionRequest(key=f"img{i}", image=img, class_name="tench", label=0))
    return reqs


def test_batched_matches_one_by_one_and_strips_prefix(tiny_blip):
    cap = from_options({"model_id": tiny_blip, "task_prompt": "a picture of", "batch_size": 3,
                        "max_new_tokens": 6, "device": "cpu"})
    cap.setup()
    reqs = _requests(5)
    batched = cap.caption_batch(reqs)   # chunks of 3 + 2
    assert [r.key for r in batched] == [r.key for r in reqs]
    single = [cap.caption_batch([r])[0] for r in reqs]
    assert [r.text for r in batched] == [r.text for r in single]
    for r in batched:
        assert r.ok and r.output_tokens > 0
        words = r.text.split()
        assert 1 <= len(words) <= 6 and set(words) <= set(WORDS)
        assert not r.text.startswith("a picture of")
    assert len({r.text for r in batched}) > 1  # captions depend on the image
    assert cap.prompt_version == "task:a picture of" and cap.name == f"local:{tiny_blip}"
    s = cap.settings()
    assert (s["device"], s["dtype"], s["batch_size"]) == ("cpu", "float32", 3)
    assert pickle.loads(pickle.dumps(cap))._model is None  # workers load in setup(), not via pickle


def test_unconditional_and_missing_image(tiny_blip):
    cap = LocalVLMCaptioner(tiny_blip, task_prompt="", max_new_tokens=4, batch_size=8)
    cap.setup()
    reqs = _requests(2) + [CaptionRequest(key="noimg", image=None)] + _requests(1)
    res = cap.caption_batch(reqs)
    assert [r.key for r in res] == ["img0", "img1", "noimg", "img0"]
    assert res[0].ok and res[0].text == res[3].text
    assert res[2].error_type == "missing_image"


def test_chat_mode_needs_a_chat_template(tiny_blip):
    cap = LocalVLMCaptioner(tiny_blip)  # no task prompt -> our instruction prompt via chat template
    assert cap.prompt_version == "v1"
    with pytest.raises(LocalVLMConfigError, match="--task-prompt"):
        cap.setup()


def test_chat_mode_left_pads_prompts_of_different_lengths(tiny_llava):
    cap = LocalVLMCaptioner(tiny_llava, class_hint=True, max_new_tokens=5, batch_size=4)
    cap.setup()
    reqs = _requests(4)
    for r, name in zip(reqs, ["cat", "small red dog", "tree", "a large blue square on the grass"]):
        r.class_name = name  # the class hint makes prompt lengths differ inside one batch
    batched = cap.caption_batch(reqs)
    single = [cap.caption_batch([r])[0] for r in reqs]
    assert [r.key for r in batched] == [r.key for r in reqs]
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.ok and "<|user|>" not in r.text and "<|assistant|>" not in r.text for r in batched)
    assert len({r.input_tokens for r in batched}) > 1  # really different prompt lengths
    assert cap.prompt_version == "v1" and "{class_name}" in cap.prompt_text


def test_missing_weights_errors_name_the_fix(tmp_path, tiny_blip):
    with pytest.raises(LocalVLMConfigError, match=r"hf download ORG/MODEL --local-dir .*--model PATH"):
        LocalVLMCaptioner(str(tmp_path / "nope")).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(LocalVLMConfigError, match="config.json"):
        LocalVLMCaptioner(str(tmp_path / "empty")).setup()
    # a Hub id that is not in the (offline) cache
    with pytest.raises(LocalVLMConfigError, match="hf download Salesforce/blip-tiny-not-cached"):
        LocalVLMCaptioner("Salesforce/blip-tiny-not-cached", task_prompt="").setup()
    with pytest.raises(ValueError, match="rpm"):
        from_options({"model_id": tiny_blip, "rpm": 60})
    with pytest.raises(LocalVLMConfigError, match="--model"):
        from_options({"batch_size": 4})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_default_is_bf16(tiny_blip):
    cap = LocalVLMCaptioner(tiny_blip, task_prompt="a picture of", max_new_tokens=4)
    cap.setup()
    assert cap.settings()["device"].startswith("cuda") and cap.settings()["dtype"] == "bfloat16"
    res = cap.caption_batch(_requests(3))
    assert [r.key for r in res] == ["img0", "img1", "img2"] and all(r.ok for r in res)


def test_instances_in_one_process_share_one_model_copy(tiny_blip):
    """Beam runs several DoFn instances per worker process; they must not each load the model."""
    import threading

    a = LocalVLMCaptioner(tiny_blip, task_prompt="a picture of", max_new_tokens=4, device="cpu")
    b = LocalVLMCaptioner(tiny_blip, task_prompt="a picture of", max_new_tokens=4, device="cpu")
    a.setup()
    b.setup()
    assert a._model is b._model and a._lock is b._lock
    reqs = _requests(3)
    out: dict[str, list] = {}
    threads = [threading.Thread(target=lambda c=c, n=n: out.__setitem__(n, c.caption_batch(reqs)))
               for c, n in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.text for r in out["a"]] == [r.text for r in out["b"]]


def test_fallback_to_one_by_one_logs_its_cause(tiny_blip, caplog, monkeypatch):
    import logging

    cap = LocalVLMCaptioner(tiny_blip, task_prompt="a picture of", max_new_tokens=4, device="cpu")
    cap.setup()
    real = cap._generate

    def only_single(reqs):
        if len(reqs) > 1:
            raise ValueError("The number of <image> tokens in each prompt should be the same as the number of images")
        return real(reqs)

    monkeypatch.setattr(cap, "_generate", only_single)
    with caplog.at_level(logging.WARNING, logger="textok.pipeline.captioning.captioners.local"):
        res = cap.caption_batch(_requests(3))
    assert all(r.ok for r in res)
    assert "ValueError: The number of <image> tokens in each prompt" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_device_without_gpu_is_a_config_error(tiny_blip):
    with pytest.raises(LocalVLMConfigError, match="--device cuda.*no CUDA device"):
        LocalVLMCaptioner(tiny_blip, task_prompt="", device="cuda").setup()
