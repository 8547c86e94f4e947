"""Discriminator, LeCAM, the generator/discriminator steps and the frozen perceptual networks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from textok.trainer.models.discriminator import DiscriminatorConfig, StyleGANDiscriminator, minibatch_stddev
from textok.trainer.training.losses import LossConfig, TexTokLoss, hinge_d_loss, lecam_regulariser
from textok.trainer.training.perceptual import LPIPSVGG16, InceptionPerceptual, build_perceptual

TINY_D = DiscriminatorConfig(image_size=32, channel_base=512, channel_max=64)


def images(B=4, seed=0):
    """Smooth colour fields plus fine texture: something for blur to destroy."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(B, 3, 8, 8, generator=g) * 2 - 1
    x = F.interpolate(coarse, size=32, mode="bicubic", align_corners=False)
    return (x + 0.15 * torch.randn(B, 3, 32, 32, generator=g)).clamp(-1, 1)


def box_blur(x, k):
    if k == 0:
        return x
    w = torch.ones(3, 1, 2 * k + 1, 2 * k + 1) / (2 * k + 1) ** 2
    return F.conv2d(F.pad(x, (k,) * 4, mode="reflect"), w, groups=3)


@pytest.fixture(scope="module")
def inception():
    return InceptionPerceptual(resize=96)  # the packaged FID Inception; 96 px keeps CPU tests quick


# ----------------------------------------------------------------------------- discriminator


def test_discriminator_shapes_and_paper_size():
    d = StyleGANDiscriminator(TINY_D)
    assert d(images(B=5)).shape == (5,)  # 5 is not a multiple of mbstd_group=4: still works
    with torch.device("meta"):
        paper = StyleGANDiscriminator(DiscriminatorConfig(image_size=256))
    assert 20e6 < paper.num_params() < 28e6  # paper: ~24M
    with pytest.raises(ValueError, match="image_size=32"):
        d(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="channel_multipliers"):
        DiscriminatorConfig(image_size=32, channel_multipliers=(1, 2))
    custom = DiscriminatorConfig(image_size=32, channel_base=512, channel_multipliers=(1, 2, 4, 4))
    assert [custom.channels(r) for r in custom.resolutions] == [16, 32, 64, 64]


def test_minibatch_stddev_is_per_group():
    x = torch.zeros(4, 2, 4, 4)
    x[1] = 2.0  # group (0, 2) is constant, group (1, 3) differs: G = 2 -> groups {0,2}, {1,3}
    y = minibatch_stddev(x, group=2)
    assert y.shape == (4, 3, 4, 4)
    assert torch.allclose(y[:, 2, 0, 0], torch.tensor([1e-4, 1.0, 1e-4, 1.0]), atol=1e-6)


# ----------------------------------------------------------------------------- LeCAM + hinge


def test_lecam_and_hinge_on_a_hand_example():
    real = torch.tensor([0.5, 2.0])
    fake = torch.tensor([-1.0, 0.3])
    ema_real, ema_fake = torch.tensor(1.0), torch.tensor(0.0)
    # relu(real - ema_fake)^2 = [0.25, 4] -> 2.125 ; relu(ema_real - fake)^2 = [4, 0.49] -> 2.245
    assert lecam_regulariser(real, fake, ema_real, ema_fake).item() == pytest.approx(4.37)
    # relu(1 - real) = [0.5, 0] -> 0.25 ; relu(1 + fake) = [0, 1.3] -> 0.65
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.9)


def test_lecam_ema_seeds_then_decays():
    loss = TexTokLoss(LossConfig(perceptual="none", perceptual_weight=0, disc_start=0, lecam_ema_decay=0.9,
                                 disc=TINY_D), image_size=32)
    loss._update_lecam_ema(torch.tensor([1.0, 3.0]), torch.tensor([-2.0]))
    assert loss.lecam_ema_real.item() == pytest.approx(2.0) and loss.lecam_ema_fake.item() == pytest.approx(-2.0)
    loss._update_lecam_ema(torch.tensor([12.0]), torch.tensor([0.0]))
    assert loss.lecam_ema_real.item() == pytest.approx(0.9 * 2 + 0.1 * 12)
    assert loss.lecam_ema_fake.item() == pytest.approx(0.9 * -2)
    assert set(loss.state_dict()) >= {"lecam_ema_real", "lecam_ema_fake", "lecam_initialised"}


# ----------------------------------------------------------------------------- generator / D steps


def make_loss(**kw) -> TexTokLoss:
    torch.manual_seed(0)
    kw = {"disc_start": 10, "perceptual": "none", "perceptual_weight": 0.0, "disc": TINY_D, **kw}
    return TexTokLoss(LossConfig(**kw), image_size=32)


def test_gan_term_only_after_disc_start():
    loss = make_loss(r1_weight=1.0)
    x = images()
    recon = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    total, logs = loss.generator_loss(x, recon, step=9)
    assert set(logs) == {"l2", "total"} and not loss.disc_active(9)
    assert total.item() == pytest.approx(F.mse_loss(recon, x).item())
    d_loss, d_logs = loss.discriminator_loss(x, recon, step=9)
    assert d_loss.item() == 0 and d_logs == {} and not d_loss.requires_grad

    total, logs = loss.generator_loss(x, recon, step=10)
    assert loss.disc_active(10) and "gan" in logs
    assert total.item() == pytest.approx(logs["l2"] + 0.1 * logs["gan"], rel=1e-5)
    # the generator step pushes gradient into recon through D, and none into D's weights
    total.backward()
    assert recon.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.discriminator.parameters())
    assert all(p.requires_grad for p in loss.discriminator.parameters())  # restored afterwards

    d_loss, d_logs = loss.discriminator_loss(x, recon, step=10)
    assert {"d_hinge", "lecam", "r1", "d_total"} <= set(d_logs)
    expected = d_logs["d_hinge"] + 1e-4 * d_logs["lecam"] + 0.5 * d_logs["r1"]
    assert d_loss.item() == pytest.approx(expected, rel=1e-5)
    recon.grad = None
    d_loss.backward()
    assert recon.grad is None  # D step never reaches the tokenizer
    assert all(p.grad is not None for p in loss.discriminator.parameters())


def test_discriminator_learns_real_from_blurred():
    loss = make_loss(disc_start=0)
    opt = torch.optim.Adam(loss.discriminator.parameters(), lr=2e-3, betas=(0.0, 0.99))
    x = images(B=8)
    fake = box_blur(x, 2)
    first = None
    for _ in range(40):
        d_loss, logs = loss.discriminator_loss(x, fake, step=0)
        opt.zero_grad()
        d_loss.backward()
        opt.step()
        first = first if first is not None else logs["d_hinge"]
    # hinge starts near 2 (logits ~0); 40 steps bring it below 1 and separate the logits (seeds 0-3: 0.56-0.79)
    assert logs["d_hinge"] < 0.5 * first and logs["logits_real"] > logs["logits_fake"] + 0.5


def test_loss_module_hides_the_perceptual_net(inception):
    loss = make_loss(perceptual="inception", perceptual_weight=0.1, inception_resize=96)
    assert isinstance(loss.perceptual, InceptionPerceptual)
    assert all(not k.startswith("_perceptual") for k in loss.state_dict())
    assert {id(p) for p in loss.parameters()} == {id(p) for p in loss.discriminator.parameters()}
    x = images()
    recon = box_blur(x, 1).requires_grad_(True)
    total, logs = loss.generator_loss(x, recon, step=0)
    assert logs["perceptual"] > 0
    assert total.item() == pytest.approx(logs["l2"] + 0.1 * logs["perceptual"], rel=1e-5)
    total.backward()
    assert recon.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.perceptual.parameters())
    loss.train()
    assert not loss.perceptual.training  # the frozen net stays in eval mode


# ----------------------------------------------------------------------------- perceptual networks


def test_inception_distance_zero_for_identical_and_monotonic_in_blur(inception):
    x = images()
    ladder = [inception(box_blur(x, k), x) for k in range(4)]
    assert torch.equal(ladder[0], torch.zeros(4))
    for sharper, blurrier in zip(ladder[1:], ladder[2:]):
        assert (blurrier > sharper).all(), ladder
    # a noisier image is further away too
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=g)
    assert (inception(x + 0.3 * noise, x) > inception(x + 0.1 * noise, x)).all()


def test_perceptual_gradients_reach_recon_not_the_network(inception):
    x = images(B=2)
    recon = box_blur(x, 1).requires_grad_(True)
    inception(recon, x).sum().backward()
    assert recon.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in inception.parameters())
    assert all(p.grad is None for p in inception.parameters())


def _fake_lpips_files(tmp_path):
    """Random values with the real files' key names and shapes: torchvision vgg16 + lpips vgg.pth."""
    torch.manual_seed(0)
    vgg, c_in, index = {}, 3, 0
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            index += 1
            continue
        vgg[f"features.{index}.weight"] = torch.randn(v, c_in, 3, 3) * (2 / (9 * c_in)) ** 0.5
        vgg[f"features.{index}.bias"] = torch.zeros(v)
        c_in, index = v, index + 2
    vgg["classifier.0.weight"] = torch.zeros(4, 4)  # a full torchvision file also holds the classifier
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    return str(tmp_path / "vgg.pth"), str(tmp_path / "vgg16.pth"), vgg, lin


def test_lpips_layout_loads_real_key_names(tmp_path):
    lpips_path, vgg_path, vgg, lin = _fake_lpips_files(tmp_path)
    net = build_perceptual("auto", lpips_weights=lpips_path, vgg16_weights=vgg_path)
    assert isinstance(net, LPIPSVGG16)
    assert torch.equal(net.features[28].weight, vgg["features.28.weight"])
    assert torch.equal(net.lin4.model[1].weight, lin["lin4.model.1.weight"])
    x = images(B=2)
    assert torch.equal(net(x, x), torch.zeros(2))
    recon = box_blur(x, 1).requires_grad_(True)
    d = net(recon, x)
    assert (d > 0).all()
    d.sum().backward()
    assert recon.grad.abs().sum() > 0 and all(not p.requires_grad for p in net.parameters())


def test_lpips_missing_or_wrong_files_fail_clearly(tmp_path):
    lpips_path, vgg_path, vgg, _ = _fake_lpips_files(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"vgg\.pth.*lpips_weights"):
        LPIPSVGG16(str(tmp_path / "missing.pth"), vgg_path)
    with pytest.raises(FileNotFoundError, match=r"vgg16-397923af\.pth.*vgg16_weights"):
        LPIPSVGG16(lpips_path, None)
    del vgg["features.28.weight"]
    torch.save(vgg, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="features.28.weight"):
        LPIPSVGG16(lpips_path, str(tmp_path / "partial.pth"))
    with pytest.raises(ValueError, match="LossConfig.perceptual"):
        build_perceptual("random")
    assert build_perceptual("none") is None
