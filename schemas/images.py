"""Image bytes -> checked RGB PIL image, and the few resizes/encodings the pipeline needs.

Pure functions, no Beam: the caption stage and the shard writer both call these, and a bad
file becomes an `ImageDecodeError` with a machine-readable `error_type` that the Beam
stages route to the dead letter. There is no placeholder image on failure (Beam's own
captioning example swaps in a black image; that silently poisons training data).

    from textok.schemas.images import decode_image, resize_center_crop, encode_image
    img = decode_image(open("cat.jpg", "rb").read(), uri="cat.jpg")
    png = encode_image(resize_center_crop(img, 256), "png")

    python -m schemas.images some.jpg other.png   # prints format, size, mode or the error
"""
from __future__ import annotations

import io
import math
import sys

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Same ceiling PIL warns at (~89.5 MP, a 9459x9459 image): far above any photo a tokenizer
# trains on, far below what would exhaust a worker's memory when decoded to RGB.
DEFAULT_MAX_PIXELS = 89_478_485

ERROR_TYPES = ("empty_file", "not_an_image", "truncated", "decompression_bomb", "unsupported_mode", "read_error")

_ENCODE_FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
# Modes that carry an alpha channel (or premultiplied alpha): composited on white.
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# Modes PIL converts to RGB without losing meaning.
_DIRECT_MODES = {"RGB", "L", "1", "CMYK", "YCbCr", "LAB", "HSV", "P", "RGBX"}

# File signatures: data that starts like an image but fails to open was cut short, which is
# a different failure (a broken download) from a file that was never an image.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")


class ImageDecodeError(Exception):
    """An input that cannot become an RGB image. `error_type` is one of ERROR_TYPES."""

    def __init__(self, error_type: str, message: str):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message

    def __reduce__(self):  # picklable across Beam worker boundaries
        return (type(self), (self.error_type, self.message))


def _where(uri: str) -> str:
    return f"{uri}: " if uri else ""


def _open_header(data: bytes, uri: str) -> Image.Image:
    """Open lazily: PIL parses only the header here, so size checks cost nothing."""
    if not data:
        raise ImageDecodeError("empty_file", f"{_where(uri)}file is empty (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageDecodeError("decompression_bomb", f"{_where(uri)}{e}") from e
    except UnidentifiedImageError as e:
        head = data[:8].hex()
        if data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise ImageDecodeError(
                "truncated", f"{_where(uri)}image signature 0x{head} but the header is cut short ({len(data)} bytes)"
            ) from e
        raise ImageDecodeError(
            "not_an_image", f"{_where(uri)}not a recognised image ({len(data)} bytes, starts with 0x{head})"
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # A recognised signature whose header is cut short or malformed.
        raise ImageDecodeError("truncated", f"{_where(uri)}unreadable image header: {e}") from e


def image_format(data: bytes) -> str:
    """Lower-case PIL format name ("jpeg", "png", "webp", ...) read from the header only."""
    with _open_header(data, "") as img:
        if not img.format:
            raise ImageDecodeError("not_an_image", "PIL opened the data but reports no format")
        return img.format.lower()


def _integer_to_uint8(arr: np.ndarray, mode: str, uri: str) -> np.ndarray:
    """16/32-bit greyscale -> 8 bit. 16-bit data (PNG/TIFF) spans 0..65535; scale by 255/65535."""
    lo, hi = int(arr.min()), int(arr.max())
    if mode.startswith("I;16") or (lo >= 0 and hi > 255 and hi <= 65535):
        return (arr.astype(np.float64) / 257.0).round().astype(np.uint8)
    if lo >= 0 and hi <= 255:  # 32-bit container holding 8-bit values
        return arr.astype(np.uint8)
    raise ImageDecodeError(
        "unsupported_mode", f"{_where(uri)}mode {mode} with values in [{lo}, {hi}]: not 8- or 16-bit data, "
        "refusing to guess a scale")


def _float_to_uint8(arr: np.ndarray, uri: str) -> np.ndarray:
    """Float greyscale: [0, 1] data is scaled by 255, [0, 255] data kept; anything else is refused."""
    if not np.isfinite(arr).all():
        raise ImageDecodeError("unsupported_mode", f"{_where(uri)}mode F image holds NaN or inf values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        arr = arr * 255.0
    elif not (lo >= 0.0 and hi <= 255.0):
        raise ImageDecodeError(
            "unsupported_mode", f"{_where(uri)}mode F with values in [{lo:g}, {hi:g}]: expected [0, 1] or [0, 255]")
    return arr.round().clip(0, 255).astype(np.uint8)


def to_rgb(img: Image.Image, uri: str = "") -> Image.Image:
    """Any PIL mode -> RGB. Alpha is composited on white (a transparent pixel has no colour;
    white matches how browsers and most datasets show it)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        mode, img = "RGBA", img.convert("RGBA")
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _DIRECT_MODES:
        return img.convert("RGB")
    if mode.startswith("I"):  # "I", "I;16", "I;16B", "I;16L", "I;16N"
        grey = _integer_to_uint8(np.asarray(img), mode, uri)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(img, dtype=np.float64), uri), "L").convert("RGB")
    raise ImageDecodeError("unsupported_mode", f"{_where(uri)}PIL mode {mode!r} has no RGB conversion here")


def decode_image(data: bytes, *, uri: str = "", max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_short_side: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB image with EXIF orientation applied.

    `min_short_side`: the caller will shrink the image to this short side anyway, so a JPEG at
    least twice that size is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's draft
    mode), never below `min_short_side`: the IDCT and colour conversion of the skipped pixels
    are most of a large JPEG's decode time (bench/loader_throughput.py measures it).

    Raises ImageDecodeError: empty_file, not_an_image, truncated (also corrupt pixel data),
    decompression_bomb (width*height > max_pixels, checked from the header before any pixel
    is decoded), unsupported_mode. Multi-frame files (GIF, TIFF) give their first frame.
    """
    img = _open_header(data, uri)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError("not_an_image", f"{_where(uri)}header declares size {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            "decompression_bomb", f"{_where(uri)}{width}x{height} = {width * height} pixels exceeds "
            f"max_pixels={max_pixels} (pass a larger max_pixels if such giant images are genuine)")
    if min_short_side and img.format == "JPEG" and min(width, height) >= 2 * min_short_side:
        scale = min_short_side / min(width, height)
        img.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
    try:
        # load() decodes every pixel now, so a truncated file fails here and not later
        # inside a resize; PIL's ImageFile.LOAD_TRUNCATED_IMAGES must stay False.
        img.load()
    except Image.DecompressionBombError as e:
        raise ImageDecodeError("decompression_bomb", f"{_where(uri)}{e}") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise ImageDecodeError("truncated", f"{_where(uri)}pixel data unreadable ({type(e).__name__}: {e})") from e
    try:
        # in place: without a rotation to apply, exif_transpose would return a full copy of the pixels
        ImageOps.exif_transpose(img, in_place=True)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError) as e:
        # Guessing "no rotation" could train on sideways images: a corrupt EXIF block fails the file.
        raise ImageDecodeError("truncated", f"{_where(uri)}EXIF orientation unreadable ({e})") from e
    return to_rgb(img, uri)


def downscale_max_side(img: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the longer side is at most `max_side`, keeping aspect; never upscale."""
    if max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    scale = max_side / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side -> `size` (bicubic; PIL widens the filter when shrinking, so it is
    antialiased), then the central size x size square — the ADM/DiT ImageNet preprocessing."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def encode_image(img: Image.Image, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """Encode an image as "jpeg", "png" or "webp" bytes (quality applies to jpeg/webp)."""
    pil_fmt = _ENCODE_FORMATS.get(fmt.lower())
    if pil_fmt is None:
        raise ValueError(f"unknown image format {fmt!r}; choose one of jpeg, png, webp")
    if pil_fmt == "JPEG" and img.mode != "RGB" and img.mode != "L":
        img = to_rgb(img)
    buf = io.BytesIO()
    if pil_fmt == "PNG":
        img.save(buf, format="PNG", optimize=False)
    else:
        img.save(buf, format=pil_fmt, quality=int(quality))
    return buf.getvalue()


def _main(paths: list[str]) -> int:
    bad = 0
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        try:
            img = decode_image(data, uri=p)
            print(f"{p}\t{image_format(data)}\t{img.width}x{img.height}\tok")
        except ImageDecodeError as e:
            bad += 1
            print(f"{p}\t{e.error_type}\t{e.message}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
