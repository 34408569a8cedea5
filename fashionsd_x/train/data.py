"""The training data: a built dataset checked before any work, per-sample tensors, a seeded epoch order.

Random augmentation (flip, caption dropout) is not done here but in the training step, from the step's own
generator, so the same code path serves samples decoded from images and samples read from the latent cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from PIL import Image

from fashionsd_x.data.build import REPORT_NAME
from fashionsd_x.data.conditioning import SketchConditioning, control_image
from fashionsd_x.data.images import pad_to_square, to_rgb
from fashionsd_x.data.regions import garment_mask
from fashionsd_x.notices import notify

REQUIRED_COLUMNS = ("image", "text")


class DatasetError(ValueError):
    """A dataset folder that cannot be trained on; one line saying what is wrong and what to do."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset folder does not exist."""


def open_dataset(path: Path, columns: tuple[str, ...]) -> DatasetDict:
    """Load a dataset saved by `fsdx data build` and check it has a non-empty train split with `columns`."""
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"dataset folder {path} does not exist; build one with `fsdx data build`")
    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as error:
        reason = " ".join(str(error).split())
        raise DatasetError(f"{path} is not a saved dataset ({reason}); build one with `fsdx data build`") from None
    if isinstance(data, Dataset):  # a single split saved on its own trains as the train split
        data = DatasetDict({"train": data})
    if "train" not in data:
        raise DatasetError(f"dataset {path} has no train split (splits: {', '.join(data) or 'none'})")
    missing = [name for name in columns if name not in data["train"].column_names]
    if missing:
        raise DatasetError(f"dataset {path} lacks column(s) {', '.join(missing)} needed for training "
                           f"(it has {', '.join(data['train'].column_names)})")
    if data["train"].num_rows == 0:
        raise DatasetError(f"dataset {path} has an empty train split; nothing to train on")
    return data


def dataset_sketch(path: Path) -> dict[str, Any] | None:
    """The SketchConfig a dataset's sketches were made with (from its build report), or None if not recorded."""
    report = Path(path) / REPORT_NAME
    if not report.is_file():
        return None
    return json.loads(report.read_text(encoding="utf-8")).get("parameters", {}).get("sketch")


def image_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """An RGB garment photo as 3 x resolution x resolution in [-1, 1], the VAE's input range."""
    square = pad_to_square(image.convert("RGB"), resolution)
    return torch.from_numpy(np.asarray(square, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def tokenize(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """CLIP token ids padded/truncated to the tokenizer's context (77), as the SD pipelines tokenize prompts."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def warn_long_captions(texts: list[str | None], tokenizer: Any) -> None:
    """One notice for the captions longer than the text encoder reads: training sees them cut, as generation does."""
    limit = tokenizer.model_max_length
    lengths = [len(ids) for ids in tokenizer([text or "" for text in texts], truncation=False).input_ids]
    longer = [length for length in lengths if length > limit]
    if longer:
        notify(f"{len(longer)} of {len(lengths)} training captions are longer than the text encoder's {limit} "
               f"tokens (up to {max(longer)}): each is truncated to its first {limit}")


CONTROL_MEMO_BYTES = 1 << 30  # at most 1 GiB of sketch conditionings kept per process (about 340 at 512 px)


class TrainItems(torch.utils.data.Dataset):
    """Sample i of the train split as tensors: from the latent cache when given, else decoded from the images.

    Keys: index; pixels (uncached) or latent_mean + latent_std (cached); input_ids, or the cached caption
    embedding `text` when `cached_text`; control (ControlNet), or with `raw_sketch` the dataset's sketch and
    photo as uint8 arrays (sketch_raw, image_raw) for the training step to augment and condition; with `region`
    (and no raw_sketch, whose step finds it after augmenting) the garment's region, 1 x resolution x resolution
    bool, for the sketch-consistency loss.
    """

    def __init__(self, split: Dataset, tokenizer: Any, resolution: int, control: bool = False,
                 invert_sketch: bool = False, cache: Any = None, cached_text: bool = True,
                 conditioning: SketchConditioning = SketchConditioning(), raw_sketch: bool = False,
                 region: bool = False) -> None:
        self.cached_text = cache is not None and cached_text
        self.raw_sketch = control and raw_sketch
        self.region = region and not self.raw_sketch
        self.columns = (([] if cache is not None and not (self.raw_sketch or self.region) else ["image"])
                        + ([] if self.cached_text else ["text"]) + (["sketch"] if control else []))
        # Only the needed columns are decoded: a cached LoRA run never touches an image.
        self.split = split.select_columns(self.columns) if self.columns else split
        self.tokenizer, self.resolution, self.invert_sketch, self.cache = tokenizer, resolution, invert_sketch, cache
        self.conditioning = conditioning
        # A sketch's conditioning is the same every epoch (no augmentation on this path), and building it (decode,
        # binarise, resize, stroke width) is most of a cached ControlNet step's data time: built once per row,
        # kept up to CONTROL_MEMO_BYTES (beyond that, built per step as before, so memory stays bounded). The
        # garment's region is kept the same way.
        self._memo: dict[tuple[str, int], torch.Tensor] = {}
        self._memo_bytes = 0

    def __len__(self) -> int:
        return self.split.num_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": index}
        row = self.split[index] if self.columns else {}
        if self.cache is not None:
            item.update(self.cache.item(index))
        else:
            item["pixels"] = image_tensor(row["image"], self.resolution)
        if not self.cached_text:
            item.pop("text", None)
            item["input_ids"] = tokenize(self.tokenizer, [row["text"] or ""])[0]
        if self.raw_sketch:
            item["sketch_raw"] = np.asarray(row["sketch"].convert("L"))
            item["image_raw"] = np.asarray(to_rgb(row["image"]))
        elif "sketch" in row:
            item["control"] = self._kept("control", index, lambda: control_image(
                row["sketch"], self.resolution, self.invert_sketch, self.conditioning))
        if self.region:
            item["region"] = self._kept("region", index, lambda: region_tensor(row["image"], self.resolution))
        return item

    def _kept(self, kind: str, index: int, build: Any) -> torch.Tensor:
        """Row INDEX's KIND tensor, from the memo when it is there, else BUILD() (kept while the memo has room);
        a copy, so nothing downstream (collation, device moves) can alter what is kept."""
        if (kind, index) in self._memo:
            return self._memo[kind, index].clone()
        value = build()
        size = value.element_size() * value.nelement()
        if self._memo_bytes + size <= CONTROL_MEMO_BYTES:
            self._memo[kind, index] = value.clone()
            self._memo_bytes += size
        return value


def region_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """1 x resolution x resolution bool: the garment's region in a photo brought to the training canvas."""
    return torch.from_numpy(garment_mask(pad_to_square(to_rgb(image), resolution)))[None]


RAW_KEYS = ("sketch_raw", "image_raw")  # per-sample arrays that stay lists in a batch (sizes may differ)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The default collation, except that raw sketches and photos stay lists of arrays."""
    raw = {key: [item.pop(key) for item in items] for key in RAW_KEYS if key in items[0]}
    return {**torch.utils.data.default_collate(items), **raw}


class EpochSampler(torch.utils.data.Sampler[int]):
    """A shuffled order that is a pure function of (seed, epoch): resuming at any epoch replays it exactly."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # accelerate's prepared loader calls this through DataLoaderShard.set_epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(derive_seed(self.seed, 0x5EED, self.epoch))
        return iter(torch.randperm(self.size, generator=generator).tolist())


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing `parts` (SeedSequence hashing: nearby inputs give unrelated streams)."""
    return int(np.random.SeedSequence([int(part) for part in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def validation_samples(data: DatasetDict, prompts: list[str] | None, count: int,
                       with_sketch: bool) -> list[tuple[str, Image.Image | None]]:
    """(prompt, sketch or None) pairs for validation images: the given prompts, else the first test-split texts.

    Sketches come from the test split (the train split when test is empty), cycling when prompts outnumber them.
    """
    source = data["test"] if "test" in data and data["test"].num_rows else data["train"]
    if prompts is None:
        count = min(count, source.num_rows)
        prompts = list(source.select(range(count))["text"]) if count else []
    if not prompts or not with_sketch:
        return [(prompt, None) for prompt in prompts]
    sketches = source.select([index % source.num_rows for index in range(len(prompts))])["sketch"]
    return list(zip(prompts, sketches))
