"""Fixtures: raw datasets in each supported layout, made from synthetic garments (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image

from fashionsd_x.data.synth import render_garment, sample_spec, synthesize
from fashionsd_x.models.tiny import TinyConfig, build_tiny_base


def garment(index: int, size: int = 96, portrait: bool = True, **filters) -> Image.Image:
    """A synthetic in-shop garment photo; portrait like the real datasets' 768x1024 crops."""
    spec = sample_spec(np.random.default_rng([7, index]), **filters)
    image = render_garment(spec, size=size, seed=index)
    if not portrait:
        return image
    canvas = Image.new("RGB", (size * 3 // 4, size), "white")
    canvas.paste(image.resize((size * 3 // 4, size * 3 // 4)), (0, size // 8))
    return canvas


DRESSCODE_ITEMS = {
    # category: (train ids, test ids)
    "dresses": (["020714", "020715"], ["020716"]),
    "upper_body": (["000001", "000002"], ["000003"]),
    "lower_body": (["013563"], ["013564"]),
}


@pytest.fixture
def dresscode_root(tmp_path: Path) -> Path:
    """Dress Code Multimodal layout; 000002 has no caption and 013564's in-shop photo is missing."""
    root = tmp_path / "DressCode"
    fine, coarse = {}, {}
    for number, (category, (train, test)) in enumerate(DRESSCODE_ITEMS.items()):
        images = root / category / "images"
        images.mkdir(parents=True)
        (root / category / "keypoints").mkdir()
        for index, garment_id in enumerate(train + test):
            garment(number * 10 + index).save(images / f"{garment_id}_0.jpg")
            if garment_id != "013564":
                garment(number * 10 + index).save(images / f"{garment_id}_1.jpg")
            if garment_id != "000002":
                fine[garment_id] = ["floral print", "short sleeves"]
                coarse[garment_id] = ["short sleeves", category.replace("_", " ")]
        (root / category / "train_pairs.txt").write_text("".join(f"{i}_0.jpg {i}_1.jpg\n" for i in train))
        (root / category / "test_pairs_paired.txt").write_text("".join(f"{i}_0.jpg {i}_1.jpg\n" for i in test))
        (root / category / "test_pairs_unpaired.txt").write_text("".join(f"{i}_0.jpg {train[0]}_1.jpg\n" for i in test))
    (root / "fine_captions.json").write_text(json.dumps(fine))
    (root / "coarse_captions.json").write_text(json.dumps(coarse))
    return root


@pytest.fixture
def vitonhd_root(tmp_path: Path) -> Path:
    """VITON-HD Multimodal layout with 3 train and 2 test cloths."""
    root = tmp_path / "VITON-HD"
    ids = {"train": ["00006", "00008", "00013"], "test": ["03191", "03192"]}
    captions = {}
    for split, split_ids in ids.items():
        (root / split / "cloth").mkdir(parents=True)
        (root / split / "image").mkdir()
        for index, cloth_id in enumerate(split_ids):
            garment(40 + index, categories=["t-shirt"]).save(root / split / "cloth" / f"{cloth_id}_00.jpg")
            captions[cloth_id] = ["crew neck", "cotton t-shirt", "crew neck"]
        (root / f"{split}_pairs.txt").write_text("".join(f"{i}_00.jpg {i}_00.jpg\n" for i in split_ids))
    (root / "captions.json").write_text(json.dumps(captions))
    return root


@pytest.fixture
def synth_root(tmp_path: Path) -> Path:
    """A folder source of 12 synthetic garments with metadata.jsonl, as `fsdx data synth` writes it."""
    return synthesize(tmp_path / "synth", num=12, seed=3, size=64)


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the Hub: HF_HUB_OFFLINE=1 for subprocesses, and the flag huggingface_hub already read
    at import time for this process (so an accidental Hub call fails at once instead of retrying for 20 s)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-px epsilon tiny base as a diffusers folder, built once per session; tests copy it before changing it."""
    return build_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def tiny_v_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture trained for v-prediction (SD 2.x 768-v style), other random weights."""
    return build_tiny_base(tmp_path_factory.mktemp("tiny_v") / "base", TinyConfig(prediction_type="v_prediction"),
                           seed=1)


@pytest.fixture(scope="session")
def one_thread():
    """Tiny tensors: OpenMP's thread barriers cost more than a second thread gives, and on a busy 2-core runner
    far more (a 32x32 silu measured 0.05 ms on 1 thread, 5 ms on 2 while the other core was taken)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
