"""Safe image loading: every odd file a catalogue holds becomes upright RGB or a one-line reason."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionsd_x.data.images import ImageLoadError, load_image, pad_to_square

RED = (220, 20, 30)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares a size without the pixel data (what a decompression bomb looks like first)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_rgb_jpeg_loads_unchanged_size(tmp_path):
    Image.new("RGB", (80, 120), RED).save(tmp_path / "a.jpg", quality=95)
    image = load_image(tmp_path / "a.jpg")
    assert image.mode == "RGB" and image.size == (80, 120)
    assert np.abs(np.asarray(image)[60, 40].astype(int) - RED).max() < 8


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("RGB", (64, 64), RED).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    image = load_image(tmp_path / "cmyk.jpg")
    assert image.mode == "RGB"
    assert np.abs(np.asarray(image)[32, 32].astype(int) - RED).max() < 12


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.full((64, 64), 32768, dtype=np.uint16)
    values[:, :32] = 65535
    Image.fromarray(values).save(tmp_path / "deep.png")
    pixels = np.asarray(load_image(tmp_path / "deep.png"))
    assert abs(int(pixels[10, 50, 0]) - 128) <= 1  # half intensity stays mid-grey, not clipped to white
    assert pixels[10, 10, 0] == 255


def test_palette_transparency_composited_on_white(tmp_path):
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 220, 20, 30] + [0] * 762)
    image.paste(1, (16, 16, 48, 48))
    image.save(tmp_path / "pal.png", transparency=0)
    pixels = np.asarray(load_image(tmp_path / "pal.png"))
    assert tuple(pixels[2, 2]) == (255, 255, 255)  # transparent palette entry -> white, not black
    assert tuple(pixels[32, 32]) == RED


def test_rgba_composited_on_white(tmp_path):
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste((*RED, 255), (16, 16, 48, 48))
    image.save(tmp_path / "rgba.png")
    pixels = np.asarray(load_image(tmp_path / "rgba.png"))
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[32, 32]) == RED


def test_exif_rotation_is_applied(tmp_path):
    # Stored landscape with the red half on the left; orientation 6 means "rotate 90 degrees clockwise to view".
    image = Image.new("RGB", (120, 60), "white")
    image.paste(RED, (0, 0, 60, 60))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "phone.jpg")
    assert upright.size == (60, 120)
    pixels = np.asarray(upright).astype(int)
    assert np.abs(pixels[20, 30] - RED).max() < 20  # the red half is now on top
    assert pixels[100, 30].min() > 230


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("this is a caption, not a photo"), "not an image"),
        (lambda p: Image.new("RGB", (4, 4), RED).save(p, format="PNG"), "too small"),
    ],
)
def test_unusable_files_raise_one_line_reason(tmp_path, make, reason):
    path = tmp_path / "item.jpg"
    make(path)
    with pytest.raises(ImageLoadError, match=reason) as caught:
        load_image(path)
    assert "\n" not in str(caught.value)


def test_truncated_file_is_refused(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cannot decode"):
        load_image(tmp_path / "cut.png")


def test_huge_images_refused_before_decoding(tmp_path):
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(_png_header_only(tmp_path / "big.png", 9000, 9000))
    with pytest.raises(ImageLoadError, match="decompression bomb|too large"):
        load_image(_png_header_only(tmp_path / "bomb.png", 20000, 20000))


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ImageLoadError, match="not a file"):
        load_image(tmp_path / "nope.jpg")


def test_pad_to_square_never_crops_and_centres(tmp_path):
    portrait = Image.new("RGB", (100, 200), RED)
    square = np.asarray(pad_to_square(portrait, 64))
    assert square.shape == (64, 64, 3)
    garment = np.argwhere((square != 255).any(axis=2))
    (top, left), (bottom, right) = garment.min(axis=0), garment.max(axis=0)
    assert (top, bottom) == (0, 63)  # full height kept
    assert 15 <= left <= 17 and 46 <= right <= 48  # 32 px wide, centred
    assert tuple(square[32, 2]) == (255, 255, 255)


def test_pad_to_square_upscales_small_images():
    assert pad_to_square(Image.new("RGB", (40, 32), RED), 128).size == (128, 128)


def test_pad_to_square_refuses_a_side_beyond_the_data_stages_largest():
    with pytest.raises(ValueError, match=r"^resolution 4097: at most 4096 \(the largest image side"):
        pad_to_square(Image.new("RGB", (40, 32), RED), 4097)
