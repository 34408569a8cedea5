"""Garment records -> a Hugging Face DatasetDict with a sketch per garment, plus build_report.json.

Paper step 1 (Singh and Patras, 2024, Sec. 3): every in-shop photo gets a sketch extracted by adaptive
thresholding; image, sketch and caption are stored together so the LoRA and ControlNet stages read one
dataset. Images are processed by `datasets.Dataset.map` writing to Arrow files on disk, so memory stays
bounded by a batch whatever the catalogue's size, and `num_proc` workers share the work.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from fashionsd_x.data.images import ImageLoadError, load_image, pad_to_square
from fashionsd_x.data.sketch import EXTRACTION_BYTES_PER_PIXEL, SKETCH_METHODS, SketchConfig, extract_sketch
from fashionsd_x.data.sources import SOURCES, LayoutError, Record, Skip, scan_source
from fashionsd_x.data.sources.base import SPLITS
from fashionsd_x.limits import MAX_IMAGE_SIDE, MAX_ITEMS, check_at_most, check_fits, check_workers
from fashionsd_x.provenance import package_versions

REPORT_NAME = "build_report.json"
WRITER_BATCH = 64  # rows per Arrow write: bounds memory to this many encoded images
# Per pixel of the canvas, besides the sketch extraction: the decoded photo resized and padded (RGB, a few copies),
# and each row a worker holds until its batch is written, as PNG bytes that for a grainy photo are nearly as
# large as the raw RGB + L pixels.
PAD_BYTES_PER_PIXEL = 8
ENCODED_BYTES_PER_PIXEL = 4
CORE_COLUMNS = ("id", "image", "sketch", "text", "category")
PACKAGES = ("fashionsd-x", "datasets", "pyarrow", "opencv-python-headless", "pillow", "numpy")


class SkippedItemsError(ValueError):
    """A strict build skipped items; the dataset and its report were still written."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines a built dataset (stored in build_report.json)."""

    source: str  # one of SOURCES: dresscode, vitonhd, folder
    root: Path  # the raw dataset's folder
    out: Path  # where the DatasetDict is saved
    resolution: int = 512  # side of the square canvas images and sketches are padded to
    sketch: SketchConfig = field(default_factory=SketchConfig)  # sketch extraction, shared with generation
    num_proc: int = 1  # worker processes for decoding, resizing and sketching
    limit: int | None = None  # at most this many items per split (quick builds)
    test_fraction: float = 0.1  # folder source without a split field: share hashed into test

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.resolution < 32:
            raise ValueError(f"resolution must be at least 32, got {self.resolution}")
        if self.num_proc < 1:
            raise ValueError(f"num_proc must be at least 1, got {self.num_proc}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1 when given, got {self.limit}")
        self._check_upper_bounds()
        if Path(self.out).resolve() == Path(self.root).resolve():
            raise ValueError("out must differ from root: the build never writes into the raw dataset")

    def _check_upper_bounds(self) -> None:
        """Sizes and counts within what the machine holds and what any catalogue needs, before any file is read."""
        check_workers("--num-proc", self.num_proc)
        workers = "" if self.num_proc == 1 else f" in each of {self.num_proc} workers"
        check_fits("--resolution", self.resolution, MAX_IMAGE_SIDE, "the largest image side the data stages make",
                   need=self.memory_needed, work=lambda side: f"a {side} px square{workers}")
        if self.limit is not None:
            check_at_most("--limit", self.limit, MAX_ITEMS, "items per split; Dress Code has 53,792 garments")

    def memory_needed(self, resolution: int) -> float:
        """Peak bytes of a build at RESOLUTION: every worker sketches one canvas and holds WRITER_BATCH encoded rows."""
        per_pixel = (EXTRACTION_BYTES_PER_PIXEL[self.sketch.method] + PAD_BYTES_PER_PIXEL
                     + WRITER_BATCH * ENCODED_BYTES_PER_PIXEL)
        return self.num_proc * resolution * resolution * per_pixel

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.update(root=str(self.root), out=str(self.out), sketch=self.sketch.to_dict())
        return values


@dataclass
class BuildResult:
    """What a build wrote: the dataset folder and its report (also saved as OUT/build_report.json)."""

    out: Path
    report: dict[str, Any]

    @property
    def num_skipped(self) -> int:
        return len(self.report["skipped"])


def build_dataset(
    source: Literal["dresscode", "vitonhd", "folder"],
    root: Path,
    out: Path,
    resolution: int = 512,
    sketch_method: Literal["adaptive", "canny", "xdog"] = "adaptive",
    block_size: int = 11,
    offset: float = 2.0,
    num_proc: int = 1,
    limit: int | None = None,
    test_fraction: float = 0.1,
    strict: bool = False,
) -> BuildResult:
    """Build a sketch-augmented Hugging Face dataset from garment photos with captions.

    OUT gets splits train and test with columns id, image, sketch, text, category (plus a folder source's
    extra fields), saved with DatasetDict.save_to_disk, and OUT/build_report.json with counts, every skipped
    item and its reason, the parameters and the library versions. Images are resized keeping their aspect
    ratio and padded with white to a square, never cropped; the sketch is extracted from the padded image.
    Every image is used once: a later row naming the same file, or a file with identical bytes, is skipped
    as a duplicate of the first. Captions must be UTF-8; one that is not (e.g. Latin-1) is skipped with the
    offending byte named in the report, never stored with replacement characters.

    Args:
        source: layout of ROOT: dresscode, vitonhd or folder (images with metadata.jsonl, captions.csv or .txt).
        root: folder holding the raw dataset.
        out: output folder (replaced if it holds an earlier build).
        resolution: side in pixels of the square images and sketches, 32 to 4096 (and what fits in memory: every
            worker holds 64 encoded rows, up to 4 bytes a pixel each).
        sketch_method: sketch extractor: adaptive (the paper's), canny or xdog.
        block_size: adaptive threshold neighbourhood in pixels (odd, 3 to 1025).
        offset: adaptive threshold constant subtracted from the local mean.
        num_proc: worker processes, at most 4 per CPU.
        limit: at most this many items per split.
        test_fraction: folder source without a split field: share of items put in test.
        strict: fail (after writing the dataset and its report) if any item was skipped.
    """
    sketch = SketchConfig(method=sketch_method, block_size=block_size, offset=offset)
    config = BuildConfig(source, Path(root), Path(out), resolution, sketch, num_proc, limit, test_fraction)
    result = run_build(config)
    if strict and result.num_skipped:
        first = result.report["skipped"][0]
        raise SkippedItemsError(f"{result.num_skipped} item(s) skipped with strict on (first: {first['path']}: "
                                f"{first['reason']}); all reasons in {result.out / REPORT_NAME}")
    return result


def run_build(config: BuildConfig) -> BuildResult:
    """Scan the source, process every split into a work folder, then move the result into place."""
    started = time.monotonic()
    # 1. Records from the raw layout; layout problems raise LayoutError before any work.
    scan = scan_source(config.source, config.root, config.test_fraction)
    if not scan.records:
        reasons = "; ".join(sorted({skip.reason for skip in scan.skipped})[:3]) or "nothing listed"
        raise LayoutError(f"{config.source} layout: no usable item in {config.root} ({reasons})")
    out = Path(config.out)
    _check_replaceable(out)
    work = out.parent / f".{out.name}.building"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        # 2. Decode, pad and sketch every split; failures become skips.
        skipped = list(scan.skipped)
        splits = {}
        for split in SPLITS:
            records = [record for record in scan.records if record.split == split][: config.limit]
            splits[split], split_skips = _build_split(records, split, config, work)
            skipped.extend(split_skips)
        dataset = DatasetDict(splits)
        # 3. Save, report, and swap into place so OUT is never half written.
        # An empty split would otherwise be saved without any Arrow file, which load_from_disk cannot read.
        empty_splits = {split: 1 for split, part in dataset.items() if part.num_rows == 0}
        dataset.save_to_disk(str(work / "dataset"), num_shards=empty_splits or None)
        report = _report(config, dataset, skipped, time.monotonic() - started)
        (work / "dataset" / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
        (work / "dataset").rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuildResult(out, report)


def _check_replaceable(out: Path) -> None:
    # Only an earlier build (or an empty folder) is replaced: a typo in --out must not delete a user's files.
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / REPORT_NAME).is_file())):
        raise LayoutError(f"output {out} exists and is not a dataset built by fsdx; choose another --out")


def _build_split(records: list[Record], split: str, config: BuildConfig, work: Path) -> tuple[Dataset, list[Skip]]:
    table = _records_table(records)
    inputs = _input_features(table)
    features = Features({**inputs, "image": ImageFeature(), "sketch": ImageFeature(), "_skip": Value("string")})
    if not records:  # map() skips empty datasets without adding columns; build the empty split directly
        empty = Dataset.from_dict({name: [] for name in features}, features=features)
        return empty.select_columns(_column_order(empty.column_names)), []
    # The input types are given, not inferred: a field that is None in every row would be Arrow's null type,
    # which map() cannot cast to the string column the features declare.
    dataset = Dataset.from_dict(table, features=Features(inputs)).map(
        process_item,
        input_columns=["_path"],
        fn_kwargs={"resolution": config.resolution, "sketch": config.sketch.to_dict()},
        features=features,
        num_proc=config.num_proc if len(records) >= 2 * config.num_proc else None,
        writer_batch_size=WRITER_BATCH,
        cache_file_name=str(work / f"{split}.arrow"),
        desc=f"{split}: image + sketch",
    )
    reasons = list(dataset["_skip"])
    skips = [Skip(path, f"{split}: {reason}", garment_id)
             for garment_id, path, reason in zip(table["id"], table["_path"], reasons) if reason]
    kept = [index for index, reason in enumerate(reasons) if not reason]
    dataset = dataset.select(kept).flatten_indices(cache_file_name=str(work / f"{split}.kept.arrow"),
                                                 writer_batch_size=WRITER_BATCH)
    return dataset.select_columns(_column_order(dataset.column_names)), skips


def process_item(path: str, resolution: int, sketch: dict[str, Any]) -> dict[str, Any]:
    """One garment: load safely, pad to the square canvas, extract the sketch from the padded image."""
    try:
        image = pad_to_square(load_image(path), resolution)
    except ImageLoadError as error:
        return {"image": None, "sketch": None, "_skip": str(error)}
    drawn = extract_sketch(image, SketchConfig.from_dict(sketch))
    return {"image": _png(image), "sketch": _png(drawn), "_skip": ""}


def _png(image: Image.Image) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _records_table(records: list[Record]) -> dict[str, list]:
    table: dict[str, list] = {
        "id": [record.id for record in records],
        "text": [record.text for record in records],
        "category": [record.category for record in records],
    }
    for name in dict.fromkeys(key for record in records for key in record.extra):
        table[name] = [record.extra.get(name) for record in records]
    table["_path"] = [str(record.image_path) for record in records]
    return table


def _input_features(table: dict[str, list]) -> dict[str, Any]:
    features: dict[str, Any] = {}
    for name, values in table.items():
        try:
            arrow_type = pa.array(values).type if values else pa.string()
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise LayoutError(f"folder layout: field {name!r} mixes value types ({error}); use one type per field") from None
        features[name] = Features.from_arrow_schema(pa.schema([(name, arrow_type if arrow_type != pa.null() else pa.string())]))[name]
    return features


def _column_order(columns: list[str]) -> list[str]:
    extras = [name for name in columns if name not in CORE_COLUMNS and not name.startswith("_")]
    return [*CORE_COLUMNS, *extras]


def _report(config: BuildConfig, dataset: DatasetDict, skipped: list[Skip], seconds: float) -> dict[str, Any]:
    counts = {split: _category_counts(dataset[split]) for split in dataset}
    return {
        "source": config.source,
        "parameters": config.to_dict(),
        "counts": counts,
        "num_rows": {split: dataset[split].num_rows for split in dataset},
        "num_skipped": len(skipped),
        "skipped": [{"id": _printable(skip.id), "path": _printable(skip.path), "reason": _printable(skip.reason)}
                    for skip in skipped],
        "columns": dataset["train"].column_names,
        "versions": package_versions(PACKAGES),
        "seconds": round(seconds, 2),
    }


def _printable(text: str) -> str:
    """TEXT as valid UTF-8 for the report: a file name's undecodable bytes shown as \\xe9, a lone surrogate as \\ud800."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate surrogateescape did not make (from a JSON "\\ud800" escape)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _category_counts(split: Dataset) -> dict[str, int]:
    counts: dict[str, int] = {}
    for category in split["category"]:
        counts[category] = counts.get(category, 0) + 1
    return dict(sorted(counts.items()))



__all__ = ["BuildConfig", "BuildResult", "SKETCH_METHODS", "build_dataset", "process_item", "run_build"]
