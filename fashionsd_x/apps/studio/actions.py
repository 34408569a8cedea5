"""What the studio's controls do, as plain functions: a sketch in, garment PNGs out, the session's history kept.

Every function takes and returns plain values (PIL images, paths, dataclasses), so the tests call them with a
real generator and no browser; ui.py only wires them to Gradio components. A user's mistake (an unreadable
upload, an empty prompt, a blank canvas) comes back as a one-line message for the page, never as an exception.

Files: uploads arrive as paths in Gradio's own upload cache (Gradio refuses paths outside it), and everything
the studio writes goes under the `out` folder the server owns; no user input names a path. Every image that comes
in (an upload, a photo, each image of the canvas) is read by the project's loader (`load_image`), whose one-line
reason for a file that is not an image becomes the page's message.
"""

from __future__ import annotations

import tempfile
import uuid
import warnings
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from PIL import Image

from fashionsd_x.apps.studio.paper import paper
from fashionsd_x.data.conditioning import BlankSketchError, SketchRegion, conditioning_preview
from fashionsd_x.data.images import IMAGE_EXTENSIONS, ImageLoadError, load_image, pad_to_square
from fashionsd_x.data.page import KINDS
from fashionsd_x.data.sketch import SketchConfig, extract_sketch
from fashionsd_x.generate import GarmentGenerator, Generated, GenerationError, check_float, check_int, check_settings
from fashionsd_x.models.embedded import EMBEDDED_DIR

Source = Literal["draw", "upload", "photo", "prompt"]  # where the sketch comes from; prompt: text only
SOURCES: tuple[Source, ...] = ("draw", "upload", "photo", "prompt")
MAX_UPLOAD_PIXELS = 4096 * 4096  # larger uploads (and canvas images) are refused before decoding
CANVAS_PROBLEM = "problem"  # key of a canvas value whose images could not be read: why, in one line
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
class PageSettings:
    """How the sketch's page is read: the box the garment is in, and whether cleanup finds the garment's line
    (drops printing, notes, a figure drawn around it). The region is in fractions of the sketch the tab gives: the
    canvas, the uploaded image, a photo's extracted sketch."""

    region: SketchRegion | None = None  # None: the whole page
    cleanup: bool = True  # the page's "Clean up the page" box; generation's sketch_cleanup

    @classmethod
    def from_page(cls, region: Any, cleanup: Any) -> PageSettings:
        """From the region box's text ("" or "x0,y0,x1,y1") and the cleanup box (None: an API caller from before
        either existed). Bad text is a ValueError whose one line says what a region is."""
        text = "" if region is None else str(region).strip()
        if cleanup is None:
            cleanup = True
        if not isinstance(cleanup, bool):
            raise ValueError(f"clean up the page must be true or false, got {cleanup!r}")
        return cls(SketchRegion.parse(text) if text else None, cleanup)

    def region_text(self) -> str:
        """The region as the page's box shows it: "" for the whole page, else "x0,y0,x1,y1"."""
        return "" if self.region is None else ",".join(f"{value:g}" for value in self.region.to_list())


@dataclass(frozen=True)
class HistoryEntry:
    """One click of Generate: the settings, the sketch it used (saved beside the images) and the PNGs."""

    settings: Settings
    sketch_settings: SketchSettings  # the photo extraction settings on the page at the time
    source: Source
    sketch: Path | None  # the conditioning sketch as a PNG, None for a text-only run
    files: tuple[Path, ...]  # the PNGs, each carrying its parameters in its text chunks
    page: PageSettings = PageSettings()  # the region and cleanup the sketch was read with (defaults: text only)


@dataclass(frozen=True)
class Outcome:
    """What Generate shows: the new PNGs, the updated history, why nothing was made ("" when all went well),
    notes on what was made (e.g. the prompt was truncated) and the sketch as the model received it."""

    files: list[Path]
    history: list[HistoryEntry]
    message: str
    notes: tuple[str, ...] = ()
    seen: Image.Image | None = None  # Generated.sketch: the conditioning, black on white; None for text only


@dataclass(frozen=True)
class PageView:
    """The sketch's page as the model reads it: what it receives, the page explained, and a line saying what was
    removed (or, with no images, why there is nothing to show)."""

    seen: Image.Image | None  # what the model receives (`model_view`)
    explained: Image.Image | None  # the page: kept line black, removed ink coloured by kind, the region's box
    legend: str  # "removed: printing 62%, notes 4%", or why nothing is shown


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


def blank_canvas(side: int, paper_name: str = "plain") -> dict:
    """The canvas's starting value: a `side` px sheet of paper (`paper.PAPERS`: plain, grid, ...), no strokes.

    Why a sheet and not None: Gradio's editor (6.x) switches to its image tool whenever its value is empty, so a
    designer who just drags on an empty Sketchpad draws nothing; with a background it opens with the brush.
    """
    return {"background": paper(paper_name, side), "layers": [], "composite": None}


def repapered(value: dict | None, side: int, paper_name: str) -> dict:
    """The canvas on another paper: the background replaced, the strokes (the editor's layers) kept."""
    return {**blank_canvas(side, paper_name), "layers": list((value or {}).get("layers") or [])}


def read_canvas_image(source: str | Path | bytes) -> Image.Image:
    """One image of the canvas's value (the paper, a layer of strokes, the flattened drawing) as RGBA.

    The page sends each as bytes, an API caller as a file in Gradio's upload folder. Either is read by the
    project's loader, as an upload is (an image, whole, at least MIN_SIDE and at most MAX_UPLOAD_PIXELS: else
    ImageLoadError, one line). The loader composites alpha on white, while `canvas_sketch` composites the strokes
    over the paper by it: an image with alpha is read again keeping it, once the loader has passed it. Bytes go
    through a temporary file: the loader reads files.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        with tempfile.NamedTemporaryFile(prefix="fsdx-canvas-", suffix=".png") as file:
            file.write(source)
            file.flush()
            return read_canvas_image(file.name)
    loaded = load_image(source, max_pixels=MAX_UPLOAD_PIXELS)
    with Image.open(source) as image:
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            return image.convert("RGBA")
    return loaded.convert("RGBA")


def unreadable_canvas(reason: str) -> dict:
    """The canvas's value when one of its images could not be read: nothing drawn, and why (`pick_sketch` says so)."""
    return {"background": None, "layers": [], "composite": None, CANVAS_PROBLEM: f"cannot use the canvas: {reason}"}


def canvas_problem(value: dict | None) -> str:
    """Why the canvas's images could not be read ("" when they could, or there is no canvas)."""
    return str((value or {}).get(CANVAS_PROBLEM) or "")


def canvas_sketch(value: dict | None) -> Image.Image | None:
    """A drawing on the canvas as the page it is drawn on (mode "L"), or None when nothing is drawn.

    The page is the paper the studio laid under the brush (plain, grid, a figure...) with the editor's layers,
    where the brush draws, on top: the model gets it as it would a photo of that page, and cleanup
    (`data.page`) takes the grid or the croquis off, as it does for an uploaded page; "What the model sees"
    shows what is left. The layers are RGBA images whose untouched pixels are transparent; they are composited
    over the paper, not read as black, which is what dropping the alpha channel would give. Bare paper is not a
    drawing: without a stroke there is no sketch.
    """
    layers = [_as_image(layer) for layer in (value.get("layers") or [])] if value else []
    drawn = [layer for layer in layers if np.asarray(layer.convert("RGBA"))[..., 3].any()]
    if not drawn:
        return None
    background = value.get("background") if value else None
    size = _as_image(background).size if background is not None else drawn[0].size
    sheet = Image.new("RGBA", size, (255, 255, 255, 255))
    if background is not None:
        sheet.alpha_composite(_as_image(background).convert("RGBA").resize(size))
    for layer in drawn:
        sheet.alpha_composite(layer.convert("RGBA").resize(size))
    return sheet.convert("L")


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
        if canvas_problem(canvas):
            return None, canvas_problem(canvas)
        sketch = canvas_sketch(canvas)
        return sketch, "" if sketch is not None else "the canvas is blank: draw a sketch, or choose Prompt only"
    if source == "upload":
        return load_upload(upload) if upload else (None, "upload a sketch first, or choose Prompt only")
    if source == "photo":
        if not photo:
            return None, "upload a garment photo first, or choose Prompt only"
        return extract(photo, *astuple(sketch_settings), resolution=resolution)
    return None, f"unknown sketch source {source!r}: choose one of {', '.join(SOURCES)}"


def model_view(generator: GarmentGenerator, sketch: Image.Image | None,
               page: PageSettings = PageSettings()) -> tuple[Image.Image | None, str]:
    """What the model will receive for `sketch` (black lines on white at its resolution), or (None, why not).

    `conditioning_preview` runs the generator's own `control_image` with its resolution and sketch conditioning,
    the page's cleanup setting and region applied as `GarmentGenerator.sketch_settings` applies them, so the
    preview equals `Generated.sketch` of the images Generate then makes from this sketch with this page.
    """
    if sketch is None:
        return None, ""
    region, conditioning = generator.sketch_settings(page.region, page.cleanup)
    try:
        return conditioning_preview(sketch, generator.resolution, conditioning, region), ""
    except BlankSketchError as error:
        return None, str(error)


# What cleanup removed, in a designer's words, by kind (data.page.KINDS).
REMOVED_WORDS = {"off_sheet": "off the sheet", "printing": "printing", "figure": "figure", "outside": "notes"}


def page_view(generator: GarmentGenerator, sketch: Image.Image | None, page: PageSettings = PageSettings()) -> PageView:
    """The sketch's page as the model reads it with `page`'s region and cleanup: `model_view` and
    `explained_page`; for no sketch, empty images and ""."""
    if sketch is None:
        return PageView(None, None, "")
    seen, problem = model_view(generator, sketch, page)
    if seen is None:
        return PageView(None, None, problem)
    return PageView(seen, *explained_page(generator, sketch, page))


def explained_page(generator: GarmentGenerator, sketch: Image.Image,
                   page: PageSettings = PageSettings()) -> tuple[Image.Image, str]:
    """The page as `generator` reads it (`GarmentGenerator.explain`: kept line black, removed ink coloured by
    kind, the region's box, what is outside it greyed) and the share of ink removed, in a line.

    A ControlNet that takes sketches as drawn (trained before normalisation) has no cleanup: its page is explained
    with nothing removed, as it is read.
    """
    image, removed = generator.explain(sketch, page.region, page.cleanup and generator.conditioning.normalize)
    return image, removed_line(removed)


def removed_line(removed: dict[str, float]) -> str:
    """The share of the page's ink cleanup removed, e.g. "removed: printing 62%, notes 4%"."""
    shares = [f"{REMOVED_WORDS[kind]} {_percent(removed[kind])}" for kind in KINDS if removed.get(kind)]
    return "removed: " + (", ".join(shares) if shares else "nothing (every line on the page is the garment's)")


def _percent(share: float) -> str:
    return f"{share:.0%}" if share >= 0.005 else "<1%"


# ---------------------------------------------------------------------------------------------- generation


def run_generation(generator: GarmentGenerator, out: Path, settings: Settings, sketch: Image.Image | None = None,
                   history: Sequence[HistoryEntry] = (), source: Source = "prompt",
                   sketch_settings: SketchSettings = SketchSettings(), page: PageSettings = PageSettings(),
                   progress: Progress | None = None) -> Outcome:
    """Generate `settings.num_images` garments into a new folder under `out` and add the run to the history.

    Images are made one at a time (image k with seed + k) so progress can be shown; each equals what
    `fsdx generate` makes with that seed and is saved by `Generated.save`, so its PNG carries the parameters
    (the page's region and cleanup included). Without a sketch the page's settings have nothing to act on.
    """
    history = list(history)
    page = page if sketch is not None else PageSettings()
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
                result = _generate_one(generator, settings, sketch, page, settings.seed + k)
            except GenerationError as error:  # a sketch with no line the model could see says so, too
                return Outcome([], history, str(error))
            seen = result.sketch  # the same for every image of the click
            files.append(result.save(run / IMAGE_NAME.format(seed=settings.seed + k, run=run.name)))
    kept = _save_sketch(sketch, run)
    entry = HistoryEntry(settings, sketch_settings, source if sketch is not None else "prompt", kept, tuple(files),
                         page)
    notes = tuple(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    return Outcome(files, [*history, entry], "", notes, seen)


def _generate_one(generator: GarmentGenerator, settings: Settings, sketch: Image.Image | None, page: PageSettings,
                  seed: int) -> Generated:
    return generator(settings.prompt, sketch=sketch, negative_prompt=settings.negative_prompt, num_images=1,
                     steps=settings.steps, guidance_scale=settings.guidance_scale,
                     controlnet_scale=settings.controlnet_scale, lora_scale=settings.lora_scale, seed=seed,
                     scheduler=settings.scheduler, control_start=settings.control_start,
                     control_end=settings.control_end, sketch_region=page.region,
                     sketch_cleanup=page.cleanup if sketch is not None else None)[0]


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
                   "sketch span", "LoRA strength", "sampler", "region", "cleanup"]


def history_rows(history: Sequence[HistoryEntry]) -> list[list]:
    """The history as table rows, newest last, in HISTORY_HEADERS order (a text-only run has no region or cleanup)."""
    return [[number, e.settings.prompt, e.source, len(e.files), e.settings.seed, e.settings.steps,
             e.settings.guidance_scale, e.settings.controlnet_scale,
             f"{e.settings.control_start:g}–{e.settings.control_end:g}", e.settings.lora_scale, e.settings.scheduler,
             *(_page_cells(e.page) if e.source != "prompt" else ("", ""))]
            for number, e in enumerate(history, 1)]


def _page_cells(page: PageSettings) -> tuple[str, str]:
    return page.region_text() or "whole page", "on" if page.cleanup else "off"


def reuse(history: Sequence[HistoryEntry], row: int) -> HistoryEntry | None:
    """The history entry of a clicked table row (None for a row that is not there, e.g. a stale click)."""
    return history[row] if 0 <= row < len(history) else None


def control_values(entry: HistoryEntry) -> tuple:
    """The entry's settings in page order: the Settings fields, then method, block size and offset."""
    return (*astuple(entry.settings), *astuple(entry.sketch_settings))


def page_values(entry: HistoryEntry) -> tuple[str, bool]:
    """The entry's page settings as the page's region box and cleanup box take them."""
    return entry.page.region_text(), entry.page.cleanup
