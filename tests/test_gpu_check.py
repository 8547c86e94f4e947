"""bench/gpu_check.py: fails soft without CUDA, and every section's code runs at toy sizes (--smoke)."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "gpu_check.py")


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA answer")
def test_without_cuda_it_says_so_and_exits_0(capsys):
    assert _gpu_check().main([]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cuda"] is False and report["status"] == "skipped" and "no CUDA" in report["reason"]
    assert set(report["sections"]) == {"env", "nccl", "sdpa_text_mask", "t5_xl_encoder", "textok_b_train",
                                       "speed_switches", "dit_xl", "local_vlm"}


def test_smoke_runs_every_section_on_cpu(capsys, tmp_path):
    out = tmp_path / "g.json"
    assert _gpu_check().main(["--smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["status"] == "ok", report
    s = report["sections"]
    assert all(r["status"] == "ok" for r in s.values())
    assert s["nccl"]["all_reduce_ok"] and s["t5_xl_encoder"]["finite_output"] and s["dit_xl"]["samples_finite"]
    assert s["sdpa_text_mask"]["backend_accepts_mask"]["math"] == "ok"
    assert s["local_vlm"]["captions_returned"] == s["local_vlm"]["images"]
    assert s["textok_b_train"]["tokenizer_only"]["num_tokens"] == 16
    assert {"eager", "channels_last", "compile", "compile_speedup"} <= set(s["speed_switches"])
    assert s["sdpa_text_mask"]["masked_default_falls_back_to_math"] is False  # CPU: flash takes the mask
