"""schemas.images: decoding real files of every kind, every failure, every mode."""
from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from textok.schemas.images import (ImageDecodeError, decode_image, downscale_max_side, encode_image, image_format,
                             resize_center_crop, to_rgb)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    # Noise does not compress, so a cut file really misses pixel data.
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _error(data: bytes, **kw) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kw)
    return info.value


def _png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims width x height (CRC fixed, so only the size lies)."""
    data = bytearray(_save(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_decodes_common_formats_to_rgb(fmt):
    img = Image.new("RGB", (24, 16), (200, 30, 40))
    out = decode_image(_save(img, fmt), uri=f"x.{fmt.lower()}")
    assert out.mode == "RGB" and out.size == (24, 16)
    assert np.abs(np.asarray(out, dtype=int)[8, 12] - [200, 30, 40]).max() <= 12
    assert image_format(_save(img, fmt)) == fmt.lower()


def test_empty_and_not_an_image():
    assert _error(b"", uri="a.jpg").error_type == "empty_file"
    e = _error(b"hello, I am a text file\n", uri="notes.jpg")
    assert e.error_type == "not_an_image" and "notes.jpg" in e.message
    with pytest.raises(ImageDecodeError) as info:
        image_format(b"<html></html>")
    assert info.value.error_type == "not_an_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.6, 0.2])
def test_truncated_files(fmt, keep):
    data = _save(_noise(64, 64), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    e = _error(data[: int(len(data) * keep)], uri="cut")
    assert e.error_type == "truncated", e.message


def test_header_cut_short_is_truncated_not_foreign():
    data = _save(_noise(32, 32), "JPEG")
    assert _error(data[:20]).error_type == "truncated"
    assert _error(_save(_noise(8, 8), "PNG")[:30]).error_type == "truncated"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_checked_from_header():
    # 12000x12000 = 144 MP: above a small max_pixels, and the file holds one pixel, so a
    # decode attempt would report "truncated" — "decompression_bomb" proves the header check.
    bomb = _png_with_size(12000, 12000)
    e = _error(bomb, uri="bomb.png", max_pixels=10_000_000)
    assert e.error_type == "decompression_bomb" and "max_pixels=10000000" in e.message
    # Far beyond PIL's own hard limit: refused at open, still a decompression_bomb.
    assert _error(_png_with_size(40000, 40000)).error_type == "decompression_bomb"
    assert _error(_save(Image.new("RGB", (50, 50)), "PNG"), max_pixels=2499).error_type == "decompression_bomb"
    assert decode_image(_save(Image.new("RGB", (50, 50)), "PNG"), max_pixels=2500).size == (50, 50)


def test_cmyk_jpeg_to_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_save(cmyk, "JPEG", quality=95))
    r, g, b = np.asarray(out, dtype=int)[8, 8]
    assert out.mode == "RGB" and r > 230 and g < 30 and b < 30


def test_alpha_modes_composite_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 128))
    assert np.abs(np.asarray(decode_image(_save(rgba, "PNG")), int)[0, 0] - [255, 127, 127]).max() <= 1
    la = Image.new("LA", (8, 8), (0, 0))  # fully transparent black -> white
    assert np.asarray(decode_image(_save(la, "PNG")))[0, 0].tolist() == [255, 255, 255]
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    p.info["transparency"] = 1
    assert np.asarray(decode_image(_save(p, "PNG", transparency=1)))[0, 0].tolist() == [255, 255, 255]
    pa = Image.new("PA", (4, 4))
    pa.putpalette([0, 200, 0] * 256)
    pa.putdata([(0, 255)] * 16)
    assert np.asarray(to_rgb(pa))[0, 0].tolist() == [0, 200, 0]


def test_palette_grey_and_bilevel_modes():
    p = Image.new("P", (4, 4), 2)
    p.putpalette([0, 0, 0, 0, 0, 0, 10, 20, 30] + [0] * 759)
    assert np.asarray(decode_image(_save(p, "PNG")))[0, 0].tolist() == [10, 20, 30]
    assert np.asarray(decode_image(_save(Image.new("L", (4, 4), 77), "PNG")))[0, 0].tolist() == [77, 77, 77]
    assert np.asarray(decode_image(_save(Image.new("1", (4, 4), 1), "PNG")))[0, 0].tolist() == [255, 255, 255]


def test_16_bit_and_32_bit_greyscale_are_rescaled_not_clipped():
    arr = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16)
    i16 = Image.fromarray(arr)
    out = np.asarray(decode_image(_save(i16, "PNG")))[..., 0]
    assert out.tolist() == [[0, 100], [255, 200]]
    i32 = Image.fromarray(arr.astype(np.int32))
    assert np.asarray(decode_image(_save(i32, "TIFF")))[..., 0].tolist() == [[0, 100], [255, 200]]
    eight_bit_in_i = Image.fromarray(np.array([[3, 250]], dtype=np.int32))
    assert np.asarray(to_rgb(eight_bit_in_i))[..., 0].tolist() == [[3, 250]]
    negative = Image.fromarray(np.array([[-5, 10]], dtype=np.int32))
    with pytest.raises(ImageDecodeError) as info:
        to_rgb(negative, "neg.tif")
    assert info.value.error_type == "unsupported_mode" and "neg.tif" in info.value.message


def test_float_mode():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(decode_image(_save(unit, "TIFF")))[..., 0].tolist() == [[0, 128, 255]]
    wide = Image.fromarray(np.array([[-1.0, 300.0]], dtype=np.float32))
    with pytest.raises(ImageDecodeError) as info:
        to_rgb(wide)
    assert info.value.error_type == "unsupported_mode"


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the left edge becomes the top
    out = decode_image(_save(img, "JPEG", exif=exif, quality=95))
    assert out.size == (20, 40)
    top, bottom = np.asarray(out, int)[5, 10], np.asarray(out, int)[35, 10]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_multiframe_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    r, g, b = np.asarray(decode_image(buf.getvalue()), int)[4, 4]
    assert r > 200 and b < 50


def test_downscale_max_side():
    img = Image.new("RGB", (1000, 500))
    assert downscale_max_side(img, 384).size == (384, 192)
    assert downscale_max_side(Image.new("RGB", (500, 1000)), 384).size == (192, 384)
    small = Image.new("RGB", (100, 50))
    assert downscale_max_side(small, 384) is small  # never upscales
    with pytest.raises(ValueError):
        downscale_max_side(small, 0)


def test_resize_center_crop_keeps_the_centre():
    img = Image.new("RGB", (90, 30), (0, 255, 0))
    img.paste((255, 0, 0), (30, 0, 60, 30))  # middle third red
    out = resize_center_crop(img, 16)
    assert out.size == (16, 16)
    arr = np.asarray(out, int)
    assert arr[8, 8, 0] > 240 and arr[8, 8, 1] < 20
    assert resize_center_crop(Image.new("RGB", (10, 20)), 16).size == (16, 16)  # upscales when needed
    assert resize_center_crop(Image.new("RGB", (33, 77)), 32).size == (32, 32)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_encode_roundtrip(fmt):
    img = Image.new("RGB", (20, 10), (10, 120, 230))
    data = encode_image(img, fmt, quality=90)
    assert image_format(data) == fmt
    back = decode_image(data)
    assert back.size == (20, 10) and np.abs(np.asarray(back, int)[5, 10] - [10, 120, 230]).max() <= 10
    png = decode_image(encode_image(_noise(8, 8), "png"))
    assert np.array_equal(np.asarray(png), np.asarray(_noise(8, 8)))  # png is lossless
    assert image_format(encode_image(Image.new("RGBA", (4, 4)), "jpeg")) == "jpeg"
    with pytest.raises(ValueError, match="unknown image format"):
        encode_image(img, "bmp2")


def test_error_pickles_for_beam():
    e = pickle.loads(pickle.dumps(ImageDecodeError("truncated", "x.jpg: cut")))
    assert (e.error_type, e.message) == ("truncated", "x.jpg: cut")
