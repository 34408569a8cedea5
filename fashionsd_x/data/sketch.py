"""Garment image -> sketch: black lines (0) on white (255), same size, deterministic.

This is the one extractor every stage calls: the dataset build (sketch of each in-shop photo), generation
(a photo given where a sketch is expected), ControlNet training, and the sketch-similarity metric (MSE
between the sketch of a generated image and the input sketch). A change here changes all of them, so the
parameters are one frozen `SketchConfig` that is stored beside every artifact.

Methods (all on the grayscale image after a light Gaussian denoise):
    adaptive  the paper's (Singh and Patras, arXiv 2404.18591): Gaussian adaptive thresholding, block 11,
              offset 2; a pixel is ink when it is darker than its neighbourhood.
    canny     Canny edges, thickened a little so they read as drawn lines.
    xdog      extended difference of Gaussians line art (Winnemoeller et al. 2012), thresholded.
Then, for every method, dark specks smaller than min_speckle_area are erased (fabric grain, sensor and JPEG
noise) and one-to-two-pixel breaks in the lines are closed, so every output is strictly 0/255.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import cv2
import numpy as np
import yaml
from PIL import Image

from fashionsd_x.data.conditioning import BlankSketchError, SketchConditioning, conditioning_preview
from fashionsd_x.data.images import IMAGE_EXTENSIONS, ImageLoadError, load_image, to_rgb
from fashionsd_x.files import atomic_path, write_text
from fashionsd_x.limits import MAX_MODEL_SIDE, check_at_most, check_fits

SKETCH_METHODS = ("adaptive", "canny", "xdog")
SPECKLE_REFERENCE_SIDE = 512  # min_speckle_area is given for a 512x512 image and scaled with the side
REPORT_NAME = "sketch_report.json"  # written into OUT by write_sketches: settings, outputs and skips
WHITE, BLACK = 255, 0
# Upper bounds of the settings that size a window: the work of each operation grows with its window (a 100001 px
# adaptive block takes 5 s on one 512 px image, a 1000 px closing 16 s), and beyond these no line is drawn at that
# scale anyway.
MAX_BLOCK_SIZE = 1025  # px: an adaptive neighbourhood a quarter of the largest image side (limits.MAX_IMAGE_SIDE)
MAX_SIGMA = 64.0  # px: denoise and xdog_sigma; a 64 px blur has already erased every garment line
MAX_XDOG_K = 16.0  # the wide Gaussian at most 16x the narrow one (the paper uses 1.6)
MAX_LINE_RADIUS = 32  # px: close_gaps and canny_dilate; a 64 px gap is a gap in the drawing, not a break to close
# Peak working memory of extract_sketch per pixel, by method (measured 11-15, 18-20 and 53-55 B/px at 1024-2048 px:
# the grey image, blurs and masks in uint8; labels in int32; xdog's five float64 layers).
EXTRACTION_BYTES_PER_PIXEL = {"adaptive": 16, "canny": 24, "xdog": 64}
# Peak working memory of a preview per pixel of its side squared (conditioning_preview measured 23-30 B/px at
# 1024-2048 px: float32 tensors and the uint8 masks of the normalisation).
PREVIEW_BYTES_PER_PIXEL = 32
PREVIEW_WHY = f"a ControlNet trains at most at {MAX_MODEL_SIDE} px, as generation makes at most {MAX_MODEL_SIDE} px"


@dataclass(frozen=True)
class SketchConfig:
    """How a sketch is extracted; stored in dataset/run reports so every stage extracts alike."""

    method: str = "adaptive"  # one of SKETCH_METHODS; adaptive is the paper's
    block_size: int = 11  # adaptive: neighbourhood size of cv2.adaptiveThreshold (odd, 3 to MAX_BLOCK_SIZE)
    offset: float = 2.0  # adaptive: constant C subtracted from the Gaussian-weighted mean (> 0)
    invert: bool = False  # white lines on black, for models that expect that polarity
    denoise: float = 1.0  # all: sigma (px) of the Gaussian blur before line detection; 0 disables it
    min_speckle_area: int = 12  # all: dark blobs under this many px (at 512x512; scaled with side) are erased
    close_gaps: int = 1  # all: line gaps up to 2x this many px are bridged (morphological closing); 0 disables
    canny_low: float = 30.0  # canny: hysteresis low threshold on the 0-255 grayscale gradient
    canny_high: float = 90.0  # canny: hysteresis high threshold (> canny_low)
    canny_dilate: int = 1  # canny: px added on each side of the 1-px edges (0 keeps them thin)
    xdog_sigma: float = 1.0  # xdog: sigma (px) of the narrow Gaussian
    xdog_k: float = 1.6  # xdog: ratio of the wide Gaussian's sigma to the narrow one (> 1)
    xdog_tau: float = 0.998  # xdog: weight of the wide Gaussian, in (0, 1]; closer to 1 = fainter edges drawn
    xdog_phi: float = 200.0  # xdog: steepness of the tanh ramp below epsilon (> 0)
    xdog_epsilon: float = 0.0  # xdog: response (image in [0, 1]) below which the ramp starts

    def __post_init__(self) -> None:
        if self.method not in SKETCH_METHODS:
            raise ValueError(f"method must be one of {', '.join(SKETCH_METHODS)}, got {self.method!r}")
        if not isinstance(self.invert, bool):
            raise ValueError(f"invert must be true or false, got {self.invert!r}")
        _check_number("denoise", self.denoise, at_least=0.0)
        _check_int("min_speckle_area", self.min_speckle_area, minimum=0)
        _check_int("close_gaps", self.close_gaps, minimum=0)
        check_at_most("denoise", self.denoise, MAX_SIGMA, "a blur this wide has erased every line")
        check_at_most("close_gaps", self.close_gaps, MAX_LINE_RADIUS,
                      f"gaps wider than {2 * MAX_LINE_RADIUS} px are part of the drawing, not breaks to close")
        # Every method's settings are checked, not only the chosen one's: a stored config must be usable
        # whichever method a later stage switches to.
        self._check_adaptive()
        self._check_canny()
        self._check_xdog()

    def _check_adaptive(self) -> None:
        _check_int("block_size", self.block_size, minimum=3)
        if self.block_size % 2 == 0:
            raise ValueError(f"block_size must be odd (cv2.adaptiveThreshold needs a centre pixel), got {self.block_size}")
        check_at_most("block_size", self.block_size, MAX_BLOCK_SIZE,
                      "a neighbourhood a quarter of the largest image side; its work grows with it")
        _check_number("offset", self.offset, above=0.0)  # C <= 0 turns every flat area black

    def _check_canny(self) -> None:
        _check_number("canny_low", self.canny_low, at_least=0.0)
        _check_number("canny_high", self.canny_high, at_least=0.0)
        if self.canny_high <= self.canny_low:
            raise ValueError(f"canny_high ({self.canny_high}) must be greater than canny_low ({self.canny_low})")
        _check_int("canny_dilate", self.canny_dilate, minimum=0)
        check_at_most("canny_dilate", self.canny_dilate, MAX_LINE_RADIUS,
                      f"lines {2 * MAX_LINE_RADIUS + 1} px wide are areas, not lines")

    def _check_xdog(self) -> None:
        _check_number("xdog_sigma", self.xdog_sigma, above=0.0)
        _check_number("xdog_k", self.xdog_k, above=1.0)
        check_at_most("xdog_sigma", self.xdog_sigma, MAX_SIGMA, "a blur this wide has erased every line")
        check_at_most("xdog_k", self.xdog_k, MAX_XDOG_K, "the paper's ratio is 1.6; the wide blur's work grows with it")
        _check_number("xdog_tau", self.xdog_tau, above=0.0)
        if self.xdog_tau > 1.0:
            raise ValueError(f"xdog_tau must be in (0, 1] (above 1 flat areas turn black), got {self.xdog_tau}")
        _check_number("xdog_phi", self.xdog_phi, above=0.0)
        _check_number("xdog_epsilon", self.xdog_epsilon)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values, the inverse of from_dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SketchConfig:
        """Rebuild a config from to_dict() output; unknown keys are an error, missing keys take defaults."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown SketchConfig field(s): {', '.join(unknown)}")
        return cls(**data)


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass; True as a block size is a config mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _check_number(name: str, value: Any, above: float | None = None, at_least: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if above is not None and value <= above:
        raise ValueError(f"{name} must be greater than {above}, got {value}")
    if at_least is not None and value < at_least:
        raise ValueError(f"{name} must be at least {at_least}, got {value}")


# ---------------------------------------------------------------------------------------------- extraction


def extract_sketch(image: Image.Image | np.ndarray, config: SketchConfig | None = None) -> Image.Image:
    """Sketch of a garment image: mode "L", same size, strictly 0 (line) / 255 (paper), deterministic.

    Accepts a PIL image of any mode (transparency composited on white) or a uint8 array, HxW gray or
    HxWx3 RGB (HxWx4 RGBA is composited on white). Lines are black on white unless config.invert.
    """
    config = config or SketchConfig()
    gray = _denoise(_to_gray(image), config.denoise)
    if config.method == "adaptive":
        lines = _adaptive_lines(gray, config)
    elif config.method == "canny":
        lines = _canny_lines(gray, config)
    else:
        lines = _xdog_lines(gray, config)
    sketch = _remove_speckles(lines, _scaled_area(config.min_speckle_area, gray.shape))
    sketch = _close_gaps(sketch, config.close_gaps)
    # Polarity last, so the inverted sketch is exactly 255 - the normal one.
    return Image.fromarray(WHITE - sketch if config.invert else sketch)  # uint8 HxW -> mode "L"


def _to_gray(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 HxW luma (BT.601, what cv2 and PIL use) of a PIL image or uint8 array."""
    if isinstance(image, Image.Image):
        if image.mode == "L":
            return np.asarray(image, dtype=np.uint8)
        return cv2.cvtColor(np.asarray(to_rgb(image)), cv2.COLOR_RGB2GRAY)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 (0-255), got {image.dtype}; convert it first")
    if image.size == 0:
        raise ValueError(f"image array is empty (shape {image.shape})")
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        # Channel order is RGB (PIL's), not OpenCV's BGR; RGBA goes through the same white compositing
        # as PIL input so arrays and images agree.
        return _to_gray(Image.fromarray(np.ascontiguousarray(image)))
    raise ValueError(f"image array must be HxW, HxWx3 (RGB) or HxWx4 (RGBA), got shape {image.shape}")


def _denoise(gray: np.ndarray, sigma: float) -> np.ndarray:
    # JPEG blocks and fabric grain vary by a few grey levels, which is more than the adaptive offset C,
    # so without this each weave thread becomes a dot.
    if sigma == 0:
        return gray
    return cv2.GaussianBlur(gray, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


def _adaptive_lines(gray: np.ndarray, config: SketchConfig) -> np.ndarray:
    """The paper's step: a pixel is line when it is darker than its Gaussian-weighted neighbourhood by C."""
    # THRESH_BINARY keeps pixels above (mean - C) white, so lines come out black on white already and flat
    # areas of any tone stay white. OpenCV rounds C up to an integer for 8-bit input.
    return cv2.adaptiveThreshold(gray, WHITE, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY,
                                 config.block_size, config.offset)


def _canny_lines(gray: np.ndarray, config: SketchConfig) -> np.ndarray:
    edges = cv2.Canny(gray, config.canny_low, config.canny_high, L2gradient=True)
    if config.canny_dilate > 0:
        size = 2 * config.canny_dilate + 1
        edges = cv2.dilate(edges, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    # Canny marks edges with 255; the sketch convention is black lines on white.
    return np.where(edges > 0, BLACK, WHITE).astype(np.uint8)


def _xdog_lines(gray: np.ndarray, config: SketchConfig) -> np.ndarray:
    """XDoG (Winnemoeller, Kyprianidis, Olsen 2012, eq. 5 tau form with the soft threshold T_eps,phi).

    D = G_sigma - tau * G_k*sigma on the image in [0, 1]; T(D) = 1 above epsilon, 1 + tanh(phi (D - eps))
    below. A pixel is line where T < 0.5, so the sketch is binary like the other methods.
    """
    image = gray.astype(np.float64) / 255.0
    narrow = cv2.GaussianBlur(image, (0, 0), config.xdog_sigma, borderType=cv2.BORDER_REPLICATE)
    wide = cv2.GaussianBlur(image, (0, 0), config.xdog_sigma * config.xdog_k, borderType=cv2.BORDER_REPLICATE)
    response = narrow - config.xdog_tau * wide
    soft = np.where(response >= config.xdog_epsilon, 1.0,
                    1.0 + np.tanh(config.xdog_phi * (response - config.xdog_epsilon)))
    return np.where(soft < 0.5, BLACK, WHITE).astype(np.uint8)


def _scaled_area(area_at_reference: int, shape: tuple[int, ...]) -> int:
    # Specks from sensor and JPEG noise are a few px whatever the resolution, while fabric texture grows
    # with it; scaling with the side (not the pixel count) is the compromise. The default 12 px at 512
    # (6 at 256) clears noise and JPEG blocks yet keeps stitching dashes, which are 16-30 px at 512.
    side = math.sqrt(shape[0] * shape[1])
    return int(round(area_at_reference * side / SPECKLE_REFERENCE_SIDE))


def _remove_speckles(sketch: np.ndarray, min_area: int) -> np.ndarray:
    """Erase dark 8-connected blobs smaller than min_area px: texture and noise dots, never whole lines."""
    if min_area <= 1:
        return sketch
    _, labels, stats, _ = cv2.connectedComponentsWithStats((sketch == BLACK).astype(np.uint8), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] < min_area
    small[0] = False  # label 0 is the white paper
    cleaned = sketch.copy()
    cleaned[small[labels]] = WHITE
    return cleaned


def _close_gaps(sketch: np.ndarray, radius: int) -> np.ndarray:
    """Bridge small breaks in the lines: one-sided thresholding thins the line at concave corners
    (an armpit: few background pixels in the window), and noise then cuts it there."""
    if radius == 0:
        return sketch
    size = 2 * radius + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    # Closing acts on the white-on-black foreground, so close the ink (255 - sketch), not the paper.
    # OpenCV's default border is neutral for both passes, so lines touching the image edge are kept.
    ink = cv2.morphologyEx(WHITE - sketch, cv2.MORPH_CLOSE, kernel)
    return WHITE - ink


# ---------------------------------------------------------------------------------------------- files


@dataclass
class SketchReport:
    """What a run over files did: sketches written and inputs skipped, each with a one-line reason."""

    out: Path  # the folder the sketches were written to
    config: SketchConfig  # the settings every written sketch was made with
    written: list[Path] = field(default_factory=list)  # output files, in input order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input path, reason)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary; the config is included so the folder of sketches can be reproduced."""
        return {
            "out": str(self.out),
            "config": self.config.to_dict(),
            "written": [str(path) for path in self.written],
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
        }


def sketch_files(
    paths: Sequence[Path],
    out: Path,
    method: Literal["adaptive", "canny", "xdog"] = "adaptive",
    block_size: int = 11,
    offset: float = 2.0,
    invert: bool = False,
    preview: bool = False,
    resolution: int = 512,
    controlnet: Path | None = None,
) -> SketchReport:
    """Extract a sketch (black lines on white, same size) from every image in PATHs into PNGs under OUT.

    With --preview the inputs are sketches, as `fsdx generate --sketch` takes them, and each PNG shows exactly
    what a ControlNet receives: the sketch normalised (paper, polarity, line width) at its resolution.

    A folder is searched recursively and keeps its sub-folders (PATH/a/b.jpg -> OUT/a/b.png); a file becomes
    OUT/<stem>.png. Unreadable files, and inputs whose output name is already taken in this run, are
    skipped and listed instead of stopping the run; OUT/sketch_report.json records the settings, the
    sketches written and every skip with its reason.

    Args:
        paths: image files, or folders searched recursively for jpg, png, webp, bmp, tiff and gif files.
        out: folder the sketch PNGs are written to (created if missing).
        method: sketch extractor: adaptive (the paper's adaptive thresholding), canny or xdog.
        block_size: adaptive threshold neighbourhood in pixels (odd, 3 to 1025).
        offset: adaptive threshold constant subtracted from the local Gaussian-weighted mean.
        invert: write white lines on black instead.
        preview: write what a ControlNet receives from these sketches instead of extracting sketches.
        resolution: the preview's side in pixels (the ControlNet's training resolution), at most 2048.
        controlnet: a ControlNet folder trained by `fsdx train controlnet`: its train_config.yaml gives the
            preview's normalisation and resolution (without it: the default normalisation at --resolution).
    """
    config = SketchConfig(method=method, block_size=block_size, offset=offset, invert=invert)
    check_preview_side("--resolution", resolution)
    if preview:
        return write_sketches(paths, out, config, preview=preview_settings(resolution, controlnet))
    return write_sketches(paths, out, config)


def preview_settings(resolution: int, controlnet: Path | None) -> tuple[int, SketchConditioning]:
    """(side, normalisation) of a preview: a ControlNet's recorded ones, else the defaults at RESOLUTION."""
    if controlnet is None:
        return resolution, SketchConditioning()
    path = Path(controlnet) / "train_config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no train_config.yaml in {controlnet}; give a folder `fsdx train controlnet` wrote")
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    side = int(settings.get("resolution", resolution))
    check_preview_side(f"{path}: resolution", side)  # a hand-edited file must not run out of memory either
    return side, SketchConditioning.from_dict(settings.get("sketch_conditioning"))


def check_preview_side(option: str, side: int) -> None:
    """Refuse a preview side above MAX_MODEL_SIDE or above what fits in memory, before any file is read."""
    check_fits(option, side, MAX_MODEL_SIDE, PREVIEW_WHY, need=lambda value: value * value * PREVIEW_BYTES_PER_PIXEL,
               work=lambda value: f"a {value} px preview")


def write_sketches(paths: Sequence[Path], out: Path, config: SketchConfig | None = None,
                   preview: tuple[int, SketchConditioning] | None = None) -> SketchReport:
    """sketch_files with every SketchConfig setting available; raises FileNotFoundError for a missing path.

    PREVIEW (side, normalisation): write the conditioning of each input sketch instead of extracting one.
    """
    config = config or SketchConfig()
    out = Path(out)
    report = SketchReport(out=out, config=config)
    sources = list(_image_sources(paths, exclude=out))  # every path checked before anything is written
    claimed: dict[Path, Path] = {}  # output file -> the input that wrote it: never overwrite silently
    for source, relative in sources:
        target = out / relative.with_suffix(".png")
        reason = _refusal(source, target, claimed) or _write_sketch(source, target, config, preview)
        if reason:
            report.skipped.append((str(source), reason))
        else:
            claimed[target] = source
            report.written.append(target)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / REPORT_NAME, json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _refusal(source: Path, target: Path, claimed: dict[Path, Path]) -> str:
    """Why `source` must not be written to `target`, or "" when it may."""
    if target in claimed:
        return f"output {target} already written from {claimed[target]}; both inputs map to this name"
    if target.exists() and target.samefile(source):
        return f"output {target} is this input file; choose another output folder"
    return ""


def _write_sketch(source: Path, target: Path, config: SketchConfig,
                  preview: tuple[int, SketchConditioning] | None = None) -> str:
    """Sketch (or preview) one file into `target`; a one-line reason instead when the file is unusable."""
    try:
        image = load_image(source)
        made = extract_sketch(image, config) if preview is None else conditioning_preview(image, *preview)
    except (ImageLoadError, BlankSketchError) as error:
        return str(error)
    with atomic_path(target) as temporary:  # whole or absent, even on a full disk
        made.save(temporary, format="PNG")
    return ""


def iter_image_files(paths: Sequence[Path]) -> Iterator[Path]:
    """Files as given, and image files found recursively in folders (sorted, so the order is deterministic)."""
    for source, _ in _image_sources(paths):
        yield source


def _image_sources(paths: Sequence[Path], exclude: Path | None = None) -> Iterator[tuple[Path, Path]]:
    """(input file, its output name relative to OUT); a missing path fails before anything is yielded."""
    paths = [Path(path) for path in paths]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
    for path in paths:
        if path.is_dir():
            yield from ((file, file.relative_to(path)) for file in _walk_images(path, exclude))
        else:
            yield path, Path(path.name)


def _walk_images(folder: Path, exclude: Path | None) -> list[Path]:
    """Image files under `folder`, sorted by path components so the order never depends on the file system."""
    # With OUT strictly inside the folder, a second run would otherwise sketch the first run's sketches.
    skip = exclude.resolve() if exclude is not None and _strictly_inside(exclude, folder) else None
    found = [file for file in folder.rglob("*")
             if file.suffix.lower() in IMAGE_EXTENSIONS and file.is_file()
             and not (skip is not None and file.resolve().is_relative_to(skip))]
    return sorted(found, key=lambda file: file.relative_to(folder).parts)


def _strictly_inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path != folder and path.is_relative_to(folder)
