"""Efficiency report: FLOP counting against DiT's published figure, timing, JSON and plot."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from textok.trainer.models.dit import dit_config
from textok.trainer.evaluation.efficiency import (DIT_PAPER_XL2_256PX_GFLOPS, baseline_config, count_forward_flops,
                                efficiency_report, write_efficiency_json, write_efficiency_plot)


def test_dit_xl2_flops_match_the_dit_paper():
    cfg = baseline_config(256)
    assert (cfg.num_tokens, cfg.token_dim, cfg.out_dim) == (256, 16, 32)  # 16x16 patches of 2x2x4, DiT's out
    torch_flops, params = count_forward_flops(cfg)
    gflops = torch_flops / 2 / 1e9  # DiT counts multiply-adds
    assert gflops == pytest.approx(DIT_PAPER_XL2_256PX_GFLOPS, rel=0.01)
    assert params / 1e6 == pytest.approx(675, rel=0.01)  # DiT-XL/2: 675 M parameters
    assert baseline_config(512).num_tokens == 1024


def test_flops_count_attention():
    """Attention grows with N^2: doubling the tokens more than doubles the count."""
    small = count_forward_flops(dit_config("tiny", num_tokens=64, width=64))[0]
    large = count_forward_flops(dit_config("tiny", num_tokens=128, width=64))[0]
    assert large > 2.05 * small


def test_tiny_report_sane_numbers_json_and_plot(tmp_path):
    report = efficiency_report("tiny", [4, 8], image_size=256, measure_time=True, time_baselines=False,
                               steps=10, repeats=1)
    ours = [m for m in report["models"] if m["kind"] == "textok"]
    base = {m["image_size"]: m for m in report["models"] if m["kind"] == "baseline"}
    assert [m["tokens"] for m in ours] == [4, 8] and sorted(base) == [256, 512]
    for m in ours:
        assert m["gflops_per_forward"] > 0 and m["time_per_step_s"] > 0
        assert m["gflops_per_sample"] == pytest.approx(m["gflops_per_forward"] * 10 * 2)  # steps x CFG
        assert m["time_per_sample_s"] == pytest.approx(m["time_per_step_s"] * 10)
        assert m["torch_flops_per_forward"] == pytest.approx(2e9 * m["gflops_per_forward"])
    assert ours[0]["gflops_per_forward"] < ours[1]["gflops_per_forward"]
    assert "time_per_sample_s" not in base[256]
    assert base[256]["gflops_per_forward"] == pytest.approx(DIT_PAPER_XL2_256PX_GFLOPS, rel=0.01)
    assert report["speedup"]["DiT-tiny on TexTok-8"]["gflops_ratio"] > 1000  # tiny vs XL
    assert "extrapolated" in report["timing"]["method"]

    path = write_efficiency_json(report, tmp_path / "eff.json")
    assert json.loads(path.read_text())["models"][0]["tokens"] == 4
    png = write_efficiency_plot(report, tmp_path / "eff.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 300


def test_report_rejects_bad_arguments():
    with pytest.raises(ValueError, match="tokens"):
        efficiency_report("tiny", [], measure_time=False)
    with pytest.raises(ValueError, match="multiple of 16"):
        baseline_config(250)
