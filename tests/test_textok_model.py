"""TexTok model: shapes, the Z bottleneck, text conditioning per mode, padding, files, learning."""
from __future__ import annotations

import json

import pytest
import torch

from textok.trainer.models.textok import TEXTOK_PRESETS, TexTok, TexTokConfig, textok_config

TEXT_DIM = 24


def make(mode="both", seed=0, **kw) -> TexTok:
    torch.manual_seed(seed)
    cfg = textok_config("tiny", text_dim=TEXT_DIM, max_text_tokens=12, text_mode=mode, **kw)
    return TexTok(cfg).eval()


def batch(B=2, T=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 3, 32, 32, generator=g) * 2 - 1
    text = torch.randn(B, T, TEXT_DIM, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4:] = False  # second caption is shorter
    return images, text, mask


@pytest.mark.parametrize("mode", ["both", "enc", "dec", "none"])
def test_shapes_every_mode(mode):
    model = make(mode)
    images, text, mask = batch()
    recon, z = model(images, text, mask)
    cfg = model.cfg
    assert z.shape == (2, cfg.num_tokens, cfg.token_dim) == (2, 16, 8)
    assert recon.shape == images.shape
    assert torch.isfinite(recon).all()


def test_none_mode_has_no_text_parameters_and_ignores_text():
    model = make("none")
    assert not any("text" in name for name, _ in model.named_parameters())
    images, text, mask = batch()
    r1, z1 = model(images, text, mask)
    r2, z2 = model(images)  # no text at all is fine for the baseline
    torch.testing.assert_close(r1, r2, rtol=0, atol=0)
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["both", "enc", "dec"])
def test_text_modes_need_text(mode):
    model = make(mode)
    images, _, _ = batch()
    with pytest.raises(ValueError, match="needs text_emb"):
        model(images)


@pytest.mark.parametrize("mode,z_depends,dec_depends", [
    ("both", True, True), ("enc", True, False), ("dec", False, True), ("none", False, False)])
def test_caption_changes_exactly_the_sides_that_read_it(mode, z_depends, dec_depends):
    model = make(mode)
    images, text, mask = batch()
    other = text + torch.randn_like(text)
    with torch.no_grad():
        z_a, z_b = model.encode(images, text, mask), model.encode(images, other, mask)
        # decoder with a fixed Z: does its output depend on the caption?
        d_a, d_b = model.decode(z_a, text, mask), model.decode(z_a, other, mask)
        r_a, _ = model(images, text, mask)
        r_b, _ = model(images, other, mask)
    assert (not torch.equal(z_a, z_b)) == z_depends
    assert (not torch.equal(d_a, d_b)) == dec_depends
    assert (not torch.equal(r_a, r_b)) == (mode != "none")
    if z_depends:
        assert (z_a - z_b).abs().max() > 1e-4
    if dec_depends:
        assert (d_a - d_b).abs().max() > 1e-4


def test_detokenizer_sees_the_image_only_through_z():
    model = make("both")
    images_a, text, mask = batch(seed=1)
    images_b, _, _ = batch(seed=2)
    with torch.no_grad():
        z_a = model.encode(images_a, text, mask)
        recon_a = model.decode(z_a, text, mask)
    # a forward pass on image B with image A's Z swapped in must give A's reconstruction
    handle = model.to_latent.register_forward_hook(lambda mod, inp, out: z_a)
    try:
        with torch.no_grad():
            recon_swapped, _ = model(images_b, text, mask)
    finally:
        handle.remove()
    torch.testing.assert_close(recon_swapped, recon_a, rtol=0, atol=0)

    # gradients: d recon / d image is non-zero, but zero once z is detached (no side path)
    images = images_a.clone().requires_grad_(True)
    z = model.encode(images, text, mask)
    model.decode(z, text, mask).square().sum().backward()
    assert images.grad.abs().sum() > 0
    images.grad = None
    z = model.encode(images, text, mask).detach().requires_grad_(True)
    recon = model.decode(z, text, mask)
    recon.square().sum().backward()
    assert images.grad is None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["both", "enc", "dec"])
def test_padding_tokens_do_not_change_results(mode):
    model = make(mode)
    images, text, mask = batch()
    padded_text = torch.cat([text, torch.randn(2, 5, TEXT_DIM) * 100], dim=1)  # garbage in the padding
    padded_mask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        r1, z1 = model(images, text, mask)
        r2, z2 = model(images, padded_text, padded_mask)
    torch.testing.assert_close(z1, z2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r1, r2, rtol=1e-5, atol=1e-5)
    # and the mask really is read: un-masking the garbage changes the output
    with torch.no_grad():
        r3, z3 = model(images, padded_text, torch.ones_like(padded_mask))
    changed = z3 if model.cfg.text_in_encoder else r3
    reference = z1 if model.cfg.text_in_encoder else r1
    assert (changed - reference).abs().max() > 1e-4  # 10x the tolerance of the equality above


def test_bad_inputs_fail_with_the_setting_named():
    model = make("both")
    images, text, mask = batch()
    with pytest.raises(ValueError, match="image_size=32"):
        model(torch.zeros(2, 3, 64, 64), text, mask)
    with pytest.raises(ValueError, match="max_text_tokens=12"):
        model(images, torch.zeros(2, 13, TEXT_DIM))
    with pytest.raises(ValueError, match="text_dim=24"):
        model(images, torch.zeros(2, 4, 7))
    with pytest.raises(ValueError, match="text_mode"):
        TexTokConfig(text_mode="cross")
    with pytest.raises(ValueError, match="unknown TexTok preset"):
        textok_config("XXL")


def test_save_load_round_trip(tmp_path):
    model = make("enc", seed=3)
    images, text, mask = batch()
    model.save_pretrained(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["text_mode"] == "enc"
    loaded = TexTok.from_pretrained(tmp_path / "tok").eval()
    assert loaded.cfg == model.cfg
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, text, mask)[0], model(images, text, mask)[0], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="nowhere"):  # more in tests/test_hub.py
        TexTok.from_pretrained(tmp_path / "nowhere")


def test_paper_preset_size():
    # ViT-B tokenizer + ViT-B detokenizer with T5-XL text: ~176M parameters in the paper
    with torch.device("meta"):
        model = TexTok(textok_config("B"))
    assert 165e6 < model.num_params() < 185e6
    assert set(TEXTOK_PRESETS) >= {"tiny", "S", "B", "L"}


def test_one_batch_overfit_lowers_l2():
    model = make("both", seed=0).train()
    _, text, mask = batch(B=4)
    # smooth images (4x4 colour grids upsampled): learnable through 16 tokens, unlike pixel noise
    coarse = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1
    images = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(50):
        recon, _ = model(images, text, mask)
        loss = torch.nn.functional.mse_loss(recon, images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
