"""The loader's image path: JPEG draft decode never goes below the training size, and resampling only
the crop box gives the pixels of resizing the whole image and cropping."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from textok.schemas.images import decode_image
from textok.trainer.data.loader import resize_crop


def _jpeg(w: int, h: int) -> bytes:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 128 + 60 * np.sin(xx / 17.0)[..., None] * np.cos(yy / 23.0)[..., None] + rng.normal(0, 5, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("size,short,expect", [((800, 600), 256, (400, 300)), ((800, 600), 100, (200, 150)),
                                               ((800, 600), 300, (400, 300)), ((800, 600), 301, (800, 600)), ((500, 375), 256, (500, 375))])
def test_draft_decode_keeps_the_short_side_at_least_the_training_size(size, short, expect):
    img = decode_image(_jpeg(*size), min_short_side=short)
    assert img.size == expect and img.mode == "RGB" and min(img.size) >= short


def test_draft_pixels_close_to_a_full_decode_after_the_resize():
    data = _jpeg(800, 600)
    rng = lambda: np.random.default_rng(1)  # noqa: E731
    full = resize_crop(decode_image(data), 256, False, rng()).astype(np.float64)
    draft = resize_crop(decode_image(data, min_short_side=256), 256, False, rng()).astype(np.float64)
    psnr = 10 * np.log10(255.0 ** 2 / np.mean((full - draft) ** 2))
    assert psnr > 30, psnr


@pytest.mark.parametrize("size,train", [((500, 375), True), ((375, 500), False), ((256, 256), True), ((300, 256), True)])
def test_crop_box_resize_matches_resize_then_crop(size, train):
    img = decode_image(_jpeg(*size))
    got = resize_crop(img, 256, train, np.random.default_rng(3)).astype(int)
    w, h = img.size
    s = 256 / min(w, h)
    rw, rh = (max(256, round(w * s)), max(256, round(h * s))) if s != 1 else (w, h)
    rng = np.random.default_rng(3)
    top, left = (int(rng.integers(0, rh - 255)), int(rng.integers(0, rw - 255))) if train else ((rh - 256) // 2,
                                                                                               (rw - 256) // 2)
    ref = np.asarray(img.resize((rw, rh), Image.BICUBIC) if s != 1 else img)[top:top + 256, left:left + 256]
    assert got.shape == (256, 256, 3) and np.abs(got - ref.astype(int)).max() <= 2
