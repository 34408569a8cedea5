"""Latent cache: VAE latents and caption embeddings computed once per dataset, stored on disk as safetensors.

The VAE and the text encoder are frozen in both trainers, so running them on every sample every epoch is
wasted work; with `cache_latents` they run once and training reads their outputs. What is stored keeps the
run identical to an uncached one:
- the VAE posterior's mean and std, not one sample: the training step draws the sample itself from its own
  generator, exactly as it does after encoding an image;
- both orientations when random_flip is on (the flip of a latent is not the latent of the flipped image);
- the empty caption's embedding, which caption dropout swaps in.
Shards of SHARD_SIZE samples are read lazily, so memory stays bounded whatever the dataset's size. A cache
lives in a folder named by a hash of (dataset fingerprint, base, resolution, flip, dtype); index.json is
written last and marks it complete, so a killed build is resumed shard by shard and a resumed run reuses it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from fashionsd_x.models.base import Base
from fashionsd_x.train.data import image_tensor, tokenize

CACHE_FORMAT = 1
SHARD_SIZE = 256
INDEX_NAME = "index.json"  # written last: a cache folder without it is incomplete
EMPTY_NAME = "empty_caption.safetensors"


def cache_folder(root: Path, split: Dataset, base: Base, resolution: int, flip: bool, dtype: torch.dtype,
                 extra: dict[str, Any] | None = None) -> Path:
    """root / <hash>: one folder per (dataset contents, base, resolution, flip, dtype, `extra`: e.g. a fused LoRA)."""
    identity = {"extra": extra or {},
        "format": CACHE_FORMAT, "dataset": split._fingerprint, "rows": split.num_rows, "base": base.source,
        "vae": dict(base.vae.config), "text_encoder": base.text_encoder.config.to_dict(),
        "resolution": resolution, "flip": flip, "dtype": str(dtype),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(root) / digest


class LatentCache:
    """Read side of a complete cache folder; item(i) gives the tensors TrainItems puts in a sample."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index = json.loads((self.folder / INDEX_NAME).read_text(encoding="utf-8"))
        self.num_rows, self.shard_size, self.flip = index["rows"], index["shard_size"], index["flip"]
        self._open: dict[int, Any] = {}  # shard -> safe_open handle, opened lazily in each loader worker

    def item(self, index: int) -> dict[str, torch.Tensor]:
        shard, offset = divmod(index, self.shard_size)
        if shard not in self._open:
            self._open[shard] = safe_open(str(self.folder / _shard_name(shard)), framework="pt")
        handle = self._open[shard]
        return {name: handle.get_slice(name)[offset] for name in ("latent_mean", "latent_std", "text")}

    def empty_text(self) -> torch.Tensor:
        with safe_open(str(self.folder / EMPTY_NAME), framework="pt") as handle:
            return handle.get_tensor("text")

    def __getstate__(self) -> dict[str, Any]:  # loader workers reopen their own handles
        return {**self.__dict__, "_open": {}}


def build_cache(folder: Path, split: Dataset, base: Base, resolution: int, flip: bool, batch_size: int,
                accelerator: Accelerator) -> LatentCache:
    """Encode the train split into `folder` (shards split across processes) unless it is already complete."""
    folder = Path(folder)
    if not (folder / INDEX_NAME).is_file():
        if accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        shards = range(accelerator.process_index, math.ceil(split.num_rows / SHARD_SIZE), accelerator.num_processes)
        mine = sum(min(SHARD_SIZE, split.num_rows - shard * SHARD_SIZE) for shard in shards)
        rows = tqdm(total=mine, desc="caching latents", disable=not accelerator.is_local_main_process)
        for shard in shards:
            if not (folder / _shard_name(shard)).is_file():  # a killed build keeps its finished shards
                part = split.select(range(shard * SHARD_SIZE, min((shard + 1) * SHARD_SIZE, split.num_rows)))
                _write_atomic(folder / _shard_name(shard), _encode(part, base, resolution, flip, batch_size, rows))
        rows.close()
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_atomic(folder / EMPTY_NAME, {"text": _embed(base, [""])[0].cpu()})
            index = {"format": CACHE_FORMAT, "rows": split.num_rows, "shard_size": SHARD_SIZE, "flip": flip}
            temporary = folder / f".{INDEX_NAME}.tmp"
            temporary.write_text(json.dumps(index), encoding="utf-8")
            os.replace(temporary, folder / INDEX_NAME)
        accelerator.wait_for_everyone()
    cache = LatentCache(folder)
    if cache.num_rows != split.num_rows or cache.flip != flip:
        raise ValueError(f"latent cache {folder} does not match the dataset ({cache.num_rows} rows, flip {cache.flip});"
                         " delete the folder to rebuild it")
    return cache


@torch.no_grad()
def _encode(part: Dataset, base: Base, resolution: int, flip: bool, batch_size: int,
            bar: Any) -> dict[str, torch.Tensor]:
    means, stds, texts = [], [], []
    part = part.select_columns(["image", "text"])
    for start in range(0, part.num_rows, batch_size):
        rows = part[start : start + batch_size]
        pixels = torch.stack([image_tensor(image, resolution) for image in rows["image"]])
        views = [pixels, pixels.flip(-1)] if flip else [pixels]  # index 1 = horizontally flipped
        posteriors = [base.vae.encode(view.to(base.vae.device, base.vae.dtype)).latent_dist for view in views]
        means.append(torch.stack([posterior.mean for posterior in posteriors], dim=1).cpu())
        stds.append(torch.stack([posterior.std for posterior in posteriors], dim=1).cpu())
        texts.append(_embed(base, [text or "" for text in rows["text"]]).cpu())
        bar.update(len(rows["text"]))
    return {"latent_mean": torch.cat(means).contiguous(), "latent_std": torch.cat(stds).contiguous(),
            "text": torch.cat(texts).contiguous()}


@torch.no_grad()
def _embed(base: Base, texts: list[str]) -> torch.Tensor:
    ids = tokenize(base.tokenizer, texts).to(base.text_encoder.device)
    return base.text_encoder(ids)[0]


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(temporary))
    os.replace(temporary, path)
