"""`fsdx demo`: the main job on the embedded default: sketches and prompts in, garments and a contact sheet out.

The sketches and prompts ship with the model (fashionsd_x/embedded/demo): a t-shirt, a dress, trousers and a
skirt, drawn by the synthetic-garment renderer from seeds no training stage used and sketched by the dataset
stage's extractor, each asked for in several colours with the print of the model's new collection it shows;
then a row of sketches drawn the way designers draw (a shaky outline with breaks, a fine line on a large sheet),
and a row of designers' pages (a garment on squared paper, a flat with notes and leader lines), each page shown
beside what the model sees once the page is cleaned up and the garment made from it; both rows are made by the
sketch-style benchmark's code, each sketch with one prompt.
"""

from __future__ import annotations

import json
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fashionsd_x.data.images import pad_to_square, to_rgb
from fashionsd_x.data.sketch import SketchConfig, extract_sketch
from fashionsd_x.data.sketch_styles import draw_item, prompt
from fashionsd_x.data.synth import render_garment, sample_spec
from fashionsd_x.files import atomic_path, write_text
from fashionsd_x.generate import GarmentGenerator
from fashionsd_x.models.embedded import EMBEDDED_DIR

DEMO_SEED = 20240429  # the sketches' garments; the recipe's datasets use seeds 1 and 2
# category -> (print of the sketched garment, its size and place in the frame, prompts): the sketch shows the
# print as adaptive thresholding draws it (as in the training sketches), the prompts ask for it in several
# colours, in the captions' words. Two garments are smaller and off centre, as in the new collection: only
# the sketch says so, and the results follow it.
DEMO_ITEMS = {
    "t-shirt": ("dots", {}, ("a red t-shirt with polka dots", "a blue dotted t-shirt", "a yellow t-shirt with dots")),
    "dress": ("checks", {}, ("a navy checked dress", "a pink dress with a check pattern", "a green checkered dress")),
    "trousers": ("checks", {"scale": 0.8, "position_x": 0.3, "position_y": 0.4},
                 ("black checked trousers", "beige trousers with checks", "grey checkered trousers")),
    "skirt": ("dots", {"scale": 0.8, "position_x": 0.65, "position_y": 0.7},
              ("a purple skirt with polka dots", "an orange dotted skirt", "a white skirt with small dots")),
}
# (style of data.sketch_styles, item, colour, pattern): the hand-drawn row, sketch then garment, twice.
HAND_DRAWN = (("wobbly_gaps", 0, "red", "solid"), ("fine_line", 3, "navy", "dots"))
# The same for designers' pages, shown as page, what the model sees (cleaned up), garment.
PAGES = (("ruled_page", 2, "green", "solid"), ("notes", 1, "red", "dots"))
CELL = 192  # contact-sheet cell side in pixels
CAPTION_LINES = 2


@dataclass
class DemoResult:
    """What the demo wrote."""

    sheet: Path  # the contact sheet: each sketch beside its garments, the prompt under each
    images: list[Path]  # every generated garment (its PNG holds the parameters that reproduce it)
    seconds: float  # wall time, model loading included
    sketches: int  # how many sketches they were made from

    def lines(self) -> list[str]:
        return [f"generated {len(self.images)} garments from {self.sketches} sketches in {self.seconds:.1f} s "
                f"({self.images[0].parent})", f"contact sheet: {self.sheet}"]


def run_demo(out: Path = Path("outputs/demo"), model: str | None = None, steps: int = 20, seed: int = 0,
             guidance_scale: float | None = None) -> DemoResult:
    """Generate garments from the bundled sketches and prompts with the embedded model; write a contact sheet.

    OUT/images/<garment>_<n>.png are the garments (parameters in each PNG's text chunks) and
    OUT/contact_sheet.png shows each sketch beside its garments with the prompt under each.

    Args:
        out: output folder.
        model: base model (default: the embedded tiny model with its LoRA and ControlNet).
        steps: denoising steps per garment.
        seed: seed of every garment.
        guidance_scale: classifier-free guidance weight (default: the model's recommendation).
    """
    started = time.monotonic()
    generator = GarmentGenerator.load(model)
    rows, paths, hand_drawn, pages = [], [], [], []
    page_names = {style for style, *_ in PAGES}
    items = read_demo_items()
    # Every garment in one batch, each prompt with its own sketch: on a CPU a batch costs much less per garment
    # than a call per sketch.
    pairs = [(prompt, sketch) for _, sketch, prompts in items for prompt in prompts]
    everything = generator([prompt for prompt, _ in pairs], sketch=[sketch for _, sketch in pairs], steps=steps,
                           seed=seed, guidance_scale=guidance_scale)
    for name, sketch, prompts in items:
        results, everything = everything[:len(prompts)], everything[len(prompts):]
        paths += [result.save(Path(out) / "images" / f"{name}_{k}.png") for k, result in enumerate(results)]
        cells = [(Image.open(sketch), "sketch")] + [(result.image, prompt) for result, prompt in zip(results, prompts)]
        if name in page_names:  # a page: the page, what the model sees of it, the garment
            pages += [(Image.open(sketch), name.replace("_", " ")), (results[0].sketch, "what the model sees"),
                      cells[1]]
        elif len(prompts) == 1:  # a hand-drawn sketch: sketch and garment side by side, several to a row
            hand_drawn += [(Image.open(sketch), name.replace("_", " ")), cells[1]]
        else:
            rows.append(cells)
    sheet = contact_sheet(rows + [row for row in (hand_drawn, pages) if row], Path(out) / "contact_sheet.png")
    return DemoResult(sheet, paths, time.monotonic() - started, len(items))


def read_demo_items(root: Path = EMBEDDED_DIR / "demo") -> list[tuple[str, Path, list[str]]]:
    """(name, sketch path, prompts) of the bundled demo, from root/prompts.json."""
    index = root / "prompts.json"
    if not index.is_file():
        raise FileNotFoundError(f"the demo sketches are missing ({index}); reinstall FashionSD-X")
    return [(item["name"], root / item["sketch"], item["prompts"])
            for item in json.loads(index.read_text(encoding="utf-8"))]


def write_demo_items(root: Path, resolution: int = 128, sketch: SketchConfig | None = None) -> Path:
    """Render the demo garments, sketch them as the dataset stage does, and write root/prompts.json."""
    root.mkdir(parents=True, exist_ok=True)
    index = []
    for number, (category, (pattern, framing, prompts)) in enumerate(DEMO_ITEMS.items()):
        spec = sample_spec(np.random.default_rng([DEMO_SEED, number]), categories=[category], patterns=[pattern])
        spec = replace(spec, **framing)
        photo = render_garment(spec, size=resolution, seed=DEMO_SEED + number)
        file_name = f"{category}.png"
        with atomic_path(root / file_name) as temporary:
            extract_sketch(photo, sketch or SketchConfig()).save(temporary, format="PNG")
        index.append({"name": category, "sketch": file_name, "prompts": list(prompts)})
    for style, number, color, pattern in HAND_DRAWN + PAGES:
        item = draw_item(DEMO_SEED, style, number)
        with atomic_path(root / f"{style}.png") as temporary:
            Image.fromarray(item.sketch).save(temporary, format="PNG", optimize=True)
        index.append({"name": style, "sketch": f"{style}.png", "prompts": [prompt(item.category, color, pattern)]})
    write_text(root / "prompts.json", json.dumps(index, indent=2) + "\n")
    return root


def contact_sheet(rows: list[list[tuple[Image.Image, str]]], path: Path) -> Path:
    """Rows of (image, caption) cells (a sketch, then its garments), each caption written under its image.

    A sketch of another shape is shown padded to a square, as the model receives it.
    """
    columns = max(len(cells) for cells in rows)
    caption = 14 * CAPTION_LINES + 8
    sheet = Image.new("RGB", (columns * CELL, len(rows) * (CELL + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, cells in enumerate(rows):
        top = row * (CELL + caption)
        for column, (image, text) in enumerate(cells):
            sheet.paste(pad_to_square(to_rgb(image), CELL), (column * CELL, top))
            lines = textwrap.wrap(text, width=CELL // 6)[:CAPTION_LINES]
            for number, line in enumerate(lines):
                draw.text((column * CELL + 4, top + CELL + 3 + 14 * number), line, fill="black")
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")
    return path
