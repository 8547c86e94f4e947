"""A local captioner whose --max-new-tokens (or prompt) cannot fit the model's position table fails
before captioning, with one line that says what the model allows (issue 21: a small model used to
dead-letter 100 % of the images and exit 0)."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from PIL import Image

from textok.cli import main
from textok.pipeline.captioning.captioners.local import LocalVLMCaptioner, LocalVLMConfigError
from tiny_vlms import build_blip, build_llava


@pytest.fixture(scope="module")
def blip(tmp_path_factory):  # text positions: 64
    return build_blip(str(tmp_path_factory.mktemp("blip")))


def _images(folder, n=3) -> str:
    for i in range(n):
        os.makedirs(folder / "cls", exist_ok=True)
        Image.new("RGB", (24, 24), (40 * i, 90, 200)).save(folder / "cls" / f"{i}.png")
    return str(folder)


def test_impossible_max_new_tokens_fails_before_captioning(blip, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["caption", "--input", _images(tmp_path / "imgs"), "--output", str(out),
                                  "--captioner", "local", "--model", blip, "--task-prompt", "a picture of",
                                  "--max-new-tokens", "96", "--device", "cpu"])
    assert r.exit_code == 1
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.output  # one line, no traceback, no summary: nothing ran
    assert lines[0].startswith("Error: --captioner local: --max-new-tokens 96 does not fit")
    assert "text_config.max_position_embeddings is 64" in lines[0] and "at most --max-new-tokens 59" in lines[0]
    assert not (out / "captions").exists() and not (out / "dead_letter").exists()


def test_a_fitting_setting_passes_the_same_check(blip):
    cap = LocalVLMCaptioner(blip, task_prompt="a picture of", max_new_tokens=8, device="cpu")
    cap.preflight()
    cap.setup()  # setup() checks too (remote runners never run the CLI's preflight)
    assert cap.caption_batch([])  == []
    cap.teardown()
    with pytest.raises(LocalVLMConfigError, match="at most --max-new-tokens"):
        LocalVLMCaptioner(blip, task_prompt="a picture of", max_new_tokens=200, device="cpu").setup()


def test_decoder_only_prompt_counts_against_the_limit(tmp_path):
    llava = build_llava(str(tmp_path / "llava"))  # 256 positions, prompt = chat template + image tokens
    cap = LocalVLMCaptioner(llava, max_new_tokens=250, device="cpu")
    with pytest.raises(LocalVLMConfigError) as e:
        cap.preflight()
    allowed = int(str(e.value).rsplit(" ", 1)[-1])
    assert 0 < allowed < 250 and "the prompt takes" in str(e.value)
    LocalVLMCaptioner(llava, max_new_tokens=allowed, device="cpu").preflight()  # the stated maximum fits
