"""What the studio's controls do, as plain functions: a sketch in, garment PNGs out, the session's history kept.

Every function takes and returns plain values (PIL images, paths, dataclasses), so the tests call them with a
real generator and no browser; ui.py only wires them to Gradio components. A user's mistake (an unreadable
upload, an empty prompt, a blank canvas) comes back as a one-line message for the page, never as an exception.

Files: uploads arrive as paths in Gradio's own upload cache (Gradio refuses paths outside it), and everything
the studio writes goes under the `out` folder the server owns; no user input names a path.
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from PIL import Image

from fashionsd_x.data.conditioning import BlankSketchError, conditioning_preview
from fashionsd_x.data.images import IMAGE_EXTENSIONS, ImageLoadError, load_image, pad_to_square
from fashionsd_x.data.sketch import SketchConfig, extract_sketch
from fashionsd_x.generate import GarmentGenerator, Generated, GenerationError, check_float, check_int, check_settings
from fashionsd_x.models.embedded import EMBEDDED_DIR

Source = Literal["draw", "upload", "photo", "prompt"]  # where the sketch comes from; prompt: text only
SOURCES: tuple[Source, ...] = ("draw", "upload", "photo", "prompt")
MAX_UPLOAD_PIXELS = 4096 * 4096  # larger uploads are refused before decoding
MAX_IMAGES = 8  # per click; the page's slider stops here and run_generation refuses more from the API
MAX_STEPS = 100
MAX_SEED = 2**32 - 1  # the page's Number holds a JavaScript double: larger seeds would not come back exact
NUMBERS = ("num_images", "steps", "guidance_scale", "controlnet_scale", "lora_scale", "seed", "control_start",
           "control_end")  # Settings' numbers
IMAGE_NAME = "seed{seed}-{run}.png"  # seed first: the page's download list shortens long names at the end
Progress = Callable[[float, str], None]  # (fraction done, what is happening)


@dataclass(frozen=True)
class Settings:
    """The generation controls, in the order of the page's inputs (a history row fills them back). The sketch's
    span comes last, though shown beside the sketch strength: it came later, and an API caller's positions stay."""

    prompt: str = ""  # what the garment should look like
    negative_prompt: str = ""  # what it should not
    num_images: int = 4  # images per click; image k uses seed + k
    steps: int = 20  # denoising steps
    guidance_scale: float = 7.5  # classifier-free guidance weight
    controlnet_scale: float = 1.0  # sketch strength
    lora_scale: float = 1.0  # LoRA strength
    seed: int = 0  # seed of the first image
    scheduler: str = "unipc"  # sampler
    control_start: float = 0.0  # fraction of the denoising at which the sketch starts to act
    control_end: float = 1.0  # and at which it stops: lower leaves the last steps' details to the prompt

    @classmethod
    def from_page(cls, *values: Any) -> Settings:
        """Settings from the controls' values in field order. Gradio gives numbers as floats: whole ones become
        ints; anything else (NaN, 2.5 steps, text from an API caller) is kept as given for `problem` to name.
        Fields not given (an API caller from before the sketch's span) keep their defaults."""
        given = {f.name: f.default for f in fields(cls)}
        given.update({f.name: v for f, v in zip(fields(cls), values) if v is not None})
        for name in NUMBERS:
            try:
                given.update(check_settings(**{name: given[name]}))
            except GenerationError:
                pass
        return cls(**{name: str(value) if name not in NUMBERS else value for name, value in given.items()})

    def problem(self) -> str:
        """Why these settings cannot run, or "". The page's tighter limits come first (they bind API callers
        too: a slider's range does not), then generation's own check of every number (`check_settings`)."""
        try:
            check_int("number of images", self.num_images, 1, MAX_IMAGES)
            check_int("steps", self.steps, 1, MAX_STEPS)
            check_int("seed", self.seed, 0, MAX_SEED - int(self.num_images))
            check_settings(**{name: getattr(self, name) for name in NUMBERS})
        except GenerationError as error:
            return str(error)
        return ""


@dataclass(frozen=True)
class SketchSettings:
    """How a garment photo is turned into a sketch (the adjustable part of SketchConfig)."""

    method: str = "adaptive"  # adaptive (the paper's), canny or xdog
    block_size: int = 11  # adaptive threshold neighbourhood, odd
    offset: float = 2.0  # adaptive threshold constant

    @classmethod
    def from_page(cls, method: Any, block_size: Any, offset: Any) -> SketchSettings:
        """From the photo controls' values (floats from Gradio); a bad number is a GenerationError naming it."""
        return cls(str(method), check_int("block_size", block_size, 3, 255), check_float("offset", offset, 0.0, 255.0))

    def config(self) -> SketchConfig:
        return SketchConfig(method=self.method, block_size=int(self.block_size), offset=float(self.offset))


@dataclass(frozen=True)
class HistoryEntry:
    """One click of Generate: the settings, the sketch it used (saved beside the images) and the PNGs."""

    settings: Settings
    sketch_settings: SketchSettings  # the photo extraction settings on the page at the time
    source: Source
    sketch: Path | None  # the conditioning sketch as a PNG, None for a text-only run
    files: tuple[Path, ...]  # the PNGs, each carrying its parameters in its text chunks


@dataclass(frozen=True)
class Outcome:
    """What Generate shows: the new PNGs, the updated history, why nothing was made ("" when all went well),
    notes on what was made (e.g. the prompt was truncated) and the sketch as the model received it."""

    files: list[Path]
    history: list[HistoryEntry]
    message: str
    notes: tuple[str, ...] = ()
    seen: Image.Image | None = None  # Generated.sketch: the conditioning, black on white; None for text only


# ---------------------------------------------------------------------------------------------- the model


def describe_model(generator: GarmentGenerator) -> tuple[str, list[tuple[str, str]]]:
    """What the studio runs, in a designer's words, and where each part was loaded from ((part, path) pairs).

    E.g. "the embedded tiny FashionSD-X model: base + LoRA + ControlNet", or "base runwayml/stable-diffusion-v1-5
    with a LoRA and a ControlNet". Folder names say little ("lora", "controlnet"): the paths are the fine print.
    """
    base = generator.base
    loaded = [(part, path) for part, path in (("base", base.source), ("LoRA", generator.lora),
                                              ("ControlNet", generator.controlnet_path)) if path]
    embedded_base = base.kind != "hub" and _is_embedded(base.source)
    if embedded_base and all(_is_embedded(path) for _, path in loaded):
        return f"the embedded tiny FashionSD-X model: {' + '.join(part for part, _ in loaded)}", loaded
    name = base.source if base.kind == "hub" else Path(base.source).name
    text = "the embedded tiny FashionSD-X base" if embedded_base else f"base {name}"
    extras = [part for part, _ in loaded[1:]]
    if extras:
        text += " with " + " and ".join(f"a {part}" for part in extras)
    if "ControlNet" not in extras:
        text += ", no ControlNet (prompt only)" if extras else ", no LoRA or ControlNet (prompt only)"
    elif "LoRA" not in extras:
        text += ", no LoRA"
    return text, loaded


def _is_embedded(path: str) -> bool:
    return Path(path).resolve().is_relative_to(EMBEDDED_DIR.resolve())


# ---------------------------------------------------------------------------------------------- sketches


def blank_canvas(side: int) -> dict:
    """The canvas's starting value: a white sheet of `side` px, no strokes.

    Why a sheet and not None: Gradio's editor (6.x) switches to its image tool whenever its value is empty, so a
    designer who just drags on an empty Sketchpad draws nothing; with a background it opens with the brush.
    """
    return {"background": Image.new("RGBA", (side, side), (255, 255, 255, 255)), "layers": [], "composite": None}


def canvas_sketch(value: dict | None) -> Image.Image | None:
    """A drawing on the canvas as black lines on white (mode "L"), or None when nothing is drawn.

    The editor hands over RGBA images whose untouched pixels are transparent; they are composited on white
    (the sketch convention), not read as black, which is what dropping the alpha channel would give.
    """
    layers = [value.get("background"), *(value.get("layers") or [])] if value else []
    images = [_as_image(layer) for layer in layers if layer is not None]
    if not images:
        return None
    paper = Image.new("RGBA", images[0].size, (255, 255, 255, 255))
    for image in images:
        paper.alpha_composite(image.convert("RGBA").resize(paper.size))
    sketch = paper.convert("L")
    return sketch if np.asarray(sketch).min() < 255 else None


def _as_image(layer: Image.Image | np.ndarray) -> Image.Image:
    return layer if isinstance(layer, Image.Image) else Image.fromarray(np.asarray(layer, dtype=np.uint8))


def load_upload(path: str | Path | None) -> tuple[Image.Image | None, str]:
    """An uploaded image as RGB, or (None, why it cannot be used) for a missing, wrong-type or broken file."""
    if not path:
        return None, ""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        kinds = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
        return None, f"cannot use {Path(path).name}: not an image file (accepted: {kinds})"
    try:
        return load_image(path, max_pixels=MAX_UPLOAD_PIXELS), ""
    except ImageLoadError as error:
        return None, f"cannot use {Path(path).name}: {error}"


def extract(photo: str | Path | None, method: str, block_size: int, offset: float,
            resolution: int) -> tuple[Image.Image | None, str]:
    """The sketch of an uploaded garment photo with the page's settings, or (None, message).

    Extraction runs on the photo padded to the model's square resolution, as `GarmentGenerator` does for a
    photo, so the preview is exactly the sketch the model will be given (block size is in those pixels).
    """
    image, message = load_upload(photo)
    if image is None:
        return None, message
    try:
        config = SketchSettings.from_page(method, block_size, offset).config()
    except ValueError as error:  # GenerationError is one
        return None, f"sketch settings: {error}"
    return extract_sketch(pad_to_square(image, resolution), config), ""


def pick_sketch(source: Source, canvas: dict | None, upload: str | Path | None, photo: str | Path | None,
                sketch_settings: SketchSettings, resolution: int) -> tuple[Image.Image | None, str]:
    """The sketch of the selected tab (None for prompt only), or (None, what is missing)."""
    if source == "prompt":
        return None, ""
    if source == "draw":
        sketch = canvas_sketch(canvas)
        return sketch, "" if sketch is not None else "the canvas is blank: draw a sketch, or choose Prompt only"
    if source == "upload":
        return load_upload(upload) if upload else (None, "upload a sketch first, or choose Prompt only")
    if source == "photo":
        if not photo:
            return None, "upload a garment photo first, or choose Prompt only"
        return extract(photo, *astuple(sketch_settings), resolution=resolution)
    return None, f"unknown sketch source {source!r}: choose one of {', '.join(SOURCES)}"


def model_view(generator: GarmentGenerator, sketch: Image.Image | None) -> tuple[Image.Image | None, str]:
    """What the model will receive for `sketch` (black lines on white at its resolution), or (None, why not).

    `conditioning_preview` runs the generator's own `control_image` with its resolution and sketch conditioning,
    so the preview equals `Generated.sketch` of the images Generate then makes from this sketch.
    """
    if sketch is None:
        return None, ""
    try:
        return conditioning_preview(sketch, generator.resolution, generator.conditioning), ""
    except BlankSketchError as error:
        return None, str(error)


# ---------------------------------------------------------------------------------------------- generation


def run_generation(generator: GarmentGenerator, out: Path, settings: Settings, sketch: Image.Image | None = None,
                   history: Sequence[HistoryEntry] = (), source: Source = "prompt",
                   sketch_settings: SketchSettings = SketchSettings(),
                   progress: Progress | None = None) -> Outcome:
    """Generate `settings.num_images` garments into a new folder under `out` and add the run to the history.

    Images are made one at a time (image k with seed + k) so progress can be shown; each equals what
    `fsdx generate` makes with that seed and is saved by `Generated.save`, so its PNG carries the parameters.
    """
    history = list(history)
    problem = settings.problem()
    if problem:
        return Outcome([], history, problem)
    run = Path(out) / uuid.uuid4().hex[:8]  # a fresh folder per click: sessions never share files
    files: list[Path] = []
    seen: Image.Image | None = None
    with warnings.catch_warnings(record=True) as caught:  # the generator warns of a truncated prompt
        warnings.simplefilter("always", UserWarning)
        for k in range(settings.num_images):
            if progress is not None:
                progress(k / settings.num_images, f"image {k + 1} of {settings.num_images}")
            try:
                result = _generate_one(generator, settings, sketch, settings.seed + k)
            except GenerationError as error:  # a sketch with no line the model could see says so, too
                return Outcome([], history, str(error))
            seen = result.sketch  # the same for every image of the click
            files.append(result.save(run / IMAGE_NAME.format(seed=settings.seed + k, run=run.name)))
    kept = _save_sketch(sketch, run)
    entry = HistoryEntry(settings, sketch_settings, source if sketch is not None else "prompt", kept, tuple(files))
    notes = tuple(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    return Outcome(files, [*history, entry], "", notes, seen)


def _generate_one(generator: GarmentGenerator, settings: Settings, sketch: Image.Image | None,
                  seed: int) -> Generated:
    return generator(settings.prompt, sketch=sketch, negative_prompt=settings.negative_prompt, num_images=1,
                     steps=settings.steps, guidance_scale=settings.guidance_scale,
                     controlnet_scale=settings.controlnet_scale, lora_scale=settings.lora_scale, seed=seed,
                     scheduler=settings.scheduler, control_start=settings.control_start,
                     control_end=settings.control_end)[0]


def generated_files(out: Path) -> list[Path]:
    """Every garment PNG written under `out` (not the kept sketches)."""
    return sorted(Path(out).rglob(IMAGE_NAME.format(seed="*", run="*")))


def _save_sketch(sketch: Image.Image | None, run: Path) -> Path | None:
    if sketch is None:
        return None
    path = run / "sketch.png"
    sketch.save(path)
    return path


# ---------------------------------------------------------------------------------------------- history


HISTORY_HEADERS = ["#", "prompt", "sketch", "images", "seed", "steps", "guidance", "sketch strength",
                   "sketch span", "LoRA strength", "sampler"]


def history_rows(history: Sequence[HistoryEntry]) -> list[list]:
    """The history as table rows, newest last, in HISTORY_HEADERS order."""
    return [[number, e.settings.prompt, e.source, len(e.files), e.settings.seed, e.settings.steps,
             e.settings.guidance_scale, e.settings.controlnet_scale,
             f"{e.settings.control_start:g}–{e.settings.control_end:g}", e.settings.lora_scale, e.settings.scheduler]
            for number, e in enumerate(history, 1)]


def reuse(history: Sequence[HistoryEntry], row: int) -> HistoryEntry | None:
    """The history entry of a clicked table row (None for a row that is not there, e.g. a stale click)."""
    return history[row] if 0 <= row < len(history) else None


def control_values(entry: HistoryEntry) -> tuple:
    """The entry's settings in page order: the Settings fields, then method, block size and offset."""
    return (*astuple(entry.settings), *astuple(entry.sketch_settings))
