"""Reading garment photos safely and bringing them to the model's square canvas.

Every stage reads images through `load_image`, so a catalogue's odd files (CMYK JPEGs, 16-bit PNGs,
palette GIFs, phone photos with an EXIF rotation, truncated downloads) become the same upright 8-bit RGB
picture everywhere, and a file that cannot be a garment photo raises `ImageLoadError` with a one-line
reason that batch work records instead of crashing.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fashionsd_x.limits import MAX_IMAGE_SIDE, check_at_most

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MIN_SIDE = 32  # smaller than this cannot carry a garment's shape, even for the tiny model
MAX_PIXELS = 64_000_000  # 8000 x 8000; larger is refused before decoding (decompression bombs)
WHITE = (255, 255, 255)


class ImageLoadError(ValueError):
    """A file that cannot be used as a garment image; str() is the one-line reason."""


def load_image(path: str | Path, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file as upright 8-bit RGB, transparency composited on white.

    Raises ImageLoadError (one line) for missing, empty, non-image, truncated, too small or too large files.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise ImageLoadError("empty file (0 bytes)")
    try:
        with _open_checked(path, max_pixels) as image:
            _check_size(image.size, min_side, max_pixels)
            image.load()  # decode now, inside the try: truncated files fail here
            return to_rgb(ImageOps.exif_transpose(image))
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("not an image file (format not recognised)") from None
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"refused as a decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"cannot decode image: {_one_line(error)}") from None


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; our own size check below refuses those,
    # so the warning is noise. Errors (beyond twice the limit) still propagate.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _check_size(size: tuple[int, int], min_side: int, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageLoadError(f"image too large ({width}x{height} > {max_pixels} pixels), refused before decoding")
    if min(width, height) < min_side:
        raise ImageLoadError(f"image too small ({width}x{height}; each side must be at least {min_side} px)")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; alpha (also palette transparency) is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        image = _sixteen_bit_to_l(image)
    if image.mode == "P":
        # Palette transparency lives in image.info; converting through RGBA keeps it.
        image = image.convert("RGBA")
    if image.mode in ("La", "RGBa"):
        # Premultiplied alpha: Pillow converts these only to their plain form (La -> LA, RGBa -> RGBA).
        image = image.convert(image.mode[:-1] + "A")
    if image.mode in ("LA", "PA"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, WHITE)
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    if image.mode == "F":
        # NaN would cast to an arbitrary byte; read it as black, like the values clipped below 0.
        values = np.nan_to_num(np.asarray(image), nan=0.0, posinf=255.0, neginf=0.0)
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    # Pillow's own convert("L") clips 16-bit values at 255 (an all-white picture); scale instead.
    values = np.asarray(image, dtype=np.float64)
    peak = 65535.0 if values.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.round(values / peak * 255.0).clip(0, 255).astype(np.uint8), mode="L")


def pad_to_square(image: Image.Image, resolution: int, fill: tuple[int, int, int] = WHITE) -> Image.Image:
    """Resize keeping the aspect ratio so the longer side is `resolution`, then pad to a centred square.

    The garment is never cropped: catalogue photos are portrait (Dress Code 1024x768), and cropping them
    to a square would cut hems and sleeves that the sketch must show.
    """
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8, got {resolution}")
    # Every stage bounds its own side before any work (limits.py); this guards Python callers of the helper.
    check_at_most("resolution", resolution, MAX_IMAGE_SIDE, "the largest image side the data stages make")
    width, height = image.size
    if not width or not height:
        raise ValueError(f"the image is empty ({width}x{height} px); there is nothing to pad")
    scale = resolution / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = image.resize(new_size, Image.Resampling.LANCZOS) if new_size != image.size else image
    canvas = Image.new("RGB", (resolution, resolution), fill)
    canvas.paste(resized, ((resolution - new_size[0]) // 2, (resolution - new_size[1]) // 2))
    return canvas


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
