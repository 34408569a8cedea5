"""Full training of a base (the embedded model's stage 2): every UNet and text-encoder weight moves, the VAE
does not, and the result is a diffusers folder that loads as a base and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from fashionsd_x.models.base import load_base
from fashionsd_x.train.core import CONFIG_METADATA_KEY
from fashionsd_x.train.pretrain import train_base
from tests.train.conftest import FAST, RUN, render


def _weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    return load_file(next((folder / component).glob("*.safetensors")))


@pytest.fixture(scope="module")
def trained_base(garments, tiny_base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "out"
    train_base(garments, str(tiny_base), out, **RUN, cache_latents=True, overrides=FAST)
    return out


def test_unet_and_text_encoder_train_and_the_vae_stays(trained_base, tiny_base):
    for component, changes in (("unet", True), ("text_encoder", True), ("vae", False)):
        before, after = _weights(tiny_base, component), _weights(trained_base, component)
        assert before.keys() == after.keys()
        moved = any(not torch.equal(before[key], after[key]) for key in before)
        assert moved == changes, component


def test_result_is_a_base_that_diffusers_and_fsdx_load(trained_base):
    pipeline = StableDiffusionPipeline.from_pretrained(trained_base, safety_checker=None)
    image = render(pipeline)
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()
    np.testing.assert_allclose(render(load_base(trained_base).pipeline(scheduler=pipeline.scheduler)), image,
                               atol=1e-6)
    header = (trained_base / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()[:20000]
    assert CONFIG_METADATA_KEY.encode() in header
    assert (trained_base / "README.md").read_text().startswith("---")
    # CLIP's standard key layout, which transformers 4 (and tools built on it) need to find the weights
    assert all(key.startswith("text_model.") for key in _weights(trained_base, "text_encoder"))


def test_resume_gives_the_uninterrupted_weights(garments, tiny_base, trained_base, tmp_path):
    """Text encoder trained, latents cached: 2 steps, stop, resume to 4 equals 4 in one go."""
    out = tmp_path / "resumed"
    settings = {**RUN, "max_steps": 2}
    train_base(garments, str(tiny_base), out, **settings, cache_latents=True,
               overrides={**FAST, "checkpoint_every": "2"})
    train_base(garments, str(tiny_base), out, **RUN, cache_latents=True, resume="latest",
               overrides={**FAST, "checkpoint_every": "2"})
    for component in ("unet", "text_encoder"):
        expected, got = _weights(trained_base, component), _weights(out, component)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=f"{component} {key}")


def test_gradient_checkpointing_of_unet_and_text_encoder_keeps_the_result(garments, tiny_base, trained_base, tmp_path):
    out = tmp_path / "checkpointed"
    train_base(garments, str(tiny_base), out, **RUN, cache_latents=True,
               overrides={**FAST, "gradient_checkpointing": "true"})
    for component in ("unet", "text_encoder"):
        expected, got = _weights(trained_base, component), _weights(out, component)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5, msg=f"{component} {key}")
