"""`fsdx demo`: the main job on the embedded default, end to end on a laptop CPU.

Until the embedded model ships, the demo runs the dataset stage on generated garments: synthetic
catalogue -> sketch-augmented Hugging Face dataset -> a preview sheet of garments beside their sketches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets import load_from_disk
from PIL import Image, ImageDraw

from fashionsd_x.data.build import BuildResult, build_dataset
from fashionsd_x.data.synth import synthesize

PREVIEW_ITEMS = 8


@dataclass
class DemoResult:
    """Where the demo wrote its garments, dataset and preview."""

    garments: Path
    dataset: BuildResult
    preview: Path

    def lines(self) -> list[str]:
        rows = ", ".join(f"{split}: {n}" for split, n in self.dataset.report["num_rows"].items())
        return [
            f"synthetic garments: {self.garments}",
            f"dataset ({rows}): {self.dataset.out}  -> datasets.load_from_disk({str(self.dataset.out)!r})",
            f"build report: {self.dataset.out / 'build_report.json'}",
            f"preview (garment | sketch): {self.preview}",
        ]


def run_demo(out: Path = Path("outputs/demo"), num: int = 64, resolution: int = 256, seed: int = 0,
             num_proc: int = 1) -> DemoResult:
    """Run the pipeline's first stage end to end on generated garments and show the result.

    Writes OUT/garments (a folder source of synthetic garments with captions), OUT/dataset (the
    sketch-augmented dataset, as `fsdx data build` writes it) and OUT/preview.png.

    Args:
        out: folder for everything the demo writes.
        num: number of synthetic garments.
        resolution: side in pixels of the dataset's square images.
        seed: seed of the synthetic catalogue.
        num_proc: worker processes for the dataset build.
    """
    out = Path(out)
    garments = synthesize(out / "garments", num=num, seed=seed, size=resolution)
    built = build_dataset("folder", garments, out / "dataset", resolution=resolution, num_proc=num_proc)
    preview = write_preview(built.out, out / "preview.png")
    return DemoResult(garments, built, preview)


def write_preview(dataset_dir: Path, path: Path, items: int = PREVIEW_ITEMS, cell: int = 160) -> Path:
    """A sheet of the first train items: garment, its sketch, and the caption underneath."""
    train = load_from_disk(str(dataset_dir))["train"]
    rows = min(items, train.num_rows)
    caption_height = 28
    sheet = Image.new("RGB", (4 * cell, ((rows + 1) // 2) * (cell + caption_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for index in range(rows):
        item = train[index]
        x, y = (index % 2) * 2 * cell, (index // 2) * (cell + caption_height)
        sheet.paste(item["image"].resize((cell, cell)), (x, y))
        sheet.paste(item["sketch"].convert("RGB").resize((cell, cell)), (x + cell, y))
        draw.text((x + 4, y + cell + 4), item["text"][:48], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
