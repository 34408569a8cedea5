"""Shared by the training tests: one tiny base per prediction type and one small garment dataset per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fashionsd_x.data.build import build_dataset
from fashionsd_x.data.synth import synthesize
from fashionsd_x.models.tiny import TinyConfig, build_tiny_base

# Settings that keep a test run to a few seconds: 32 px, no validation images, no checkpoints unless asked.
FAST = {"num_validation_images": "0", "checkpoint_every": "null"}
RUN = dict(max_steps=4, batch_size=4, lr=1e-3, resolution=32, seed=3)  # a short run whose result can be compared


@pytest.fixture(autouse=True)
def single_thread(one_thread) -> None:
    """Every training test runs torch on one thread (see tests/conftest.py)."""


@pytest.fixture(scope="session")
def other_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another architecture: narrower UNet, 8x VAE, so sides must be multiples of 16 and LoRA shapes differ."""
    config = TinyConfig(unet_channels=(16, 32), vae_channels=(16, 16, 16, 16), text_hidden=32)
    return build_tiny_base(tmp_path_factory.mktemp("other") / "base", config, seed=2)


@pytest.fixture(scope="session")
def garments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built dataset of 8 train garments (plus a few test ones) at 32 px, as `fsdx data build` writes it."""
    folder = tmp_path_factory.mktemp("garments")
    raw = synthesize(folder / "raw", num=14, seed=3, size=64)
    return build_dataset("folder", raw, folder / "dataset", resolution=32, test_fraction=0.3, limit=8).out


@pytest.fixture(scope="session")
def trained_lora(garments: Path, tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA overfit on the 8 garments (20 steps at lr 1e-2: far from zero), with one validation image and a
    checkpoint every 10 steps (only the newest kept)."""
    from fashionsd_x.train.lora import train_lora

    out = tmp_path_factory.mktemp("lora") / "out"
    train_lora(garments, str(tiny_base), out, max_steps=20, batch_size=4, lr=1e-2, resolution=32, checkpoint_every=10,
               keep_checkpoints=1, validate_every=10,
               overrides={"num_validation_images": "1", "validation_steps": "2"})
    return out


def render(pipeline, **inputs) -> np.ndarray:
    """Two denoising steps at 32 px from a fixed generator: enough to compare models bit for bit."""
    generator = torch.Generator().manual_seed(0)
    return pipeline("a red floral dress", num_inference_steps=2, height=32, width=32, generator=generator,
                    output_type="np", **inputs).images[0]
